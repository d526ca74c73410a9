"""Supervised objective with uniform label noise (ClusterFit §4.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from clusterfit.errors import ClusterFitError, ConfigError
from clusterfit.pretext import SupervisedObjective, inject_label_noise


def _labels(n: int, k: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, size=n).astype(np.int64)


@pytest.mark.parametrize(
    ("n", "p", "expected"),
    [(1000, 0.3, 300), (1000, 0.0, 0), (1000, 1.0, 1000), (10, 0.25, 2), (7, 0.5, 4), (3, 0.1, 0)],
)
def test_noise_rate_is_exact_and_never_keeps_the_original(n, p, expected):
    labels = _labels(n, 10)
    noisy = inject_label_noise(labels, p, 10, seed=0)
    assert noisy.dtype == np.int64 and noisy.shape == labels.shape
    # Every flipped item differs from its original, so the number of differing items is exactly
    # the number flipped.
    assert int((noisy != labels).sum()) == expected == round(p * n)
    assert noisy.min() >= 0 and noisy.max() < 10


def test_input_is_not_modified():
    labels = _labels(500, 5)
    before = labels.copy()
    inject_label_noise(labels, 0.5, 5, seed=3)
    np.testing.assert_array_equal(labels, before)


def test_noise_is_fixed_by_the_seed():
    labels = _labels(2000, 10)
    a = inject_label_noise(labels, 0.4, 10, seed=7)
    b = inject_label_noise(labels, 0.4, 10, seed=7)
    c = inject_label_noise(labels, 0.4, 10, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_flipped_items_nest_as_the_rate_grows():
    labels = _labels(1000, 10)
    small = np.flatnonzero(inject_label_noise(labels, 0.1, 10, seed=5) != labels)
    large = np.flatnonzero(inject_label_noise(labels, 0.5, 10, seed=5) != labels)
    assert len(small) == 100 and len(large) == 500
    assert set(small) <= set(large)


def test_new_labels_are_uniform_over_the_other_classes():
    k = 10
    labels = _labels(40_000, k, seed=2)
    noisy = inject_label_noise(labels, 1.0, k, seed=11)
    # Per original class: the new label is uniform over the K - 1 others.
    for c in range(k):
        new = noisy[labels == c]
        counts = np.bincount(new, minlength=k)
        assert counts[c] == 0
        others = np.delete(counts, c)
        assert chisquare(others).pvalue > 1e-3, (c, others)
    # The check has power: a biased replacement (c -> c + 1 twice as often) fails it.
    rng = np.random.default_rng(0)
    biased = np.where(rng.random(4000) < 0.2, 1, rng.integers(1, k, size=4000))
    assert chisquare(np.bincount(biased, minlength=k)[1:]).pvalue < 1e-3


def test_two_classes_always_swap():
    labels = np.array([0, 1] * 50)
    noisy = inject_label_noise(labels, 1.0, 2, seed=0)
    np.testing.assert_array_equal(noisy, 1 - labels)


def test_unknown_or_bad_labels_are_refused():
    with pytest.raises(ClusterFitError, match="label -1"):
        inject_label_noise(np.array([0, -1, 2]), 0.5, 3, seed=0)
    with pytest.raises(ClusterFitError, match="outside"):
        inject_label_noise(np.array([0, 3]), 0.5, 3, seed=0)
    with pytest.raises(ConfigError):
        inject_label_noise(np.array([0, 1]), 1.5, 3, seed=0)
    with pytest.raises(ConfigError, match="2 classes"):
        inject_label_noise(np.array([0, 0]), 0.5, 1, seed=0)
    obj = SupervisedObjective(label_noise=0.2, num_classes=3)
    with pytest.raises(ClusterFitError, match="needs a label for every item"):
        obj.item_targets(np.array([0, 1, -1, 2]), seed=0)


def test_objective_targets_and_batch():
    labels = _labels(300, 6)
    obj = SupervisedObjective(label_noise=0.2, num_classes=6)
    assert obj.uses_labels and obj.distillable and obj.patches == 1 and not obj.multilabel
    assert obj.head_sizes(6) == [6]
    (targets,) = obj.item_targets(labels, seed=4)
    np.testing.assert_array_equal(targets, inject_label_noise(labels, 0.2, 6, seed=4))
    x = torch.rand(8, 3, 16, 16)
    batch_t = [torch.from_numpy(targets[:8])]
    inputs, out_t = obj.make_batch(x, batch_t, torch.Generator().manual_seed(0))
    assert inputs is x and torch.equal(out_t[0], batch_t[0])
    with pytest.raises(ClusterFitError, match="rows"):
        obj.make_batch(x, [batch_t[0][:5]], torch.Generator())
    with pytest.raises(ConfigError, match="agree"):
        obj.head_sizes(7)


def test_num_classes_from_the_dataset():
    obj = SupervisedObjective(label_noise=0.5)
    assert obj.head_sizes(4) == [4]
    (t,) = obj.item_targets(np.zeros(10, dtype=np.int64), seed=0)
    # K = 4 came from head_sizes, not from max(label) + 1 = 1 (which would allow no flip).
    assert int((t != 0).sum()) == 5
    with pytest.raises(ConfigError, match="number of classes"):
        SupervisedObjective().head_sizes(None)


def test_default_loss_is_summed_cross_entropy_by_hand():
    obj = SupervisedObjective(num_classes=3)
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    ta, tb = torch.tensor([1, 0]), torch.tensor([2, 1])

    def ce(z, y):
        return sum(
            math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(z, y, strict=True)
        )

    za, zb = a.tolist(), b.tolist()
    want = ce(za, ta.tolist()) / 2 + ce(zb, tb.tolist()) / 2
    got = obj.loss([a, b], [ta, tb])
    assert got.shape == () and math.isclose(got.item(), want, rel_tol=1e-6)
    with pytest.raises(ClusterFitError, match="heads"):
        obj.loss([a, b], [ta])

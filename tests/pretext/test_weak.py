"""Weak labels: file formats, seeded sampling, multi-label targets and loss (ClusterFit App. B)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clusterfit.errors import ConfigError, DataError
from clusterfit.pretext import WeakLabelObjective, get_objective, load_weak_labels
from clusterfit.pretext.weak import multi_hot, sample_weak_labels

NAMES = ["cat", "dog", "car", "tree"]


def test_text_format(tmp_path):
    f = tmp_path / "weak.csv"
    f.write_text(
        "index,labels\n# a comment\n\n2,3\n0,1;2;1\n1\tdog|cat | tree\n3,car\n", encoding="utf-8"
    )
    assert load_weak_labels(f, 4, NAMES) == [[1, 2], [1, 0, 3], [3], [2]]
    # n_items=None: from the file.
    assert len(load_weak_labels(f, None, NAMES)) == 4


def test_json_formats(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps([[0, 2], ["dog"], [3, 3]]))
    assert load_weak_labels(a, 3, NAMES) == [[0, 2], [1], [3]]
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"1": [2], "0": ["cat", 1]}))
    assert load_weak_labels(b, 2, NAMES) == [[0, 1], [2]]


@pytest.mark.parametrize(
    ("content", "n", "match"),
    [
        ("0,1\n2,1\n", 3, "no weak labels"),  # item 1 missing
        ("0,1\n0,2\n", 1, "twice"),
        ("0,1\n5,2\n", 2, "outside the dataset"),
        ("0,lion\n", 1, "unknown class name"),
        ("0,\n", 1, "no labels"),
        ("zero,1\n", 1, "expected"),
        ("0,7\n", 1, "outside"),
    ],
)
def test_text_format_errors(tmp_path, content, n, match):
    f = tmp_path / "w.txt"
    f.write_text(content)
    with pytest.raises(DataError, match=match):
        load_weak_labels(f, n, NAMES)


def test_missing_file_and_names_without_class_names(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_weak_labels(tmp_path / "nope.csv", 1)
    f = tmp_path / "w.csv"
    f.write_text("0,dog\n")
    with pytest.raises(DataError, match="class_names"):
        load_weak_labels(f, 1)


def test_sampling_picks_from_each_set_and_is_seeded():
    rng = np.random.default_rng(0)
    weak = [
        sorted(rng.choice(20, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(3000)
    ]
    a = sample_weak_labels(weak, seed=1)
    assert a.dtype == np.int64 and a.shape == (3000,)
    assert all(int(v) in s for v, s in zip(a, weak, strict=True))
    np.testing.assert_array_equal(a, sample_weak_labels(weak, seed=1))
    assert (a != sample_weak_labels(weak, seed=2)).any()
    # Uniform within the set: items with labels {0, 1, 2} pick each about a third of the time.
    b = sample_weak_labels([[0, 1, 2]] * 6000, seed=3)
    counts = np.bincount(b, minlength=3)
    assert (np.abs(counts - 2000) < 150).all(), counts


def test_objective_sample_mode(tmp_path):
    f = tmp_path / "w.json"
    f.write_text(json.dumps([[0, 1], [2], [1, 3], [0]]))
    obj = get_objective("weak", path=str(f), mode="sample", n_items=4)
    assert obj.distillable and not obj.uses_labels and not obj.multilabel
    assert obj.head_sizes(None) == [4]
    assert obj.head_sizes(6) == [6]  # the dataset may have classes the file never uses
    (t,) = obj.item_targets(np.full(4, -1), seed=0)
    assert t[1] == 2 and t[3] == 0 and t[0] in (0, 1) and t[2] in (1, 3)
    with pytest.raises(DataError, match="cover 4 items"):
        obj.item_targets(np.zeros(5, dtype=np.int64), seed=0)
    assert obj.config()["path"] == str(f)
    with pytest.raises(DataError, match="no weak labels"):
        get_objective("weak", path=f, n_items=5)


def test_objective_multilabel_targets_and_bce_by_hand():
    weak = [[0, 2], [1], [0, 1, 2]]
    obj = WeakLabelObjective(weak_labels=weak, mode="multilabel", num_classes=3)
    assert obj.multilabel and obj.head_sizes(3) == [3]
    (t,) = obj.item_targets(np.zeros(3, dtype=np.int64), seed=0)
    np.testing.assert_array_equal(t, [[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(t, multi_hot(weak, 3))
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0], [1.0, 1.0, 1.0]])
    x = torch.rand(3, 1, 8, 8)
    _, bt = obj.make_batch(x, [torch.from_numpy(t)], torch.Generator())

    def bce(z, y):
        s = 1 / (1 + math.exp(-z))
        return -(y * math.log(s) + (1 - y) * math.log(1 - s))

    want = sum(
        bce(z, y)
        for zr, yr in zip(logits.tolist(), t.tolist(), strict=True)
        for z, y in zip(zr, yr, strict=True)
    )
    got = obj.loss([logits], bt)
    assert math.isclose(got.item(), want / 3, rel_tol=1e-6)


def test_objective_argument_errors():
    with pytest.raises(ConfigError, match="mode"):
        WeakLabelObjective(weak_labels=[[0]], mode="all")
    with pytest.raises(ConfigError, match="outside"):
        WeakLabelObjective(weak_labels=[[0, 5]], num_classes=3)
    with pytest.raises(DataError, match="no labels"):
        WeakLabelObjective(weak_labels=[[0], []])
    with pytest.raises(ConfigError, match="exactly one"):
        WeakLabelObjective()
    with pytest.raises(DataError, match="dataset has 3"):
        WeakLabelObjective(weak_labels=[[0], [1]], n_items=3)
    obj = WeakLabelObjective(weak_labels=[["dog"], ["cat", 2]], class_names=NAMES)
    assert obj.weak == [[1], [0, 2]] and obj.head_sizes(None) == [4]

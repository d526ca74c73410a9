"""Low-shot: exactly k per class, seeded and nested draws, mean/std over draws."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from clusterfit.errors import DataError
from clusterfit.evaluate.lowshot import lowshot_eval, sample_shots


def test_sample_shots_exactly_k_per_class():
    y = np.repeat([3, 5, 9], [10, 7, 30])
    for k in (1, 2, 7):
        idx = sample_shots(y, k, seed=0)
        assert len(np.unique(idx)) == len(idx) == 3 * k
        np.testing.assert_array_equal(np.unique(y[idx], return_counts=True)[1], [k, k, k])
    with pytest.raises(DataError, match="class 5 has only 7"):
        sample_shots(y, 8, seed=0)


def test_draws_differ_by_seed_and_are_reproducible_and_nested():
    y = np.repeat(np.arange(4), 50)
    draws = [sample_shots(y, 4, seed=s) for s in range(5)]
    assert len({tuple(d) for d in draws}) == 5
    np.testing.assert_array_equal(draws[2], sample_shots(y, 4, seed=2))
    assert set(sample_shots(y, 2, seed=1)) <= set(sample_shots(y, 8, seed=1))


def _data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 30))
    y = rng.integers(0, 5, 700)
    x = centers[y] + 0.9 * rng.normal(size=(700, 30))
    return x.astype(np.float32), y


def test_lowshot_eval_matches_direct_fits_and_aggregates_draws():
    x, y = _data()
    x_tr, y_tr, x_te, y_te = x[:500], y[:500], x[500:], y[500:]
    out = lowshot_eval(x_tr, y_tr, x_te, y_te, shots=(1, 8), n_draws=3, seed=10, progress=False)
    assert [r["shots"] for r in out["results"]] == [1, 8]
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    for r in out["results"]:
        assert r["seeds"] == [10, 11, 12] and r["n_train"] == 5 * r["shots"]
        ref = []
        for s in r["seeds"]:
            idx = sample_shots(y_tr, r["shots"], s)
            clf = LinearSVC(C=1.0, dual="auto", max_iter=5000).fit(norm(x_tr[idx]), y_tr[idx])
            ref.append(100 * np.mean(clf.predict(norm(x_te)) == y_te))
        assert r["top1"] == pytest.approx(ref)
        assert r["mean"] == pytest.approx(np.mean(ref))
        assert r["std"] == pytest.approx(np.std(ref, ddof=1))
    one, eight = out["results"]
    assert len(set(one["top1"])) > 1  # the draws differ
    assert eight["mean"] > one["mean"]


def test_too_many_shots_are_skipped_with_a_warning():
    x, y = _data()
    with pytest.warns(UserWarning, match="exceed"):
        out = lowshot_eval(
            x[:60], y[:60], x[60:], y[60:], shots=(2, 1000), n_draws=1, progress=False
        )
    assert out["skipped"] == [1000]
    assert out["results"][0]["std"] == 0.0

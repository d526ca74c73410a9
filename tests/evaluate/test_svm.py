"""SVM mAP: AP against scikit-learn, per-class SVMs against a direct scikit-learn fit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.svm import LinearSVC

from clusterfit.errors import DataError
from clusterfit.evaluate.svm import average_precision, mean_average_precision, svm_map


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    y[0] = 1
    scores = rng.normal(size=200) + y
    if seed % 2:
        scores = np.round(scores, 1)  # many ties
    assert average_precision(y, scores) == pytest.approx(average_precision_score(y, scores))


def test_average_precision_hand_case_and_ignored_items():
    # Ranking: + - + -  -> AP = (1/1 + 2/3) / 2
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    # A -1 (difficult) item is dropped wherever it ranks.
    assert average_precision([1, -1, 0, 1, 0], [0.9, 0.85, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))
    m, aps = mean_average_precision(np.array([[1, 0], [0, 0]]), np.array([[0.9, 0.1], [0.2, 0.3]]))
    assert m == 1.0 and np.isnan(aps[1])


def _multilabel(seed: int):
    rng = np.random.default_rng(seed)
    n, d, c = 260, 20, 3
    y = (rng.random((n, c)) < 0.35).astype(np.int64)
    x = rng.normal(size=(n, d)) + 1.5 * y @ rng.normal(size=(c, d))
    y[rng.random((n, c)) < 0.05] = -1  # difficult items
    return x.astype(np.float32), y


def test_svm_map_equals_sklearn_reference_with_chosen_costs():
    x, y = _multilabel(0)
    x_tr, y_tr, x_te, y_te = x[:180], y[:180], x[180:], y[180:]
    out = svm_map(x_tr, y_tr, x_te, y_te, costs=(0.1, 1.0), cv=3, progress=False)
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    ref = []
    for c in range(y.shape[1]):
        keep = y_tr[:, c] >= 0
        clf = LinearSVC(C=out["cost"][c], class_weight={1: 2.0, 0: 1.0}, dual="auto", max_iter=2000)
        clf.fit(norm(x_tr[keep]), y_tr[keep, c])
        scores = clf.decision_function(norm(x_te))
        test_keep = y_te[:, c] >= 0
        ref.append(100 * average_precision_score(y_te[test_keep, c], scores[test_keep]))
    assert out["ap"] == pytest.approx(ref, abs=1e-6)
    assert out["mAP"] == pytest.approx(np.mean(ref), abs=1e-6)
    assert all(set(cv) == {0.1, 1.0} for cv in out["cv_ap"])
    assert 50.0 < out["mAP"] <= 100.0


def test_cost_choice_ignores_the_test_split():
    x, y = _multilabel(1)
    a = svm_map(x[:180], y[:180], x[180:], y[180:], costs=(0.01, 1.0), progress=False)
    flipped = np.where(y[180:] >= 0, 1 - y[180:], -1)
    b = svm_map(x[:180], y[:180], x[180:], flipped, costs=(0.01, 1.0), progress=False)
    assert a["cost"] == b["cost"] and a["cv_ap"] == b["cv_ap"]
    assert a["mAP"] != b["mAP"]


def test_separable_multilabel_gives_full_map_and_bad_input_raises():
    rng = np.random.default_rng(2)
    y = (rng.random((120, 4)) < 0.5).astype(np.int64)
    x = np.hstack([y * 2.0 - 1.0, 0.01 * rng.normal(size=(120, 3))])
    out = svm_map(x[:80], y[:80], x[80:], y[80:], progress=False)
    assert out["mAP"] == pytest.approx(100.0)
    with pytest.raises(DataError, match="1 \\(positive\\)"):
        svm_map(x, y * 2, x, y, progress=False)
    with pytest.raises(DataError, match="classes"):
        svm_map(x, y, x, y[:, :2], progress=False)

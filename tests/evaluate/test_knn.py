"""Weighted kNN: a hand-computed vote, chunking, and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clusterfit.evaluate.knn import knn_accuracy, knn_classify, knn_scores

# Four train items in 2-D; the query (1, 0) has cosine similarity 1, 1/sqrt(2), 0, -1 to them.
X_TRAIN = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]], np.float32)
Y_TRAIN = np.array([0, 1, 1, 2])
QUERY = np.array([[1.0, 0.0]], np.float32)


def test_hand_computed_vote():
    # k = 3 neighbours: item 0 (class 0, s = 1), item 1 (class 1, s = 0.7071), item 2 (class 1,
    # s = 0). Votes: class 0 = exp(1 / T); class 1 = exp(0.7071 / T) + exp(0); class 2 = 0.
    for t in (0.07, 10.0):
        votes = knn_scores(X_TRAIN, Y_TRAIN, QUERY, n_classes=3, k=3, temperature=t)
        expected = [math.exp(1 / t), math.exp(math.sqrt(0.5) / t) + 1.0, 0.0]
        np.testing.assert_allclose(votes[0].numpy(), expected, rtol=1e-5)
    # At T = 0.07 the nearest item dominates; at T = 10 the two class-1 items outvote it.
    assert knn_classify(X_TRAIN, Y_TRAIN, QUERY, k=3, temperature=0.07)[0] == 0
    assert knn_classify(X_TRAIN, Y_TRAIN, QUERY, k=3, temperature=10.0)[0] == 1
    # With k = 1 only the nearest item votes.
    assert knn_classify(X_TRAIN, Y_TRAIN + 5, QUERY, k=1, temperature=10.0)[0] == 5


def _reference_votes(x_tr, y_tr, x_te, n_classes, k, t):
    a = x_tr / np.linalg.norm(x_tr, axis=1, keepdims=True)
    q = x_te / np.linalg.norm(x_te, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ a.T.astype(np.float64)
    votes = np.zeros((len(q), n_classes))
    for i, row in enumerate(sim):
        for j in np.argsort(-row)[:k]:
            votes[i, y_tr[j]] += np.exp(row[j] / t)
    return votes


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_matches_brute_force_reference_for_any_chunking(chunk_size):
    rng = np.random.default_rng(0)
    x_tr, x_te = rng.normal(size=(150, 12)), rng.normal(size=(40, 12))
    y_tr = rng.integers(0, 5, 150)
    votes = knn_scores(x_tr, y_tr, x_te, n_classes=5, k=20, temperature=0.5, chunk_size=chunk_size)
    ref = _reference_votes(x_tr, y_tr, x_te, 5, 20, 0.5)
    np.testing.assert_allclose(votes.numpy(), ref, rtol=1e-4)


def test_accuracy_top1_top5():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(8, 16)) * 4
    y = rng.integers(0, 8, 400)
    x = centers[y] + rng.normal(size=(400, 16))
    out = knn_accuracy(x[:300], y[:300], x[300:], y[300:], k=20)
    pred = knn_classify(x[:300], y[:300], x[300:], k=20)
    assert out["top1"] == pytest.approx(100 * np.mean(pred == y[300:]))
    assert out["top1"] > 95.0 and out["top5"] >= out["top1"]
    # Random labels: chance. 100 test items, C = 8: std 3.3 points; 5 std -> < 29.
    noise = knn_accuracy(x[:300], rng.integers(0, 8, 300), x[300:], rng.integers(0, 8, 100))
    assert noise["top1"] < 29.0
    with pytest.warns(UserWarning, match="exceeds"):
        assert knn_accuracy(X_TRAIN, Y_TRAIN, QUERY, [0], k=50)["k"] == 4


def test_accepts_tensors():
    votes = knn_scores(torch.from_numpy(X_TRAIN), Y_TRAIN, QUERY, n_classes=3, k=1)
    assert votes.shape == (1, 3)

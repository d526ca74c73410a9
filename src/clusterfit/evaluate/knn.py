"""Weighted k-nearest-neighbour classification on frozen features.

The non-parametric probe of Wu et al. (CVPR 2018), used beside the linear probe to judge
representations (ClusterFit, Yan et al., CVPR 2020, judges N_pre and N_cf by their frozen
features). Features are L2-normalised; the k train items of highest cosine similarity s_i to a
test item vote for their class with weight ``exp(s_i / T)``; the class with the largest summed
weight wins (top-5: the 5 largest).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clusterfit.errors import ClusterFitError
from clusterfit.evaluate._common import (
    as_features,
    as_labels,
    check_dims,
    encode_labels,
    rows_tensor,
    topk_correct,
)

__all__ = ["knn_accuracy", "knn_classify", "knn_scores"]


def _normalized(x: np.ndarray, rows: slice, device: torch.device) -> torch.Tensor:
    chunk = rows_tensor(x[rows], device)
    return F.normalize(chunk, dim=1)


def knn_scores(
    X_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray,
    X_test: np.ndarray | torch.Tensor,
    *,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 2048,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class votes of a temperature-weighted cosine kNN.

    Args:
        X_train: N x D features; y_train: N labels already encoded as 0..n_classes-1.
        X_test: M x D features.
        k: neighbours per test item (capped at N, with a warning).
        temperature: T in the vote weight ``exp(cosine / T)``.
        chunk_size: test rows (and train rows) handled per block; memory is one normalised
            copy of the train split plus about ``chunk_size * (chunk_size + k)`` similarities.

    Returns:
        M x n_classes float32 tensor (CPU): summed vote weights per class.
    """
    if k < 1:
        raise ClusterFitError(f"k={k} must be a positive number of neighbours")
    if not temperature > 0:
        raise ClusterFitError(f"temperature={temperature} must be positive")
    if chunk_size < 1:
        raise ClusterFitError(f"chunk_size={chunk_size} must be positive")
    X_train = as_features(X_train, "X_train")
    X_test = as_features(X_test, "X_test")
    check_dims(X_train, X_test, "X_train", "X_test")
    n_train = X_train.shape[0]
    if len(y_train) != n_train:
        raise ClusterFitError(f"y_train has {len(y_train)} labels for {n_train} feature rows")
    if k > n_train:
        warnings.warn(f"k={k} exceeds the {n_train} train items; using k={n_train}", stacklevel=2)
        k = n_train
    dev = torch.device(device) if device is not None else torch.device("cpu")
    labels = torch.as_tensor(np.asarray(y_train), dtype=torch.int64, device=dev)
    # The train split is normalised once (one float32 copy); similarities are computed block by
    # block, keeping a running top-k, so no M x N similarity matrix is ever held.
    train_blocks = [slice(i, min(i + chunk_size, n_train)) for i in range(0, n_train, chunk_size)]
    normed = [_normalized(X_train, b, dev) for b in train_blocks]
    out = torch.zeros(X_test.shape[0], n_classes, dtype=torch.float32)
    for start in range(0, X_test.shape[0], chunk_size):
        q = _normalized(X_test, slice(start, start + chunk_size), dev)
        best_sim = torch.full((q.shape[0], 0), -2.0, device=dev)
        best_idx = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=dev)
        for block, t in zip(train_blocks, normed, strict=True):
            sim = torch.cat([best_sim, q @ t.T], dim=1)
            idx = torch.cat(
                [best_idx, torch.arange(block.start, block.stop, device=dev).expand(len(q), -1)],
                dim=1,
            )
            best_sim, pos = sim.topk(min(k, sim.shape[1]), dim=1)
            best_idx = idx.gather(1, pos)
        weights = (best_sim / temperature).exp()
        votes = torch.zeros(len(q), n_classes, device=dev)
        votes.scatter_add_(1, labels[best_idx], weights)
        out[start : start + len(q)] = votes.cpu()
    return out


def knn_classify(
    X_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    X_test: np.ndarray | torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 2048,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Predict a label for each test row by the weighted kNN vote (Wu et al. 2018).

    Args:
        X_train: N x D features; y_train: N labels (>= 0, any ids); X_test: M x D features.

    Returns:
        M int64 predicted labels, in the ids of ``y_train``. Vote ties go to the smaller label.
    """
    x_tr = as_features(X_train, "X_train")
    x_te = as_features(X_test, "X_test")
    check_dims(x_tr, x_te, "X_train", "X_test")
    y_tr = as_labels(y_train, x_tr.shape[0], "y_train")
    classes = np.unique(y_tr)
    votes = knn_scores(
        x_tr,
        np.searchsorted(classes, y_tr),
        x_te,
        n_classes=len(classes),
        k=k,
        temperature=temperature,
        chunk_size=chunk_size,
        device=device,
    )
    return classes[votes.argmax(dim=1).numpy()]


def knn_accuracy(
    X_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    X_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray | torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 2048,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (percent) of the weighted kNN classifier on a labelled test split.

    Shapes as in :func:`knn_classify`; y_test: M labels. Test items of a class absent from the
    train split count as errors. Top-5 is capped at the number of classes.

    Returns:
        dict with ``top1``, ``top5``, ``k``, ``temperature``, ``n_train``, ``n_test``.
    """
    x_tr = as_features(X_train, "X_train")
    x_te = as_features(X_test, "X_test")
    check_dims(x_tr, x_te, "X_train", "X_test")
    y_tr = as_labels(y_train, x_tr.shape[0], "y_train")
    y_te = as_labels(y_test, x_te.shape[0], "y_test")
    tr, te, n_classes = encode_labels(y_tr, y_te)
    votes = knn_scores(
        x_tr,
        tr,
        x_te,
        n_classes=n_classes,
        k=k,
        temperature=temperature,
        chunk_size=chunk_size,
        device=device,
    )
    c1, c5 = topk_correct(votes, torch.from_numpy(te), (1, 5))
    n = x_te.shape[0]
    return {
        "top1": 100.0 * c1 / n,
        "top5": 100.0 * c5 / n,
        "k": min(k, x_tr.shape[0]),
        "temperature": temperature,
        "n_train": x_tr.shape[0],
        "n_test": n,
    }

"""Low-shot transfer: classifiers trained on k labelled examples per class.

ClusterFit (Yan et al., CVPR 2020) judges representations on target datasets with the
benchmark of Goyal et al. (ICCV 2019), whose low-shot task trains linear SVMs on k = 1, 2, 4, 8,
16, 32, 64 labelled examples per class of the target's train split, over several independent
draws, and reports the mean and standard deviation of the test accuracy.

Classifier: a one-vs-rest linear SVM (``sklearn.svm.LinearSVC``, squared hinge) on L2-normalised
features with a *fixed* cost (default 1.0). Why: at 1 or 2 shots no validation split can be
carved, so any hyper-parameter search would have to look at the test split; the SGD linear
probe needs a learning-rate sweep and many updates to be meaningful, and its batch statistics
degenerate on 10-100 items; an SVM on normalised features has a single, scale-free
hyper-parameter and is the classifier of the low-shot benchmark this paper follows.

Draws: draw ``i`` uses seed ``seed + i`` and takes, for every class, the first k items of a
seeded permutation of that class; so within a draw the 1-shot set is contained in the 2-shot
set, and so on, and the shot counts differ only in the number of examples.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clusterfit.errors import ClusterFitError, DataError
from clusterfit.evaluate._common import as_features, as_labels, check_dims, l2_normalize

__all__ = ["DEFAULT_SHOTS", "lowshot_eval", "sample_shots"]

DEFAULT_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


def sample_shots(y: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
    """Indices of exactly ``shots`` items of every class of ``y``.

    Args:
        y: N labels (>= 0).
        shots: items per class.
        seed: the draw; class c's items are permuted with ``default_rng([seed, c])`` and the
            first ``shots`` are taken (so the sets of one seed are nested across ``shots``).

    Returns:
        Sorted int64 indices, ``shots`` per class (``shots * n_classes`` in all).
    """
    y = np.asarray(y)
    if shots < 1:
        raise ClusterFitError(f"shots={shots} must be a positive number of items per class")
    picked = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < shots:
            raise DataError(
                f"class {c} has only {len(members)} train items, fewer than shots={shots}; "
                "use fewer shots"
            )
        rng = np.random.default_rng([int(seed), int(c)])
        picked.append(members[rng.permutation(len(members))[:shots]])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def lowshot_eval(
    X_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    X_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray | torch.Tensor,
    *,
    shots: tuple[int, ...] | list[int] = DEFAULT_SHOTS,
    n_draws: int = 5,
    seed: int = 0,
    cost: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Test top-1 accuracy of linear SVMs trained on ``k`` items per class, over seeded draws.

    Args:
        X_train: N x D features; y_train: N labels (>= 0). X_test: M x D; y_test: M labels.
        shots: the values of k. A k larger than the smallest class is skipped with a warning.
        n_draws: independent draws per k (draw i uses seed ``seed + i``).
        seed: first draw's seed.
        cost: the SVM cost C (fixed: see the module docstring).
        progress: show a tqdm bar over (k, draw).

    Returns:
        dict with ``results``: a list, one entry per k kept, of
        ``{"shots", "mean", "std", "top1": [per draw], "seeds": [per draw], "n_train"}``
        (accuracies in percent, std with ddof=1, 0 for one draw), and ``skipped``: the k values
        left out.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    x_tr = as_features(X_train, "X_train")
    x_te = as_features(X_test, "X_test")
    check_dims(x_tr, x_te, "X_train", "X_test")
    y_tr = as_labels(y_train, x_tr.shape[0], "y_train")
    y_te = as_labels(y_test, x_te.shape[0], "y_test")
    if n_draws < 1:
        raise ClusterFitError(f"n_draws={n_draws} must be positive")
    if not cost > 0:
        raise ClusterFitError(f"cost={cost} must be positive")
    classes, counts = np.unique(y_tr, return_counts=True)
    if len(classes) < 2:
        raise DataError("low-shot evaluation needs at least 2 classes in y_train")
    kept = sorted({int(k) for k in shots if int(k) <= counts.min()})
    skipped = sorted({int(k) for k in shots} - set(kept))
    if skipped:
        warnings.warn(
            f"shots {skipped} exceed the smallest class ({int(counts.min())} items): skipped",
            stacklevel=2,
        )
    x_te_n = l2_normalize(np.asarray(x_te))
    results = []
    bar = tqdm(total=len(kept) * n_draws, desc="low-shot", disable=not progress, leave=False)
    for k in kept:
        accs, seeds = [], []
        for i in range(n_draws):
            idx = sample_shots(y_tr, k, seed + i)
            clf = LinearSVC(C=cost, loss="squared_hinge", dual="auto", max_iter=5000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(l2_normalize(np.asarray(x_tr[idx])), y_tr[idx])
            accs.append(100.0 * float(np.mean(clf.predict(x_te_n) == y_te)))
            seeds.append(seed + i)
            bar.update()
        results.append(
            {
                "shots": k,
                "mean": float(np.mean(accs)),
                "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                "top1": accs,
                "seeds": seeds,
                "n_train": k * len(classes),
            }
        )
    bar.close()
    return {"results": results, "skipped": skipped}

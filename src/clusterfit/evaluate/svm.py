"""Linear SVMs for multi-label targets, scored by mean average precision (VOC07-style).

ClusterFit (Yan et al., CVPR 2020), Sec. 4 and App. D, following Goyal et al. (ICCV 2019): on
VOC07 one linear SVM per class is trained on frozen features; the cost C of each class is chosen
by cross-validated average precision on the train split from a small grid, and the test score is
the mean over classes of the average precision (mAP).

Details of this implementation:

* Targets are an N x C matrix with 1 (positive), 0 (negative) and -1 (ignored: VOC's
  "difficult" items). Ignored items are left out of training, of cross-validation and of AP.
* Features are L2-normalised per row (as in Goyal et al.'s benchmark) unless
  ``normalize=False``.
* ``sklearn.svm.LinearSVC`` (squared hinge, L2 penalty) with positives weighted 2 and negatives
  1, as in that benchmark; the cost grid defaults to ``(0.01, 0.1, 1.0, 10.0)``.
* AP is the non-interpolated area under the precision-recall curve, the same quantity as
  ``sklearn.metrics.average_precision_score`` (ties of score handled as one threshold).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clusterfit.errors import ClusterFitError, DataError
from clusterfit.evaluate._common import as_features, check_dims, l2_normalize

__all__ = ["DEFAULT_COSTS", "average_precision", "mean_average_precision", "svm_map"]

DEFAULT_COSTS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ``scores`` (N) for binary targets ``y_true`` (N, 1/0; -1 ignored).

    AP = sum over distinct score thresholds t, from high to low, of
    ``(recall(t) - recall(t_prev)) * precision(t)``, where items scoring >= t are predicted
    positive. Returns NaN when there is no positive.
    """
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise DataError(f"average_precision: {y.shape[0]} targets but {s.shape[0]} scores")
    keep = y >= 0
    y, s = (y[keep] > 0).astype(np.float64), s[keep]
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # The last position of each run of equal scores is where a threshold takes effect.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(Y_true: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over classes of :func:`average_precision`.

    Args:
        Y_true: N x C targets in {1, 0, -1 (ignored)}; scores: N x C.

    Returns:
        (mAP in [0, 1] over the classes that have a positive, per-class AP with NaN for the rest).
    """
    y = np.asarray(Y_true)
    s = np.asarray(scores)
    if y.shape != s.shape or y.ndim != 2:
        raise DataError(f"mean_average_precision: targets {y.shape} and scores {s.shape} differ")
    aps = np.array([average_precision(y[:, c], s[:, c]) for c in range(y.shape[1])])
    valid = ~np.isnan(aps)
    return (float(aps[valid].mean()) if valid.any() else float("nan")), aps


def _as_targets(Y: np.ndarray | torch.Tensor, n: int, name: str) -> np.ndarray:
    if isinstance(Y, torch.Tensor):
        Y = Y.detach().cpu().numpy()
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[0] != n:
        raise DataError(f"{name} must be an N x C target matrix with N={n}, got shape {Y.shape}")
    if not np.isin(Y, (-1, 0, 1)).all():
        raise DataError(f"{name} must hold only 1 (positive), 0 (negative), -1 (ignored)")
    return Y.astype(np.int64)


def _fit_svc(x: np.ndarray, y: np.ndarray, cost: float, seed: int) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    clf = LinearSVC(
        C=cost,
        class_weight={1: 2.0, 0: 1.0},
        loss="squared_hinge",
        penalty="l2",
        dual="auto",
        max_iter=2000,
        tol=1e-4,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def _class_cost(
    x: np.ndarray, y: np.ndarray, costs: tuple[float, ...], cv: int, seed: int, name: str
) -> tuple[float, dict[float, float]]:
    """Cost with the best mean cross-validated AP (ties: the smaller cost)."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(cv, int(y.sum()), int((1 - y).sum()))
    if len(costs) == 1:
        return costs[0], {}
    if folds < 2:
        mid = sorted(costs)[len(costs) // 2]
        warnings.warn(
            f"class {name}: too few positives or negatives for {cv}-fold cross-validation; "
            f"using cost {mid}",
            stacklevel=3,
        )
        return mid, {}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    cv_ap: dict[float, float] = {}
    for cost in costs:
        aps = []
        for tr, va in splitter.split(x, y):
            clf = _fit_svc(x[tr], y[tr], cost, seed)
            aps.append(average_precision(y[va], clf.decision_function(x[va])))
        cv_ap[cost] = float(np.nanmean(aps))
    best = max(sorted(costs), key=lambda c: cv_ap[c])  # max keeps the first (smallest) on ties
    return best, cv_ap


def svm_map(
    X_train: np.ndarray | torch.Tensor,
    Y_train: np.ndarray | torch.Tensor,
    X_test: np.ndarray | torch.Tensor,
    Y_test: np.ndarray | torch.Tensor,
    *,
    costs: tuple[float, ...] | list[float] = DEFAULT_COSTS,
    cv: int = 3,
    normalize: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """One linear SVM per class; cost per class by cross-validated AP; test mAP.

    Args:
        X_train: N x D features; Y_train: N x C targets in {1, 0, -1 = ignored}.
        X_test: M x D features; Y_test: M x C targets in the same classes.
        costs: grid of SVM costs C; each class takes the one with the best ``cv``-fold
            cross-validated AP on the train split (the test split is not used).
        cv: number of folds (reduced, with a warning, for classes with fewer positives).
        normalize: L2-normalise the feature rows first.
        seed: seeds the folds and the solver.
        progress: show a tqdm bar over classes.

    Returns:
        dict with ``mAP`` (percent, mean over classes with a positive in both splits), ``ap``
        (per-class AP in percent, NaN where undefined), ``cost`` (per-class chosen cost),
        ``cv_ap`` (per class: cost -> cross-validated AP in percent), ``n_classes``.
    """
    x_tr = as_features(X_train, "X_train")
    x_te = as_features(X_test, "X_test")
    check_dims(x_tr, x_te, "X_train", "X_test")
    y_tr = _as_targets(Y_train, x_tr.shape[0], "Y_train")
    y_te = _as_targets(Y_test, x_te.shape[0], "Y_test")
    if y_tr.shape[1] != y_te.shape[1]:
        raise DataError(f"Y_train has {y_tr.shape[1]} classes but Y_test has {y_te.shape[1]}")
    costs = tuple(float(c) for c in costs)
    if not costs or min(costs) <= 0:
        raise ClusterFitError(f"costs={costs} must be a non-empty list of positive SVM costs")
    if normalize:
        x_tr, x_te = l2_normalize(np.asarray(x_tr)), l2_normalize(np.asarray(x_te))
    n_classes = y_tr.shape[1]
    ap = np.full(n_classes, np.nan)
    chosen: list[float | None] = [None] * n_classes
    cv_ap: list[dict[float, float]] = [{} for _ in range(n_classes)]
    skipped = []
    for c in tqdm(range(n_classes), desc="svm", disable=not progress, leave=False):
        keep = y_tr[:, c] >= 0
        yc = y_tr[keep, c]
        if yc.sum() == 0 or yc.sum() == len(yc):
            skipped.append(c)
            continue
        xc = x_tr[keep]
        cost, scores = _class_cost(xc, yc, costs, cv, seed, str(c))
        chosen[c], cv_ap[c] = cost, {k: 100.0 * v for k, v in scores.items()}
        clf = _fit_svc(xc, yc, cost, seed)
        ap[c] = 100.0 * average_precision(y_te[:, c], clf.decision_function(x_te))
    if skipped:
        warnings.warn(
            f"classes {skipped} have no positive (or no negative) train item: no SVM trained, "
            "left out of the mAP",
            stacklevel=2,
        )
    valid = ~np.isnan(ap)
    if not valid.any():
        raise DataError("no class has positives in both the train and the test split: no mAP")
    if (~valid).sum() > len(skipped):
        warnings.warn("some classes have no positive test item: left out of the mAP", stacklevel=2)
    return {
        "mAP": float(ap[valid].mean()),
        "ap": ap.tolist(),
        "cost": chosen,
        "cv_ap": cv_ap,
        "n_classes": n_classes,
    }

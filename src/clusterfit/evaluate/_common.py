"""Input checks and small helpers shared by the evaluation protocols."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from clusterfit.errors import DataError


def as_features(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Check an N x D feature array and return it as a float32 numpy array (no copy if possible).

    Memmaps stay memmaps until rows are read.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{name} must be an N x D feature array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {x.shape}); extract features first")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def rows_tensor(part: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A float32 tensor of a block of feature rows (a copy when the block is read-only)."""
    if part.flags.writeable:
        part = np.ascontiguousarray(part, dtype=np.float32)
    else:  # e.g. a read-only memmap: torch cannot share non-writable memory
        part = np.array(part, dtype=np.float32, order="C")
    return torch.from_numpy(part).to(device)


def as_labels(y: np.ndarray | torch.Tensor, n: int, name: str) -> np.ndarray:
    """Check a length-``n`` vector of class labels (int >= 0) and return it as int64 numpy."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(
            f"{name} must be a vector of {n} labels (one per feature row), got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise DataError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(
            f"{name} holds negative labels ({int((y < 0).sum())} items); drop unlabelled items "
            "before probing"
        )
    return y


def check_dims(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise when two feature arrays differ in dimension."""
    if a.shape[1] != b.shape[1]:
        raise DataError(
            f"{name_a} has {a.shape[1]} dims but {name_b} has {b.shape[1]}: both must come from "
            "the same layer and pooling"
        )


def encode_labels(y_train: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Map labels to 0..C-1 over the classes present in ``y_train``.

    Test labels of classes absent from the train split become -1 (never predicted, so always
    counted wrong) and a warning says how many there are.
    """
    classes = np.unique(y_train)
    tr = np.searchsorted(classes, y_train)
    pos = np.clip(np.searchsorted(classes, y_test), 0, len(classes) - 1)
    known = classes[pos] == y_test
    te = np.where(known, pos, -1)
    if not known.all():
        warnings.warn(
            f"{int((~known).sum())} test items belong to classes absent from the train split; "
            "they count as errors",
            stacklevel=3,
        )
    return tr, te, len(classes)


def topk_correct(scores: torch.Tensor, y: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """Number of rows of ``scores`` (N x C) whose label ``y`` (N) is among the top-k scores.

    k is capped at C (so top-5 with 3 classes is top-3, i.e. always right).
    """
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices
    hit = top == y.unsqueeze(1)
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: N x D -> N x D (an all-zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

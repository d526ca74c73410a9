"""The bundled default dataset: a class-balanced Fashion-MNIST subset.

``src/clusterfit/assets/fashion_mnist_small.npz`` (made by ``scripts/make_bundled_data.py``; see
``assets/README.md``) holds 400 images per class (4,000) from the official Fashion-MNIST train
split and 100 per class (1,000) from the official test split, 28 x 28 greyscale, 10 classes.
Fashion-MNIST: Xiao, Rasul & Vollgraf (2017), Zalando Research, MIT licence.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np

from clusterfit.errors import DataError

BUNDLED_NAMES: tuple[str, ...] = ("bundled", "fashion-mnist-small")
BUNDLED_FILE = "fashion_mnist_small.npz"
SPLITS: tuple[str, ...] = ("train", "test")


def is_bundled(source: object) -> bool:
    """True when ``source`` names the bundled set ("bundled" or "fashion-mnist-small")."""
    return isinstance(source, str) and source.strip().lower() in BUNDLED_NAMES


def load_bundled_arrays(
    split: str | None = "train",
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Read one split of the bundled set.

    Returns (images uint8 N x 28 x 28, labels int64 N, class names, content digest), where the
    digest is the hex sha256 of the split's pixel and label bytes, the class names and the split.
    Raises DataError for a split other than "train" / "test".
    """
    split = "train" if split is None else split
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} of the bundled dataset; use one of {SPLITS}.")
    ref = resources.files("clusterfit").joinpath("assets", BUNDLED_FILE)
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise DataError(
                f"bundled dataset file {path} is missing; reinstall clusterfit or run "
                "scripts/make_bundled_data.py."
            )
        with np.load(path, allow_pickle=False) as f:
            images = np.ascontiguousarray(f[f"{split}_images"], dtype=np.uint8)
            labels = f[f"{split}_labels"].astype(np.int64)
            classes = [str(c) for c in f["classes"]]
    h = hashlib.sha256()
    h.update(f"bundled:{split}:{images.shape}:".encode())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    h.update("\n".join(classes).encode())
    return images, labels, classes, h.hexdigest()

"""Data for the paper benchmark (``python -m benchmarks.paper``): CIFAR-10 and Fashion-MNIST.

ClusterFit (Yan et al., CVPR 2020) at CPU scale: D_pre = D_cf = CIFAR-10 train (the paper's
ImageNet-1K), probed on CIFAR-10 (the aligned target) and on Fashion-MNIST (a target whose label
space differs). Everything here is idempotent and cached under ``$CLUSTERFIT_CACHE`` (default
``~/.cache/clusterfit``):

* ``cifar10/{train,test}/<class>/*.jpg``: the shared tarball, checked against the sha256 that its
  README states, unpacked once (a ``.complete`` marker is written last).
* ``fashion-mnist/{train,test}/<class>/*.png``: Debian's IDX files
  (``/usr/share/datasets/fashion-mnist``, package ``dataset-fashion-mnist``) written once as PNGs.
* ``cifar10-paper.csv`` / ``fashion-mnist-paper.csv``: file lists (``path,label,split``) whose
  ``split`` is ``train`` | ``val`` | ``test``. ``val`` is carved from the *train* split (class-
  balanced, seeded): it is the only split hyper-parameters (K, epochs, width) are chosen on; the
  ``test`` split is read only by the final probes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR_TARBALL = "cifar10-jpg.tar.gz"
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FMNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
VAL_PER_CLASS = 500  # 5,000 validation images carved from each train split
VAL_SEED = 12345


class PaperDataError(RuntimeError):
    """A data file is missing or does not match its checksum; the message says what to do."""


@dataclass(frozen=True)
class PaperData:
    """Where the prepared file lists are.

    cifar_csv: CIFAR-10, 45,000 ``train`` / 5,000 ``val`` (from train) / 10,000 ``test``.
    fmnist_csv: Fashion-MNIST, 55,000 ``train`` / 5,000 ``val`` (from train) / 10,000 ``test``.
    """

    cifar_csv: Path
    fmnist_csv: Path


def cache_root() -> Path:
    """``$CLUSTERFIT_CACHE`` when set, else ``~/.cache/clusterfit``."""
    root = os.environ.get("CLUSTERFIT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "clusterfit"


def expected_sha256(readme: Path) -> str | None:
    """The ``sha256: <hex>`` that the dataset README states, or None."""
    if not readme.is_file():
        return None
    m = re.search(r"sha256:\s*([0-9a-fA-F]{64})", readme.read_text())
    return m.group(1).lower() if m else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _count_images(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def prepare_cifar10(data_root: Path, cache: Path | None = None) -> Path:
    """Unpack CIFAR-10 (checked against its README's sha256) into ``<cache>/cifar10``, once.

    A folder that already holds 50,000 train and 10,000 test images (unpacked by hand as the
    README suggests) is accepted as it is.
    """
    cache = cache or cache_root()
    out = cache / "cifar10"
    marker = out / ".complete"
    if marker.is_file():
        return out
    if _count_images(out / "train") == 50_000 and _count_images(out / "test") == 10_000:
        marker.write_text("accepted existing unpack (60,000 images)\n")
        return out
    tarball = Path(data_root) / "cifar10" / CIFAR_TARBALL
    if not tarball.is_file():
        raise PaperDataError(
            f"CIFAR-10 not found: {tarball} does not exist; pass --data-root (the folder that "
            "holds cifar10/cifar10-jpg.tar.gz)"
        )
    want = expected_sha256(tarball.parent / "README.md")
    got = file_sha256(tarball)
    if want is not None and got != want:
        raise PaperDataError(f"{tarball}: sha256 {got} differs from the README's {want}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=cache))
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    inner = tmp if (tmp / "train").is_dir() else next(p for p in tmp.iterdir() if p.is_dir())
    if out.exists():
        shutil.rmtree(out)
    os.replace(inner, out)
    shutil.rmtree(tmp, ignore_errors=True)
    (out / ".complete").write_text(f"sha256 {got}\n")
    return out


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array (uint8 images N x H x W or labels N)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise PaperDataError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_fmnist() -> Path:
    env = os.environ.get("CLUSTERFIT_FMNIST_DIR")
    for d in ([env] if env else []) + list(FMNIST_DIRS):
        if (Path(d) / "train-images-idx3-ubyte.gz").is_file():
            return Path(d)
    raise PaperDataError(
        "Fashion-MNIST IDX files not found in " + ", ".join(FMNIST_DIRS) + ": install them with "
        "`apt-get install -y dataset-fashion-mnist`"
    )


def prepare_fashion_mnist(cache: Path | None = None) -> Path:
    """Fashion-MNIST as PNG folders ``<cache>/fashion-mnist/{train,test}/<class>/NNNNN.png``."""
    cache = cache or cache_root()
    out = cache / "fashion-mnist"
    if (out / ".complete").is_file():
        return out
    src = _find_fmnist()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fashion-mnist-", dir=cache))
    jobs = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        for c, name in enumerate(FMNIST_CLASSES):
            (tmp / split / name).mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == c)
            jobs.append((tmp / split / name, idx, images[idx]))
    workers = min(len(jobs), max(1, (os.cpu_count() or 1) - 1))
    if workers > 2:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_pngs, *zip(*jobs, strict=True)))
    else:
        for job in jobs:
            _write_pngs(*job)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    (out / ".complete").write_text("from Debian dataset-fashion-mnist IDX files\n")
    return out


def _write_pngs(folder: Path, indices: np.ndarray, images: np.ndarray) -> None:
    from PIL import Image

    for i, img in zip(indices, images, strict=True):
        Image.fromarray(img, mode="L").save(folder / f"{int(i):05d}.png")


def carve_validation(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Boolean mask (N,) of ``per_class`` items of every class, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[rng.choice(idx, size=min(per_class, len(idx)), replace=False)] = True
    return mask


def write_split_csv(folder: Path, csv_path: Path, per_class: int = VAL_PER_CLASS) -> Path:
    """``path,label,split`` for ``folder/{train,test}/<class>/*``: ``val`` carved from train.

    Paths are relative to the CSV's folder. Written atomically; rewritten only when absent.
    """
    if csv_path.is_file():
        return csv_path
    rows: list[tuple[str, str, str]] = []
    for split in ("train", "test"):
        names, labels = [], []
        for c in sorted(os.listdir(folder / split)):
            for f in sorted(os.listdir(folder / split / c)):
                if not f.startswith("."):
                    names.append(os.path.relpath(folder / split / c / f, csv_path.parent))
                    labels.append(c)
        splits = np.full(len(names), split, dtype=object)
        if split == "train":
            codes = np.unique(labels, return_inverse=True)[1]
            splits[carve_validation(codes, per_class, VAL_SEED)] = "val"
        rows += list(zip(names, labels, splits, strict=True))
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    os.replace(tmp, csv_path)
    return csv_path


def prepare(data_root: Path, cache: Path | None = None) -> PaperData:
    """Everything the benchmark reads: unpacked folders and the two split CSVs."""
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    cifar = prepare_cifar10(data_root, cache)
    fmnist = prepare_fashion_mnist(cache)
    return PaperData(
        cifar_csv=write_split_csv(cifar, cache / "cifar10-paper.csv"),
        fmnist_csv=write_split_csv(fmnist, cache / "fashion-mnist-paper.csv"),
    )


if __name__ == "__main__":
    import sys

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[2] / "shared/data"
    print(prepare(root))

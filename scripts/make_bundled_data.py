"""Make ``src/clusterfit/assets/fashion_mnist_small.npz``, the bundled default dataset.

A class-balanced subset of Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; Zalando Research, MIT
licence): ``--train-per-class`` images per class from the official train split and
``--test-per-class`` per class from the official test split, chosen with a fixed seed. Reads the
gzipped IDX files with numpy only (Debian package ``dataset-fashion-mnist`` installs them in
``/usr/share/datasets/fashion-mnist``) and stores uint8 arrays with ``np.savez_compressed``:

    train_images  N x 28 x 28 uint8      train_labels  N uint8
    test_images   M x 28 x 28 uint8      test_labels   M uint8
    classes       10 unicode strings (label index -> name)

The output is deterministic: the same inputs and arguments give the same bytes (the zip entries
carry a fixed timestamp), and the script prints the file's sha256.

    python scripts/make_bundled_data.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import struct
import zipfile
from pathlib import Path

import numpy as np

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEFAULT_SRC = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/clusterfit/assets/fashion_mnist_small.npz"


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (unsigned-byte data only) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} bytes of data, found {arr.size}")
    return arr.reshape(shape).copy()


def balanced_pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` items of every class, sorted (so classes stay interleaved)."""
    picked = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} items, fewer than {per_class}")
        picked.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so the bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
            zf.writestr(info, member.getvalue(), compresslevel=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder of the IDX .gz files")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--train-per-class", type=int, default=400)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    arrays: dict[str, np.ndarray] = {}
    for split, prefix, per_class in (
        ("train", "train", args.train_per_class),
        ("test", "t10k", args.test_per_class),
    ):
        images = read_idx(args.src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.src / f"{prefix}-labels-idx1-ubyte.gz")
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise ValueError(f"{split}: images {images.shape} do not match labels {labels.shape}")
        idx = balanced_pick(labels, per_class, rng)
        arrays[f"{split}_images"] = np.ascontiguousarray(images[idx])
        arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)
        print(f"{split}: {len(idx)} images ({per_class} per class) of {len(labels)}")
    arrays["classes"] = np.array(CLASSES)

    save_npz_deterministic(args.out, arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()

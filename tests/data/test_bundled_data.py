"""The bundled Fashion-MNIST subset (clusterfit.data.bundled) and the script that makes it."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clusterfit.data import balanced_indices, load_images
from clusterfit.errors import DataError

REPO = Path(__file__).resolve().parents[2]
ASSET = REPO / "src/clusterfit/assets/fashion_mnist_small.npz"
IDX_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize(("split", "per_class"), [("train", 400), ("test", 100)])
def test_bundled_counts_shapes_balance(split: str, per_class: int) -> None:
    ds = load_images("bundled", split)
    assert len(ds) == 10 * per_class
    assert ds.images.shape == (10 * per_class, 1, 28, 28)
    assert ds.images.dtype == torch.uint8 and ds.images.is_contiguous()
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.num_classes == 10 and ds.has_labels
    # real pictures, not blanks: every image has ink, and images are not all alike
    flat = ds.images.view(len(ds), -1)
    assert (flat.max(1).values > 100).all()
    assert len(torch.unique(flat[:50], dim=0)) == 50


def test_bundled_default_split_alias_and_fingerprint() -> None:
    train = load_images("bundled")
    alias = load_images("fashion-mnist-small", "train")
    test = load_images("bundled", "test")
    assert train.fingerprint == alias.fingerprint
    assert torch.equal(train.images, alias.images)
    assert train.fingerprint != test.fingerprint
    assert len(train.fingerprint) == 64


def test_bundled_unknown_split() -> None:
    with pytest.raises(DataError, match="'val'"):
        load_images("bundled", "val")


def test_bundled_limit_balanced_seeded() -> None:
    a = load_images("bundled", limit=50, seed=1)
    b = load_images("bundled", limit=50, seed=1)
    c = load_images("bundled", limit=50, seed=2)
    full = load_images("bundled")
    assert len(a) == 50
    assert np.bincount(a.labels, minlength=10).tolist() == [5] * 10
    assert torch.equal(a.images, b.images) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.images, c.images) and a.fingerprint != c.fingerprint
    assert a.fingerprint != full.fingerprint
    # the subset is made of items of the full split, in their original order
    idx = balanced_indices(full.labels, 50, seed=1)
    assert torch.equal(a.images, full.images[torch.from_numpy(idx)])


def test_bundled_image_size() -> None:
    ds = load_images("bundled", "test", image_size=32, limit=20)
    assert ds.images.shape == (20, 1, 32, 32)
    assert ds.fingerprint != load_images("bundled", "test", limit=20).fingerprint


def test_asset_size_and_readme_sha() -> None:
    assert ASSET.stat().st_size <= 4 * 1024 * 1024
    readme = (ASSET.parent / "README.md").read_text()
    digest = hashlib.sha256(ASSET.read_bytes()).hexdigest()
    assert digest in readme, "assets/README.md must quote the current file's sha256"
    with np.load(ASSET) as f:
        assert {k: f[k].dtype for k in f if k != "classes"} == {
            "train_images": np.uint8,
            "train_labels": np.uint8,
            "test_images": np.uint8,
            "test_labels": np.uint8,
        }


@pytest.mark.skipif(not IDX_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_make_script_reproduces_asset(tmp_path: Path) -> None:
    out = tmp_path / "fm.npz"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts/make_bundled_data.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.read_bytes() == ASSET.read_bytes()
    printed = re.search(r"sha256 ([0-9a-f]{64})", res.stdout)
    assert printed and printed.group(1) == hashlib.sha256(out.read_bytes()).hexdigest()

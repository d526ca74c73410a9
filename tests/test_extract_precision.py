"""Extraction under fp16 / bf16 autocast: float32 features, close to the float32 pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clusterfit.data import load_images
from clusterfit.features import compute_features
from clusterfit.models import create_model


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16])
def test_low_precision_features_are_float32_and_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: torch.dtype
) -> None:
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path))
    images = load_images("bundled", "train", limit=16, seed=0, progress=False)
    torch.manual_seed(0)
    net = create_model("resnet_cifar", [10], in_chans=1, width=8)
    kw = dict(normalize=True, batch_size=8, progress=False)
    full = compute_features(net, images, ["pool", "res3"], **kw)
    low = compute_features(net, images, ["pool", "res3"], precision=precision, **kw)
    assert full is not None and low is not None
    for layer in ("pool", "res3"):
        assert low[layer].dtype == np.float32 and low[layer].shape == full[layer].shape
        cos = (low[layer] * full[layer]).sum(1)  # both L2-normalised
        assert cos.min() > 0.99, (layer, cos.min())
        assert not np.array_equal(low[layer], full[layer])  # the pass did run in low precision


def test_reused_arrays_are_overwritten_with_the_same_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``reuse``: a layer's rows go into an earlier float32 array of the same shape (the same
    object, every value overwritten); an array of another shape or dtype, or a read-only one,
    is left alone and a fresh one made."""
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path))
    images = load_images("bundled", "train", limit=20, seed=0, progress=False)
    torch.manual_seed(0)
    net = create_model("resnet_cifar", [10], in_chans=1, width=8)
    kw = dict(batch_size=8, progress=False)
    layers = ["pool", "res3", "res2", "res4"]
    fresh = compute_features(net, images, layers, **kw)
    assert fresh is not None
    stale = {
        "pool": np.full_like(fresh["pool"], np.nan),  # the same shape: reused
        "res3": np.zeros((3, fresh["res3"].shape[1]), np.float32),  # another shape
        "res2": np.zeros(fresh["res2"].shape, np.float64),  # another dtype
        "res4": np.zeros_like(fresh["res4"]),
    }
    stale["res4"].flags.writeable = False  # read-only
    kept = dict(stale)
    again = compute_features(net, images, layers, reuse=stale, **kw)
    assert again is not None
    assert again["pool"] is kept["pool"]
    for layer in ("res3", "res2", "res4"):
        assert again[layer] is not kept[layer]
    assert not kept["res4"].any()
    for layer in layers:
        np.testing.assert_array_equal(again[layer], fresh[layer])

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

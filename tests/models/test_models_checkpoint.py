"""Self-describing checkpoints: atomic writes, weights_only loads, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from clusterfit.errors import ClusterFitError, StorageError
from clusterfit.models import (
    create_model,
    from_module,
    load_checkpoint,
    load_model,
    save_checkpoint,
)


def small_net(**kwargs):
    torch.manual_seed(0)
    return create_model("resnet_cifar", [4, 2], depth=10, width=4, **kwargs)


def test_round_trip_with_extra(tmp_path: Path) -> None:
    net = small_net(in_chans=1, patches=9, mean=0.3, std=0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(2, 9, 1, 12, 12)
    sum(o.sum() for o in net(x)).backward()
    opt.step()
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", net, epoch=4, optimizer=opt.state_dict())
    assert path == tmp_path / "sub" / "ckpt.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 4
    assert ckpt["model_args"] == net.model_args
    opt2 = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["optimizer"])  # the optimizer state survives weights_only loading
    loaded = load_model(path)
    assert (loaded.patches, loaded.in_chans, loaded.head_sizes) == (9, 1, [4, 2])
    net.eval()
    with torch.no_grad():
        for a, b in zip(net(x), loaded(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]  # no temp files left


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, small_net(), epoch=1)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(3)}, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(StorageError, match=r"ckpt\.pt.*disk full"):  # one line, naming the file
        save_checkpoint(path, small_net(), epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ClusterFitError, match=r"nothere\.pt"):
        load_model(tmp_path / "nothere.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ClusterFitError, match=r"bad\.pt.*corrupt"):
        load_model(bad)
    good = save_checkpoint(tmp_path / "good.pt", small_net())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ClusterFitError, match=r"truncated\.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ClusterFitError, match=r"foreign\.pt.*model_args"):
        load_model(foreign)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", small_net())
    ckpt = load_checkpoint(path)
    ckpt["model_args"]["arch_kwargs"]["width"] = 8
    torch.save(ckpt, path)
    with pytest.raises(ClusterFitError, match=r"c\.pt.*do not fit"):
        load_model(path)


def test_reserved_keys_and_wrappers(tmp_path: Path) -> None:
    net = small_net()
    with pytest.raises(ClusterFitError, match="reserved"):
        save_checkpoint(tmp_path / "a.pt", net, state_dict={})

    class Wrapper(nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    save_checkpoint(tmp_path / "w.pt", Wrapper(net))
    assert set(load_checkpoint(tmp_path / "w.pt")["state_dict"]) == set(net.state_dict())
    with pytest.raises(ClusterFitError, match="needs a clusterfit Net"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2))


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_wrapped_module_needs_its_factory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = from_module(UserNet(), {"conv1": "body"}, head_sizes=[3], mean=0.2, std=0.3)
    path = save_checkpoint(tmp_path / "user.pt", net)
    with pytest.raises(ClusterFitError, match=r"user\.pt.*UserNet.*module_factory"):
        load_model(path)
    loaded = load_model(path, module_factory=UserNet)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(loaded(x)[0], net.eval()(x)[0], rtol=0, atol=0)
    assert loaded.layer_names == ["conv1", "pool"]
    assert loaded.model_args == net.model_args

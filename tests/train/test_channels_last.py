"""Training in channels-last layout: on where it is safe, off where torch's CPU backward crashes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from clusterfit.config import TrainConfig
from clusterfit.data import ImageSet
from clusterfit.models import create_model
from clusterfit.models.net import channels_last_is_safe
from clusterfit.train import Trainer


def images(n: int, size: int) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return ImageSet(x, np.arange(n) % 4, ["a", "b", "c", "d"], "random", "rand")


def test_safety_rule() -> None:
    narrow = create_model("resnet_cifar", [4], width=8)  # its shortcuts: 1x1 stride 2 on 8 ch
    wide = create_model("resnet_cifar", [4], width=16)
    assert not channels_last_is_safe(narrow, "cpu")
    assert channels_last_is_safe(wide, "cpu")
    assert channels_last_is_safe(narrow, "cuda")


def test_engine_trains_channels_last_with_the_same_numbers(tmp_path: Path) -> None:
    data = images(64, 32)
    runs = {}
    for cl in (False, True):
        torch.manual_seed(0)
        net = create_model("resnet_cifar", [4], width=16)
        cfg = TrainConfig(epochs=1, batch_size=32, channels_last=cl, augment=False)
        log = Trainer(net, data, [data.labels], cfg, tmp_path / str(cl), progress=False).fit()
        weight = next(net.trunk.parameters())
        assert weight.is_contiguous(memory_format=torch.channels_last) == cl
        runs[cl] = (log[0]["loss"], {k: v.clone() for k, v in net.state_dict().items()})
    assert abs(runs[True][0] - runs[False][0]) < 1e-4
    for k, v in runs[False][1].items():
        assert torch.allclose(v, runs[True][1][k], atol=1e-4), k


NARROW = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np, torch
    from clusterfit.config import TrainConfig
    from clusterfit.data import ImageSet
    from clusterfit.models import create_model
    from clusterfit.train import Trainer
    x = torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8)
    data = ImageSet(x, np.arange(32) % 2, ["a", "b"], "random", "rand")
    net = create_model("resnet_cifar", [2], width=8)
    Trainer(net, data, [data.labels], TrainConfig(epochs=1, batch_size=16), Path(sys.argv[1]),
            progress=False).fit()
    print("trained")
    """
)


def test_narrow_network_at_64px_does_not_crash(tmp_path: Path) -> None:
    """A width-8 network at 64 px crashed the process (segmentation fault) in channels-last."""
    proc = subprocess.run(
        [sys.executable, "-c", NARROW, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "trained" in proc.stdout, proc.stderr[-2000:]

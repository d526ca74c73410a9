"""What every stage needs besides its config: the run folder, the device, the loaded data, output.

Stages receive a :class:`Context` and read the config from it; nothing reads a global.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from clusterfit import distributed as dist
from clusterfit.artifacts import Stage
from clusterfit.config import RunConfig
from clusterfit.data import ImageSet, load_images
from clusterfit.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when one is present, else the CPU; anything else as ``torch.device``."""
    if name == "auto":
        if torch.cuda.is_available():
            index = dist.get_rank() % torch.cuda.device_count() if dist.is_distributed() else 0
            return torch.device("cuda", index)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"'device' is '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'device' is '{name}' but no CUDA GPU is available: use device=cpu")
    return device


@dataclass
class Context:
    """A run in progress: config, device, and the dataset D_cf loaded once."""

    cfg: RunConfig
    device: torch.device
    _data: ImageSet | None = field(default=None, repr=False)

    @classmethod
    def create(cls, cfg: RunConfig) -> Context:
        return cls(cfg=cfg, device=resolve_device(cfg.device))

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def progress(self) -> bool:
        return self.cfg.progress and dist.is_main_process()

    def data(self) -> ImageSet:
        """D_cf, the dataset that N_pre trains on, whose features are clustered, and N_cf fits."""
        if self._data is None:
            d = self.cfg.data
            self._data = load_images(
                d.source,
                d.split,
                image_size=d.image_size,
                limit=d.limit,
                seed=self.cfg.seed,
                progress=self.progress,
            )
        return self._data

    def say(self, message: str) -> None:
        """Print a line on the main process."""
        if dist.is_main_process():
            print(message, flush=True)


def start(stage: Stage) -> bool:
    """Prepare ``stage``'s folder on the main process (all ranks wait); True when resuming."""
    resuming = stage.is_resumable()
    dist.barrier()
    if dist.is_main_process():
        stage.begin()
    dist.barrier()
    return resuming


def finish(stage: Stage, summary: dict, **extra: object) -> dict:
    """Write ``stage``'s ``meta.json`` on the main process; every rank gets the meta back."""
    meta: dict = {}
    if dist.is_main_process():
        meta = stage.finish(summary, **extra)
    dist.barrier()
    return meta or (stage.meta() or {})

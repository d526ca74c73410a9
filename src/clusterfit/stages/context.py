"""What every stage needs besides its config: the run folder, the device, the loaded data, output.

Stages receive a :class:`Context` and read the config from it; nothing reads a global.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clusterfit import distributed as dist
from clusterfit.artifacts import Stage, versions
from clusterfit.config import PretrainConfig, RunConfig, VideoConfig
from clusterfit.data import ImageSet, VideoClipSettings, VideoSet, load_dataset
from clusterfit.errors import ConfigError
from clusterfit.models import Net, load_model


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
    """A run in progress: config, device, and the dataset D_cf loaded once.

    ``variant`` names one point of a K sweep (``k50``): the K-dependent stages (clusters, fit,
    probe) then use the folders ``<stage>-k50`` while the earlier stages are shared.
    """

    cfg: RunConfig
    device: torch.device
    variant: str = ""
    n_pre: Net | None = None
    module_factory: Callable[[], nn.Module] | None = None
    redo: frozenset[str] = frozenset()
    _data: ImageSet | VideoSet | None = field(default=None, repr=False)
    # probe targets once loaded, by name (shared by every K of a sweep)
    targets: dict[str, Any] = field(default_factory=dict, repr=False)
    # every Stage of the run, built once (see clusterfit.stages.graph.memo)
    stages: dict[tuple, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def create(
        cls,
        cfg: RunConfig,
        n_pre: Net | None = None,
        module_factory: Callable[[], nn.Module] | None = None,
        redo: frozenset[str] = frozenset(),
    ) -> Context:
        device = resolve_device(cfg.device)
        return cls(cfg, device, n_pre=n_pre, module_factory=module_factory, redo=redo)

    def with_k(self, k: int) -> Context:
        """The context of one K of a sweep, sharing the loaded data."""
        cfg = dataclasses.replace(self.cfg, cluster=dataclasses.replace(self.cfg.cluster, k=k))
        return dataclasses.replace(self, cfg=cfg, variant=f"k{k}")

    def load_model(self, path: Path) -> Net:
        """A network saved by a stage (a wrapped user module is rebuilt by ``module_factory``)."""
        return load_model(path, module_factory=self.module_factory)

    def folder(self, name: str) -> str:
        """The folder name of a K-dependent stage: ``name`` or ``name-<variant>``."""
        return f"{name}-{self.variant}" if self.variant else name

    @property
    def pretrain_configs(self) -> list[PretrainConfig]:
        """N_pre's recipe, then those of the multi-task ClusterFit's other N_pre (App. E)."""
        return [self.cfg.pretrain, *self.cfg.multitask]

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def progress(self) -> bool:
        return self.cfg.progress and dist.is_main_process()

    def data(self) -> ImageSet | VideoSet:
        """D_cf, the dataset that N_pre trains on, whose features are clustered, and N_cf fits:
        images, or videos (a folder / CSV of video files, paper §4.1.2)."""
        if self._data is None:
            d = self.cfg.data
            self._data = load_dataset(
                d.source,
                d.split,
                image_size=d.image_size,
                crop_size=d.crop_size,
                limit=d.limit,
                seed=self.cfg.seed,
                progress=self.progress,
                clip=clip_settings(d.video),
                fps=d.video.fps,
            )
        return self._data

    def say(self, message: str) -> None:
        """Print a line on the main process."""
        if dist.is_main_process():
            print(message, flush=True)


def clip_settings(video: VideoConfig) -> VideoClipSettings:
    """The data layer's clip settings from the config's ``data.video``."""
    return VideoClipSettings(video.clip_frames, video.frame_stride, video.clips_per_video)


#: What ``--redo`` accepts: command names and folder names of the stages.
REDO_NAMES = {
    "pretrain": "pretrain",
    "extract": "features",
    "features": "features",
    "cluster": "clusters",
    "clusters": "clusters",
    "fit": "fit",
    "baselines": "baseline",
    "probe": "probe",
}


def redo_matches(redo: frozenset[str], folder: str) -> bool:
    """True when ``folder`` (``pretrain-2``, ``clusters-k50``, ...) is of a stage in ``redo``."""
    base = folder.split("-", 1)[0]
    return any(REDO_NAMES.get(r, r) == base for r in redo)


def up_to_date(ctx: Context, stage: Stage) -> dict | None:
    """``stage``'s meta when it is complete for this config (saying so), else None. A stage
    named by ``--redo`` is removed first and so redone; a finished stage made by another
    clusterfit version is reported."""
    if redo_matches(ctx.redo, stage.name) and dist.is_main_process():
        stage.remove()
    dist.barrier()
    if not stage.is_complete():
        return None
    meta = stage.meta() or {}
    made_by = (meta.get("versions") or {}).get("clusterfit")
    now = versions().get("clusterfit")
    note = f"; made by clusterfit {made_by}, this is {now}" if made_by and made_by != now else ""
    ctx.say(f"{stage.name}: up to date, skipped ({stage.dir}{note})")
    return meta


def each_task(ctx: Context, run_task: Callable[[Context, int], dict]) -> dict:
    """Run a per-N_pre stage for every N_pre of the run; returns the first N_pre's meta."""
    metas = [run_task(ctx, task) for task in range(len(ctx.pretrain_configs))]
    return metas[0]


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

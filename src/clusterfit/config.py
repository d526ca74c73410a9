"""Run configuration: one dataclass per stage, YAML recipes and ``key=value`` overrides.

A recipe (``configs/*.yaml``) is merged over the defaults below, then dotted overrides from the
command line (``cluster.k=100 pretrain.train.epochs=30``). Every key and type is checked: an unknown
key or a value of the wrong type is a :class:`~clusterfit.errors.ConfigError` naming the key.
The bare defaults are the demo recipe (``configs/demo.yaml`` spells them out).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clusterfit.errors import ConfigError


@dataclass
class VideoConfig:
    """How clips are cut from a video source (paper §4.1.2): ``clip_frames`` T frames every
    ``frame_stride`` frames; ``clips_per_video`` clips uniformly spaced over a video, whose
    features are averaged into the video-level feature (paper: 6); ``fps``: resample every video
    to this frame rate (null: frames as decoded). ``image_size`` is the frames' side S (paper 128)
    and ``crop_size`` the crop C (paper 112). Used by D_cf and every video probe target."""

    clip_frames: int = 8
    frame_stride: int = 2
    clips_per_video: int = 6
    fps: float | None = None


@dataclass
class DataConfig:
    """The dataset D_cf that N_pre is trained on (when trained here), clustered and re-fit on.

    ``source`` is ``bundled`` (the packaged Fashion-MNIST subset), an image folder (one
    sub-folder per class, or none for unlabelled images) or a CSV file list (``path[,label]``).
    ``image_size``: images are resized (shorter side) and centre-cropped to this square size when
    decoded, and cached at it; null keeps their own size (all must agree). ``crop_size``: the
    size the models see, at most ``image_size``: training takes a random resized crop + flip
    (e.g. image_size 256, crop_size 224), extraction and probes the centre crop; null = the whole
    image, trained with a padded random crop + flip (the CIFAR recipe). Probe targets inherit
    both unless they set their own.
    """

    source: str = "bundled"
    split: str | None = "train"
    image_size: int | None = None
    crop_size: int | None = None
    limit: int | None = None
    video: VideoConfig = field(default_factory=VideoConfig)


@dataclass
class TrainConfig:
    """SGD recipe shared by N_pre, N_cf and the baselines (paper §3.2; App. B for details)."""

    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: epoch fractions
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    augment: bool = True
    crop_padding: int | None = None  # None: image size // 8
    flip: bool = True
    color_jitter: float = 0.0  # brightness / contrast / saturation strength in [0, 1)
    amp: bool = True  # bfloat16 autocast on GPU; ignored on CPU
    # image networks train in channels-last memory format (faster), except on the CPU where a
    # network has a convolution that torch's CPU backward crashes on in that layout
    # (models.net.channels_last_is_safe)
    channels_last: bool = True


@dataclass
class FitTrainConfig:
    """Overrides of :class:`TrainConfig` for N_cf; a ``null`` field takes N_pre's value."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    milestones: list[float] | None = None
    gamma: float | None = None
    warmup_epochs: float | None = None
    augment: bool | None = None
    crop_padding: int | None = None
    flip: bool | None = None
    color_jitter: float | None = None
    amp: bool | None = None
    channels_last: bool | None = None


@dataclass
class PretrainConfig:
    """How N_pre is made.

    ``objective``: ``supervised`` (with ``label_noise`` p, paper §3.2), ``weak`` (labels from
    ``weak_labels``), ``rotnet``, ``jigsaw`` (paper §4.2), ``pretrained`` (the weights that
    ``arch`` ships with, nothing trained), ``checkpoint`` (a checkpoint file, nothing trained) or
    ``module`` (the network passed to ``run_pipeline(cfg, n_pre=...)`` from Python).
    """

    objective: str = "supervised"
    arch: str = "resnet_cifar"
    # keyword arguments of the architecture; empty = the model's own defaults (resnet_cifar:
    # depth 10, width 16). ``arch_kwargs={}`` on the command line clears a recipe's.
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # objective=pretrained: which of the model's weights (a torchvision weights name such as
    # IMAGENET1K_V1; null = the model's default pre-trained weights)
    weights: str | None = None
    checkpoint: str | None = None
    label_noise: float = 0.5
    weak_labels: str | None = None
    weak_mode: str = "sample"
    jigsaw_permutations: int = 2000
    train: TrainConfig = field(default_factory=TrainConfig)
    # N_pre sees every image resized to this side (null: the data's size), wherever it runs:
    # training, extraction, its probes, distillation's teacher. A pre-trained network at its own
    # resolution (e.g. 224) on small images; N_cf still trains at the data's size.
    input_size: int | None = None


def pretrain_settings(p: PretrainConfig) -> dict[str, Any]:
    """``asdict(p)`` for fingerprints and settings digests, without the settings added since the
    first release while at their defaults, so that earlier runs stay up to date."""
    out = asdict(p)
    if out.get("input_size") is None:
        out.pop("input_size", None)
    return out


@dataclass
class ExtractConfig:
    """Features of N_pre that are clustered: one layer, average-pooled, optionally L2-normalised."""

    layer: str = "pool"
    normalize: bool = True
    batch_size: int = 256
    # the forward pass under autocast in this precision (GPU: fp16 / bf16 tensor cores); the
    # pooled features are accumulated, normalised and written in float32 either way
    precision: str = "float32"  # float32 | bfloat16 | float16
    # how features are stored: float16 halves the file (k-means reads them back as float32)
    dtype: str = "float32"  # float32 | float16
    # one file per rank (``<layer>.<rank>-of-<world>.npy``) listed in ``<layer>.manifest.json``,
    # read back by k-means without a gather; false: one ``<layer>.npy`` written by all ranks
    sharded: bool = False


@dataclass
class ClusterConfig:
    """Clustering of N_pre's features into K groups (paper §3.1; App. A for the alternatives)."""

    method: str = "kmeans"  # kmeans | per_label | prototype
    k: int = 50
    n_iter: int = 25
    spherical: bool = False
    init: str = "random"  # random | k-means++
    # auto (torch on CUDA; on CPU fused when numba is installed, else faiss, else torch) |
    # fused (cache-blocked CPU assignment fused with the centroid sums) | faiss | torch
    backend: str = "auto"
    # the fused backend's GEMM: auto (bfloat16 with AMX and K, D >= 256) | bfloat16 (near-ties
    # re-checked in float64: exact labels) | float32
    screen: str = "auto"
    subsample: float | None = None  # a fraction (<= 1) or a count of points to train on
    refine_iter: int = 0  # more iterations over all points after training on the subsample
    pca_dim: int | None = None
    whiten: bool = False


@dataclass
class FitConfig:
    """N_cf: trained from scratch on the cluster ids; by default N_pre's architecture and recipe."""

    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    train: FitTrainConfig = field(default_factory=FitTrainConfig)


@dataclass
class TargetConfig:
    """A labelled transfer target for the linear probes: a train and a test split.

    ``image_size`` / ``crop_size``: as in :class:`DataConfig`; null (the default) takes the
    data's value, so the sizes are set once (``data.image_size``, ``data.crop_size``) for D_cf
    and every target (:func:`resolved_target`).
    """

    name: str = "fashion-mnist-small"
    source: str = "bundled"
    train_split: str = "train"
    test_split: str = "test"
    image_size: int | None = None
    crop_size: int | None = None
    limit: int | None = None  # at most this many train items (class-balanced)
    test_limit: int | None = None  # at most this many test items (class-balanced)
    # VOC07-style multi-label target: a CSV file list whose ``labels`` column holds the item's
    # classes separated by ';' (a ``split`` column selects train / test). Probed by one linear
    # SVM per class and scored by mean average precision.
    multilabel: bool = False


@dataclass
class ProbeConfig:
    """Linear probes on frozen features of several layers (paper App. D, Goyal et al. 2019)."""

    layers: list[str] = field(default_factory=lambda: ["conv1", "res2", "res3", "res4", "res5"])
    targets: list[TargetConfig] = field(default_factory=lambda: [TargetConfig()])
    max_dims: int = 9216  # each layer average-pooled to about 9k dims, as in the paper
    n_updates: int = 500
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.01, 0.001])
    knn: bool = True
    lowshot_shots: list[int] = field(default_factory=list)  # e.g. [1, 2, 4, 8, 16, 32, 64]
    lowshot_draws: int = 5
    lowshot_layers: list[str] = field(default_factory=lambda: ["res5"])
    random_baseline: bool = True
    batch_size: int = 256
    # The SGD updates' matrix products: bfloat16 where the hardware has it ("auto"), or float32.
    precision: str = "auto"


@dataclass
class BaselinesConfig:
    """The paper's baselines, trained beside N_cf and probed with it (paper §3.2, App. A)."""

    pre2x: bool = False  # N_pre's recipe for as many epochs as N_pre and N_cf together
    distill: bool = False  # a student from scratch on N_pre's softened outputs + the labels
    temperature: float = 20.0
    alpha: float = 0.75


@dataclass
class LauncherConfig:
    """How ``clusterfit run --launcher local|slurm`` submits the run through submitit: the whole
    run is one job of ``nodes`` x ``tasks_per_node`` processes (one per GPU on GPU nodes), set up
    as ``torchrun`` would; a preempted or timed-out job requeues itself (at most ``max_requeues``
    time-outs) and resumes from the stages' checkpoints. Job ids and log paths go to
    ``<run>/launcher/jobs.jsonl``, submitit's logs to ``folder`` (default ``<run>/launcher``)."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    mem_gb: int | None = None
    timeout_min: int = 24 * 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120  # the warning signal comes this long before the time limit
    max_requeues: int = 3
    folder: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run first (module load ...)
    slurm_extra: dict[str, Any] = field(default_factory=dict)  # further sbatch options
    wait: bool | None = None  # null: the local launcher waits, slurm returns once submitted


@dataclass
class RunConfig:
    """A whole ClusterFit run: ``runs/<name>/`` with one folder per stage."""

    name: str = "demo"
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    # Multi-task ClusterFit (App. E): more N_pre, each clustered on its own; N_cf gets one head
    # per clustering and the losses are summed.
    multitask: list[PretrainConfig] = field(default_factory=list)
    # A K sweep (Tables 4, 5, 7): the cluster, fit and probe stages run once per K, sharing N_pre
    # and its features; folders clusters-k<K>, fit-k<K>, probe-k<K>.
    sweep_k: list[int] = field(default_factory=list)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)

    @property
    def run_dir(self) -> Path:
        """The run folder, ``<out_dir>/<name>``."""
        return Path(self.out_dir) / self.name


_CHOICES: dict[str, tuple[str, ...]] = {
    "pretrain.objective": (
        "supervised",
        "weak",
        "rotnet",
        "jigsaw",
        "pretrained",
        "checkpoint",
        "module",
    ),
    "pretrain.weak_mode": ("sample", "multilabel"),
    "pretrain.train.schedule": ("cosine", "step"),
    "fit.train.schedule": ("cosine", "step"),
    "cluster.method": ("kmeans", "per_label", "prototype"),
    "cluster.init": ("random", "k-means++"),
    "cluster.backend": ("auto", "fused", "faiss", "torch"),
    "cluster.screen": ("auto", "bfloat16", "float32"),
    "extract.precision": ("float32", "bfloat16", "float16"),
    "extract.dtype": ("float32", "float16"),
    "probe.precision": ("auto", "float32", "bfloat16"),
}


def _wrap(exc: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(exc, "full_key", None)
    msg = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    if key:
        return ConfigError(f"{where}: bad setting '{key}': {msg}")
    return ConfigError(f"{where}: {msg}")


def load_config(
    recipe: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Defaults, merged with a YAML recipe, merged with ``key=value`` overrides; validated.

    Raises :class:`ConfigError` naming the offending key on an unknown key, a wrong type, or a
    value outside its choices.
    """
    cfg = OmegaConf.structured(RunConfig)
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (recipes live in configs/)")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping of settings")
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as exc:
            raise _wrap(exc, str(path)) from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override '{item}' is not of the form key=value (e.g. cluster.k=100)"
            )
        try:
            value = OmegaConf.from_dotlist([f"value={raw}"])["value"]
            # update() rather than merge(): it follows list indices (probe.targets.0.limit=100).
            # A mapping given for *arch_kwargs replaces the recipe's rather than adding to it.
            replace = key.endswith("arch_kwargs") and isinstance(value, DictConfig | dict)
            OmegaConf.update(cfg, key, value, merge=not replace)
        except OmegaConfBaseException as exc:
            raise _wrap(exc, "command line") from None
    try:
        run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise _wrap(exc, "config") from None
    validate(run)
    return run


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Value checks that types alone do not catch; raises :class:`ConfigError`."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value is not None and value not in choices:
            raise ConfigError(f"'{key}' is '{value}'; choose one of: {', '.join(choices)}")
    if cfg.cluster.k < 1:
        raise ConfigError("'cluster.k' must be at least 1")
    if any(k < 1 for k in cfg.sweep_k):
        raise ConfigError("every K of 'sweep_k' must be at least 1")
    for i, p in enumerate([cfg.pretrain, *cfg.multitask]):
        where = "pretrain" if i == 0 else f"multitask.{i - 1}"
        if p.objective not in _CHOICES["pretrain.objective"]:
            choices = ", ".join(_CHOICES["pretrain.objective"])
            raise ConfigError(f"'{where}.objective' is '{p.objective}'; choose one of: {choices}")
        if p.objective == "checkpoint" and not p.checkpoint:
            raise ConfigError(f"{where}.objective=checkpoint needs '{where}.checkpoint=PATH'")
        if p.objective == "weak" and not p.weak_labels:
            raise ConfigError(f"{where}.objective=weak needs '{where}.weak_labels=PATH'")
        if not 0.0 <= p.label_noise < 1.0:
            raise ConfigError(f"'{where}.label_noise' must be in [0, 1)")
        if p.input_size is not None and p.input_size < 1:
            raise ConfigError(f"'{where}.input_size' must be at least 1 (or null)")
        if p.train.epochs < 1 or p.train.batch_size < 1:
            raise ConfigError(f"'{where}.train.epochs' and '.batch_size' must be at least 1")
        if p.weights is not None and p.objective != "pretrained":
            raise ConfigError(
                f"'{where}.weights' names pre-trained weights, used with "
                f"{where}.objective=pretrained (the objective is {p.objective})"
            )
    for where, lr in (
        ("pretrain.train.lr", cfg.pretrain.train.lr),
        ("fit.train.lr", cfg.fit.train.lr),
        *((f"multitask.{i}.train.lr", m.train.lr) for i, m in enumerate(cfg.multitask)),
    ):
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"'{where}' must be a finite positive learning rate, got {lr}")
    if cfg.baselines.distill and cfg.pretrain.objective in ("rotnet", "jigsaw"):
        raise ConfigError(
            f"baselines.distill: a {cfg.pretrain.objective} N_pre predicts its pretext labels, "
            "not a distribution over classes, so there is nothing to distil (paper App. D); "
            "set baselines.distill=false"
        )
    if cfg.baselines.distill and cfg.pretrain.objective in ("pretrained", "checkpoint", "module"):
        raise ConfigError(
            "baselines.distill needs an N_pre trained here on labels (objective supervised or "
            "weak), whose labels the student also learns from"
        )
    if not 0.0 <= cfg.baselines.alpha <= 1.0 or cfg.baselines.temperature <= 0:
        raise ConfigError("'baselines.alpha' must be in [0, 1] and 'baselines.temperature' > 0")
    _check_sizes("data", cfg.data.image_size, cfg.data.crop_size)
    v = cfg.data.video
    if min(v.clip_frames, v.frame_stride, v.clips_per_video) < 1:
        raise ConfigError(
            "'data.video.clip_frames', '.frame_stride' and '.clips_per_video' must be at least 1"
        )
    if v.fps is not None and not v.fps > 0:
        raise ConfigError(f"'data.video.fps' must be positive (or null), got {v.fps}")
    for i, train in enumerate([cfg.pretrain.train, cfg.fit.train]):
        jitter = train.color_jitter
        if jitter is not None and not 0.0 <= jitter < 1.0:
            where = "pretrain" if i == 0 else "fit"
            raise ConfigError(f"'{where}.train.color_jitter' must be in [0, 1)")
    for i, t in enumerate(cfg.probe.targets):
        r = resolved_target(cfg, t)
        _check_sizes(f"probe.targets.{i}", r.image_size, r.crop_size)
        if t.multilabel and (t.limit is not None or t.test_limit is not None):
            raise ConfigError(
                f"probe.targets.{i}: a multilabel target takes every item; drop limit"
            )
        if t.multilabel and not t.source.endswith(".csv"):
            raise ConfigError(
                f"probe.targets.{i}: a multilabel target is a CSV file list with a 'labels' column"
            )
    if not cfg.probe.targets:
        raise ConfigError("'probe.targets' is empty: name at least one labelled target")
    la = cfg.launcher
    if min(la.nodes, la.tasks_per_node, la.cpus_per_task, la.timeout_min) < 1:
        raise ConfigError(
            "'launcher.nodes', '.tasks_per_node', '.cpus_per_task' and '.timeout_min' must be at "
            "least 1"
        )
    if la.gpus_per_node < 0 or la.max_requeues < 0 or la.signal_delay_s < 0:
        raise ConfigError(
            "'launcher.gpus_per_node', '.max_requeues' and '.signal_delay_s' must be at least 0"
        )
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"'name' must be a plain folder name, got '{cfg.name}'")


def _check_sizes(where: str, image_size: int | None, crop_size: int | None) -> None:
    if image_size is not None and image_size < 1:
        raise ConfigError(f"'{where}.image_size' must be at least 1")
    if crop_size is not None and crop_size < 1:
        raise ConfigError(f"'{where}.crop_size' must be at least 1")
    if image_size is not None and crop_size is not None and crop_size > image_size:
        raise ConfigError(
            f"'{where}.crop_size' ({crop_size}) is larger than its image_size ({image_size}); "
            "the crop is cut from the image"
        )


def resolved_target(cfg: RunConfig, target: TargetConfig) -> TargetConfig:
    """``target`` with a null ``image_size`` / ``crop_size`` taken from ``cfg.data``."""
    return dataclasses.replace(
        target,
        image_size=cfg.data.image_size if target.image_size is None else target.image_size,
        crop_size=cfg.data.crop_size if target.crop_size is None else target.crop_size,
    )


def resolved_fit_train(cfg: RunConfig) -> TrainConfig:
    """N_cf's training recipe: ``fit.train`` overrides on top of ``pretrain.train``."""
    base = dataclasses.asdict(cfg.pretrain.train)
    for key, value in dataclasses.asdict(cfg.fit.train).items():
        if value is not None:
            base[key] = value
    return TrainConfig(**base)


def smoke(cfg: RunConfig) -> RunConfig:
    """A tiny version of ``cfg`` to check a recipe end to end in seconds: a few hundred items,
    one epoch per stage, a handful of clusters, and the run folder ``<name>-smoke``."""
    out = dataclasses.replace(cfg, name=f"{cfg.name}-smoke")
    out.data = dataclasses.replace(cfg.data, limit=min(cfg.data.limit or 10**9, 256))
    out.pretrain = dataclasses.replace(
        cfg.pretrain,
        train=dataclasses.replace(cfg.pretrain.train, epochs=1, batch_size=64, warmup_epochs=0.0),
        jigsaw_permutations=min(cfg.pretrain.jigsaw_permutations, 100),
    )
    out.multitask = [
        dataclasses.replace(
            p,
            train=dataclasses.replace(p.train, epochs=1, batch_size=64, warmup_epochs=0.0),
            jigsaw_permutations=min(p.jigsaw_permutations, 100),
        )
        for p in cfg.multitask
    ]
    out.sweep_k = sorted({min(k, 16) for k in cfg.sweep_k})[:2]
    out.fit = dataclasses.replace(
        cfg.fit,
        train=dataclasses.replace(cfg.fit.train, epochs=1, batch_size=64, warmup_epochs=0.0),
    )
    out.cluster = dataclasses.replace(
        cfg.cluster,
        k=min(cfg.cluster.k, 16),
        n_iter=min(cfg.cluster.n_iter, 5),
        refine_iter=min(cfg.cluster.refine_iter, 1),
        subsample=None if cfg.cluster.subsample is None else 0.5,
    )
    out.probe = dataclasses.replace(
        cfg.probe,
        targets=[
            dataclasses.replace(
                t, limit=min(t.limit or 10**9, 256), test_limit=min(t.test_limit or 10**9, 256)
            )
            for t in cfg.probe.targets
        ],
        n_updates=50,
        lrs=cfg.probe.lrs[:1],
    )
    return out


def to_yaml(cfg: RunConfig) -> str:
    """The full config as YAML (what ``clusterfit config`` prints)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))

"""The clusters of a run, made visible: sizes, label mix, members nearest the centroid.

ClusterFit's N_cf is only as good as the pseudo-labels it learns (Yan et al., CVPR 2020, §3.1,
§5.2): this module reads a clustering from disk (``clusters/assignments.npy``: N ints,
``centroids.npy``: K x D, the features ``features/<layer>.npy``: N x D) and, for each cluster shown,
finds the ``m`` members nearest its centroid (Euclidean; cosine for spherical k-means) and ``m``
random members, and writes their thumbnails (small JPEG files) from the real items of the data
set: the image, or for a video a strip of frames taken evenly across it.

All K clusters are shown when K <= :data:`SHOW_ALL`; otherwise the largest, the smallest, the most
mixed and a random sample (:func:`select_clusters`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clusterfit.report.runinfo import RunInfo
from clusterfit.sharded import MANIFEST_SUFFIX, ShardedArray

__all__ = [
    "SHOW_ALL",
    "ClusterView",
    "Clustering",
    "load_clustering",
    "load_run_data",
    "select_clusters",
    "write_thumbnails",
]

#: every cluster is shown up to this K
SHOW_ALL = 100
#: above it: this many largest, smallest and (where labels exist) most mixed clusters, the rest
#: of SHOW_ALL drawn at random
SHOW_LARGEST, SHOW_SMALLEST, SHOW_MIXED = 20, 20, 20
#: thumbnails per cluster and kind (nearest the centroid, random)
MEMBERS = 8
#: longest side of a thumbnail (pixels); a video thumbnail is a strip of VIDEO_FRAMES such frames
THUMB_SIDE = 64
VIDEO_FRAMES = 4


@dataclass
class ClusterView:
    """One cluster as shown: id, size, its label mix and the items of its thumbnails."""

    cid: int
    size: int
    group: str  # "all", "largest", "smallest" or "random sample"
    purity: float | None  # share of its labelled members with the majority label
    mix: list[tuple[str, float]] = field(default_factory=list)  # (label, share), largest first
    nearest: list[int] = field(default_factory=list)  # item indices, nearest first
    random: list[int] = field(default_factory=list)
    thumbs: dict[int, str] = field(default_factory=dict)  # item -> file (relative to report)


@dataclass
class Clustering:
    """A clustering folder of a run, with what the report says about it.

    sizes: (K,) members per cluster; label_counts: K x C (labelled members per class), or None.
    """

    folder: str
    k: int
    stats: dict[str, Any]
    sizes: np.ndarray
    classes: list[str]
    label_counts: np.ndarray | None
    views: list[ClusterView]
    note: str = ""  # why there are no thumbnails, when there are none
    m: int = MEMBERS  # members shown per cluster and kind

    def purity(self, cid: int) -> float | None:
        if self.label_counts is None:
            return None
        row = self.label_counts[cid]
        return float(row.max() / row.sum()) if row.sum() else None


def select_clusters(
    sizes: np.ndarray, seed: int = 0, purity: np.ndarray | None = None
) -> list[tuple[int, str]]:
    """Which clusters to show, with the group each is shown in.

    All of them (by id) when K <= :data:`SHOW_ALL`; else the :data:`SHOW_LARGEST` largest, the
    :data:`SHOW_SMALLEST` smallest (non-empty first), with ``purity`` ((K,) share of the majority
    label, NaN where unknown) the :data:`SHOW_MIXED` most mixed of the rest, and clusters drawn at
    random (``seed``) from the rest up to :data:`SHOW_ALL` in all.
    """
    k = len(sizes)
    if k <= SHOW_ALL:
        return [(c, "all") for c in range(k)]
    order = np.argsort(-sizes, kind="stable")
    largest = [int(c) for c in order[:SHOW_LARGEST]]
    rest = [int(c) for c in order[SHOW_LARGEST:]]
    smallest = sorted(rest, key=lambda c: (sizes[c] == 0, sizes[c], c))[:SHOW_SMALLEST]
    rest = [c for c in rest if c not in set(smallest)]
    mixed: list[int] = []
    if purity is not None:
        known = [c for c in rest if np.isfinite(purity[c])]
        mixed = sorted(known, key=lambda c: (purity[c], -sizes[c], c))[:SHOW_MIXED]
    pool = sorted(set(rest) - set(mixed))
    n_random = SHOW_ALL - len(largest) - len(smallest) - len(mixed)
    rng = np.random.default_rng(seed)
    drawn = sorted(int(c) for c in rng.choice(pool, min(n_random, len(pool)), replace=False))
    return (
        [(c, "largest") for c in largest]
        + [(c, "smallest") for c in smallest]
        + [(c, "most mixed") for c in mixed]
        + [(c, "random sample") for c in drawn]
    )


def _nearest(
    features: np.ndarray, members: np.ndarray, centroid: np.ndarray | None, m: int, spherical: bool
) -> list[int]:
    """The ``m`` members (item indices) nearest ``centroid`` (their mean when None)."""
    if len(members) == 0:
        return []
    x = np.asarray(features[np.sort(members)], dtype=np.float32)
    idx = np.sort(members)
    c = x.mean(0) if centroid is None else np.asarray(centroid, dtype=np.float32)
    if spherical:
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        d = -(xn @ (c / max(float(np.linalg.norm(c)), 1e-12)))
    else:
        d = ((x - c) ** 2).sum(1)
    return [int(i) for i in idx[np.argsort(d, kind="stable")[:m]]]


def load_run_data(info: RunInfo) -> tuple[Any, str]:
    """The run's dataset D_cf (an ImageSet or VideoSet), loaded as the run loaded it, and ``""``;
    or ``None`` and the reason it cannot be shown (no recorded config, data changed since)."""
    cfg_dict = info.config
    if info.config_path is None or cfg_dict is None:
        return None, (
            "this run has no run.json / config.yaml (made by an older clusterfit); run the same "
            "`clusterfit run` again (nothing is recomputed) to record them"
        )
    from clusterfit.config import load_config
    from clusterfit.errors import ClusterFitError
    from clusterfit.stages.context import Context

    try:
        cfg = load_config(info.config_path)
        cfg = dataclasses.replace(cfg, device="cpu", progress=False)
        data = Context.create(cfg).data()
    except (ClusterFitError, OSError) as exc:
        return None, f"the run's data cannot be loaded here: {exc}"
    return data, ""


def _check_data(info: RunInfo, features_folder: str | None, data: Any) -> str:
    want = info.meta(features_folder or "").get("inputs", {}).get("data")
    if want and data is not None and data.fingerprint != want:
        return (
            "the data set has changed since the features were extracted (its fingerprint "
            "differs), so its items would not be the clustered ones"
        )
    return ""


def load_clustering(
    info: RunInfo, folder: str, data: Any, data_note: str = "", *, m: int = MEMBERS
) -> Clustering:
    """Read clustering ``folder`` of run ``info`` and choose the members to show.

    ``data``: the run's dataset (for labels and class names; None: thumbnails and label names
    unavailable, ``data_note`` says why).
    """
    path = info.path / folder
    stats = info.stats(folder)
    assignments = np.load(path / "assignments.npy", mmap_mode="r")
    a = np.asarray(assignments, dtype=np.int64)
    centroids = np.load(path / "centroids.npy", mmap_mode="r")
    k = int(centroids.shape[0])
    sizes = np.bincount(a, minlength=k)
    feats_folder = info.features_folder(folder)
    note = data_note or _check_data(info, feats_folder, data)
    usable = data is not None and not note and len(data) == len(a)
    if data is not None and not note and len(data) != len(a):
        note = f"the data set has {len(data)} items, the clustering {len(a)}"
    classes: list[str] = list(data.classes) if usable else []
    label_counts = None
    if usable and data.labels is not None and (data.labels >= 0).any() and classes:
        lab = np.asarray(data.labels, dtype=np.int64)
        ok = lab >= 0
        c = len(classes)
        label_counts = np.bincount(a[ok] * c + lab[ok], minlength=k * c).reshape(k, c)
    cluster_cfg = info.meta(folder).get("config", {}).get("cluster", {})
    spherical = bool(cluster_cfg.get("spherical"))
    features = None
    if feats_folder is not None:
        layer = info.meta(feats_folder).get("summary", {}).get("layer") or "pool"
        fpath = info.path / feats_folder / f"{layer}.npy"
        manifest = info.path / feats_folder / f"{layer}{MANIFEST_SUFFIX}"
        if fpath.is_file():
            features = np.load(fpath, mmap_mode="r")
        elif manifest.is_file():  # a sharded extraction: one file per rank
            features = ShardedArray.open(manifest)
    seed = info.seed or 0
    rng = np.random.default_rng(seed)
    order = np.argsort(a, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out = Clustering(folder, k, stats, sizes, classes, label_counts, [], note, m)
    purity = None
    if label_counts is not None:
        totals = label_counts.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            purity = np.where(totals > 0, label_counts.max(1) / totals, np.nan)
    for cid, group in select_clusters(sizes, seed, purity):
        members = order[bounds[cid] : bounds[cid + 1]]
        view = ClusterView(cid, int(sizes[cid]), group, out.purity(cid))
        if label_counts is not None and label_counts[cid].sum():
            row = label_counts[cid]
            top = np.argsort(-row, kind="stable")
            view.mix = [(classes[j], float(row[j] / row.sum())) for j in top if row[j] > 0]
        if features is not None and len(members):
            same_dim = centroids.shape[1] == features.shape[1]
            view.nearest = _nearest(
                features, members, centroids[cid] if same_dim else None, m, spherical
            )
        if len(members):
            pick = rng.choice(members, min(m, len(members)), replace=False)
            view.random = [int(i) for i in pick]
        out.views.append(view)
    return out


def _to_pil(chw: np.ndarray) -> Any:
    from PIL import Image

    x = np.asarray(chw)
    if x.shape[0] == 1:
        return Image.fromarray(x[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(x[:3].transpose(1, 2, 0)), mode="RGB")


def thumbnail(data: Any, item: int) -> Any:
    """A PIL image of item ``item``: the image (longest side at most :data:`THUMB_SIDE`), or for
    a video :data:`VIDEO_FRAMES` frames taken evenly from its first to its last, side by side."""
    from PIL import Image

    if hasattr(data, "frames"):  # a VideoSet
        start, length = int(data.starts[item]), int(data.lengths[item])
        picks = np.linspace(0, length - 1, min(VIDEO_FRAMES, length)).round().astype(int)
        frames = [_to_pil(data.frames[start + int(t)].numpy()) for t in picks]
        for f in frames:
            f.thumbnail((THUMB_SIDE, THUMB_SIDE))
        w, h = sum(f.width for f in frames), max(f.height for f in frames)
        white = 255 if frames[0].mode == "L" else (255, 255, 255)
        strip = Image.new(frames[0].mode, (w + 2 * (len(frames) - 1), h), white)
        x = 0
        for f in frames:
            strip.paste(f, (x, 0))
            x += f.width + 2
        return strip
    img = _to_pil(np.asarray(data.images[item]))
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return img


def write_thumbnails(
    c: Clustering, data: Any, out_dir: Path, rel: str, *, progress: bool = False
) -> int:
    """Write a JPEG per shown member into ``out_dir / rel`` (each item once) and fill each view's
    ``thumbs``; returns the number of files written."""
    if data is None or c.note:
        return 0
    from tqdm.auto import tqdm

    folder = out_dir / rel
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[int, str] = {}
    for view in tqdm(c.views, desc=f"thumbnails {c.folder}", disable=not progress):
        for item in [*view.nearest, *view.random]:
            if item not in written:
                name = f"{item}.jpg"
                thumbnail(data, item).save(folder / name, quality=85)
                written[item] = f"{rel}/{name}"
            view.thumbs[item] = written[item]
    return len(written)

"""Features of a network over a dataset, layer by layer: the one pass that extraction before
k-means (Yan et al., CVPR 2020, §3.1) and the linear probes (§4, App. D) share, for images and
for videos (§4.1.2: the features of several clips averaged into one per video).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clusterfit.data import ImageSet, VideoSet, center_crop, to_float
from clusterfit.models import Net
from clusterfit.models.net import global_pool

Pool = Callable[[torch.Tensor], torch.Tensor]


def _fresh_rows(n: int, d: int) -> np.ndarray:
    """An uninitialised n x d float32 array, allocated by torch rather than numpy.

    numpy asks the kernel for transparent huge pages on every large array; where huge pages
    cannot be had at once (a fragmented or virtualised host, the default ``defrag=madvise``),
    each first touch then tries to compact memory. On the 2-core reference machine filling a
    fresh 5000 x 9216 array took 0.02-0.03 s when huge pages were granted and 0.27 s when not,
    from one process to the next; torch's allocation, which asks for none, took 0.03-0.05 s
    every time (``benchmarks/kernels.py``). The steady figure is kept."""
    return torch.empty((n, d), dtype=torch.float32).numpy()


@torch.no_grad()
def compute_features(
    net: Net,
    images: ImageSet | VideoSet,
    layers: list[str],
    *,
    pool: Pool = global_pool,
    normalize: bool = False,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    rows: range | None = None,
    sink: Callable[[str, range, np.ndarray], None] | None = None,
    progress: bool = True,
    desc: str = "features",
    precision: torch.dtype | None = None,
    reuse: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray] | None:
    """Features of ``images`` at each of ``layers``, pooled by ``pool``: ``{layer: N x D_layer}``.

    ``rows`` restricts the work to a block of items; with ``sink`` each batch's features go to
    ``sink(layer, rows_of_batch, array)`` instead of being returned (for memmaps and resume).
    Each batch of uint8 B x C x H x W is read from ``images.images``, centre-cropped to
    ``images.crop_size`` when that is set, and scaled to [0, 1]. For a :class:`VideoSet` each
    batch of videos is run once per evaluation clip (uint8 B x C x T x S x S, centre-cropped) and
    the pooled features of the clips are averaged (then L2-normalised with ``normalize``): one
    video-level feature per item (paper §4.1.2).

    ``precision`` (``torch.float16`` / ``torch.bfloat16``): the forward pass runs under autocast
    in that dtype (tensor cores on a GPU); the maps are pooled, averaged and normalised in float32,
    so the features returned are float32 either way.

    ``reuse``: ``{layer: array}`` of earlier results that are no longer needed; a layer's rows go
    into its array (overwritten) when that is float32 of the right shape, rather than into a
    fresh one. A fresh array's first touch is a page fault per page (1 s of the demo's probe
    stage for its 1.8 GB of features), a reused one's is not.
    """
    device = torch.device(device)
    net = net.to(device).eval()
    if net.spatial_dims == 2:
        net.channels_last()  # same features, faster convolutions
    low = precision is not None and precision != torch.float32
    rows = rows if rows is not None else range(len(images))
    # Without a sink, each layer's rows go straight into one N x D array, made at the first batch.
    out: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(rows), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    for lo in range(rows.start, rows.stop, batch_size):
        block = range(lo, min(lo + batch_size, rows.stop))
        clips = images.clip.clips_per_video if isinstance(images, VideoSet) else 1
        pooled: dict[str, torch.Tensor] = {}
        for k in range(clips):
            if isinstance(images, VideoSet):
                u8 = images.eval_clips(np.arange(block.start, block.stop), k)
            else:
                u8 = images.images[block.start : block.stop]
            x = to_float(center_crop(u8, images.crop_size)).to(device)
            with torch.autocast(
                device_type=device.type, dtype=precision or torch.float32, enabled=low
            ):
                maps = net.intermediates(x, layers)
            for layer in layers:
                f = pool(maps[layer].float())
                pooled[layer] = f if k == 0 else pooled[layer].add_(f)
        for layer in layers:
            feats = pooled[layer] / clips if clips > 1 else pooled[layer]
            if normalize:
                feats = F.normalize(feats, dim=1)
            if sink is not None:
                sink(layer, block, feats.cpu().numpy())
                continue
            if layer not in out:  # torch's allocation: see _fresh_rows
                old = (reuse or {}).get(layer)
                shape = (len(rows), feats.shape[1])
                fits = old is not None and old.shape == shape and old.dtype == np.float32
                out[layer] = old if fits and old.flags.writeable else _fresh_rows(*shape)
            lo_out = block.start - rows.start
            torch.from_numpy(out[layer][lo_out : lo_out + len(block)]).copy_(feats)
        bar.update(len(block))
    bar.close()
    if sink is not None:
        return None
    return {layer: out.get(layer, np.zeros((0, 0), np.float32)) for layer in layers}

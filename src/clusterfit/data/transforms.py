"""Batched augmentation on tensors.

Datasets are uint8 N x C x H x W tensors (:class:`clusterfit.data.ImageSet`); training
takes a batch by slicing and augments the whole batch with a few tensor ops, so the CPU cores go to
the model rather than to per-image PIL calls. Every random choice is drawn from the
``torch.Generator`` passed in, so a batch's augmentation is reproducible from the generator's
state. Outputs are float in [0, 1]; normalisation happens inside the model.

The augmentations are the standard ones of the training recipes that ClusterFit (Yan et al., CVPR
2020, Sec. 4) follows for N_pre and N_cf: random crops (padded crops for small images, random
resized crops for larger ones), horizontal flips and optional colour jitter. Evaluation (feature
extraction, probes) takes the centre crop (:func:`center_crop`) when a crop size is set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) -> float32 in [0, 1] (``x / 255``); float input is returned."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if images.is_floating_point():
        return images
    raise TypeError(f"expected uint8 or float images, got {images.dtype}")


def center_crop(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """The central ``size x size`` window of every item: B x C x H x W -> B x C x size x size.

    Any dtype (a view, no copy). ``size`` None returns ``images``. The window starts at
    ``(H - size) // 2, (W - size) // 2``. Raises ValueError when ``size`` exceeds H or W.
    """
    if size is None:
        return images
    h, w = images.shape[-2:]
    if not 1 <= size <= min(h, w):
        raise ValueError(f"centre crop {size} does not fit in {h} x {w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def _draw(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers from ``generator`` (on its device), moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


class BatchAugment:
    """Random padded crop + horizontal flip, per item, for a whole batch at once.

    crop_padding: p, int or ``"auto"`` (= min(H, W) // 8, e.g. 4 for 32 x 32, 3 for 28 x 28). Each
        item is padded by p on every side and an H x W window is cut at a random offset
        (0..2p in each direction), like ``RandomCrop(size, padding=p)``. 0 disables cropping.
    flip: mirror each item left-right with probability 1/2.
    padding_mode: ``"zeros"`` (pad with black) or ``"reflect"`` (mirror without repeating the
        edge; needs p < H and p < W).

    ``aug(images, generator)``: images uint8 (or float in [0, 1]) B x C x H x W -> float32
    B x C x H x W in [0, 1]. One gather over a precomputed index per item; no loop over items.
    """

    def __init__(
        self, crop_padding: int | str = 4, flip: bool = True, padding_mode: str = "zeros"
    ) -> None:
        if crop_padding != "auto" and (not isinstance(crop_padding, int) or crop_padding < 0):
            raise ValueError(
                f"crop_padding must be a non-negative int or 'auto', got {crop_padding!r}"
            )
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
        self.crop_padding = crop_padding
        self.flip = flip
        self.padding_mode = padding_mode

    def padding_for(self, height: int, width: int) -> int:
        """The padding used for H x W images."""
        if self.crop_padding == "auto":
            return min(height, width) // 8
        return int(self.crop_padding)

    def sample(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw (offset_y, offset_x, flipped): int64 B, int64 B (each in 0..2p), bool B (CPU)."""
        p = self.padding_for(height, width)
        cpu = torch.device("cpu")
        u = _draw((3, batch), generator, cpu)
        offsets = (u[:2] * (2 * p + 1)).long().clamp_(max=2 * p)
        flipped = u[2] < 0.5 if self.flip else torch.zeros(batch, dtype=torch.bool)
        return offsets[0], offsets[1], flipped

    def apply(
        self,
        images: torch.Tensor,
        offset_y: torch.Tensor,
        offset_x: torch.Tensor,
        flipped: torch.Tensor,
    ) -> torch.Tensor:
        """Crop each item at its offsets into the padded image and mirror the flipped ones.

        images: B x C x H x W uint8 or float; offsets int B in 0..2p; flipped bool B.
        Output pixel (i, j) of item b is padded[b, :, offset_y[b] + i, offset_x[b] + j'] with
        j' = W - 1 - j when flipped, else j. Returns float32 B x C x H x W in [0, 1].
        """
        b, c, h, w = images.shape
        p = self.padding_for(h, w)
        if self.padding_mode == "reflect" and p >= min(h, w):
            raise ValueError(
                f"reflect padding {p} needs images larger than {p} pixels, got {h}x{w}"
            )
        dev = images.device
        rows = offset_y.to(dev)[:, None] - p + torch.arange(h, device=dev)  # B x H, unpadded coords
        cols = offset_x.to(dev)[:, None] - p + torch.arange(w, device=dev)  # B x W
        cols = torch.where(flipped.to(dev)[:, None], cols.flip(1), cols)
        if self.padding_mode == "reflect":
            rows = rows.abs()
            rows = torch.where(rows > h - 1, 2 * (h - 1) - rows, rows)
            cols = cols.abs()
            cols = torch.where(cols > w - 1, 2 * (w - 1) - cols, cols)
        else:
            # zero padding: copy the batch into a zero canvas once; every index is then valid
            if p > 0:
                canvas = images.new_zeros(b, c, h + 2 * p, w + 2 * p)
                canvas[:, :, p : p + h, p : p + w] = images
                images = canvas
            rows, cols = rows + p, cols + p
        src_h, src_w = images.shape[2:]
        # flat index into the batch (B x C x H x W), then one index_select: on CPU several times
        # faster than gather
        pix = (rows[:, :, None] * src_w + cols[:, None, :]).view(b, 1, h * w)
        base = torch.arange(b * c, device=dev).view(b, c, 1) * (src_h * src_w)
        out = images.reshape(-1).index_select(0, (base + pix).view(-1)).view(b, c, h, w)
        return to_float(out)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch: uint8 B x C x H x W -> float32 B x C x H x W in [0, 1]."""
        b, _, h, w = images.shape
        return self.apply(images, *self.sample(b, h, w, generator))

    def __repr__(self) -> str:
        return (
            f"BatchAugment(crop_padding={self.crop_padding!r}, flip={self.flip}, "
            f"padding_mode={self.padding_mode!r})"
        )


class RandomResizedCropBatch:
    """Random resized crop + optional horizontal flip, per item, for a whole batch at once.

    As ``torchvision.transforms.RandomResizedCrop``: each item gets a box of area fraction in
    ``scale`` and aspect ratio (log-uniform) in ``ratio`` (10 tries, then the whole image clipped to
    the ratio range), resampled to ``size`` (int or (h, w)) with bilinear interpolation
    (``grid_sample``, no antialiasing: for crops much larger than ``size`` this aliases more than
    PIL would). ``aug(images, generator)``: uint8 (or float in [0, 1]) B x C x H x W -> float32
    B x C x h x w in [0, 1].
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        tries: int = 10,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio}")
        self.scale = scale
        self.ratio = ratio
        self.flip = flip
        self.tries = tries

    def sample_boxes(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw boxes and flips: (float B x 4 of (x0, y0, w, h) in pixels, bool B), on CPU."""
        u = _draw((batch, self.tries, 2), generator, torch.device("cpu")).double()
        area = height * width * (self.scale[0] + u[..., 0] * (self.scale[1] - self.scale[0]))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ar = torch.exp(lo + u[..., 1] * (hi - lo))
        bw = torch.sqrt(area * ar).round()
        bh = torch.sqrt(area / ar).round()
        ok = (bw > 0) & (bw <= width) & (bh > 0) & (bh <= height)
        first = torch.where(ok.any(1), ok.long().argmax(1), -1)
        # fallback: the whole image, clipped to the ratio range (as torchvision does)
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        pick = first.clamp(min=0)[:, None]
        bw = torch.where(first >= 0, bw.gather(1, pick)[:, 0], torch.full_like(first, fw).double())
        bh = torch.where(first >= 0, bh.gather(1, pick)[:, 0], torch.full_like(first, fh).double())
        v = _draw((batch, 3), generator, torch.device("cpu")).double()
        x0 = (v[:, 0] * (width - bw + 1)).floor().clamp(max=width - bw)
        y0 = (v[:, 1] * (height - bh + 1)).floor().clamp(max=height - bh)
        flipped = v[:, 2] < 0.5 if self.flip else torch.zeros(batch, dtype=torch.bool)
        return torch.stack([x0, y0, bw, bh], 1), flipped

    def apply(
        self, images: torch.Tensor, boxes: torch.Tensor, flipped: torch.Tensor
    ) -> torch.Tensor:
        """Resample each item's box (x0, y0, w, h) to ``size``, mirrored where flipped."""
        b, c, h, w = images.shape
        x = to_float(images)
        boxes = boxes.to(x.device, torch.float64)
        x0, y0, bw, bh = boxes.unbind(1)
        sx = bw / w
        sy = bh / h
        cx = (x0 + bw / 2) / w * 2 - 1
        cy = (y0 + bh / 2) / h * 2 - 1
        sign = 1 - 2 * flipped.to(x.device, torch.float64)
        zero = torch.zeros_like(sx)
        theta = torch.stack(
            [torch.stack([sx * sign, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1
        ).to(x.dtype)
        grid = F.affine_grid(theta, [b, c, *self.size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.clamp_(0, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch: B x C x H x W -> float32 B x C x h x w in [0, 1]."""
        b, _, h, w = images.shape
        return self.apply(images, *self.sample_boxes(b, h, w, generator))

    def __repr__(self) -> str:
        return (
            f"RandomResizedCropBatch(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip={self.flip})"
        )


class ColorJitterBatch:
    """Random brightness, contrast and saturation, per item, for a whole batch at once.

    ``strength`` s in [0, 1): each item's brightness, contrast and saturation factors are drawn
    uniformly from [1 - s, 1 + s] (as ``torchvision.transforms.ColorJitter(s, s, s)``, applied in
    that fixed order; saturation only for 3 channels). ``jitter(x, generator)``: float
    B x C x H x W in [0, 1] -> float B x C x H x W in [0, 1].
    """

    def __init__(self, strength: float) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"colour jitter strength must be in [0, 1), got {strength}")
        self.strength = float(strength)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Jitter a float batch B x C x H x W in [0, 1]; returns a new tensor, same shape."""
        b, c = x.shape[:2]
        f = 1 + self.strength * (2 * _draw((3, b), generator, x.device) - 1)
        f = f.to(x.dtype).view(3, b, 1, 1, 1)
        x = (x * f[0]).clamp_(0, 1)  # brightness
        mean = _grey(x).mean((1, 2, 3), keepdim=True)
        x = (mean + f[1] * (x - mean)).clamp_(0, 1)  # contrast: towards the mean grey level
        if c == 3:
            grey = _grey(x)
            x = (grey + f[2] * (x - grey)).clamp_(0, 1)  # saturation: towards the grey image
        return x

    def __repr__(self) -> str:
        return f"ColorJitterBatch(strength={self.strength})"


def _grey(x: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W luma (ITU-R 601) of B x C x H x W images (C = 1: the image itself)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def channel_stats(
    images: torch.Tensor, chunk: int | None = None, chunk_bytes: int = 32 << 20
) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale.

    images: uint8 N x C x H x W (a tensor, or anything indexed like one, e.g. a tensor over a
    memory map or :class:`clusterfit.data.images.ImageRows`). Sums are taken in float64 over
    chunks of ``chunk`` items (default: about ``chunk_bytes`` of float64 values), so memory stays
    small whatever N is.
    Returns (mean, std), each a list of C floats; std is the population std.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty N x C x H x W tensor, got {tuple(images.shape)}")
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    if chunk is None:
        chunk = max(1, chunk_bytes // (8 * c * images.shape[2] * images.shape[3]))
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to("cpu", torch.float64)
        s += x.sum((0, 2, 3))
        s2 += x.square().sum((0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    var = (s2 / n - mean.square()).clamp_(min=0)
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    return (mean / scale).tolist(), (var.sqrt() / scale).tolist()


class ClipCropFlip:
    """Random crop + horizontal flip of video clips, the same window and flip for every frame of
    a clip (paper §4.1.2: a random ``C x C`` crop of the ``S x S`` frames, e.g. 112 of 128).

    ``aug(clips, generator)``: uint8 (or float in [0, 1]) B x C x T x H x W -> float32
    B x C x T x size x size in [0, 1]. Offsets are uniform over ``0 .. H - size`` (and W).
    """

    def __init__(self, size: int, flip: bool = True) -> None:
        self.size = int(size)
        self.flip = flip

    def __call__(self, clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if clips.ndim != 5:
            raise ValueError(f"expected B x C x T x H x W clips, got {tuple(clips.shape)}")
        b, _, _, h, w = clips.shape
        if not 1 <= self.size <= min(h, w):
            raise ValueError(f"crop {self.size} does not fit in {h} x {w} frames")
        u = _draw((b, 3), generator, torch.device("cpu")).double()
        tops = (u[:, 0] * (h - self.size + 1)).long().clamp_(max=h - self.size).tolist()
        lefts = (u[:, 1] * (w - self.size + 1)).long().clamp_(max=w - self.size).tolist()
        flips = (u[:, 2] < 0.5).tolist() if self.flip else [False] * b
        out = []
        for i in range(b):
            y, x = tops[i], lefts[i]
            crop = clips[i, :, :, y : y + self.size, x : x + self.size]
            out.append(crop.flip(-1) if flips[i] else crop)
        return to_float(torch.stack(out))

    def __repr__(self) -> str:
        return f"ClipCropFlip(size={self.size}, flip={self.flip})"

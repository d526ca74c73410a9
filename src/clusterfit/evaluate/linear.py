"""Linear probe: a softmax classifier trained by SGD on frozen features.

ClusterFit (Yan et al., CVPR 2020), Sec. 4 and App. D, which follows the benchmark of Goyal et
al. (ICCV 2019): a linear classifier on the frozen features of one layer, trained with mini-batch
SGD (batch 256, momentum 0.9, weight decay 5e-4), base learning rate 0.01 divided by 10 twice at
equal intervals, for a number of updates kept about constant across target datasets.

Choices made here, beyond the paper:

* **Standardisation.** Every feature dimension is standardised (zero mean, unit variance) with
  statistics of the split the classifier is trained on: the train part of the validation split
  during the learning-rate sweep, the full train split for the final classifier. The test split
  is standardised with the train statistics. This puts all layers (whose activation scales
  differ by orders of magnitude) on one learning-rate scale.
* **Learning-rate sweep.** ``lrs`` defaults to ``(0.1, 0.01, 0.001)``: the paper's base rate 0.01
  and one decade either side, because after standardisation the best rate still depends on the
  layer width and the dataset. The rate is chosen on a stratified, seeded validation split
  (``val_fraction`` of each class) carved from the *train* split: highest validation top-1,
  ties broken by lower validation cross-entropy, among the rates that did not diverge. A rate
  has diverged when its validation cross-entropy exceeds that of the constant prediction of the
  class frequencies (the entropy of the fit part's labels): such a classifier (too large a rate
  for wide features, e.g. 0.1 on 9k dims) oscillates, and its top-1 is a draw that any change
  of rounding redraws by a point or two. Only if every rate diverged is the choice among all.
  The test split is not read until the chosen rate has been retrained on the full train
  split. All rates of the sweep are trained in one
  pass over the same mini-batches (the weights of the different rates are stacked into one
  matrix), so the batches are read once and the matrix products are larger and faster.
* **Few items, wide features.** When the train split is small next to the feature width (a
  smoke run, a few-shot target), the classifiers are trained in the span of the train rows
  through their N x N Gram matrix: the same SGD from zero weights in exact arithmetic, at a
  fraction of the flops (see ``_train_stacked``).
* **Updates.** ``n_updates`` (default 1000, about 50 epochs of 5k images at batch 256) is fixed
  across targets; ``epochs`` overrides it with ``epochs * ceil(N / batch_size)``.
* Weights and biases start at zero (the problem is convex); weight decay applies to the weights,
  not the biases.
* **Precision.** ``precision="bfloat16"`` runs the two matrix products of each SGD update on
  bfloat16 copies of the batch features, the weights and the softmax gradient (float32
  accumulation inside the product, float32 master weights, momentum, softmax and evaluation).
  Where the hardware multiplies bfloat16 natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs) this
  is several times faster; the rounding it adds (relative 2^-9 per product input) is far below
  the noise of SGD and moves test top-1 by a few tenths of a point at most
  (``benchmarks/probe_precision.py`` measures it). ``"auto"`` picks it only on such hardware.
* **The update on CPU.** Momentum, weight decay and the step of the stacked weights (and their
  bfloat16 copy) are one compiled pass over the weights per update (``_sgd_kernel``), in place
  of five torch operations that each write a fresh tensor: the same SGD, its numbers those of
  the torch operations to float32 rounding.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clusterfit.bfloat16 import amx_available, bits
from clusterfit.errors import ClusterFitError
from clusterfit.evaluate._common import (
    as_features,
    as_labels,
    check_dims,
    encode_labels,
    rows_tensor,
    topk_correct,
)

__all__ = [
    "DEFAULT_LRS",
    "DEFAULT_N_UPDATES",
    "PRECISIONS",
    "linear_probe",
    "linear_probes",
    "resolve_precision",
    "stratified_split",
]

DEFAULT_LRS: tuple[float, ...] = (0.1, 0.01, 0.001)
DEFAULT_N_UPDATES = 1000
#: ``precision`` values of :func:`linear_probe` ("auto": bfloat16 where it is native).
PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports
    bfloat16, or a CPU with AVX512-BF16 or AMX tiles (elsewhere torch emulates it, slower than
    float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return amx_available() or bool(avx512_bf16())


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """``"float32"`` or ``"bfloat16"``: ``precision`` itself, or for ``"auto"`` bfloat16 where
    :func:`native_bfloat16` holds for ``device`` (None: CUDA when available, else CPU)."""
    if precision not in PRECISIONS:
        raise ClusterFitError(f"precision='{precision}'; choose one of: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bfloat16" if native_bfloat16(_resolve_device(device)) else "float32"


def stratified_split(
    y: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split item indices into (train, validation), taking ``fraction`` of each class.

    Args:
        y: N integer labels.
        fraction: share of each class put in the validation part: ``round(fraction * n_c)``
            items of a class of ``n_c``, but always leaving at least one in the train part.
        seed: seed of the draw.

    Returns:
        Sorted int64 index arrays (train, validation), disjoint, covering ``range(N)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ClusterFitError(f"val_fraction={fraction} must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_val = min(round(fraction * len(members)), len(members) - 1)
        if n_val > 0:
            val.append(rng.choice(members, size=n_val, replace=False))
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx.astype(np.int64)


def _chunks(
    x: np.ndarray, rows: np.ndarray | None, device: torch.device
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(offset, block)``: float32 blocks of ``x[rows]`` (all rows when None) on ``device``,
    about 16 MB each, so that no full-size temporary is made (each allocation above glibc's
    32 MB threshold is fresh memory, faulted in page by page). A block may share memory with
    the caller's ``x``: never change it in place."""
    n = x.shape[0] if rows is None else len(rows)
    step = max(64, (4 << 20) // max(x.shape[1], 1))
    for i in range(0, n, step):
        part = x[i : i + step] if rows is None else x[rows[i : i + step]]
        yield i, rows_tensor(part, device)


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations (float64, D each) of a set of feature rows."""

    n: int
    mean: torch.Tensor
    m2: torch.Tensor

    def merge(self, other: _Moments) -> _Moments:
        """The moments of both sets of rows together (Chan, Golub and LeVeque, 1979)."""
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta.square() * (self.n * other.n / n)
        return _Moments(n, mean, m2)

    def standardiser(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and 1/std, float32."""
        std = (self.m2 / self.n).sqrt()
        # Constant dimensions carry no information: centre them to zero and leave them unscaled.
        inv_std = torch.where(std > 1e-6 * (1.0 + self.mean.abs()), 1.0 / std, torch.ones_like(std))
        return self.mean.float(), inv_std.float()


def _moments(x: np.ndarray, rows: np.ndarray | None, device: torch.device) -> _Moments:
    """The :class:`_Moments` of ``x[rows]`` (all rows when None), in one pass over blocks: each
    block's mean and squared deviations, merged in float64."""
    d = x.shape[1]
    zero = torch.zeros(d, dtype=torch.float64, device=device)
    acc = _Moments(0, zero, zero)
    for _, block in _chunks(x, rows, device):
        block_mean = block.mean(0)
        block_m2 = (block - block_mean).square_().sum(0)
        acc = acc.merge(_Moments(len(block), block_mean.double(), block_m2.double()))
    return acc


def _standardised(
    x: np.ndarray,
    rows: np.ndarray | None,
    mean: torch.Tensor,
    inv_std: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A new tensor ``(x[rows] - mean) * inv_std`` of ``dtype`` on ``mean``'s device, filled
    block by block."""
    n = x.shape[0] if rows is None else len(rows)
    out = torch.empty((n, x.shape[1]), dtype=dtype, device=mean.device)
    for i, block in _chunks(x, rows, mean.device):
        dst = out[i : i + len(block)]
        if dtype == torch.float32:
            torch.sub(block, mean, out=dst).mul_(inv_std)
        else:
            dst.copy_(torch.sub(block, mean).mul_(inv_std))
    return out


@contextmanager
def _threads_for(flops_per_step: float) -> Iterator[None]:
    """Run tiny problems on one CPU thread.

    Below about a million multiply-adds per step, the per-operation cost of waking the other
    OpenMP threads exceeds the work (and on a busy machine it grows tenfold), so the number of
    torch threads is set to 1 for the block and restored afterwards.
    """
    previous = torch.get_num_threads()
    small = flops_per_step < 1e6 and previous > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(previous)


#: When the probe last timed its SGD steps at each CPU thread count: {"at": perf_counter(),
#: "threads": the faster}. Kept for :data:`_RETIME_SECONDS`, then timed again.
_TIMED: dict[str, float] = {}
_RETIME_SECONDS = 30.0
_TIMED_STEPS = 2


def _faster_threads(step: Callable[[], None], many: int, remaining: int) -> tuple[int, int]:
    """The faster thread count for the SGD steps, ``many`` (torch's setting) or 1; runs the
    steps it times and returns (threads, steps run).

    Each update is a handful of operations, each of them a parallel region whose threads meet
    at a barrier. On a machine whose cores are taken by other processes, a thread waits for a
    time slice at every barrier and the steps slow down several times over, while one thread
    does not wait; on an idle machine the threads win. So the steps are timed, two at each
    count, at most every :data:`_RETIME_SECONDS` per process, and the faster count is kept.
    The thread count changes the speed, not the numbers: with torch's CPU matrix products the
    steps give the same bits on one thread and on several (tests/evaluate/test_linear.py).
    """
    now = time.perf_counter()
    if _TIMED and now - _TIMED["at"] < _RETIME_SECONDS:
        return int(_TIMED["threads"]), 0
    if remaining < 4 * _TIMED_STEPS:
        return many, 0
    seconds = {}
    for threads in (many, 1):
        torch.set_num_threads(threads)
        step()  # the first step at a count pays for waking its threads: not timed
        start = time.perf_counter()
        for _ in range(_TIMED_STEPS):
            step()
        seconds[threads] = time.perf_counter() - start
    best = min(seconds, key=seconds.__getitem__)
    _TIMED.update(at=time.perf_counter(), threads=best)
    return best, 2 * (_TIMED_STEPS + 1)


def _dual_is_cheaper(n: int, d: int, rows: int, n_updates: int, batch: int) -> bool:
    """Whether training through the N x N Gram matrix costs fewer flops than on the features.

    Primal: about 4·B·D·R flops per update (logits and gradient, R = L·C stacked classes).
    Dual: 2·N²·D once for the Gram matrix, then about 2·B·N·R per update. The dual wins when
    the train split is small next to the feature width (a smoke run, few-shot targets).
    """
    primal = 4.0 * batch * d * rows * n_updates
    dual = 2.0 * n * n * d + 2.0 * batch * n * rows * n_updates + 2.0 * rows * n * d
    return dual < 0.5 * primal


@functools.cache
def _sgd_kernel() -> Callable[..., None]:
    """The fused SGD step of the CPU probes (numba; compiled on first use, cached on disk).

    ``sgd_step(grad, grad_bits, w, buf, lr, weight_decay, momentum, w_bits)`` does, row by row
    and in one pass over the R x D float32 weights ``w`` and momentum ``buf`` (in place)::

        buf = momentum * buf + (grad + weight_decay * w);  w = w - lr[row] * buf

    PyTorch's SGD with momentum, the same operations as the torch ops it replaces (which make a
    new R x D tensor for each and read it back: 2.5x the time of this pass at 30 x 9216). The
    gradient is ``grad`` (R x D float32) or, when ``grad_bits`` has rows, the bfloat16 bits of a
    bfloat16 product (R x D uint16, widened exactly here). When ``w_bits`` has rows, the new
    weights are also rounded to bfloat16 (to nearest, ties to even, as torch) into it, for the
    next update's logits.
    """
    import numba

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def sgd_step(grad, grad_bits, w, buf, lr, weight_decay, momentum, w_bits):  # type: ignore[no-untyped-def]
        r, d = w.shape
        low_in = grad_bits.shape[0] > 0
        low_out = w_bits.shape[0] > 0
        wide = np.empty(d, dtype=np.uint32)
        wide_f = wide.view(np.float32)
        out = np.empty(d, dtype=np.float32)
        out_u = out.view(np.uint32)
        one = np.uint32(1)
        for i in range(r):
            if low_in:
                for j in range(d):
                    wide[j] = np.uint32(grad_bits[i, j]) << np.uint32(16)
            rate = lr[i]
            for j in range(d):
                g = wide_f[j] if low_in else grad[i, j]
                step = (g + weight_decay * w[i, j]) + momentum * buf[i, j]
                buf[i, j] = step
                out[j] = w[i, j] - step * rate
                w[i, j] = out[j]
            if low_out:
                for j in range(d):
                    u = out_u[j]
                    w_bits[i, j] = np.uint16((u + np.uint32(0x7FFF) + ((u >> 16) & one)) >> 16)

    return sgd_step  # type: ignore[no-any-return]


def _train_stacked(
    z: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lrs: tuple[float, ...],
    *,
    n_updates: int,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    seed: int,
    progress: bool,
    desc: str,
    dual: bool | None = None,
    precision: str = "float32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``len(lrs)`` softmax classifiers at once on the same mini-batches.

    The L classifiers are one model: their weights are stacked into one (L·C) x D matrix, so
    each update is one GEMM for the logits of all rates and one for their gradients, and every
    rate sees the same batches (the same seeded permutations) as if trained alone.

    Args:
        z: N x D standardised features (float32, or bfloat16 made for ``precision="bfloat16"``);
            y: N labels in 0..C-1 (same device).
        dual: train in the span of the rows (``None``: when :func:`_dual_is_cheaper`). Weights
            and momentum start at zero and every update adds a combination of batch rows and of
            themselves, so both stay ``A @ z`` for an (L·C) x N matrix A; the logits of a batch
            are then ``(z z^T)[batch] @ A^T``. The same SGD in exact arithmetic; it changes the
            rounding only.
        precision: ``"bfloat16"``: the logits and the weight gradient of each update are
            products of bfloat16 copies (the features once, the weights and the softmax
            gradient per update), everything else float32 (the module docstring). The dual
            form always runs in float32.

    Returns:
        Weights L x C x D and biases L x C, one classifier per learning rate. Gradients are
        written out by hand (softmax cross-entropy, mean over the batch) and the update is
        PyTorch's SGD with momentum: ``buf = m * buf + (g + wd * w); w -= lr * buf``.
    """
    n, d = z.shape
    n_lr = len(lrs)
    rows = n_lr * n_classes
    bs = min(batch_size, n)
    if dual is None:
        dual = _dual_is_cheaper(n, d, rows, n_updates, bs)
    if dual:
        z = z.float()
    feats = z @ z.t() if dual else z  # the Gram matrix (N x N) or the features (N x D)
    low = precision == "bfloat16" and not dual
    feats = feats.to(torch.bfloat16 if low else torch.float32)  # no copy when it is already
    # The logits' product runs on the weights padded with zero rows to a multiple of 16 (a
    # whole number of 512-bit vectors of float32): the same numbers, a faster GEMM kernel. The
    # padding rows get no gradient and stay zero; w and b are views of their first ``rows``.
    padded = -(-rows // 16) * 16
    f32 = {"dtype": torch.float32, "device": z.device}
    w_pad = torch.zeros(padded, feats.shape[1], **f32)
    b_pad = torch.zeros(padded, **f32)
    w, b = w_pad[:rows], b_pad[:rows]
    buf_b = torch.zeros_like(b)
    base = torch.tensor(lrs, **f32).repeat_interleave(n_classes)
    # Base rate, divided by 10 after each third of the updates: one column per third.
    lr_cols = [(base * 0.1**k).unsqueeze(1) for k in range(3)]
    # The targets as N x 1 x C one-hot rows: the softmax gradient is softmax - onehot for
    # every stacked rate at once.
    onehot = torch.zeros(n, 1, n_classes, **f32)
    onehot[torch.arange(n, device=z.device), 0, y] = 1.0
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).to(z.device)
    cpu = z.device.type == "cpu"
    state = {"step": 0, "pos": 0, "perm": perm, "buf_w": torch.zeros_like(w)}
    # On CPU the weights' update is one fused pass (:func:`_sgd_kernel`), which also keeps the
    # bfloat16 copy of the padded weights that the logits' product reads.
    fused = cpu and not dual
    if fused:
        step_kernel = _sgd_kernel()
        w_low = torch.zeros(padded, feats.shape[1], dtype=torch.bfloat16) if low else None
        none16, none32 = np.zeros((0, 0), dtype=np.uint16), np.zeros((0, 0), dtype=np.float32)
        w_np, buf_np = w.numpy(), state["buf_w"].numpy()
        w_low_np = bits(w_low[:rows]) if w_low is not None else none16
        lr_np = [col.squeeze(1).numpy() for col in lr_cols]
        wd32, m32 = np.float32(weight_decay), np.float32(momentum)

    def update() -> None:
        step, pos, perm = state["step"], state["pos"], state["perm"]
        if pos + bs > n:
            perm = state["perm"] = torch.randperm(n, generator=gen).to(z.device)
            pos = 0
        idx = perm[pos : pos + bs]
        state["pos"] = pos + bs
        state["step"] = step + 1
        xb = feats.index_select(0, idx)
        if low:
            w_bf16 = w_low if fused else w_pad.to(torch.bfloat16)
            logits = torch.mm(xb, w_bf16.t()).float().add_(b_pad)
        else:
            logits = torch.addmm(b_pad, xb, w_pad.t())
        g = torch.softmax(logits[:, :rows].view(bs, n_lr, n_classes), dim=2)
        g = g.sub_(onehot.index_select(0, idx)).view(bs, rows).div_(bs)
        third = min(3 * step // n_updates, 2)
        lr = lr_cols[third]
        buf_b.mul_(momentum).add_(g.sum(0))
        b.addcmul_(buf_b, lr.squeeze(1), value=-1.0)
        if fused:
            if low:
                grad, grad_bits = none32, bits(torch.mm(g.t().to(torch.bfloat16), xb))
            else:
                grad, grad_bits = torch.mm(g.t(), xb).numpy(), none16
            step_kernel(grad, grad_bits, w_np, buf_np, lr_np[third], wd32, m32, w_low_np)
            return
        if dual:  # the gradient's row combination: g^T on the batch's rows
            grad_w = w * weight_decay
            grad_w.index_add_(1, idx, g.t())
        elif low:
            grad_w = torch.mm(g.t().to(torch.bfloat16), xb).float().add_(w, alpha=weight_decay)
        else:
            grad_w = torch.mm(g.t(), xb).add_(w, alpha=weight_decay)
        # buf = m * buf + grad, written into the fresh gradient tensor, which becomes the buffer
        buf_w = state["buf_w"] = grad_w.add_(state["buf_w"], alpha=momentum)
        w.addcmul_(buf_w, lr, value=-1.0)

    with (
        _threads_for(bs * feats.shape[1] * rows if cpu else math.inf),
        tqdm(total=n_updates, desc=desc, disable=not progress, leave=False) as bar,
    ):
        many = torch.get_num_threads()
        try:
            if cpu and many > 1:
                threads, done = _faster_threads(update, many, n_updates)
                bar.update(done)
                torch.set_num_threads(threads)
            while state["step"] < n_updates:
                update()
                bar.update(1)
        finally:
            torch.set_num_threads(many)
    if dual:
        w = w @ z
    if not torch.isfinite(w).all():
        raise ClusterFitError(
            f"linear probe diverged (non-finite weights) with learning rates {lrs}; pass smaller "
            "lrs"
        )
    return w.view(n_lr, n_classes, d), b.view(n_lr, n_classes)


def _evaluate(
    x: np.ndarray,
    rows: np.ndarray | None,
    y: np.ndarray,
    mean: torch.Tensor,
    inv_std: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    predictions: list[np.ndarray] | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy of each stacked classifier on
    the rows ``rows`` of ``x`` (None: all), standardised with ``mean`` and ``inv_std`` block by
    block.

    x: N x D, y: labels of those rows (-1 = a class the classifier cannot predict), w: L x C x D,
    b: L x C. ``predictions``: a list that receives the first classifier's predicted classes.
    """
    n_lr, n_classes, _ = w.shape
    top1 = [0] * n_lr
    top5 = [0] * n_lr
    loss = [0.0] * n_lr
    yt = torch.from_numpy(y).to(mean.device)
    safe = yt.clamp_min(0)
    for i, block in _chunks(x, rows, mean.device):
        zc = torch.sub(block, mean).mul_(inv_std)
        yc, sc = yt[i : i + len(zc)], safe[i : i + len(zc)]
        logits = torch.addmm(b.reshape(-1), zc, w.reshape(-1, w.shape[2]).t())
        logits = logits.view(len(zc), n_lr, n_classes)
        logp = torch.log_softmax(logits, dim=2)
        for j in range(n_lr):
            c1, c5 = topk_correct(logits[:, j], yc, (1, 5))
            top1[j] += c1
            top5[j] += c5
            loss[j] += float(-logp[:, j].gather(1, sc.unsqueeze(1)).sum())
        if predictions is not None:
            predictions.append(logits[:, 0].argmax(dim=1).cpu().numpy())
    n = len(y)
    return [100.0 * t / n for t in top1], [100.0 * t / n for t in top5], [v / n for v in loss]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def linear_probe(
    X_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    X_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray | torch.Tensor,
    *,
    lrs: tuple[float, ...] | list[float] = DEFAULT_LRS,
    epochs: int | None = None,
    n_updates: int = DEFAULT_N_UPDATES,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    return_predictions: bool = False,
    precision: str = "float32",
) -> dict[str, Any]:
    """Train a linear classifier on frozen features and report its test accuracy.

    The protocol (see the module docstring): features standardised with train-split statistics;
    a learning rate from ``lrs`` chosen on a stratified validation split carved from the train
    split (never on the test split); the chosen rate retrained on the full train split;
    SGD, ``batch_size`` 256, momentum 0.9, weight decay 5e-4, learning rate divided by 10 after
    each third of ``n_updates``.

    Args:
        X_train: N x D float features (numpy, memmap or tensor); read into CPU memory.
        y_train: N integer labels (>= 0; any ids, mapped to the classes present).
        X_test: M x D features of the test split; y_test: M labels. Test items of a class that
            the train split lacks count as errors (with a warning).
        lrs: base learning rates to sweep; with a single rate no validation split is carved.
        epochs: if given, ``n_updates = epochs * ceil(N / batch_size)``.
        n_updates: number of SGD updates (kept the same across target datasets).
        val_fraction: share of each class of the train split held out to choose the rate.
        seed: seeds the validation split and the mini-batch order.
        device: torch device; None = CUDA when available, else CPU.
        progress: show tqdm bars.
        return_predictions: also return the test predictions.
        precision: ``"float32"``, ``"bfloat16"`` (the SGD updates' matrix products, see the
            module docstring) or ``"auto"`` (bfloat16 where the device multiplies it natively).

    Returns:
        dict with ``top1``, ``top5`` (test accuracy, percent; top-5 is capped at the number of
        classes), ``lr`` (chosen base rate), ``val_top1`` / ``val_loss`` (dict lr -> value, empty
        with a single rate), ``train_top1`` (final classifier on the train split),
        ``n_updates``, ``epochs`` (float: updates per pass over the train split),
        ``n_train``, ``n_val``, ``n_test``, ``n_classes``, ``dims``, ``precision`` (as
        resolved); with
        ``return_predictions``, ``predictions``: M int64 predicted labels (ids of ``y_train``).
    """
    x_tr = as_features(X_train, "X_train")
    x_te = as_features(X_test, "X_test")
    check_dims(x_tr, x_te, "X_train", "X_test")
    y_tr_raw = as_labels(y_train, x_tr.shape[0], "y_train")
    y_te_raw = as_labels(y_test, x_te.shape[0], "y_test")
    lrs = tuple(float(v) for v in lrs)
    if not lrs or any(not (v > 0 and math.isfinite(v)) for v in lrs):
        raise ClusterFitError(f"lrs={lrs} must be a non-empty list of positive learning rates")
    if batch_size < 1:
        raise ClusterFitError(f"batch_size={batch_size} must be positive")
    n = x_tr.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    if epochs is not None:
        if epochs < 1:
            raise ClusterFitError(f"epochs={epochs} must be positive (or None to use n_updates)")
        n_updates = int(epochs) * steps_per_epoch
    if n_updates < 1:
        raise ClusterFitError(f"n_updates={n_updates} must be positive")
    dev = _resolve_device(device)
    precision = resolve_precision(precision, dev)
    y_tr, y_te, n_classes = encode_labels(y_tr_raw, y_te_raw)

    def training_dtype(n_rows: int, n_rates: int) -> torch.dtype:
        """bfloat16 features for the SGD updates unless float32 is asked for or the rows are
        few enough for the dual form (which runs in float32; :func:`_train_stacked`)."""
        rows = n_rates * n_classes
        bs = min(batch_size, n_rows)
        dual = _dual_is_cheaper(n_rows, x_tr.shape[1], rows, n_updates, bs)
        return torch.bfloat16 if precision == "bfloat16" and not dual else torch.float32

    train_kw = dict(
        precision=precision,
        n_updates=n_updates,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
        progress=progress,
    )

    val_top1: dict[float, float] = {}
    val_loss: dict[float, float] = {}
    n_val = 0
    chosen = lrs[0]
    if len(lrs) > 1:
        fit_idx, val_idx = stratified_split(y_tr, val_fraction, seed)
        n_val = len(val_idx)
        if n_val == 0:
            raise ClusterFitError(
                f"the train split ({n} items, {n_classes} classes) is too small to carve a "
                f"validation split with val_fraction={val_fraction}; raise val_fraction or pass "
                "a single learning rate in lrs"
            )
        moments = _moments(x_tr, fit_idx, dev)
        mean, inv_std = moments.standardiser()
        z_fit = _standardised(x_tr, fit_idx, mean, inv_std, training_dtype(len(fit_idx), len(lrs)))
        yt_fit = torch.from_numpy(y_tr[fit_idx]).to(dev)
        w, b = _train_stacked(
            z_fit, yt_fit, n_classes, lrs, seed=seed, desc="linear probe: lr sweep", **train_kw
        )
        del z_fit
        acc, _, loss = _evaluate(x_tr, val_idx, y_tr[val_idx], mean, inv_std, w, b)
        val_top1 = dict(zip(lrs, acc, strict=True))
        val_loss = dict(zip(lrs, loss, strict=True))
        counts = np.bincount(y_tr[fit_idx], minlength=n_classes)
        freq = counts[counts > 0] / counts.sum()
        prior_loss = float(-(freq * np.log(freq)).sum())  # the constant predictor's
        stable = [j for j in range(len(lrs)) if loss[j] <= prior_loss] or range(len(lrs))
        best = max(stable, key=lambda j: (acc[j], -loss[j]))
        chosen = lrs[best]

    # Only now is the test split read: retrain the chosen rate on the full train split.
    if len(lrs) > 1:  # the full train split: the fit part's moments and the validation part's
        mean, inv_std = moments.merge(_moments(x_tr, val_idx, dev)).standardiser()
    else:
        mean, inv_std = _moments(x_tr, None, dev).standardiser()
    z_tr = _standardised(x_tr, None, mean, inv_std, training_dtype(n, 1))
    yt_tr = torch.from_numpy(y_tr).to(dev)
    w, b = _train_stacked(
        z_tr, yt_tr, n_classes, (chosen,), seed=seed + 1, desc="linear probe: final", **train_kw
    )
    del z_tr
    train_top1 = _evaluate(x_tr, None, y_tr, mean, inv_std, w, b)[0][0]
    predicted: list[np.ndarray] = []
    top1, top5, _ = _evaluate(x_te, None, y_te, mean, inv_std, w, b, predicted)
    out = {
        "top1": top1[0],
        "top5": top5[0],
        "lr": chosen,
        "val_top1": val_top1,
        "val_loss": val_loss,
        "train_top1": train_top1,
        "n_updates": n_updates,
        "epochs": n_updates / steps_per_epoch,
        "n_train": n,
        "n_val": n_val,
        "n_test": x_te.shape[0],
        "n_classes": n_classes,
        "dims": x_tr.shape[1],
        "precision": precision,
    }
    if return_predictions:
        out["predictions"] = np.unique(y_tr_raw)[np.concatenate(predicted)]
    return out


def linear_probes(
    features: Mapping[str, tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]],
    y_train: np.ndarray | torch.Tensor,
    y_test: np.ndarray | torch.Tensor,
    *,
    workers: int | None = None,
    desc: str = "linear probes",
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`linear_probe` of each layer's features against the same labels, several layers at
    a time: ``{layer: result}``, in the order of ``features``.

    Args:
        features: ``{layer: (X_train, X_test)}`` (N x D_layer and M x D_layer).
        y_train, y_test: N and M labels, shared by every layer.
        workers: layers probed at once on CPU (default ``torch.get_num_threads()``); each worker
            thread runs its probe on one torch thread. 1, a GPU, or a single layer: one after
            the other at the caller's thread count.
        desc: the progress bar, one step per finished layer, when ``progress`` (in ``kwargs``)
            is set and the layers run at once (one after the other each shows its own bars).
        kwargs: :func:`linear_probe`'s keywords (rates, updates, seed, device, precision, ...).

    The numbers are those of one :func:`linear_probe` call per layer: a probe's SGD gives the
    same numbers on one thread and on several (to float32 rounding, tests/evaluate/test_linear.py;
    the demo's 33 probe records are the same digit for digit), so only the speed changes. Each
    update of a probe is a handful of small operations whose threads meet at a barrier; two
    probes on one thread each keep both cores busy with no barrier: the demo's probe stage takes
    0.88x the time of the layers one after the other on two threads
    (``benchmarks/results/recipes.json``). Each result gets ``seconds``: its wall time.
    """
    layers = list(features)
    n_workers = int(workers or torch.get_num_threads())
    device = _resolve_device(kwargs.get("device"))
    progress = bool(kwargs.pop("progress", True))

    def one(layer: str, quiet: bool) -> dict[str, Any]:
        if quiet:
            torch.set_num_threads(1)
        started = time.perf_counter()
        x_tr, x_te = features[layer]
        try:
            res = linear_probe(
                x_tr, y_train, x_te, y_test, progress=progress and not quiet, **kwargs
            )
        except ClusterFitError as e:  # say which layer
            raise type(e)(f"layer {layer}: {e}") from e
        res["seconds"] = round(time.perf_counter() - started, 2)
        return res

    if n_workers <= 1 or len(layers) <= 1 or device.type != "cpu":
        return {layer: one(layer, False) for layer in layers}
    # widest first, so that the last layer to start is a short one
    order = sorted(layers, key=lambda la: -int(np.prod(features[la][0].shape)))
    previous = torch.get_num_threads()
    out: dict[str, dict[str, Any]] = {}
    try:
        with (
            ThreadPoolExecutor(min(n_workers, len(layers)), "linear-probe") as pool,
            tqdm(total=len(layers), desc=desc, unit="layer", disable=not progress) as bar,
        ):
            futures = {pool.submit(one, layer, True): layer for layer in order}
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                bar.update(1)
    finally:
        torch.set_num_threads(previous)  # MKL's thread count is process-wide: give it back
    return {layer: out[layer] for layer in layers}

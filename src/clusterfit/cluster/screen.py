"""The bfloat16 screen of the fused k-means assignment (ClusterFit §3 clustering step).

Where the CPU multiplies bfloat16 on AMX tiles (5-8x its float32 rate), :class:`~clusterfit.
cluster.assign.FusedAssigner` with ``screen="bfloat16"`` computes the scores of a task with a
bfloat16 GEMM of the centred rows and centroids, and :func:`screen_margins` bounds that GEMM's
rounding. A row whose two lowest scores are further apart than the bound takes the lowest;
every other row re-checks its candidates in float64 (:func:`screen_kernels`). The labels are
the exact nearest centroids whatever screened them. :func:`resolve_screen` chooses the screen
for ``"auto"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from clusterfit.bfloat16 import amx_available
from clusterfit.errors import ConfigError

__all__ = [
    "SCREENS",
    "SCREEN_MIN_D",
    "SCREEN_MIN_K",
    "ScreenScratch",
    "check_screen",
    "resolve_screen",
    "screen_kernels",
    "screen_margins",
]


@functools.cache
def screen_kernels() -> tuple[Callable[..., None], Callable[..., tuple[float, int, int]]]:
    """``center_round`` and ``screen`` (numba; compiled on first use, cached on disk): the
    kernels of the bfloat16-screened assignment (:class:`FusedAssigner`, ``screen="bfloat16"``).

    ``center_round(x, mu, out, rn)``: for a B x D float32 block, ``out`` (B x D uint16) gets the
    bfloat16 bits of ``x - mu`` (to nearest, ties to even, as torch) and ``rn`` (B float32) the
    norms ``||x - mu||``.

    ``screen(g16, g32, x, c, cn, rn, a, b, cc, spherical, count, add_rows, labels, dists, sums,
    counts, m1, m2, m3, near, near2, ev, flagged, lim, wide)`` (the last nine: B-long scratch):
    the scores ``f[j, i] = cn[j] + g[j, i]`` (g: K x B, the bfloat16 bits ``g16`` or, when it has
    no rows, the float32 ``g32``) are within ``E_i = a·rn[i] + b + cc·rn[i]²`` of the exact
    ``||x_i - c_j||² - ||x_i - mu||²`` (plain) or ``-x_i·c_j`` (spherical). So the nearest
    centroid is among those scoring within ``2·E_i`` of the row's lowest score. One pass over the
    scores keeps each row's three lowest and where the two lowest are: a row with one or two
    centroids within ``2·E_i`` computes their distances exactly (float64 sums of squared
    differences, or of products); every other row goes through all K scores again for its
    candidates. Each row takes the candidate nearest by exact distance (ties: the lowest index):
    the exact nearest centroid, whatever screened it. Then, as the float32 kernel of
    :mod:`clusterfit.cluster.assign`: labels, distances (exact), counts and sums. Returns
    (objective, rows that went through all scores again, exact distances computed).
    """
    import numba

    @numba.njit(nogil=True, cache=True, boundscheck=False, fastmath=True)
    def center_round(x, mu, out, rn):  # type: ignore[no-untyped-def]
        b, d = x.shape
        tmp = np.empty(d, dtype=np.float32)
        tmp_u = tmp.view(np.uint32)
        one = np.uint32(1)
        for i in range(b):
            acc = np.float32(0.0)
            xi = x[i]
            for t in range(d):
                v = xi[t] - mu[t]
                tmp[t] = v
                acc += v * v
            row = out[i]
            for t in range(d):
                u = tmp_u[t]
                row[t] = np.uint16((u + np.uint32(0x7FFF) + ((u >> 16) & one)) >> 16)
            rn[i] = np.sqrt(acc)

    # reassoc only: the float64 sums over D vectorise; comparisons keep their IEEE meaning.
    @numba.njit(nogil=True, cache=True, boundscheck=False, fastmath={"reassoc"})
    def screen(  # type: ignore[no-untyped-def]
        g16, g32, x, c, cn, rn, a, b, cc, spherical, count, add_rows,
        labels, dists, sums, counts, m1, m2, m3, near, near2, ev, flagged, lim, wide,
    ):  # fmt: skip
        k = cn.shape[0]
        n, d = x.shape
        low = g16.shape[0] > 0
        wide_f = wide.view(np.float32)
        one_u = np.empty(1, dtype=np.uint32)
        one_f = one_u.view(np.float32)
        inf = np.float32(np.inf)
        for i in range(n):
            m1[i] = inf
            m2[i] = inf
            m3[i] = inf
            near[i] = 0
            near2[i] = 0
        for j in range(k):  # the three lowest scores of each row, and where the two lowest are
            cj = cn[j]
            if low:
                row16 = g16[j]
                for i in range(n):
                    wide[i] = np.uint32(row16[i]) << np.uint32(16)
            for i in range(n):
                v = cj + (wide_f[i] if low else g32[j, i])
                lt1 = v < m1[i]
                lt2 = v < m2[i]
                n1 = near[i]
                m3[i] = min(m3[i], max(m2[i], v))
                m2[i] = min(m2[i], max(m1[i], v))
                near2[i] = n1 if lt1 else (j if lt2 else near2[i])
                near[i] = j if lt1 else n1
                m1[i] = min(m1[i], v)
        nf = 0
        evals = 0
        for i in range(n):
            r = rn[i]
            e2 = np.float32(2.0) * (a * r + b + cc * r * r)
            if m3[i] - m1[i] > e2:  # one or two candidates: the exact distance of each
                xi = x[i]
                two = not (m2[i] - m1[i] > e2)
                best_j = near[i]
                best_e = np.inf
                for q in range(2 if two else 1):
                    j = near[i] if q == 0 else near2[i]
                    cj_row = c[j]
                    acc = 0.0
                    if spherical:
                        for t in range(d):
                            acc -= np.float64(xi[t]) * np.float64(cj_row[t])
                    else:
                        for t in range(d):
                            diff = np.float64(xi[t]) - np.float64(cj_row[t])
                            acc += diff * diff
                    if acc < best_e or (acc == best_e and j < best_j):
                        best_e = acc
                        best_j = j
                ev[i] = best_e
                near[i] = best_j
                evals += 2 if two else 1
            else:
                flagged[nf] = i
                lim[nf] = m1[i] + e2
                ev[i] = np.inf
                near[i] = -1
                nf += 1
        for j in range(k):
            cj = cn[j]
            cj_row = c[j]
            for f in range(nf):
                i = flagged[f]
                if low:
                    one_u[0] = np.uint32(g16[j, i]) << np.uint32(16)
                    v = cj + one_f[0]
                else:
                    v = cj + g32[j, i]
                if v <= lim[f]:
                    xi = x[i]
                    acc = 0.0
                    if spherical:
                        for t in range(d):
                            acc -= np.float64(xi[t]) * np.float64(cj_row[t])
                    else:
                        for t in range(d):
                            diff = np.float64(xi[t]) - np.float64(cj_row[t])
                            acc += diff * diff
                    evals += 1
                    if acc < ev[i]:
                        ev[i] = acc
                        near[i] = j
        obj = 0.0
        for i in range(n):
            dist = 1.0 + ev[i] if spherical else ev[i]
            dists[i] = dist
            obj += dist
            lab = near[i]
            labels[i] = lab
            if count:
                counts[lab] += 1
            if add_rows:
                row = sums[lab]
                xi = x[i]
                for t in range(d):
                    row[t] += xi[t]
        return obj, nf, evals

    return center_round, screen


def screen_margins(d: int, spherical: bool, low: bool) -> tuple[float, float, float]:
    """The constants ``(a, b_per_cn, cc)`` of the screen's error bound (:func:`screen_kernels`):
    for rows of norm r (after centring) and centroids of norms at most ``c_max`` (squared at most
    ``cn_max``), ``|f - exact| <= a·c_max·r + b_per_cn·cn_max + cc·r²``, with ``low`` the bfloat16
    screen (inputs and output rounded to bfloat16, float32 accumulation) and otherwise a float32
    GEMM of the uncentred rows.

    Worst-case rounding (Higham's γ_D = D·u / (1 - D·u) for a sum of D float32 products, by
    Cauchy-Schwarz against ||x|| ||c||): bfloat16 keeps 8 significant bits (unit roundoff
    2^-8), so the rounded inputs cost 2^-7 of ``|x||c|``, the rounded output 2^-8 of the score,
    the float32 sums γ_D; centring in float32 moves each
    distance by at most 2^-22 (r + c_max)², taken as 2^-21 (r² + c_max·r) plus the ``b`` term.
    Each constant then gets 1 % on top.
    """
    u = 2.0**-24
    gamma = d * u / (1.0 - d * u)
    scale = 1.0 if spherical else 2.0  # the score is -x·c (spherical) or -2 x·c
    if low:
        grow = (1.0 + 2.0**-8) ** 2  # |x~ c~| <= (1 + 2^-8)² |x c|
        a = scale * (2.0**-7 + 2.0**-16 + gamma * grow + 2.0**-8 * grow * (1.0 + gamma))
        a += 2.0**-21
        cc = 0.0 if spherical else 2.0**-21
    else:
        a = scale * (gamma + 2.0 * u)
        cc = 0.0
    b = 2.0 * gamma + 4.0 * u + (0.0 if spherical or not low else 2.0**-21)
    return a * 1.01, b * 1.01, cc * 1.01


class ScreenScratch:
    """One worker's buffers for the screened assignment of tasks of up to ``rows`` rows: numpy
    scratch for the kernels, a torch bfloat16 buffer for the GEMM's output."""

    def __init__(self, rows: int, d: int, k: int) -> None:
        self.shape = (rows, d, k)
        self.x16 = np.empty((rows, d), dtype=np.uint16)
        self.g16 = torch.empty(rows * k, dtype=torch.bfloat16)
        self.rn = np.empty(rows, dtype=np.float32)
        self.m1 = np.empty(rows, dtype=np.float32)
        self.m2 = np.empty(rows, dtype=np.float32)
        self.m3 = np.empty(rows, dtype=np.float32)
        self.near2 = np.empty(rows, dtype=np.int32)
        self.lim = np.empty(rows, dtype=np.float32)
        self.near = np.empty(rows, dtype=np.int32)
        self.ev = np.empty(rows, dtype=np.float64)
        self.flagged = np.empty(rows, dtype=np.int64)
        self.wide = np.empty(rows, dtype=np.uint32)
        self.none16 = np.empty((0, 0), dtype=np.uint16)
        self.none32 = np.empty((0, 0), dtype=np.float32)


SCREENS = ("auto", "bfloat16", "float32")
"""``screen`` values of :class:`FusedAssigner` ("auto": :func:`resolve_screen`)."""

SCREEN_MIN_K = 256
SCREEN_MIN_D = 256
"""``screen="auto"`` screens in bfloat16 from K and D of at least these. On features of a
trained network (``benchmarks/kmeans_screen.py``: the demo's N_pre on its 4,000 images, tiled
10x with noise; 2 threads) a fit took, against the float32 GEMM, 0.33-0.82x the time from D=512
and K=256, 0.64-0.78x at K=1000 and D=256-288, but 0.94-1.21x at K=256 and D=256-288 (0.95x
and 1.08x with ``--tile 50``): there 37-49 % of the rows sit within the screen's rounding bound
of a second centroid and are re-checked. Below, it lost: 1.02-1.10x at K=128 and D=256-288,
1.08x at K=50 (D=3136), 1.23-1.46x at D=128. On clustered synthetic data (``kmeans.py``) it
wins more: 0.72x at K=D=256, 0.66x at D=128, K=1000; the rule follows the real features."""


def resolve_screen(screen: str, k: int, d: int) -> str:
    """``"float32"`` or ``"bfloat16"``: ``screen`` itself, or for ``"auto"`` bfloat16 where
    :func:`amx_available` and K >= :data:`SCREEN_MIN_K` and D >= :data:`SCREEN_MIN_D` (K
    centroids of D dimensions)."""
    check_screen(screen)
    if screen != "auto":
        return screen
    big = k >= SCREEN_MIN_K and d >= SCREEN_MIN_D
    return "bfloat16" if big and amx_available() else "float32"


def check_screen(screen: str) -> None:
    """Raise :class:`ConfigError` unless ``screen`` is one of :data:`SCREENS`."""
    if screen not in SCREENS:
        raise ConfigError(f"screen={screen!r}; choose one of: {', '.join(SCREENS)}")

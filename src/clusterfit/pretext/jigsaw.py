"""Jigsaw puzzles: predict which permutation shuffled the 9 tiles (Noroozi & Favaro, ECCV 2016).

A self-supervised N_pre objective of ClusterFit (§4.2, App. C). Each image is cut by a 3 x 3 grid
into 9 cells; inside each cell one square patch is cropped at a random position (spatial jitter,
so the network cannot match tiles by their edges), optionally with each colour channel moved by a
further pixel or two (``channel_jitter``, against chromatic-aberration shortcuts). The 9 patches
are shuffled by one of P fixed permutations, and the network (which sees the 9 patches through a
shared trunk) classifies which of the P permutations was used.

Geometry (:func:`jigsaw_geometry`): cells are ``H // 3`` x ``W // 3`` pixels, the grid centred in
the image (left-over rows / columns, at most 2, are not used); patches are square, of side
``ceil(0.85 * cell)`` (the paper's 64-pixel tiles in 75-pixel cells of a 225-pixel image). For the
32-pixel images of the demos: cells 10 px, patches 9 px, 1 px of jitter.

Permutation set (:func:`make_permutations`): P permutations of the 9 tiles chosen greedily for
maximal Hamming distance: start from a random permutation, then repeatedly add the permutation of
all 9! whose minimum Hamming distance to the set chosen so far is largest (ties broken at random,
fixed by the seed). The paper uses P = 2000; that set, for seed 0, ships with the package as
``jigsaw_perms_2000.npy`` (uint8, 2000 x 9; :func:`write_default_permutations` regenerates it) and
its minimum pairwise Hamming distance is :data:`DEFAULT_MIN_HAMMING`. Because the construction is
greedy, the set for P < 2000 (same seed) is the first P rows of the P = 2000 set.

Jigsaw logits are not a distribution over target classes: no distillation from it (App. D).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from clusterfit.errors import ClusterFitError, ConfigError, DataError
from clusterfit.pretext.base import Objective, check_images, register_objective

__all__ = [
    "DEFAULT_MIN_HAMMING",
    "DEFAULT_NUM_PERMUTATIONS",
    "DEFAULT_PERMUTATIONS_FILE",
    "DEFAULT_PERMUTATION_SEED",
    "GRID",
    "NUM_TILES",
    "JigsawGeometry",
    "JigsawObjective",
    "jigsaw_geometry",
    "load_permutations",
    "make_permutations",
    "min_hamming_distance",
    "write_default_permutations",
]

GRID = 3
NUM_TILES = GRID * GRID
DEFAULT_NUM_PERMUTATIONS = 2000
DEFAULT_PERMUTATION_SEED = 0
DEFAULT_PERMUTATIONS_FILE = Path(__file__).with_name("jigsaw_perms_2000.npy")
#: Minimum pairwise Hamming distance of the shipped P = 2000 set (seed 0); checked by the tests.
DEFAULT_MIN_HAMMING = 4
_NUM_ALL = math.factorial(NUM_TILES)


@lru_cache(maxsize=1)
def _all_permutations() -> np.ndarray:
    """All 9! permutations of ``0..8`` in lexicographic order: uint8, 362880 x 9 (read-only)."""
    a = np.array(list(itertools.permutations(range(NUM_TILES))), dtype=np.uint8)
    a.flags.writeable = False
    return a


def make_permutations(
    num_permutations: int = DEFAULT_NUM_PERMUTATIONS,
    seed: int = DEFAULT_PERMUTATION_SEED,
    *,
    progress: bool = True,
) -> tuple[np.ndarray, int]:
    """Greedy maximal-Hamming-distance set of tile permutations (Noroozi & Favaro 2016, §3.2).

    The 9! candidates are put in a random order (``numpy.random.default_rng(seed)``); the first
    becomes the set's first member. Each step then adds the candidate whose minimum Hamming
    distance to the members so far is largest (the earliest in the random order among ties).
    Each candidate's distance to the newest member is computed for all 362,880 candidates at once
    as ``9 - sum_k [cand[:, k] == new[k]]`` from precomputed per-position equality masks, so
    P = 2000 takes about a second.

    Args:
        num_permutations: P, in ``[2, 9!]``.
        seed: fixes the first member and the tie-breaking.
        progress: show a progress bar.

    Returns:
        ``(perms, min_hamming)``: uint8 ``P x 9`` (row r maps tile slot j to cell ``perms[r, j]``),
        and the smallest Hamming distance between two of its rows.
    """
    p = int(num_permutations)
    if not 2 <= p <= _NUM_ALL:
        raise ConfigError(f"the number of jigsaw permutations must be in [2, {_NUM_ALL}], got {p}")
    rng = np.random.default_rng(seed)
    cand = _all_permutations()[rng.permutation(_NUM_ALL)]
    # eq[k, v, i] = 1 iff candidate i puts cell v at slot k.
    eq = np.empty((NUM_TILES, NUM_TILES, _NUM_ALL), dtype=np.uint8)
    for k in range(NUM_TILES):
        for v in range(NUM_TILES):
            np.equal(cand[:, k], v, out=eq[k, v].view(bool))
    most_agree = np.zeros(_NUM_ALL, dtype=np.uint8)  # 9 - (min distance to the chosen set)
    agree = np.empty(_NUM_ALL, dtype=np.uint8)
    chosen = [0]
    min_dist = NUM_TILES
    for _ in tqdm(range(1, p), desc="jigsaw permutations", disable=not progress):
        new = cand[chosen[-1]]
        np.copyto(agree, eq[0, new[0]])
        for k in range(1, NUM_TILES):
            agree += eq[k, new[k]]
        np.maximum(most_agree, agree, out=most_agree)
        j = int(most_agree.argmin())
        min_dist = min(min_dist, NUM_TILES - int(most_agree[j]))
        chosen.append(j)
    return np.ascontiguousarray(cand[chosen]), min_dist


def min_hamming_distance(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two distinct rows of ``perms`` (``P x 9``, P >= 2)."""
    perms = np.asarray(perms)
    n = len(perms)
    if n < 2:
        raise ValueError("need at least two permutations")
    best = perms.shape[1]
    step = max(1, 2**22 // (n * perms.shape[1]))
    for s in range(0, n, step):
        d = (perms[s : s + step, None, :] != perms[None, :, :]).sum(-1)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = perms.shape[1] + 1
        best = min(best, int(d.min()))
    return best


def write_default_permutations(path: str | os.PathLike[str] | None = None) -> Path:
    """Generate the shipped set (P = 2000, seed 0) and save it as uint8 ``.npy``.

    Rewrite the package file with ``python -c "from clusterfit.pretext.jigsaw import
    write_default_permutations as w; w()"``. Returns the path.
    """
    out = Path(path) if path is not None else DEFAULT_PERMUTATIONS_FILE
    perms, _ = make_permutations(DEFAULT_NUM_PERMUTATIONS, DEFAULT_PERMUTATION_SEED)
    np.save(out, perms.astype(np.uint8))
    return out


def _check_perms(perms: np.ndarray, where: str) -> np.ndarray:
    ok = perms.ndim == 2 and perms.shape[1] == NUM_TILES
    ok = ok and bool((np.sort(perms, axis=1) == np.arange(NUM_TILES)).all())
    if not ok:
        raise DataError(
            f"{where} is not a P x 9 array of permutations of 0..8; regenerate it with "
            "clusterfit.pretext.jigsaw.write_default_permutations()"
        )
    return perms.astype(np.uint8)


def load_permutations(
    num_permutations: int = DEFAULT_NUM_PERMUTATIONS, seed: int = DEFAULT_PERMUTATION_SEED
) -> tuple[np.ndarray, int]:
    """The permutation set and its minimum Hamming distance.

    For seed 0 and ``P <= 2000`` it is read from the shipped file (its first P rows, which equal
    ``make_permutations(P, 0)``); otherwise it is generated with :func:`make_permutations`.
    """
    p = int(num_permutations)
    if (
        seed == DEFAULT_PERMUTATION_SEED
        and 2 <= p <= DEFAULT_NUM_PERMUTATIONS
        and DEFAULT_PERMUTATIONS_FILE.is_file()
    ):
        perms = _check_perms(np.load(DEFAULT_PERMUTATIONS_FILE), str(DEFAULT_PERMUTATIONS_FILE))
        perms = perms[:p].copy()
        md = DEFAULT_MIN_HAMMING if p == len(perms) == 2000 else min_hamming_distance(perms)
        return perms, md
    return make_permutations(p, seed, progress=p > DEFAULT_NUM_PERMUTATIONS)


@dataclass(frozen=True)
class JigsawGeometry:
    """Where the tiles of an ``H x W`` image are: cells ``cell_h x cell_w`` starting at
    (``top``, ``left``), row-major (cell c is in grid row ``c // 3``, column ``c % 3``); square
    patches of side ``patch`` placed inside their cell."""

    cell_h: int
    cell_w: int
    patch: int
    top: int
    left: int


def jigsaw_geometry(height: int, width: int, patch_fraction: float = 0.85) -> JigsawGeometry:
    """Cells ``H // 3`` x ``W // 3`` centred in the image, patch side
    ``ceil(patch_fraction * min(cell_h, cell_w))`` (32 px -> cells 10, patches 9)."""
    if not 0.0 < patch_fraction <= 1.0:
        raise ConfigError(f"patch_fraction must be in (0, 1], got {patch_fraction}")
    cell_h, cell_w = height // GRID, width // GRID
    if min(cell_h, cell_w) < 1:
        raise ClusterFitError(
            f"a {height} x {width} image is too small for a {GRID} x {GRID} jigsaw grid"
        )
    patch = max(1, math.ceil(patch_fraction * min(cell_h, cell_w) - 1e-9))
    return JigsawGeometry(
        cell_h, cell_w, patch, (height - GRID * cell_h) // 2, (width - GRID * cell_w) // 2
    )


@register_objective("jigsaw")
class JigsawObjective(Objective):
    """Jigsaw puzzle classification over P permutations (one head of size P, 9 patches per item).

    Args:
        num_permutations: P (2000 in the paper).
        permutation_seed: seed of the permutation set (0: the shipped set).
        patch_fraction: patch side / cell side (0.85).
        channel_jitter: each colour channel of a patch is cropped up to this many pixels away
            from the patch position (within its cell); 0 disables it.

    Attributes:
        permutations: uint8 ``P x 9``; the network input slot j of a puzzle with target t holds
            cell ``permutations[t, j]``.
        min_hamming: minimum Hamming distance between two permutations of the set.
    """

    patches = NUM_TILES
    uses_labels = False
    distillable = False
    not_distillable_reason = (
        "its outputs predict which of the P tile permutations shuffled the patches, not a "
        "distribution over the target classes"
    )

    def __init__(
        self,
        num_permutations: int = DEFAULT_NUM_PERMUTATIONS,
        permutation_seed: int = DEFAULT_PERMUTATION_SEED,
        patch_fraction: float = 0.85,
        channel_jitter: int = 0,
    ) -> None:
        if int(channel_jitter) < 0:
            raise ConfigError(f"channel_jitter must be >= 0, got {channel_jitter}")
        if not 0.0 < float(patch_fraction) <= 1.0:
            raise ConfigError(f"patch_fraction must be in (0, 1], got {patch_fraction}")
        self.permutations, self.min_hamming = load_permutations(num_permutations, permutation_seed)
        self.patch_fraction = float(patch_fraction)
        self.channel_jitter = int(channel_jitter)
        self._perm_t = torch.from_numpy(self.permutations.astype(np.int64))
        self._config = {
            "num_permutations": int(num_permutations),
            "permutation_seed": int(permutation_seed),
            "patch_fraction": self.patch_fraction,
            "channel_jitter": self.channel_jitter,
        }

    @property
    def num_permutations(self) -> int:
        return len(self.permutations)

    def head_sizes(self, num_classes: int | None) -> list[int]:
        """``[P]`` whatever the dataset's number of classes."""
        return [self.num_permutations]

    def make_batch(
        self, x: torch.Tensor, targets: Sequence[torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` (``B x C x H x W``) -> (puzzles ``B x 9 x C x p x p``, ``[B int64]`` targets).

        Per image: a permutation index t uniform in ``[0, P)``; per cell: a patch position
        uniform over the positions inside the cell (and per channel, with ``channel_jitter``, an
        extra offset uniform in ``[-j, j]``, clamped to the cell). Slot j of the puzzle is the
        patch of cell ``permutations[t, j]``. ``targets`` are ignored; randomness comes from
        ``generator`` (drawn on its device, then moved to ``x``'s).
        """
        check_images(x, self.name)
        b, c, h, w = x.shape
        g = jigsaw_geometry(h, w, self.patch_fraction)
        gen_dev = generator.device
        t = torch.randint(self.num_permutations, (b,), generator=generator, device=gen_dev)
        slack_y, slack_x = g.cell_h - g.patch, g.cell_w - g.patch
        oy = torch.randint(slack_y + 1, (b, NUM_TILES, 1), generator=generator, device=gen_dev)
        ox = torch.randint(slack_x + 1, (b, NUM_TILES, 1), generator=generator, device=gen_dev)
        if self.channel_jitter and c > 1:
            j = self.channel_jitter
            jy = torch.randint(-j, j + 1, (b, NUM_TILES, c), generator=generator, device=gen_dev)
            jx = torch.randint(-j, j + 1, (b, NUM_TILES, c), generator=generator, device=gen_dev)
            oy, ox = (oy + jy).clamp(0, slack_y), (ox + jx).clamp(0, slack_x)
        else:
            oy, ox = oy.expand(b, NUM_TILES, c), ox.expand(b, NUM_TILES, c)
        cell = self._perm_t.to(gen_dev)[t]  # B x 9: cell shown at each slot
        top = g.top + (cell // GRID) * g.cell_h
        left = g.left + (cell % GRID) * g.cell_w
        ar = torch.arange(g.patch, device=gen_dev)
        rows = (top[:, :, None] + oy)[..., None, None] + ar[:, None]  # B x 9 x C x p x 1
        cols = (left[:, :, None] + ox)[..., None, None] + ar[None, :]  # B x 9 x C x 1 x p
        bi = torch.arange(b, device=gen_dev).view(b, 1, 1, 1, 1)
        ci = torch.arange(c, device=gen_dev).view(1, 1, c, 1, 1)
        dev = x.device
        puzzles = x[bi.to(dev), ci.to(dev), rows.to(dev), cols.to(dev)]
        return puzzles.contiguous(), [t.to(dev)]

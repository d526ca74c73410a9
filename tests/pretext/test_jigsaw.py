"""Jigsaw objective and its permutation set (Noroozi & Favaro 2016; ClusterFit §4.2)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from clusterfit.errors import ClusterFitError, ConfigError
from clusterfit.pretext import JigsawObjective, get_objective, jigsaw_geometry
from clusterfit.pretext import jigsaw as jig


def _pairwise_min_hamming(perms: np.ndarray) -> int:
    """Independent of the module: agreements counted by a one-hot matrix product."""
    onehot = np.zeros((len(perms), 81), dtype=np.float32)
    onehot[np.arange(len(perms))[:, None], np.arange(9) * 9 + perms] = 1
    agree = onehot @ onehot.T
    np.fill_diagonal(agree, -1)
    return int(9 - agree.max())


def _all9() -> np.ndarray:
    return np.array(list(itertools.permutations(range(9))), dtype=np.int64)


def test_geometry():
    assert jigsaw_geometry(32, 32) == jig.JigsawGeometry(10, 10, 9, 1, 1)
    assert jigsaw_geometry(225, 225) == jig.JigsawGeometry(75, 75, 64, 0, 0)
    assert jigsaw_geometry(30, 64).cell_w == 21 and jigsaw_geometry(30, 64).patch == 9
    with pytest.raises(ClusterFitError, match="too small"):
        jigsaw_geometry(2, 32)


def test_small_set_is_deterministic_distinct_and_reports_its_min_distance():
    a, da = jig.make_permutations(25, seed=3, progress=False)
    b, db = jig.make_permutations(25, seed=3, progress=False)
    c, _ = jig.make_permutations(25, seed=4, progress=False)
    np.testing.assert_array_equal(a, b)
    assert da == db and not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (25, 9)
    assert (np.sort(a, axis=1) == np.arange(9)).all()
    assert len({tuple(r) for r in a}) == 25
    pairs = min(int((p != q).sum()) for p, q in itertools.combinations(a, 2))
    assert da == pairs == jig.min_hamming_distance(a)


def test_each_step_is_the_greedy_best_over_all_of_9_factorial():
    perms, _ = jig.make_permutations(8, seed=1, progress=False)
    everything = _all9()
    for i in range(1, 8):
        chosen = perms[:i].astype(np.int64)
        dist = (everything[:, None, :] != chosen[None, :, :]).sum(-1).min(1)
        got = int((perms[i].astype(np.int64) != chosen).sum(-1).min())
        assert got == dist.max(), i


def test_shipped_set():
    shipped = np.load(jig.DEFAULT_PERMUTATIONS_FILE)
    assert shipped.dtype == np.uint8 and shipped.shape == (2000, 9)
    assert (np.sort(shipped, axis=1) == np.arange(9)).all()
    assert len({tuple(r) for r in shipped}) == 2000
    md = _pairwise_min_hamming(shipped)
    assert md == jig.DEFAULT_MIN_HAMMING == JigsawObjective().min_hamming
    # It is what the documented generator produces, and smaller sets are its prefixes.
    regenerated, reported = jig.make_permutations(2000, 0, progress=False)
    np.testing.assert_array_equal(regenerated, shipped)
    assert reported == md
    small, small_md = jig.load_permutations(100, 0)
    np.testing.assert_array_equal(small, shipped[:100])
    assert small_md == _pairwise_min_hamming(shipped[:100])


def test_write_default_permutations(tmp_path, monkeypatch):
    monkeypatch.setattr(jig, "DEFAULT_NUM_PERMUTATIONS", 30)
    path = jig.write_default_permutations(tmp_path / "p.npy")
    np.testing.assert_array_equal(np.load(path), np.load(jig.DEFAULT_PERMUTATIONS_FILE)[:30])


def _cell_image(b: int, c: int, size: int) -> torch.Tensor:
    """Cells of distinct constant values: image i, channel ch, cell k -> i + 0.1 ch + 0.01 k
    (scaled into [0, 1]); pixels outside the grid are -1."""
    g = jigsaw_geometry(size, size)
    x = torch.full((b, c, size, size), -1.0)
    for i, ch, k in itertools.product(range(b), range(c), range(9)):
        r, q = divmod(k, 3)
        y0, x0 = g.top + r * g.cell_h, g.left + q * g.cell_w
        x[i, ch, y0 : y0 + g.cell_h, x0 : x0 + g.cell_w] = (100 * i + 10 * ch + k) / 1000
    return x


@pytest.mark.parametrize(("size", "channels", "jitter"), [(32, 3, 0), (32, 3, 2), (40, 1, 0)])
def test_patches_are_the_cells_in_permuted_order(size, channels, jitter):
    obj = JigsawObjective(num_permutations=100, channel_jitter=jitter)
    assert obj.head_sizes(10) == [100] and obj.patches == 9 and not obj.distillable
    x = _cell_image(6, channels, size)
    puzzles, (t,) = obj.make_batch(x, [], torch.Generator().manual_seed(0))
    p = jigsaw_geometry(size, size).patch
    assert puzzles.shape == (6, 9, channels, p, p) and t.shape == (6,) and t.dtype == torch.int64
    assert t.min() >= 0 and t.max() < 100
    for i, j, ch in itertools.product(range(6), range(9), range(channels)):
        cell = int(obj.permutations[int(t[i]), j])
        assert (puzzles[i, j, ch] == (100 * i + 10 * ch + cell) / 1000).all(), (i, j, ch)


def test_patches_are_jittered_windows_inside_their_cells():
    obj = JigsawObjective(num_permutations=50)
    size = 32
    g = jigsaw_geometry(size, size)
    x = torch.arange(size * size, dtype=torch.float64).view(1, 1, size, size).repeat(40, 1, 1, 1)
    puzzles, (t,) = obj.make_batch(x, [], torch.Generator().manual_seed(1))
    offsets = set()
    for i, j in itertools.product(range(40), range(9)):
        patch = puzzles[i, j, 0]
        y, xx = divmod(int(patch[0, 0]), size)
        assert torch.equal(patch, x[0, 0, y : y + g.patch, xx : xx + g.patch])
        cell = int(obj.permutations[int(t[i]), j])
        r, q = divmod(cell, 3)
        dy, dx = y - (g.top + r * g.cell_h), xx - (g.left + q * g.cell_w)
        assert 0 <= dy <= g.cell_h - g.patch and 0 <= dx <= g.cell_w - g.patch
        offsets.add((dy, dx))
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}  # every position inside a 10 px cell
    assert len(set(t.tolist())) > 10


def test_make_batch_is_seeded():
    obj = JigsawObjective(num_permutations=64, channel_jitter=1)
    x = torch.rand(4, 3, 32, 32)
    a, (ta,) = obj.make_batch(x, [], torch.Generator().manual_seed(5))
    b, (tb,) = obj.make_batch(x, [], torch.Generator().manual_seed(5))
    c, _ = obj.make_batch(x, [], torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, c)


def test_other_sets_and_errors():
    obj = get_objective("jigsaw", num_permutations=30, permutation_seed=9)
    expected, md = jig.make_permutations(30, 9, progress=False)
    np.testing.assert_array_equal(obj.permutations, expected)
    assert obj.min_hamming == md and obj.head_sizes(None) == [30]
    with pytest.raises(ConfigError, match="permutations"):
        JigsawObjective(num_permutations=1)
    with pytest.raises(ConfigError, match="permutations"):
        JigsawObjective(num_permutations=math.factorial(9) + 1)
    with pytest.raises(ConfigError):
        JigsawObjective(channel_jitter=-1)


def test_channel_jitter_moves_channels_within_the_cell():
    obj = JigsawObjective(num_permutations=50, channel_jitter=1)
    size = 32
    g = jigsaw_geometry(size, size)
    base = torch.arange(size * size, dtype=torch.float64).view(1, 1, size, size)
    x = torch.cat([base, base + 10_000, base + 20_000], dim=1).repeat(30, 1, 1, 1)
    puzzles, (t,) = obj.make_batch(x, [], torch.Generator().manual_seed(2))
    moved = 0
    for i, j in itertools.product(range(30), range(9)):
        cell = int(obj.permutations[int(t[i]), j])
        r, q = divmod(cell, 3)
        starts = []
        for ch in range(3):
            y, xx = divmod(int(puzzles[i, j, ch, 0, 0]) - 10_000 * ch, size)
            assert torch.equal(puzzles[i, j, ch], x[0, ch, y : y + g.patch, xx : xx + g.patch])
            assert 0 <= y - (g.top + r * g.cell_h) <= g.cell_h - g.patch
            assert 0 <= xx - (g.left + q * g.cell_w) <= g.cell_w - g.patch
            starts.append((y, xx))
        moved += len(set(starts)) > 1
    assert moved > 0

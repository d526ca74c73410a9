"""Parts of the run report: verdict sentences, cluster selection, nearest members, thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterfit.data import VideoSet
from clusterfit.report.clusters import (
    SHOW_ALL,
    SHOW_LARGEST,
    SHOW_MIXED,
    SHOW_SMALLEST,
    _nearest,
    select_clusters,
    thumbnail,
)
from clusterfit.report.tables import check_records, table_rows
from clusterfit.report.verdict import layer_tables, verdict


def rec(model, layer, value, seed=0, **kw):
    return {
        "model": model,
        "layer": layer,
        "target": "t",
        "protocol": "linear",
        "metric": "top1",
        "value": value,
        "seed": seed,
        "objective": "supervised",
        "label_noise": 0.5,
        **kw,
    }


def test_layer_table_and_verdict_two_seeds():
    # res4: N_cf 60/62 (61 ± 1.41), N_pre 58/59 (58.5 ± 0.71): +2.5 > 2.12 -> beyond the spread
    # res5: N_cf 70/74 (72 ± 2.83), N_pre 70/71 (70.5 ± 0.71): +1.5 < 3.54 -> within it
    # conv1: N_cf 40/40, N_pre 41/41 -> N_pre wins by 1
    recs = []
    for seed, (cf4, pre4, cf5, pre5) in enumerate([(60, 58, 70, 70), (62, 59, 74, 71)]):
        recs += [
            rec("N_cf", "res4", cf4, seed, k=16),
            rec("N_pre", "res4", pre4, seed),
            rec("N_cf", "res5", cf5, seed, k=16),
            rec("N_pre", "res5", pre5, seed),
            rec("N_cf", "conv1", 40, seed, k=16),
            rec("N_pre", "conv1", 41, seed),
            rec("random", "conv1", 35, seed),
            rec("random", "res4", 30, seed),
            rec("random", "res5", 20, seed),
        ]
    (t,) = layer_tables(check_records(recs))
    assert t.layers == ["conv1", "res4", "res5"]
    assert t.header() == ["layer", "random", "N_pre", "N_cf", "N_cf − N_pre"]
    rows = {r[0]: r for r in t.rows()}
    assert rows["res4"] == ["res4", "30.00 ± 0.00", "58.50 ± 0.71", "61.00 ± 1.41", "+2.50"]
    assert rows["conv1"][-1] == "-1.00"
    (sentence,) = verdict(t)
    assert "N_cf beats N_pre at res4, res5 (res4 +2.5, res5 +1.5)" in sentence
    assert "not at conv1 (conv1 -1.0)" in sentence
    assert "; beyond the seed spread at res4. Above the random floor" in sentence
    # floor: N_cf - random = 5 (conv1), 31 (res4), 52 (res5); N_pre: 6, 28.5, 50.5
    assert "N_cf by +52.0 points at its best layer (res5), N_pre by +50.5 at res5" in sentence


def test_verdict_one_seed_says_no_spread_and_random_rows_carry_no_objective():
    recs = [rec("N_cf", "res5", 50, k=8), rec("N_pre", "res5", 55), rec("random", "res5", 30)]
    (t,) = layer_tables(check_records(recs))
    (sentence,) = verdict(t)
    assert "beats N_pre at no layer (res5 -5.0)" in sentence and "one seed: no spread" in sentence
    header, rows = table_rows(recs)
    row = next(r for r in rows if r[0] == "random")
    assert row[header.index("objective")] == "–" and row[header.index("label noise")] == "–"


def test_sweep_gets_one_ncf_column_per_k():
    recs = [rec("N_pre", "res5", 50)] + [rec("N_cf", "res5", 50 + k, k=k) for k in (4, 16)]
    (t,) = layer_tables(check_records(recs))
    assert [c.label for c in t.columns] == ["N_pre", "N_cf K=4", "N_cf K=16"]
    assert t.rows()[0][-2:] == ["+4.00", "+16.00"]
    assert len(verdict(t)) == 2


def test_select_clusters_all_then_largest_smallest_mixed_random():
    sizes = np.arange(SHOW_ALL)
    assert select_clusters(sizes) == [(c, "all") for c in range(SHOW_ALL)]
    rng = np.random.default_rng(0)
    sizes = rng.permutation(np.arange(250)) + 1
    sizes[7] = 0  # an empty cluster is shown after the small non-empty ones
    purity = rng.uniform(0.2, 1.0, 250)
    purity[7] = np.nan
    for pur, n_mixed in ((None, 0), (purity, SHOW_MIXED)):
        sel = select_clusters(sizes, seed=3, purity=pur)
        names = ("largest", "smallest", "most mixed", "random sample")
        groups = {g: [c for c, gg in sel if gg == g] for g in names}
        n_random = SHOW_ALL - SHOW_LARGEST - SHOW_SMALLEST - n_mixed
        assert [len(v) for v in groups.values()] == [SHOW_LARGEST, SHOW_SMALLEST, n_mixed, n_random]
        assert len({c for c, _ in sel}) == len(sel) == SHOW_ALL
        assert sorted(sizes[groups["largest"]]) == sorted(np.sort(sizes)[-SHOW_LARGEST:])
        nonempty = np.sort(sizes[sizes > 0])
        assert sorted(sizes[groups["smallest"]]) == sorted(nonempty[:SHOW_SMALLEST])
        assert sel == select_clusters(sizes, seed=3, purity=pur)  # reproducible
    # the most mixed: the lowest purities among the clusters neither largest nor smallest
    rest = [c for c in range(250) if c not in groups["largest"] + groups["smallest"]]
    lowest = sorted(purity[c] for c in rest if np.isfinite(purity[c]))[:SHOW_MIXED]
    assert sorted(purity[groups["most mixed"]]) == lowest


def test_nearest_members_against_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    members = np.array([3, 9, 11, 20, 33, 39])
    c = rng.normal(size=5).astype(np.float32)
    want = sorted(members, key=lambda i: float(((x[i] - c) ** 2).sum()))[:3]
    assert _nearest(x, members, c, 3, spherical=False) == [int(i) for i in want]
    cos = lambda i: -float(x[i] @ c / np.linalg.norm(x[i]) / np.linalg.norm(c))  # noqa: E731
    assert _nearest(x, members, c, 2, spherical=True) == [
        int(i) for i in sorted(members, key=cos)[:2]
    ]
    mean = x[members].mean(0)
    by_mean = sorted(members, key=lambda i: float(((x[i] - mean) ** 2).sum()))[:2]
    assert _nearest(x, members, None, 2, spherical=False) == [int(i) for i in by_mean]


def test_video_thumbnail_is_a_strip_of_frames_across_the_video():
    s = 12
    frames = torch.arange(30, dtype=torch.uint8).view(30, 1, 1, 1).expand(30, 3, s, s) * 8
    videos = VideoSet(
        frames=frames.contiguous(),
        starts=np.array([0, 10]),
        lengths=np.array([10, 20]),
        labels=np.array([0, 1]),
        classes=["a", "b"],
        source="test",
        fingerprint="x",
    )
    strip = np.asarray(thumbnail(videos, 1))
    assert strip.shape == (s, 4 * s + 3 * 2, 3)
    # frames 10, 16, 23, 29 of the file (video 1's first, evenly spaced, last)
    got = [int(strip[0, j * (s + 2), 0]) for j in range(4)]
    assert got == [8 * f for f in (10, 16, 23, 29)]
    assert (strip[:, s : s + 2] == 255).all()  # frames apart by a white gap


@pytest.mark.parametrize("channels", [1, 3])
def test_image_thumbnail_keeps_pixels_of_small_images(channels):
    from clusterfit.data import ImageSet

    imgs = torch.randint(0, 255, (3, channels, 20, 24), dtype=torch.uint8)
    data = ImageSet(imgs, np.zeros(3, dtype=np.int64), ["x"], "test", "fp")
    thumb = np.asarray(thumbnail(data, 2))
    want = imgs[2].numpy()
    assert np.array_equal(thumb, want[0] if channels == 1 else want.transpose(1, 2, 0))


def test_plot_colours_stay_distinct_past_ten_series():
    """The default cycle repeats from the 11th series on; a figure of more series (the teacher
    suite's has 14) takes 20 distinct colours, and up to ten it keeps the default cycle."""
    from matplotlib.colors import to_hex

    from clusterfit.report.plots import _palette

    assert _palette(4) == ["C0", "C1", "C2", "C3"]
    many = [to_hex(c) for c in _palette(20)]
    assert len(set(many)) == 20
    assert [to_hex(c) for c in _palette(25)][20:] == many[:5]

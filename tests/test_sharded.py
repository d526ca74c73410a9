"""Features sharded over rank files with a manifest: read back as one array, and clustered by
k-means (streamed shard by shard) exactly as the same rows in one float32 array."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from clusterfit.cluster import KMeans
from clusterfit.cluster.rows import RawRows, ShardedRows
from clusterfit.errors import DataError
from clusterfit.sharded import ShardedArray, manifest, shard_name


def write_shards(folder: Path, X: np.ndarray, cuts: list[int]) -> Path:
    """``X`` cut at ``cuts`` into rank files + manifest, as a sharded extraction writes it."""
    world = len(cuts) - 1
    shards = []
    for rank, (a, b) in enumerate(itertools.pairwise(cuts)):
        name = shard_name("pool", rank, world)
        np.save(folder / name, X[a:b])
        shards.append((name, a, b))
    path = folder / "pool.manifest.json"
    path.write_text(json.dumps(manifest(X.shape, str(X.dtype), shards)))
    return path


@pytest.fixture
def blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((6, 12)) * 4
    return (centers[rng.integers(0, 6, 900)] + rng.standard_normal((900, 12))).astype(np.float16)


def test_indexing_matches_numpy(tmp_path: Path, blobs: np.ndarray) -> None:
    A = ShardedArray.open(write_shards(tmp_path, blobs, [0, 250, 251, 900]))
    assert A.shape == (900, 12) and A.dtype == np.float16 and len(A) == 900
    np.testing.assert_array_equal(np.asarray(A), blobs)
    for key in (slice(240, 260), slice(None), slice(0, 900, 7), 250, -1):
        np.testing.assert_array_equal(A[key], blobs[key])
    idx = np.array([899, 0, 250, 250, 251, 17])
    np.testing.assert_array_equal(A[idx], blobs[idx])
    rows = RawRows(tmp_path / "pool.manifest.json")
    assert isinstance(rows, ShardedRows) and (rows.n, rows.d) == (900, 12)
    np.testing.assert_array_equal(rows.read(200, 300).numpy(), blobs[200:300].astype(np.float32))
    np.testing.assert_array_equal(rows.take(idx).numpy(), blobs[idx].astype(np.float32))


@pytest.mark.parametrize("backend", ["fused", "torch", "faiss"])
def test_kmeans_on_shards_equals_kmeans_on_the_array(
    tmp_path: Path, blobs: np.ndarray, backend: str
) -> None:
    path = write_shards(tmp_path, blobs, [0, 300, 600, 900])
    kw = dict(n_iter=4, subsample=0.5, refine_iter=2, chunk_size=128, progress=False)
    sharded = KMeans(6, backend=backend, **kw).fit(path)
    whole = KMeans(6, backend=backend, **kw).fit(blobs.astype(np.float32))
    np.testing.assert_array_equal(sharded.labels_, whole.labels_)
    np.testing.assert_array_equal(sharded.cluster_centers_, whole.cluster_centers_)
    assert sharded.inertia_ == whole.inertia_


def test_bad_manifests_are_one_line(tmp_path: Path, blobs: np.ndarray) -> None:
    path = write_shards(tmp_path, blobs, [0, 300, 900])
    m = json.loads(path.read_text())
    m["shards"][1]["start"] = 301  # a gap between the files
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match="starts at row 301, not 300"):
        ShardedArray.open(path)
    m["shards"][1]["start"], m["shape"] = 300, [901, 12]
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"expected \(901, 12\)"):
        ShardedArray.open(path)
    (tmp_path / shard_name("pool", 1, 2)).unlink()
    with pytest.raises(DataError, match="cannot read this feature shard"):
        ShardedArray.open(path)


def test_each_rank_reads_only_its_own_file(tmp_path: Path, blobs: np.ndarray) -> None:
    """With as many processes as extraction had, a rank's block of rows is one file."""
    from clusterfit.distributed import shard

    rows = RawRows(write_shards(tmp_path, blobs, [0, 450, 900]))
    for rank in (0, 1):
        mine = shard(900, rank, 2)
        other = rows.parts[1 - rank]
        other.read = other.take = None  # any use of the other rank's file fails
        starts = range(mine.start, mine.stop, 128)
        got = np.concatenate([rows.read(a, min(a + 128, mine.stop)).numpy() for a in starts])
        np.testing.assert_array_equal(got, blobs[mine.start : mine.stop].astype(np.float32))
        picked = np.array([mine.start, mine.stop - 1, mine.start + 7])
        np.testing.assert_array_equal(rows.take(picked).numpy(), blobs[picked].astype(np.float32))
        rows = RawRows(tmp_path / "pool.manifest.json")

"""load_images on image folders and CSV lists: layouts, modes, resizing, errors, limit, cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clusterfit.data.images as images_mod
from clusterfit.data import balanced_indices, load_images
from clusterfit.data.decode import decode_files
from clusterfit.errors import DataError


def _rgb(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _grey(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _load(src, *args, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("cache_dir", False)
    return load_images(src, *args, **kw)


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """root/{cat,dog,eel}: PNGs (lossless), one nested, one upper-case extension, plus junk."""
    root = tmp_path / "pets"
    arrays = {
        "cat/a.png": _rgb(1),
        "cat/sub/deeper/b.PNG": _rgb(2),
        "dog/c.png": _rgb(3),
        "dog/d.bmp": _rgb(4),
        "eel/e.png": _rgb(5),
    }
    for rel, a in arrays.items():
        _save(root / rel, a)
    (root / "cat" / "notes.txt").write_text("not an image")
    _save(root / "dog" / ".hidden.png", _rgb(9))
    _save(root / ".cache" / "x.png", _rgb(10))
    return root, arrays


def test_labelled_folder(labelled) -> None:
    root, arrays = labelled
    ds = _load(root)
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2]
    assert ds.images.shape == (5, 3, 8, 8) and ds.images.dtype == torch.uint8
    for i, rel in enumerate(sorted(arrays)):  # class, then relative path
        assert np.array_equal(ds.images[i].permute(1, 2, 0).numpy(), arrays[rel]), rel
    assert ds.has_labels and ds.num_classes == 3 and len(ds) == 5
    sub = ds.subset([4, 0])
    assert sub.labels.tolist() == [2, 0] and torch.equal(sub.images[1], ds.images[0])
    assert sub.fingerprint != ds.fingerprint and sub.classes == ds.classes
    assert ds.subset(ds.labels == 1).labels.tolist() == [1, 1]


def test_unlabelled_folder_greyscale(tmp_path: Path) -> None:
    arrs = [_grey(i) for i in range(3)]
    for i, a in enumerate(arrs):
        _save(tmp_path / f"img{i}.png", a)
    ds = _load(tmp_path)
    assert ds.images.shape == (3, 1, 8, 8)  # all mode L -> one channel
    assert ds.labels.tolist() == [-1, -1, -1] and ds.classes == [] and not ds.has_labels
    assert np.array_equal(ds.images[2, 0].numpy(), arrs[2])


def test_mixed_modes_become_rgb(tmp_path: Path) -> None:
    g = _grey(0)
    _save(tmp_path / "a.png", g)
    _save(tmp_path / "b.png", _rgb(1))
    ds = _load(tmp_path)
    assert ds.images.shape == (2, 3, 8, 8)
    for c in range(3):  # greyscale replicated into every channel
        assert np.array_equal(ds.images[0, c].numpy(), g)


def test_split_subfolder_and_unknown_split(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "x" / "1.png", _rgb(1))
    _save(tmp_path / "train" / "y" / "2.png", _rgb(2))
    _save(tmp_path / "test" / "x" / "3.png", _rgb(3))
    tr = _load(tmp_path, "train")
    assert len(tr) == 2 and tr.classes == ["x", "y"]
    assert len(_load(tmp_path, "test")) == 1
    with pytest.raises(DataError, match=r"'val'.*split=None"):
        _load(tmp_path, "val")


def test_csv_with_labels_relative_and_absolute(tmp_path: Path) -> None:
    for i, n in enumerate("abcd"):
        _save(tmp_path / "imgs" / f"{n}.png", _rgb(i))
    other = _save(tmp_path.parent / f"{tmp_path.name}_elsewhere" / "e.png", _rgb(7))
    csv = tmp_path / "list.csv"
    csv.write_text(
        f"path,label,extra\nimgs/a.png,10,x\nimgs/b.png,2,y\n{other},2,z\nimgs/c.png,,w\n"
        "./imgs/d.png,10,v\n"
    )
    with pytest.warns(UserWarning, match="1 of 5 items"):
        ds = _load(csv)
    assert ds.classes == ["2", "10"]  # integer names sorted as numbers
    assert ds.labels.tolist() == [1, 0, 0, -1, 1]
    assert not ds.has_labels  # one item is unknown
    assert np.array_equal(ds.images[2].permute(1, 2, 0).numpy(), _rgb(7))
    assert np.array_equal(ds.images[4].permute(1, 2, 0).numpy(), _rgb(3))


def test_csv_without_labels_and_split_column(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / f"{i}.png", _rgb(i))
    (tmp_path / "plain.csv").write_text("path\n0.png\n1.png\n")
    ds = _load(tmp_path / "plain.csv")
    assert ds.labels.tolist() == [-1, -1] and ds.classes == []
    (tmp_path / "split.csv").write_text(
        "label,path,split\ncat,0.png,train\ndog,1.png,test\ndog,2.png,train\n"
    )
    tr = _load(tmp_path / "split.csv", "train")
    assert tr.labels.tolist() == [0, 1] and tr.classes == ["cat", "dog"]
    with pytest.raises(DataError, match="splits present"):
        _load(tmp_path / "split.csv", "val")
    with pytest.raises(DataError, match="no 'split' column"):
        _load(tmp_path / "plain.csv", "train")


def test_csv_errors(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _rgb(0))
    (tmp_path / "nopath.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match="no 'path' column"):
        _load(tmp_path / "nopath.csv")
    (tmp_path / "missing.csv").write_text("path,label\na.png,x\nghost.png,y\n")
    with pytest.raises(DataError, match=r"line 3.*ghost\.png"):
        _load(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="no images"):
        _load(tmp_path / "empty.csv")
    (tmp_path / "list.txt").write_text("a.png\n")
    with pytest.raises(DataError, match=r"not a \.csv"):
        _load(tmp_path / "list.txt")


def test_image_size_centre_crop(tmp_path: Path) -> None:
    # 30 wide x 10 high, pixel value = 8 * column: shorter side is already 10, so no resampling;
    # the centre crop keeps columns 10..19
    cols = (np.arange(30, dtype=np.uint8) * 8)[None, :].repeat(10, 0)
    _save(tmp_path / "wide.png", cols)
    _save(tmp_path / "big.png", np.full((40, 20, 3), (200, 10, 30), dtype=np.uint8))
    ds = _load(tmp_path, image_size=10)
    assert ds.images.shape == (2, 3, 10, 10)
    # items in name order: big.png, wide.png
    assert (ds.images[1, :, 0, :] == torch.tensor(cols[0, 10:20])).all()
    assert (ds.images[0].view(3, -1) == torch.tensor([[200], [10], [30]])).all()
    rect = _load(tmp_path, image_size=(10, 20))  # (height, width)
    assert rect.images.shape == (2, 3, 10, 20)
    assert (rect.images[1, 0, 0] == torch.tensor(cols[0, 5:25])).all()


def test_different_sizes_need_image_size(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _rgb(0, 8, 8))
    _save(tmp_path / "b.png", _rgb(1, 8, 9))
    with pytest.raises(DataError, match=r"a\.png.*b\.png.*image_size"):
        _load(tmp_path)
    assert _load(tmp_path, image_size=6).images.shape == (2, 3, 6, 6)


def test_corrupt_and_truncated_images_are_named(tmp_path: Path) -> None:
    _save(tmp_path / "good.png", _rgb(0))
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        _load(tmp_path)
    (tmp_path / "broken.jpg").unlink()
    _save(tmp_path / "cut.jpg", _rgb(1, 64, 64))
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg"):
        _load(tmp_path)


def test_missing_empty_and_mixed_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        _load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        _load(tmp_path / "empty")
    (tmp_path / "junk" / "cls").mkdir(parents=True)
    (tmp_path / "junk" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        _load(tmp_path / "junk")
    _save(tmp_path / "mixed" / "cls" / "a.png", _rgb(0))
    _save(tmp_path / "mixed" / "loose.png", _rgb(1))
    with pytest.raises(DataError, match=r"loose\.png"):
        _load(tmp_path / "mixed")
    with pytest.raises(DataError, match="limit"):
        _load(tmp_path / "mixed", limit=0)


def test_empty_class_folder_kept_with_warning(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "1.png", _rgb(0))
    (tmp_path / "b").mkdir()
    _save(tmp_path / "c" / "2.png", _rgb(1))
    with pytest.warns(UserWarning, match=r"\['b'\]"):
        ds = _load(tmp_path)
    assert ds.classes == ["a", "b", "c"] and ds.labels.tolist() == [0, 2]


def test_limit_is_balanced_and_seeded(tmp_path: Path) -> None:
    sizes = {"a": 10, "b": 10, "c": 2}
    for cls, n in sizes.items():
        for i in range(n):
            _save(tmp_path / cls / f"{i:02d}.png", _grey(100 * ord(cls) + i, 4, 4))
    ds = _load(tmp_path, limit=9, seed=3)
    counts = sorted(np.bincount(ds.labels, minlength=3).tolist())
    assert counts == [2, 3, 4]  # c gives its unused share; the last item goes to a or b
    again = _load(tmp_path, limit=9, seed=3)
    assert torch.equal(ds.images, again.images) and ds.fingerprint == again.fingerprint
    full = _load(tmp_path)
    assert ds.fingerprint != full.fingerprint
    others = {_load(tmp_path, limit=9, seed=s).fingerprint for s in range(6)}
    assert len(others) > 1  # other seeds pick other items


def test_balanced_indices_properties() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 5, 15])
    idx = balanced_indices(labels, 40, seed=0)
    assert len(idx) == 40 and len(np.unique(idx)) == 40 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx]).tolist()
    # 10 each (class 2 has only 5), then 1 more each for 0, 1, 3, then 2 left for two of them
    assert counts[2] == 5 and sorted(counts) == [5, 11, 12, 12]
    assert np.array_equal(idx, balanced_indices(labels, 40, seed=0))
    assert not np.array_equal(idx, balanced_indices(labels, 40, seed=1))
    assert np.array_equal(balanced_indices(labels, 1000), np.arange(100))
    unl = balanced_indices(np.full(100, -1), 10, seed=0)
    assert len(unl) == 10 and len(np.unique(unl)) == 10


def test_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    for i in range(4):
        _save(root / ("x" if i < 2 else "y") / f"{i}.png", _rgb(i))
    cache = tmp_path / "cache"
    first = load_images(root, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 1
    assert not list(cache.glob("*.tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("decoded again although the cache should have been used")

    monkeypatch.setattr(images_mod, "decode_into", fail)
    second = load_images(root, cache_dir=cache, progress=False)
    assert torch.equal(first.images, second.images)
    assert first.fingerprint == second.fingerprint and second.labels.tolist() == [0, 0, 1, 1]

    # change one file: the key changes, so the (failing) decoder is called
    _save(root / "y" / "3.png", _rgb(99))
    st = os.stat(root / "y" / "3.png")
    os.utime(root / "y" / "3.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_images(root, cache_dir=cache, progress=False)
    monkeypatch.undo()
    third = load_images(root, cache_dir=cache, progress=False)
    assert np.array_equal(third.images[3].permute(1, 2, 0).numpy(), _rgb(99))
    assert third.fingerprint != first.fingerprint
    assert len(list(cache.glob("*.npy"))) == 2


def test_cache_env_default_and_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path / "d" / "a.png", _rgb(0))
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "c"))
    load_images(tmp_path / "d", progress=False)
    assert len(list((tmp_path / "c" / "images").glob("*.npy"))) == 1
    load_images(tmp_path / "d", progress=False, cache_dir=False, image_size=4)
    assert len(list((tmp_path / "c" / "images").glob("*.npy"))) == 1


def test_corrupt_cache_entry_is_ignored(tmp_path: Path) -> None:
    _save(tmp_path / "d" / "a.png", _rgb(0))
    cache = tmp_path / "c"
    first = load_images(tmp_path / "d", cache_dir=cache, progress=False)
    expected = first.images.clone()
    del first  # its pages map the entry, which is overwritten in place below
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable image cache"):
        again = load_images(tmp_path / "d", cache_dir=cache, progress=False)
    assert torch.equal(expected, again.images)


def test_fingerprint_follows_content_not_location(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / "one" / "k" / f"{i}.png", _rgb(i))
    a = _load(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    assert _load(tmp_path / "two").fingerprint == a.fingerprint
    _save(tmp_path / "two" / "k" / "1.png", _rgb(50))
    assert _load(tmp_path / "two").fingerprint != a.fingerprint


def test_decode_workers_match_in_process(tmp_path: Path) -> None:
    paths = [_save(tmp_path / f"{i:02d}.png", _grey(i)) for i in range(5)]
    paths += [_save(tmp_path / f"{i:02d}.jpg", _rgb(i)) for i in range(5, 9)]
    serial = decode_files(paths, progress=False, num_workers=0, chunk=3)
    pooled = decode_files(paths, progress=False, num_workers=2, chunk=3)
    assert serial.shape == (9, 3, 8, 8) and np.array_equal(serial, pooled)
    assert np.array_equal(serial[0, 1], _grey(0))  # grey chunk widened to RGB after a RGB chunk
    _save(tmp_path / "odd.png", _rgb(0, 5, 5))
    with pytest.raises(DataError, match=r"odd\.png"):
        decode_files([*paths, tmp_path / "odd.png"], progress=False, num_workers=0, chunk=2)


def test_distributed_rank0_fills_cache_first(tmp_path: Path, monkeypatch) -> None:
    _save(tmp_path / "d" / "a.png", _rgb(0))
    log: list[str] = []
    real_decode = images_mod.decode_into

    def decode(*args, **kwargs):
        log.append("decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(images_mod, "decode_into", decode)
    monkeypatch.setattr(images_mod.distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(images_mod.distributed, "barrier", lambda: log.append("barrier"))
    for rank in (0, 1):
        monkeypatch.setattr(images_mod.distributed, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(images_mod.distributed, "is_main_process", lambda r=rank: r == 0)
        load_images(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    # rank 0 decodes, then waits; rank 1 waits, then reads the cache without decoding
    assert log == ["decode", "barrier", "barrier"]

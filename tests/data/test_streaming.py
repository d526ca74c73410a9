"""Images streamed from the memory-mapped cache: the entry format, fingerprints, invalidation,
partial entries, lazy subsets, memory that does not grow with N, crops, and a folder run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clusterfit.data.images as images_mod
from clusterfit.data import (
    ColorJitterBatch,
    ImageRows,
    RandomResizedCropBatch,
    center_crop,
    channel_stats,
    load_images,
)
from clusterfit.data.decode import decode_image, decode_into, resize_cover
from clusterfit.errors import DataError

LINUX = sys.platform.startswith("linux")


def _jpeg_folder(root: Path, n: int, size: int = 64, classes: int = 2, seed: int = 0) -> Path:
    """``root/c<k>/<i>.jpg``: smooth random colour images (so JPEG keeps them recognisable)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _mapped(path_part: str) -> list[str]:
    """Lines of /proc/self/maps that name a file containing ``path_part``."""
    with open("/proc/self/maps") as f:
        return [line for line in f if path_part in line]


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_cache_is_a_memmap_reread_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _jpeg_folder(tmp_path / "d", 12, size=20)
    cache = tmp_path / "cache"
    first = load_images(root, cache_dir=cache, progress=False)
    (npy,) = cache.glob("*.npy")
    (meta_file,) = cache.glob("*.json")
    assert npy.stem == meta_file.stem and not list(cache.glob(".*tmp"))
    meta = json.loads(meta_file.read_text())
    assert meta["shape"] == [12, 3, 20, 20] and meta["fingerprint"] == first.fingerprint
    assert np.array_equal(np.load(npy), first.images.numpy())
    assert oct(npy.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    assert _mapped(str(npy)), "ImageSet.images should map the cache file"

    def fail(*args, **kwargs):
        raise AssertionError("decoded again although the cache should have been used")

    monkeypatch.setattr(images_mod, "decode_into", fail)
    second = load_images(root, cache_dir=cache, progress=False)
    assert torch.equal(first.images, second.images) and second.fingerprint == first.fingerprint
    # the tensor is copy-on-write: writing into it never changes the cache
    second.images[0].zero_()
    assert np.array_equal(np.load(npy)[0], first.images[0].numpy())
    assert np.load(npy)[0].any()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_fingerprint_equals_whole_array_reference(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "d", 10, size=16, classes=2)
    grey = root / "c0" / "grey.png"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(grey)
    ds = load_images(root, cache_dir=tmp_path / "c", progress=False)
    whole = ds.images.numpy()
    files = images_mod.list_image_folder(root)
    reference = images_mod._sha256(
        "files",
        json.dumps(files.names()),
        files.labels.tobytes(),
        json.dumps(files.classes),
        json.dumps(list(whole.shape[1:])),
        hashlib.sha256(whole.tobytes()).hexdigest(),
    )
    assert ds.fingerprint == reference


def test_streamed_hash_with_small_chunks_and_widening(tmp_path: Path) -> None:
    # greyscale chunks first, then colour: the output is widened and re-hashed
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((6, 6), 40 * i, dtype=np.uint8)).save(paths[-1])
    paths.append(tmp_path / "5.png")
    Image.fromarray(np.full((6, 6, 3), (1, 2, 3), dtype=np.uint8)).save(paths[-1])
    calls: list[tuple] = []

    def allocate(shape):
        calls.append(shape)
        return np.lib.format.open_memmap(tmp_path / f"out{len(calls)}.npy", "w+", np.uint8, shape)

    out, digest = decode_into(paths, None, allocate, progress=False, num_workers=0, chunk=2)
    assert calls == [(6, 1, 6, 6), (6, 3, 6, 6)]
    assert digest == hashlib.sha256(np.asarray(out).tobytes()).hexdigest()
    assert (out[4] == 160).all() and out[5, :, 0, 0].tolist() == [1, 2, 3]


def test_touched_or_edited_file_invalidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _jpeg_folder(tmp_path / "d", 6, size=16)
    cache = tmp_path / "c"
    first = load_images(root, cache_dir=cache, progress=False)
    calls = []
    real = images_mod.decode_into

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(images_mod, "decode_into", counting)
    target = next(root.glob("c0/*.jpg"))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    touched = load_images(root, cache_dir=cache, progress=False)
    assert calls == [1] and touched.fingerprint == first.fingerprint  # content is unchanged
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(target, quality=90)  # edited
    edited = load_images(root, cache_dir=cache, progress=False)
    assert calls == [1, 1] and edited.fingerprint != first.fingerprint
    assert len(list(cache.glob("*.npy"))) == 3 == len(list(cache.glob("*.json")))


def test_partial_or_mismatched_entry_is_ignored(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "d", 6, size=16)
    cache = tmp_path / "c"
    good = load_images(root, cache_dir=cache, progress=False)
    expected = good.images.clone()
    del good
    (npy,) = cache.glob("*.npy")
    (meta,) = cache.glob("*.json")
    # an interrupted write: the pixels renamed into place but no metadata yet
    meta.unlink()
    again = load_images(root, cache_dir=cache, progress=False)
    assert torch.equal(again.images, expected) and meta.is_file()
    del again
    # metadata that disagrees with the pixels: warned about, decoded again
    np.save(npy, np.zeros((2, 3, 16, 16), np.uint8))
    with pytest.warns(UserWarning, match="unreadable image cache"):
        third = load_images(root, cache_dir=cache, progress=False)
    assert torch.equal(third.images, expected)
    # a failing decode leaves no temporary file behind
    (root / "c1" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg"):
        load_images(root, cache_dir=cache, progress=False)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_subset_of_a_big_set_is_not_materialised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _jpeg_folder(tmp_path / "d", 40, size=16, classes=4)
    ds = load_images(root, cache_dir=tmp_path / "c", progress=False)
    monkeypatch.setattr(images_mod, "SMALL_BYTES", 5 * 3 * 16 * 16)  # "big" above 5 images
    idx = np.array([30, 2, 17, 5, 9, 11, 39, 0])
    sub = ds.subset(idx)
    assert isinstance(sub.images, ImageRows)
    assert len(sub) == 8 and sub.images.shape == (8, 3, 16, 16)
    assert sub.labels.tolist() == ds.labels[idx].tolist()
    assert torch.equal(sub.images[:], ds.images[torch.from_numpy(idx)])
    assert torch.equal(sub.images[3], ds.images[5])
    assert torch.equal(sub.images[torch.tensor([7, 0])], ds.images[[0, 30]])
    assert torch.equal(sub.images[2:4, 1], ds.images[[17, 5], 1])
    assert sub.fingerprint == ds.subset(idx).fingerprint != ds.fingerprint
    np.testing.assert_allclose(channel_stats(sub.images), channel_stats(ds.images[idx]))
    nested = sub.subset([7, 6, 5, 4, 3, 2])
    assert isinstance(nested.images, ImageRows) and nested.images.base is ds.images
    assert torch.equal(nested.images[:], ds.images[[0, 39, 11, 9, 5, 17]])
    run = ds.subset(np.arange(10, 30))  # one ascending run: a view of the same memory
    assert isinstance(run.images, torch.Tensor)
    assert run.images.data_ptr() == ds.images[10].data_ptr()
    small = ds.subset([1, 2])  # small: copied
    assert isinstance(small.images, torch.Tensor) and torch.equal(small.images, ds.images[1:3])


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_no_cache_large_set_goes_to_a_deleted_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _jpeg_folder(tmp_path / "d", 8, size=16)
    monkeypatch.setattr(images_mod, "SMALL_BYTES", 1000)
    ds = load_images(root, cache_dir=False, progress=False)
    lines = _mapped("clusterfit-images-")
    assert lines and all("(deleted)" in line for line in lines)
    ref = load_images(root, cache_dir=tmp_path / "c", progress=False)
    assert torch.equal(ds.images, ref.images) and ds.fingerprint == ref.fingerprint


def test_torchvision_and_pil_paths_give_the_same_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    big = Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)).resize((200, 160))
    big.save(tmp_path / "big.jpg", quality=85)
    Image.fromarray(rng.integers(0, 256, (30, 40), np.uint8)).save(tmp_path / "grey.jpg")
    for name, size in [("big.jpg", None), ("big.jpg", (120, 120)), ("grey.jpg", None)]:
        with Image.open(tmp_path / name) as img:
            img = img.convert("L" if img.mode == "L" else "RGB")
            if size is not None:
                img = resize_cover(img, *size)
            reference = np.asarray(img)
        assert np.array_equal(decode_image(tmp_path / name, size), reference), (name, size)
    # a JPEG that PIL's draft shrinks (200x160 -> 32) takes the PIL path
    small = decode_image(tmp_path / "big.jpg", (32, 32))
    assert small.shape == (32, 32, 3)


def test_center_crop_random_resized_crop_and_jitter_shapes() -> None:
    x = torch.arange(2 * 3 * 8 * 10, dtype=torch.int64).view(2, 3, 8, 10).to(torch.uint8)
    c = center_crop(x, 6)
    assert c.shape == (2, 3, 6, 6) and torch.equal(c, x[:, :, 1:7, 2:8])
    assert center_crop(x, None) is x
    with pytest.raises(ValueError, match="does not fit"):
        center_crop(x, 9)
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    out = RandomResizedCropBatch(56)(imgs, gen)
    assert out.shape == (5, 3, 56, 56) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    jit = ColorJitterBatch(0.4)
    y = jit(out, torch.Generator().manual_seed(1))
    assert y.shape == out.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(y, out)
    assert torch.equal(y, jit(out, torch.Generator().manual_seed(1)))
    assert torch.allclose(ColorJitterBatch(0.0)(out, gen), out, atol=1e-6)
    grey = ColorJitterBatch(0.4)(torch.rand(3, 1, 8, 8), gen)
    assert grey.shape == (3, 1, 8, 8)


def test_crop_size_is_checked_and_fingerprinted(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "d", 4, size=20)
    plain = load_images(root, cache_dir=False, progress=False)
    crop = load_images(root, cache_dir=False, progress=False, crop_size=16)
    assert crop.crop_size == 16 and crop.fingerprint != plain.fingerprint
    assert torch.equal(crop.images, plain.images)  # stored whole; cropped when used
    with pytest.raises(DataError, match="crop_size 24"):
        load_images(root, cache_dir=False, progress=False, crop_size=24)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    import torch
    from clusterfit.data import BatchAugment, decode, load_images

    def anon():
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) * 1024
        return 0

    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.002)

    torch.set_num_threads(1)
    decode.CHUNK = 32  # small transients, so that they do not hide what is measured
    aug = BatchAugment(crop_padding=4)
    aug(torch.zeros(32, 3, 64, 64, dtype=torch.uint8), torch.Generator())  # warm up
    base = anon()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    ds = load_images(sys.argv[1], cache_dir=sys.argv[2], progress=False)

    def epoch(images):
        gen = torch.Generator().manual_seed(0)
        for batch in torch.randperm(len(ds), generator=gen).split(32):  # as the engine does
            x = aug(images[batch], gen)

    epoch(ds.images)
    stop.set()
    thread.join()
    mapped = max(peak[0], anon()) - base
    copy = ds.images.clone()  # the old layout: every pixel in the process's own memory
    epoch(copy)
    copied = anon() - base
    print(json.dumps({"peak": mapped, "copied": copied, "bytes": ds.images.numel()}))
    """
)


def _anon_growth(folder: Path, cache: Path) -> dict:
    env = {**os.environ, "CLUSTERFIT_DECODE_WORKERS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(folder), str(cache)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="reads /proc/self/smaps_rollup")
def test_peak_anonymous_memory_does_not_grow_with_n(tmp_path: Path) -> None:
    n = 1000
    small = _jpeg_folder(tmp_path / "small", n, seed=1)
    large = _jpeg_folder(tmp_path / "large", 4 * n, seed=2)
    cache = tmp_path / "cache"
    # the first run of each decodes into the cache, the second maps it
    runs = {
        (name, phase): _anon_growth(folder, cache)
        for phase in ("decode", "read")
        for name, folder in (("small", small), ("large", large))
    }
    extra_pixels = runs["large", "read"]["bytes"] - runs["small", "read"]["bytes"]
    assert extra_pixels == 3 * n * 3 * 64 * 64  # about 37 MB
    for phase in ("decode", "read"):
        growth = runs["large", phase]["peak"] - runs["small", phase]["peak"]
        assert growth < 0.2 * extra_pixels, (phase, growth, extra_pixels, runs)
    # the measurement does see pixels held in the process's own memory (the old layout)
    copied = runs["large", "read"]["copied"] - runs["small", "read"]["copied"]
    assert copied > 0.8 * extra_pixels, (copied, extra_pixels, runs)


@pytest.mark.slow
def test_folder_run_with_image_and_crop_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clusterfit.cli import main

    data = tmp_path / "jpegs"
    _jpeg_folder(data / "train", 96, classes=4, seed=3)
    _jpeg_folder(data / "test", 48, classes=4, seed=4)
    monkeypatch.setenv("CLUSTERFIT_CACHE", str(tmp_path / "cache"))
    args = [
        f"data.source={data}",
        "data.split=train",
        "data.image_size=64",
        "data.crop_size=56",
        "pretrain.train.epochs=1",
        "pretrain.train.batch_size=32",
        "pretrain.train.color_jitter=0.2",
        "pretrain.arch_kwargs.width=8",
        "cluster.k=4",
        "cluster.n_iter=3",
        "probe.layers=[res5]",
        f"probe.targets.0.source={data}",
        "probe.targets.0.name=jpegs",
        "probe.n_updates=20",
        "probe.lrs=[0.01]",
        "probe.random_baseline=false",
        "progress=false",
        f"out_dir={tmp_path / 'runs'}",
    ]
    assert main(["run", *args]) == 0
    run_dir = tmp_path / "runs" / "demo"
    assert np.load(run_dir / "clusters" / "assignments.npy").shape == (96,)
    assert np.load(run_dir / "features" / "pool.npy").shape[0] == 96
    results = json.loads((run_dir / "probe" / "results.json").read_text())
    assert {r["target"] for r in results["records"]} == {"jpegs"}
    # D_cf and the target (which inherits the sizes) are cached at 64 px; the models saw 56 px
    entries = (tmp_path / "cache").rglob("*.json")
    shapes = sorted(json.loads(p.read_text())["shape"] for p in entries)
    assert shapes == [[48, 3, 64, 64], [96, 3, 64, 64]]

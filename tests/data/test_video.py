"""Video datasets (paper §4.1.2): decoding into the frame cache, clips, policies, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clusterfit.data import (
    ClipCropFlip,
    VideoClipSettings,
    VideoSet,
    center_crop,
    load_dataset,
    load_videos,
)
from clusterfit.data import video as video_mod
from clusterfit.data.synthetic_video import (
    moving_square,
    write_audio_only,
    write_video,
    write_video_folder,
)
from clusterfit.errors import DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video_folder(tmp_path_factory.mktemp("videos") / "v", per_class=3, frames=16)


def _counting_set(lengths: list[int], clip: VideoClipSettings) -> VideoSet:
    """Frame f of the set is filled with the value f, so a clip shows which frames it took."""
    total = sum(lengths)
    frames = torch.arange(total, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return VideoSet(
        frames=frames.contiguous(),
        starts=starts,
        lengths=np.array(lengths),
        labels=np.zeros(len(lengths), dtype=np.int64),
        classes=["a"],
        source="counting",
        fingerprint="x",
        clip=clip,
    )


def test_folder_loads_as_labelled_clips(folder: Path, tmp_path: Path) -> None:
    v = load_videos(folder, image_size=32, crop_size=28, cache_dir=tmp_path, progress=False)
    assert len(v) == 6 and v.classes == ["horizontal", "vertical"]
    assert v.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert tuple(v.images.shape) == (6, 3, 8, 32, 32)
    assert v.images[2:4].shape == (2, 3, 8, 32, 32) and v.images[0].shape == (3, 8, 32, 32)
    assert v.summary["frames"] == 96 and v.summary["n_looped"] == 0
    # the decoded frames show the square where it was drawn (mpeg4 is lossy: compare coarsely)
    ref = moving_square(0, 16, 32, 32, np.random.default_rng(0)).astype(float)
    got = v.frames[:16].permute(0, 2, 3, 1).float().numpy()
    assert np.abs(got - ref).mean() < 12


def test_cache_is_reused_and_keyed_by_the_files(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_videos(folder, image_size=32, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.frames"))) == 1 and not list(tmp_path.glob(".*tmp"))

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(video_mod, "decode_video", no_decode)
    again = load_videos(folder, image_size=32, cache_dir=tmp_path, progress=False)
    assert again.fingerprint == first.fingerprint
    assert torch.equal(again.frames, first.frames)
    other_clip = load_videos(
        folder, image_size=32, cache_dir=tmp_path, progress=False, clip=VideoClipSettings(4)
    )
    assert other_clip.fingerprint != first.fingerprint  # same frames, other clips
    monkeypatch.undo()
    path = folder / "vertical" / "vertical_002.mp4"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    load_videos(folder, image_size=32, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.frames"))) == 2


def test_clips_take_frames_at_the_stride_and_loop_short_videos() -> None:
    clip = VideoClipSettings(clip_frames=3, frame_stride=2, clips_per_video=3)
    v = _counting_set([10, 4], clip)  # video 1 is shorter than one clip (span 5)
    taken = v.gather(np.array([0, 1]), np.array([1, 0]))[:, 0, :, 0, 0]
    assert taken.tolist() == [[1, 3, 5], [10, 12, 10]]  # 10 + (0, 2, 4 mod 4)
    starts = [v.clip_starts(np.array([0, 1]), k).tolist() for k in range(3)]
    assert starts == [[0, 0], [2, 0], [5, 0]]  # uniformly spaced over 0 .. 10 - 5
    middle = v.images[0][0, :, 0, 0]
    assert middle.tolist() == [2, 4, 6]


def test_training_clips_jitter_in_time_reproducibly() -> None:
    v = _counting_set([40, 40], VideoClipSettings(4, 2, 6))
    draw = [
        v.training_clips(torch.tensor([0, 1]), torch.Generator().manual_seed(s))[:, 0, 0, 0, 0]
        for s in (0, 0, 1, 2, 3)
    ]
    assert torch.equal(draw[0], draw[1])
    assert len({tuple(d.tolist()) for d in draw}) > 1
    firsts = torch.stack(draw)
    assert (firsts[:, 0] <= 40 - 7).all() and (firsts[:, 1] >= 40).all()


def test_clip_crop_is_shared_by_every_frame_and_eval_is_the_centre() -> None:
    clips = torch.randint(0, 256, (4, 3, 5, 16, 16), dtype=torch.uint8)
    # make every frame identical, so a crop shared by the frames gives identical frames
    clips[:] = clips[:, :, :1]
    out = ClipCropFlip(12)(clips, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 5, 12, 12) and out.dtype == torch.float32
    assert torch.equal(out[:, :, :1].expand_as(out), out)
    assert center_crop(clips, 12).shape == (4, 3, 5, 12, 12)
    assert torch.equal(center_crop(clips, 12), clips[..., 2:14, 2:14])


def test_short_videos_are_looped_and_counted(tmp_path: Path) -> None:
    write_video_folder(tmp_path / "v", per_class=1, frames=5)
    with pytest.warns(UserWarning, match="shorter than one clip"):
        v = load_videos(tmp_path / "v", image_size=16, cache_dir=False, progress=False)
    assert v.summary["n_looped"] == 2 and v.summary["short_video_policy"] == "loop"
    assert v.images[:].shape == (2, 3, 8, 16, 16)


def test_mixed_sizes_and_frame_rates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_video(tmp_path / "v" / "a.mp4", moving_square(0, 12, 32, 32, rng), fps=15)
    write_video(tmp_path / "v" / "b.avi", moving_square(1, 24, 32, 48, rng), fps=30)
    v = load_videos(tmp_path / "v", image_size=24, cache_dir=False, progress=False)
    assert v.lengths.tolist() == [12, 24] and v.summary["frame_rates"] == [15.0, 30.0]
    assert v.summary["frame_sizes"] == ["32x32", "48x32"]
    r = load_videos(tmp_path / "v", image_size=24, fps=15, cache_dir=False, progress=False)
    assert r.lengths.tolist() == [12, 12]  # the 30 fps video resampled to 15 fps


@pytest.mark.parametrize("kind", ["corrupt", "empty", "audio-only"])
def test_bad_video_is_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    write_video_folder(tmp_path / "v", per_class=1, frames=8)
    bad = tmp_path / "v" / "vertical" / "bad.mp4"
    if kind == "corrupt":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        write_audio_only(bad)
    with pytest.raises(DataError) as err:
        load_videos(tmp_path / "v", image_size=16, cache_dir=tmp_path / "c", progress=False)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "c").glob("*"))  # nothing half-written is left in the cache


def test_csv_list_and_dispatch(folder: Path, tmp_path: Path) -> None:
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(folder.rglob("*.mp4"))]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    v = load_dataset(tmp_path / "list.csv", image_size=32, cache_dir=False, progress=False)
    assert isinstance(v, VideoSet) and v.labels.tolist() == [0, 0, 0, 1, 1, 1]
    sub = v.subset([5, 0])
    assert sub.labels.tolist() == [1, 0] and torch.equal(sub.images[1], v.images[0])
    with pytest.raises(DataError, match=r"data\.image_size"):
        load_dataset(folder, cache_dir=False, progress=False)
    with pytest.raises(DataError, match="no videos found"):
        load_videos(tmp_path, image_size=16, cache_dir=False, progress=False)

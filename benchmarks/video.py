"""Video data path (paper §4.1.2): decoding, extraction throughput, peak memory against N.

(a) Decoding: a generated folder of synthetic videos (moving squares, 48 frames at 96 x 128,
    mpeg4) decoded into a fresh frame cache at S=64: videos/s and frames/s; then clips gathered
    from the cache (T=8 at stride 2, what every training step and extraction reads): clips/s.
(b) Extraction throughput: ``compute_features`` (6 clips per video, averaged, L2-normalised) of
    ``r2plus1d_narrow`` (width 16) over the cached set, against a bare ``forward_features`` over
    the same clips already gathered in memory, alternately, three times each; goal >= 0.9.
(c) Peak memory: a fresh process loads (decoding into a fresh cache) and extracts the features of
    20, then 80 synthetic videos; the peak of its *anonymous* memory (``RssAnon``, sampled every
    10 ms; the frames are file-backed pages of the memory map) should not grow with N.

    python benchmarks/video.py [--quick]

Figures go to ``benchmarks/results/video.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clusterfit.data import VideoClipSettings, center_crop, load_videos, to_float
from clusterfit.data.synthetic_video import write_video_folder
from clusterfit.features import compute_features
from clusterfit.models import create_model

OUT = Path(__file__).resolve().parent / "results" / "video.json"
CLIP = VideoClipSettings(clip_frames=8, frame_stride=2, clips_per_video=6)

CHILD = r"""
import sys, threading, time, torch
from clusterfit.data import VideoClipSettings, load_videos
from clusterfit.models import create_model
from clusterfit.features import compute_features
peak = [0]
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
def watch():
    while True:
        peak[0] = max(peak[0], anon()); time.sleep(0.01)
threading.Thread(target=watch, daemon=True).start()
torch.set_num_threads(2)
base = anon()
v = load_videos(sys.argv[1], image_size=64, crop_size=56, cache_dir=sys.argv[2], progress=False,
                clip=VideoClipSettings(8, 2, 6))
net = create_model("r2plus1d_narrow", [2], width=16).eval()
f = compute_features(net, v, ["pool"], normalize=True, batch_size=16, progress=False)
time.sleep(0.05)
print(peak[0], base, len(v), int(v.frames.numel()))
"""


def _folder(root: Path, n: int, frames: int) -> Path:
    path = root / f"videos-{n}"
    if not path.is_dir():
        write_video_folder(path, per_class=n // 2, frames=frames, size=(96, 128))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer videos and repetitions")
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="clusterfit-video-bench-"))
    n = 20 if args.quick else 40
    folder = _folder(root, n, 48)
    res: dict = {"torch_threads": torch.get_num_threads(), "clip": vars(CLIP)}

    # (a) decoding and clip gathering
    t0 = time.perf_counter()
    v = load_videos(
        folder, image_size=64, crop_size=56, clip=CLIP, cache_dir=root / "c", progress=False
    )
    dt = time.perf_counter() - t0
    frames = int(v.lengths.sum())
    res["decode"] = {
        "videos": len(v),
        "frames": frames,
        "seconds": round(dt, 3),
        "videos_per_s": round(len(v) / dt, 1),
        "frames_per_s": round(frames / dt, 1),
    }
    idx = np.arange(len(v))
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        for k in range(CLIP.clips_per_video):
            v.eval_clips(idx, k)
    dt = time.perf_counter() - t0
    res["gather_clips_per_s"] = round(reps * CLIP.clips_per_video * len(v) / dt, 1)
    print(f"decode: {res['decode']}; clips gathered from the cache: {res['gather_clips_per_s']}/s")

    # (b) extraction vs a bare forward over the same clips
    torch.manual_seed(0)
    net = create_model("r2plus1d_narrow", [2], width=16).eval()
    clips = [to_float(center_crop(v.eval_clips(idx, k), 56)) for k in range(CLIP.clips_per_video)]
    bs = 16

    @torch.no_grad()
    def bare() -> None:
        for x in clips:
            for lo in range(0, len(x), bs):
                net.forward_features(x[lo : lo + bs])

    def extract() -> None:
        compute_features(net, v, ["pool"], normalize=True, batch_size=bs, progress=False)

    extract()  # warm-up (FX extractor built once)
    bare()
    times: dict[str, list[float]] = {"extract": [], "bare": []}
    for _ in range(2 if args.quick else 3):
        for name, fn in (("extract", extract), ("bare", bare)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    n_clips = len(v) * CLIP.clips_per_video
    ext, bar = float(np.median(times["extract"])), float(np.median(times["bare"]))
    res["extract"] = {
        "clips": n_clips,
        "extract_clips_per_s": round(n_clips / ext, 1),
        "bare_forward_clips_per_s": round(n_clips / bar, 1),
        "ratio": round(bar / ext, 3),
        "seconds": {k: [round(t, 3) for t in ts] for k, ts in times.items()},
    }
    print(
        f"extraction {res['extract']['extract_clips_per_s']} clips/s, bare forward "
        f"{res['extract']['bare_forward_clips_per_s']} clips/s: ratio {res['extract']['ratio']}"
    )

    # (c) peak anonymous memory against N (fresh process, fresh cache)
    mem = {}
    for count in (20, 80, 160):
        f = _folder(root, count, 48)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(f), str(root / f"m{count}")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        peak, base, nv, pixels = (int(x) for x in out[-4:])
        mem[str(count)] = {
            "videos": nv,
            "frame_bytes": pixels,
            "peak_anon_mb": round(peak / 2**20, 1),
            "start_anon_mb": round(base / 2**20, 1),
        }
        print(
            f"{count} videos ({pixels / 2**20:.0f} MB of frames): peak anonymous memory "
            f"{peak / 2**20:.1f} MB"
        )
    for lo, hi in (("20", "80"), ("80", "160")):
        diff = round(mem[hi]["peak_anon_mb"] - mem[lo]["peak_anon_mb"], 1)
        mem[f"difference_{hi}_vs_{lo}_mb"] = diff
        more = (mem[hi]["frame_bytes"] - mem[lo]["frame_bytes"]) / 2**20
        print(
            f"{hi} vs {lo} videos: {diff:+.1f} MB of peak anonymous memory, +{more:.0f} MB frames"
        )
    res["memory"] = mem
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

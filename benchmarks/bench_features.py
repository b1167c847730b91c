"""Feature-stage benchmark: extraction scaling with workers, store overhead, cache load speed.

    .venv/bin/python benchmarks/bench_features.py [--videos 8] [--frames 40] [--samples 10000]

Writes benchmarks/results/features.json; BENCHMARKS.md summarises it. Every ratio compares two
measurements taken in this same run (the machines are noisy).
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess.features import build_cache  # noqa: E402
from preprocess.store import open_cache, write_cache  # noqa: E402
from tests.media import make_person_video  # noqa: E402


def person_videos(work: Path, n_videos: int, n_frames: int) -> Path:
    """n_videos MediaPipe-able videos of a person under work/videos and their manifest (returned)."""
    data = work / "videos"
    data.mkdir()
    rows = []
    for i in range(n_videos):
        make_person_video(data / f"v{i}.mp4", n_frames=n_frames)
        rows.append({"id": f"v{i}", "path": f"v{i}.mp4", "text": "where does it hurt"})
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "text"])
        w.writeheader()
        w.writerows(rows)
    return data / "manifest.csv"


def bench_extraction(work: Path, n_videos: int, n_frames: int) -> dict:
    """The same videos through MediaPipe with 1 and with 2 workers (one shard per video)."""
    manifest = person_videos(work, n_videos, n_frames)
    out = {}
    for jobs in (1, 2):
        # a distinct cache root per run: the second run must not reuse the first one's cache
        res = build_cache(manifest, work / f"cache{jobs}", jobs=jobs, shard_size=1, progress=False)
        t = res.timings
        out[f"jobs{jobs}"] = {"wall_s": t["wall"], "frames": t["frames"], "frames_per_s": t["frames"] / t["wall"],
                              "extract_s": t["extract"], "write_s": t["write"],
                              "store_overhead": t["write"] / t["extract"]}
    out["speedup_2_vs_1"] = out["jobs2"]["frames_per_s"] / out["jobs1"]["frames_per_s"]
    return out


def bench_load(work: Path, n_samples: int, mean_frames: int) -> dict:
    """Load pose + hands of n_samples into memory: the cache vs one .npy file per sample."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(mean_frames // 2, mean_frames * 3 // 2, size=n_samples)
    rows = [{"id": f"s{i}", "text": "t", "split": "train", "signer": "a", "label": "t", "fps": 25.0}
            for i in range(n_samples)]
    keypoints = []
    for n in lengths:
        k = np.full((n, 543, 3), np.nan, np.float32)  # face not detected: the load never reads it anyway
        k[:, :33] = rng.random((n, 33, 3))
        k[:, 501:] = rng.random((n, 42, 3))
        keypoints.append(k)
    t0 = time.perf_counter()
    path = write_cache(work / "load_cache", rows, keypoints, None, shard_size=256)
    write_s = time.perf_counter() - t0
    npy_dir = work / "npy"
    npy_dir.mkdir()
    for i, k in enumerate(keypoints):  # the per-sample layout users start from: pose + hands, float16
        np.save(npy_dir / f"s{i}.npy", np.concatenate([k[:, :33], k[:, 501:]], axis=1).astype(np.float16))
    del keypoints

    t0 = time.perf_counter()
    kp = open_cache(path).load_keypoints(("pose", "left_hand", "right_hand"))
    cache_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    arrays = [np.load(npy_dir / f"s{i}.npy") for i in range(n_samples)]
    flat = np.concatenate(arrays)
    npy_s = time.perf_counter() - t0
    assert len(flat) == len(kp.frames["pose"])
    return {"n_samples": n_samples, "frames": int(lengths.sum()), "cache_write_s": write_s,
            "cache_load_s": cache_s, "npy_per_sample_load_s": npy_s, "speedup_vs_npy": npy_s / cache_s,
            "bytes_loaded": int(sum(a.nbytes for a in kp.frames.values())),
            "note": "both read warm from the page cache (files just written); cache load includes CRC32 checks"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--mean-frames", type=int, default=150)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "features.json"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                              "processor": platform.machine()},
                  "extraction": bench_extraction(work, a.videos, a.frames),
                  "load": bench_load(work, a.samples, a.mean_frames)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    e, ld = result["extraction"], result["load"]
    print(f"extraction: {e['jobs1']['frames_per_s']:.1f} frames/s with 1 worker, {e['jobs2']['frames_per_s']:.1f} "
          f"with 2 -> {e['speedup_2_vs_1']:.2f}x; store overhead {e['jobs1']['store_overhead']:.1%} of extraction")
    print(f"load {ld['n_samples']} samples / {ld['frames']} frames (pose+hands): cache {ld['cache_load_s']:.2f} s, "
          f"one .npy per sample {ld['npy_per_sample_load_s']:.2f} s -> {ld['speedup_vs_npy']:.1f}x")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

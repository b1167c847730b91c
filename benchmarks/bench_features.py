"""Feature-stage benchmark: extraction scaling with workers, store overhead.

    .venv/bin/python benchmarks/bench_features.py [--videos 8] [--frames 40]

(The cache's load speed: benchmarks/bench_cache_load.py.)

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
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess.features import build_cache  # noqa: E402
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "features.json"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                              "processor": platform.machine()},
                  "extraction": bench_extraction(work, a.videos, a.frames)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    e = result["extraction"]
    print(f"extraction: {e['jobs1']['frames_per_s']:.1f} frames/s with 1 worker, {e['jobs2']['frames_per_s']:.1f} "
          f"with 2 -> {e['speedup_2_vs_1']:.2f}x; store overhead {e['jobs1']['store_overhead']:.1%} of extraction")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

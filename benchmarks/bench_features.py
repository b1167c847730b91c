"""Keypoint extraction at MediaPipe's own speed: `make features` against MediaPipe Holistic alone.

    .venv/bin/python benchmarks/bench_features.py [--videos 12] [--frames 100] [--workers 1 2]
        [--fps F] [--repeats 1] [--mediapipe-default-threads] [--note "..."]

The same videos (a real person, tests/media.py; 640x360 mp4v at 15 fps), N = 1 and 2 processes:

- MediaPipe alone: the frames `make features` would give MediaPipe (the extractor's own reader,
  `kept_frames`) are decoded into memory first; then, on the clock, N processes forked from here
  each import mediapipe, build Holistic as the extractor does (`new_holistic`) and run it over
  their share of the videos (reset per video, as the extractor does). Nothing else: no decoding,
  no conversion of the results, no store, no scheduling, no interpreter start.
- `make features`: `preprocess.features.build_cache` (loky, `--jobs N`) on a manifest of the same
  videos, in a fresh process as the command runs; its keypoint stage timed by the stage itself
  (its wall clock: worker start-up, decoding, MediaPipe, results to arrays, the store); the text
  stage that follows is not timed.

Reported per N: frames/s, frames/s per core (= per worker: each uses one core), CPU seconds per
frame (all processes), overhead = 1 - pipeline frames/s / alone frames/s (and the same in CPU time,
which a busy machine disturbs less), and the per-core scaling 2 workers vs 1. Every ratio compares
measurements of this same run; alone and `make features` runs alternate (their order swapped in
every repetition), and with --repeats R each case runs R times and the median run is reported.
With --mediapipe-default-threads, MediaPipe alone also runs with MediaPipe's own thread count
(what the extractor used before) for comparison.

Start-up: in every repetition both sides also run on one 2-frame video per process; that wall
clock is what each pays once per process (interpreter, imports, graph, loky's workers), and the
"overhead per frame" = 1 - (alone wall - its start-up) / (make features wall - its start-up), per
repetition (median reported): the part that grows with the corpus, where 1,200 frames would
otherwise weigh a second of start-up as 3 %.

Writes benchmarks/results/features.json; BENCHMARKS.md summarises it. Measure on an idle machine:
the load average before and after is stored with the results.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from joblib.externals.loky import get_reusable_executor  # noqa: E402
from preprocess import features  # noqa: E402
from preprocess import mediapipe_extract as mpx  # noqa: E402  (imports cv2, not mediapipe)
from tests.media import make_person_video  # noqa: E402


def person_videos(work: Path, n_videos: int, n_frames: int) -> Path:
    """n_videos MediaPipe-able videos of a person under work/videos and their manifest (returned)."""
    data = work / "videos"
    data.mkdir(parents=True)
    rows = []
    for i in range(n_videos):
        make_person_video(data / f"v{i}.mp4", n_frames=n_frames)
        rows.append({"id": f"v{i}", "path": f"v{i}.mp4", "text": "where does it hurt"})
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "text"])
        w.writeheader()
        w.writerows(rows)
    return data / "manifest.csv"


# ----------------------------------------------------------------------------- MediaPipe alone

def _alone_worker(videos: list, graph_threads, conn) -> None:
    """A forked process: MediaPipe Holistic over these videos' frames (already in memory)."""
    t0 = time.perf_counter()
    model = mpx.new_holistic(graph_threads)  # imports mediapipe (the parent has not)
    t_built = time.perf_counter()
    n = 0
    for i, frames in enumerate(videos):
        if i:
            model.reset()  # a new video: the extractor resets the same way
        with mpx._without_native_noise():  # (the graph's start-up lines, dropped as the extractor does)
            model.process(frames[0])
        for rgb in frames[1:]:
            model.process(rgb)
        n += len(frames)
    conn.send({"frames": n, "import_and_build_s": t_built - t0, "process_s": time.perf_counter() - t_built,
               "cpu_s": time.process_time()})  # a forked child's CPU clock starts at 0: all its threads
    conn.close()


def mediapipe_alone(shards: list[list], workers: int, graph_threads) -> dict:
    """Wall clock from forking `workers` processes to the last one's result; shard k goes to
    process k mod workers (the same shards the pipeline gets, balanced as its scheduler does)."""
    ctx = multiprocessing.get_context("fork")  # children share the decoded frames, copy-free
    shares = [[video for shard in shards[k::workers] for video in shard] for k in range(workers)]
    t0 = time.perf_counter()
    procs, pipes = [], []
    for share in shares:
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_alone_worker, args=(share, graph_threads, send))
        p.start()
        send.close()
        procs.append(p)
        pipes.append(recv)
    results = [r.recv() for r in pipes]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a MediaPipe process failed: exit codes {[p.exitcode for p in procs]}")
    frames = sum(r["frames"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    return {"workers": workers, "frames": frames, "wall_s": wall, "frames_per_s": frames / wall,
            "frames_per_s_per_core": frames / wall / workers, "cpu_s": cpu, "cpu_ms_per_frame": 1e3 * cpu / frames,
            "import_and_build_s": max(r["import_and_build_s"] for r in results),
            "steady_frames_per_s_per_core": sum(r["frames"] / r["process_s"] for r in results) / workers,
            "graph_threads": graph_threads if graph_threads is not None else "mediapipe default"}


# ----------------------------------------------------------------------------- make features

def _cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system, all threads) of this process and each of its descendants, by pid."""
    import psutil

    out = {}
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def make_features(manifest: Path, cache_root: Path, workers: int, shard_size: int, fps) -> dict:
    """`make features` with --jobs workers in a fresh process, as the command runs (with --jobs 1
    MediaPipe runs in that process; loky's workers start with it and end with it)."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_make_features, args=(manifest, cache_root, workers, shard_size, fps, send))
    proc.start()
    send.close()
    try:
        result = recv.recv()
    except EOFError:  # (the process died)
        result = None
    proc.join()
    if result is None:
        raise RuntimeError(f"make features ended without a result (exit code {proc.exitcode})")
    if isinstance(result, Exception):
        raise result
    return result


def _make_features(manifest: Path, cache_root: Path, workers: int, shard_size: int, fps, conn) -> None:
    """build_cache (loky) with --jobs workers; its keypoint stage timed by itself, its CPU time
    (this process and the loky workers) over that stage only."""
    try:
        conn.send(_build(manifest, cache_root, workers, shard_size, fps))
    except Exception as e:  # said in the parent
        conn.send(RuntimeError(f"{type(e).__name__}: {e}"))
    finally:
        if workers > 1:  # loky's idle workers wait 5 minutes for more work, and this process's exit waits for them
            get_reusable_executor(reuse=True).shutdown(wait=True)


def _build(manifest: Path, cache_root: Path, workers: int, shard_size: int, fps) -> dict:
    real = features.build_keypoints
    cpu = {}

    def timed(*args, **kwargs):  # the keypoint stage, not the text stage that follows it
        before = _cpu_seconds()
        index = real(*args, **kwargs)
        after = _cpu_seconds()
        cpu["s"] = sum(t - before.get(pid, 0.0) for pid, t in after.items())
        return index

    features.build_keypoints = timed
    t0 = time.perf_counter()
    try:
        res = features.build_cache(manifest, cache_root, jobs=workers, shard_size=shard_size, fps=fps, progress=False)
    finally:
        features.build_keypoints = real
    total = time.perf_counter() - t0
    if res.failures:
        raise RuntimeError(f"extraction failed: {res.failures[:3]}")
    t = res.timings
    return {"workers": workers, "frames": t["frames"], "wall_s": t["wall"], "frames_per_s": t["frames"] / t["wall"],
            "frames_per_s_per_core": t["frames"] / t["wall"] / workers, "cpu_s": cpu["s"],
            "cpu_ms_per_frame": 1e3 * cpu["s"] / t["frames"], "extract_s": t["extract"], "write_s": t["write"],
            "store_overhead": t["write"] / t["extract"], "build_cache_s": total}


# ----------------------------------------------------------------------------- the benchmark

def _median_run(runs: list[dict]) -> dict:
    """The run with the median frames/s (the lower middle one for an even count), with every
    repetition's frames/s beside it."""
    ranked = sorted(runs, key=lambda r: r["frames_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "frames_per_s_each": [r["frames_per_s"] for r in runs]}


TINY_FRAMES = 2  # frames per video of the start-up runs


def bench_extraction(work: Path, n_videos: int, n_frames: int, workers: list[int], fps=None,
                     default_threads: bool = False, repeats: int = 1) -> dict:
    manifest = person_videos(work, n_videos, n_frames)
    paths = sorted(manifest.parent.glob("v*.mp4"), key=lambda p: int(p.stem[1:]))
    # one shard per worker and round, so that every N in `workers` splits them evenly
    shard_size = max(1, n_videos // (2 * max(workers)))
    frames = [mpx.kept_frames(p, fps) for p in paths]  # decoded before any clock starts
    for video in frames:
        for rgb in video:
            rgb.flags.writeable = False  # as the extractor passes them (MediaPipe skips a copy)
    shards = [frames[i:i + shard_size] for i in range(0, len(frames), shard_size)]
    # start-up: the same cases on one 2-frame video per process (what either side pays once per
    # process: interpreter, imports, graph, worker start), to tell it from the per-frame cost
    tiny_manifest = person_videos(work / "tiny", max(workers), TINY_FRAMES)
    tiny_frames = [mpx.kept_frames(p, fps) for p in sorted(tiny_manifest.parent.glob("v*.mp4"),
                                                          key=lambda p: int(p.stem[1:]))]
    for video in tiny_frames:
        for rgb in video:
            rgb.flags.writeable = False
    kinds = ["alone", "pipeline", *(["alone_default_threads"] if default_threads else [])]
    runs = {(kind, n): [] for kind in [*kinds, "alone_startup", "pipeline_startup"] for n in workers}
    # alone and make features alternate (their order swapped every repetition): a machine whose
    # load drifts during the run weighs on both alike. (This process never starts MediaPipe: make
    # features runs in processes of its own, so forking the alone processes from here is safe.)
    for rep in range(repeats):
        for n in workers:
            for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
                if kind == "pipeline":  # a distinct cache root per run: none may reuse another's
                    runs[kind, n].append(make_features(manifest, work / f"cache{n}-{rep}", n, shard_size, fps))
                else:
                    threads = None if kind == "alone_default_threads" else mpx.GRAPH_THREADS
                    runs[kind, n].append(mediapipe_alone(shards, n, threads))
            runs["pipeline_startup", n].append(make_features(tiny_manifest, work / f"tiny{n}-{rep}", n, 1, fps))
            runs["alone_startup", n].append(mediapipe_alone([[v] for v in tiny_frames], n, mpx.GRAPH_THREADS))
    out = {"settings": {"videos": n_videos, "frames_per_video": n_frames, "size": "640x360 mp4v, 15 fps",
                        "fps": fps, "kept_frames": sum(map(len, frames)), "shard_size": shard_size, "repeats": repeats,
                        "graph_threads": mpx.GRAPH_THREADS, "decode_threads": mpx.DECODE_THREADS,
                        "opencv_threads": mpx.OPENCV_THREADS}}
    for (kind, n), rs in runs.items():
        if not kind.endswith("_startup"):
            out[f"{kind}_{n}"] = _median_run(rs)
    for n in workers:
        alone, pipe = out[f"alone_{n}"], out[f"pipeline_{n}"]
        out[f"overhead_{n}"] = 1 - pipe["frames_per_s"] / alone["frames_per_s"]
        out[f"cpu_overhead_{n}"] = 1 - alone["cpu_ms_per_frame"] / pipe["cpu_ms_per_frame"]
        # the same, paired within each repetition (the two runs nearest in time)
        out[f"overhead_{n}_each"] = [1 - p["frames_per_s"] / a["frames_per_s"]
                                     for a, p in zip(runs["alone", n], runs["pipeline", n])]
        # per frame, start-up taken out: each run's wall minus its side's start-up run next to it
        out[f"startup_s_{n}"] = {side: float(np.median([r["wall_s"] for r in runs[f"{side}_startup", n]]))
                                 for side in ("alone", "pipeline")}
        out[f"steady_overhead_{n}_each"] = [
            1 - (a["wall_s"] - a0["wall_s"]) / (p["wall_s"] - p0["wall_s"])
            for a, p, a0, p0 in zip(runs["alone", n], runs["pipeline", n], runs["alone_startup", n],
                                    runs["pipeline_startup", n])]
        out[f"steady_overhead_{n}"] = float(np.median(out[f"steady_overhead_{n}_each"]))
    if 1 in workers:
        for n in (w for w in workers if w > 1):
            for kind in kinds:
                out[f"{kind}_per_core_{n}_vs_1"] = (out[f"{kind}_{n}"]["frames_per_s_per_core"]
                                                    / out[f"{kind}_1"]["frames_per_s_per_core"])
    out["fastest_jobs"] = max(workers, key=lambda n: out[f"pipeline_{n}"]["frames_per_s"])
    return out


def steady_lines(e: dict, workers: list[int]) -> list[str]:
    return [f"{n} worker(s): start-up {e[f'startup_s_{n}']['alone']:.2f} s alone, "
            f"{e[f'startup_s_{n}']['pipeline']:.2f} s make features; overhead per frame without it "
            f"{e[f'steady_overhead_{n}']:.1%} (runs: "
            + " / ".join(f"{x:.1%}" for x in e[f"steady_overhead_{n}_each"]) + ")" for n in workers]


def table(e: dict, workers: list[int]) -> str:
    """The BENCHMARKS.md table of one result."""
    rows = ["| workers | MediaPipe alone | per core | `make features` | per core | overhead (wall) "
            "| overhead (CPU) | CPU ms/frame alone / features |", "|---|---|---|---|---|---|---|---|"]
    for n in workers:
        a, p = e[f"alone_{n}"], e[f"pipeline_{n}"]
        rows.append(f"| {n} | {a['frames_per_s']:.1f} frames/s | {a['frames_per_s_per_core']:.1f} "
                    f"| {p['frames_per_s']:.1f} frames/s | {p['frames_per_s_per_core']:.1f} "
                    f"| {e[f'overhead_{n}']:.1%} | {e[f'cpu_overhead_{n}']:.1%} "
                    f"| {a['cpu_ms_per_frame']:.1f} / {p['cpu_ms_per_frame']:.1f} |")
    for n in workers:
        if f"alone_default_threads_{n}" in e:
            a = e[f"alone_default_threads_{n}"]
            rows.append(f"| {n}, MediaPipe's default threads | {a['frames_per_s']:.1f} frames/s "
                        f"| {a['frames_per_s_per_core']:.1f} | – | – | – | – | {a['cpu_ms_per_frame']:.1f} / – |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--frames", type=int, default=100, help="frames per video (15 fps)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    p.add_argument("--fps", type=float, help="target frame rate (make features --fps); default: every frame")
    p.add_argument("--mediapipe-default-threads", action="store_true",
                   help="also run MediaPipe alone with MediaPipe's own graph thread count")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure each case this many times (interleaved); the median run is reported")
    p.add_argument("--note", default="", help="stored with the results (e.g. what else the machine was doing)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "features.json"))
    a = p.parse_args(argv)
    workers = sorted(set(a.workers))
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "processor": platform.machine(), "load_average_before": os.getloadavg()},
                  "command": " ".join([Path(sys.executable).name, *sys.argv]), "note": a.note,
                  "extraction": bench_extraction(Path(tmp), a.videos, a.frames, workers, a.fps,
                                                 a.mediapipe_default_threads, a.repeats)}
        result["machine"]["load_average_after"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    e = result["extraction"]
    print(table(e, workers))
    print("\n".join(steady_lines(e, workers)))
    for key in (k for k in e if "_per_core_" in k):
        print(f"{key}: {e[key]:.2f}")
    print("store overhead (shard writes / extraction): "
          + ", ".join(f"{e[f'pipeline_{n}']['store_overhead']:.1%} ({n} workers)" for n in workers))
    print(f"fastest --jobs: {e['fastest_jobs']}; load average before {result['machine']['load_average_before']}, "
          f"after {result['machine']['load_average_after']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

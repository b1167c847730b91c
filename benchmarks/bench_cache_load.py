"""Cache load speed (issue 14): `open_cache(dir).load_keypoints(("pose", "left_hand", "right_hand"))`
against the two bounds that matter, measured in this same run on the same samples:

- one float16 `.npy` file per sample (pose + hands), loaded and concatenated: the layout users
  start from; target: the cache is >= 5x faster;
- one raw read of the same bytes the load returns (one file, read into a fresh array): what the
  bytes cost; target: the cache takes <= 3x as long.

    .venv/bin/python benchmarks/bench_cache_load.py [--samples 2000 10000] [--formats zarr hdf5]
        [--repeats 5] [--out benchmarks/results/cache_load.json]

Every read is warm (files just written, in the page cache): the three ways are timed interleaved,
`repeats` times, and the median is reported, so a burst of load from other processes hits all
three alike. "cache_load" is a first load in the process: the store's memo of verified files is
cleared before each timing, so every byte is read *and* checksummed. "cache_reload" (when the store
has such a memo) is a second `open_cache(...).load_keypoints(...)` in the same process, the case of
training followed by evaluation, where files whose size and times are unchanged are not checksummed
again. The caches are written under a temporary folder (--work), never into the project's cache/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess import store  # noqa: E402
from preprocess.layout import COMPONENT_SLICES  # noqa: E402

PARTS = ("pose", "left_hand", "right_hand")
SHARD_SIZE = 256


def write_inputs(work: Path, n_samples: int, mean_frames: int, fmt: str, seed: int = 0) -> dict:
    """A sealed cache of n_samples (written shard by shard: memory stays at one shard), the same
    pose + hands as one .npy per sample, and the bytes a load returns as one file."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(mean_frames // 2, mean_frames * 3 // 2, size=n_samples)
    cache_dir = work / f"cache-{fmt}-{n_samples}"
    npy_dir = work / f"npy-{n_samples}"
    raw = work / f"raw-{n_samples}.bin"
    write_npy = not npy_dir.exists()
    npy_dir.mkdir(exist_ok=True)
    n_shards = -(-n_samples // SHARD_SIZE)
    t0 = time.perf_counter()
    for s in range(n_shards):
        lo, hi = s * SHARD_SIZE, min(n_samples, (s + 1) * SHARD_SIZE)
        kps = []
        for i in range(lo, hi):
            k = np.full((lengths[i], 543, 3), np.nan, np.float32)  # face not detected: never read here
            for part in PARTS:
                sl = COMPONENT_SLICES[part]
                k[:, sl] = rng.random((lengths[i], sl.stop - sl.start, 3))
            kps.append(k)
            if write_npy:
                np.save(npy_dir / f"s{i}.npy",
                        np.concatenate([k[:, COMPONENT_SLICES[p]] for p in PARTS], axis=1).astype(np.float16))
        store.write_keypoint_shard(cache_dir, s, fmt, [{"id": f"s{i}", "row": i, "fps": 25.0} for i in range(lo, hi)],
                                   kps, [])
    store.seal_keypoints(cache_dir, n_shards, {"name": cache_dir.name, "fingerprint": "bench", "format": fmt,
                                               "settings": {}, "versions": {}})
    write_s = time.perf_counter() - t0
    kp = store.open_cache(cache_dir).load_keypoints(PARTS)
    if not raw.exists():
        with open(raw, "wb") as f:  # the same bytes the load hands back
            for c in PARTS:
                f.write(kp.frames[c].tobytes())
            f.write(kp.present.tobytes())
    nbytes = sum(a.nbytes for a in kp.frames.values()) + kp.present.nbytes
    assert raw.stat().st_size == nbytes
    # the same numbers: the cache holds what the .npy files hold
    first = np.load(npy_dir / "s0.npy")
    np.testing.assert_array_equal(kp.frames["pose"][:len(first)], first[:, :33])
    return {"cache": cache_dir, "npy": npy_dir, "raw": raw, "n_samples": n_samples,
            "frames": int(lengths.sum()), "bytes": int(nbytes), "cache_write_s": write_s,
            "cache_bytes_on_disk": sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())}


def forget_verified() -> None:
    """A first load: the store checksums every file again (stores without a memo always do)."""
    forget = getattr(store, "forget_verified", None)
    if forget is not None:
        forget()


def load_cache(cache_dir: Path, first: bool = True):
    if first:
        forget_verified()
    return store.open_cache(cache_dir).load_keypoints(PARTS)


def load_npy(npy_dir: Path, n: int) -> np.ndarray:
    return np.concatenate([np.load(npy_dir / f"s{i}.npy") for i in range(n)])


def read_raw(raw: Path, nbytes: int) -> np.ndarray:
    out = np.empty(nbytes, np.uint8)  # a fresh array, as every other way allocates its result
    with open(raw, "rb", buffering=0) as f:
        view, got = memoryview(out), 0
        while got < nbytes:
            got += f.readinto(view[got:])
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    del result
    return dt


def measure(inputs: dict, repeats: int) -> dict:
    ways = {"cache_load_s": lambda: load_cache(inputs["cache"]),
            "npy_per_sample_load_s": lambda: load_npy(inputs["npy"], inputs["n_samples"]),
            "raw_read_s": lambda: read_raw(inputs["raw"], inputs["bytes"])}
    if hasattr(store, "forget_verified"):
        ways["cache_reload_s"] = lambda: load_cache(inputs["cache"], first=False)
    for fn in ways.values():  # warm-up: page cache, imports, thread pools
        timed(fn)
    times = {k: [] for k in ways}
    for _ in range(repeats):
        for k, fn in ways.items():
            times[k].append(timed(fn))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["all_s"] = times
    out["speedup_vs_npy"] = out["npy_per_sample_load_s"] / out["cache_load_s"]
    out["vs_raw_read"] = out["cache_load_s"] / out["raw_read_s"]
    out["met"] = {"speedup_vs_npy>=5": out["speedup_vs_npy"] >= 5, "vs_raw_read<=3": out["vs_raw_read"] <= 3}
    if "cache_reload_s" in out:
        out["reload_speedup_vs_npy"] = out["npy_per_sample_load_s"] / out["cache_reload_s"]
        out["reload_vs_raw_read"] = out["cache_reload_s"] / out["raw_read_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--formats", nargs="+", default=["zarr", "hdf5"], choices=store.FORMATS)
    p.add_argument("--mean-frames", type=int, default=150)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", help="folder for the generated caches (default: a temporary folder, removed)")
    p.add_argument("--label", default="", help="a note stored with the result (e.g. 'before')")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cache_load.json"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        work = Path(tmp)
        result = {"label": a.label, "format_version": store.FORMAT_VERSION,
                  "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "processor": platform.machine(), "load_average_before": os.getloadavg()},
                  "repeats": a.repeats, "mean_frames": a.mean_frames, "runs": []}
        for n in a.samples:
            for fmt in a.formats:
                inputs = write_inputs(work, n, a.mean_frames, fmt)
                m = measure(inputs, a.repeats)
                row = {"format": fmt, **{k: v for k, v in inputs.items() if not isinstance(v, Path)}, **m}
                result["runs"].append(row)
                line = (f"{fmt:5s} {n:6d} samples, {row['bytes'] / 1e6:.0f} MB: cache {m['cache_load_s']:.3f} s, "
                        f"npy {m['npy_per_sample_load_s']:.3f} s, raw {m['raw_read_s']:.3f} s -> "
                        f"{m['speedup_vs_npy']:.2f}x faster than .npy, {m['vs_raw_read']:.2f}x raw")
                if "cache_reload_s" in m:
                    line += f"; reload {m['cache_reload_s']:.3f} s ({m['reload_vs_raw_read']:.2f}x raw)"
                print(line, flush=True)
                shutil.rmtree(inputs["cache"])  # the next format writes its own
        result["machine"]["load_average_after"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation memory on a cache larger than its memory budget (issue 14): `python -m s2t eval` on a
cache whose keypoints are `--factor` (4) times the budget; target: peak RSS growth <= budget + 25 %.

    .venv/bin/python benchmarks/bench_eval_memory.py [--budgets 64 256] [--factor 4]
        [--no-tuned] [--no-reference] [--out benchmarks/results/eval_memory.json]

What runs, per budget: a tiny_cpu model trained 2 steps on a small corpus (its config: stream:
false, memory_budget_mb = the budget), then `s2t eval --run RUN --cache LARGE --split test --beam 0`
with no streaming option: the large cache's keypoints exceed the run's memory_budget_mb, so eval
streams them under that budget by itself (what `make eval` does on such a cache). The large cache
(under --work, default a temporary folder, never the project's cache/) holds synthetic clips of
75-225 frames (mean 150), one in 20 in the test split, one in 20 in val, the rest train, in shards
of 256 samples, 384-d sentence embeddings.

How it is measured: each eval runs in a fresh process, after a warm-up eval of the small corpus in
that same process (lazy library set-up, tokenizer, plotting are not counted); the process's
anonymous resident memory (RssAnon: heap and anonymous maps, where arrays and tensors live) is
sampled every 2 ms on a thread; growth = peak - the value after the warm-up, also per phase
(load: cache opened and per-sample arrays; model pass; keypoint baseline; metrics; report: the
files, report.html reading its clips from the cache with its own reader). Streamed, eval holds
everything within the budget (StreamingKeypointData(whole_budget=True): the LRU gets what the rest
leaves); the same eval runs again with glibc's malloc thresholds set while it streams ("tuned":
StreamingKeypointData.MALLOC_EVAL = (512 kB, 4 MB): arrays of 512 kB and more in memory maps of their own),
which separates what the allocator keeps of freed memory from what eval holds, and says what that
costs in time. At the smallest budget the reference (skipped with --no-reference) is the same eval with the same model from a run whose
memory_budget_mb exceeds the cache (loaded in memory): its summary must equal the streamed one
(floats within 1e-5).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import make_corpus, tiny_cfg, write_large_cache  # noqa: E402

PROBE = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from s2t import baselines, evaluate
from s2t.data import StreamingKeypointData
from tests.helpers import PeakWatch, anon_bytes

run, warm_cache, cache, out = sys.argv[1:5]
common = ["--run", run, "--split", "test", "--beam", "0"]
assert evaluate.main([*common, "--cache", warm_cache, "--split", "val", "--out", out + "-warmup"]) == 0
phase, reader = ["load"], {}
def enter(name, then, fn):  # fn runs in phase `name`; what follows it is phase `then`
    def wrapped(*args, **kwargs):
        phase[0] = name
        try:
            return fn(*args, **kwargs)
        finally:
            phase[0] = then
    return wrapped
evaluate.run_model = enter("model pass", "metrics", evaluate.run_model)
baselines.keypoint_nearest_neighbours = enter("keypoint baseline", "metrics", baselines.keypoint_nearest_neighbours)
evaluate.write_report = enter("report", "report", evaluate.write_report)
if len(sys.argv) > 5 and sys.argv[5] == "tuned":
    StreamingKeypointData.MALLOC_EVAL = (512 << 10, 4 << 20)
real_release = StreamingKeypointData.release
def release(self):
    reader.update(peak_mb=self.reader.peak_bytes / 2**20, blocks_read=self.reader.blocks_read,
                  lru_budget_mb=self.reader.budget / 2**20, rest_held_mb=self.held_bytes / 2**20)
    real_release(self)
StreamingKeypointData.release = release

baseline = anon_bytes()
watch = PeakWatch(lambda: phase[0])
t0 = time.perf_counter()
assert evaluate.main([*common, "--cache", cache, "--out", out]) == 0
seconds = time.perf_counter() - t0
peaks = watch.stop()
growth = {k: (v - baseline) / 2**20 for k, v in peaks.items()}
print(json.dumps({"growth_mb": max([*growth.values(), (anon_bytes() - baseline) / 2**20]),
                  "growth_by_phase_mb": growth, "seconds": seconds, "reader": reader,
                  "baseline_mb": baseline / 2**20}))
"""


def train_run(cache: Path, run: Path, budget_mb: int) -> None:
    from s2t.train import train

    train(tiny_cfg("max_steps=2", "eval_every=2", "ckpt_every=2", "log_every=1", f"memory_budget_mb={budget_mb}"),
          cache, run)


def probe(run: Path, warm: Path, cache: Path, out: Path, variant: str = "") -> tuple[dict, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(run), str(warm), str(cache), str(out), variant],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"eval probe failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    return {**result, "keypoints": summary["keypoints"]}, summary


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    return a == b


def show(name: str, r: dict, budget: int) -> None:
    phases = ", ".join(f"{k} {v:.0f}" for k, v in r["growth_by_phase_mb"].items())
    print(f"  {name}: growth {r['growth_mb']:.1f} MB = {r['growth_mb'] / budget:.2f}x budget "
          f"({phases}); reader peak {r['reader'].get('peak_mb', 0):.0f} MB, the rest held "
          f"{r['reader'].get('rest_held_mb', 0):.0f} MB; {r['seconds']:.0f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[64, 256], metavar="MB")
    ap.add_argument("--factor", type=float, default=4.0, help="cache keypoints / budget")
    ap.add_argument("--no-tuned", action="store_true",
                    help="skip the streamed eval with glibc's malloc thresholds set (512 kB mmap, 4 MB trim)")
    ap.add_argument("--work", type=Path, help="folder for the caches and runs (default: a temporary one)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the in-memory eval (at the smallest budget) and the summary comparison")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_memory.json")
    args = ap.parse_args(argv)

    result = {
        "what": "peak growth of RssAnon during `s2t eval --run RUN --cache LARGE --split test --beam 0` (the "
                "run's config: stream false, memory_budget_mb = budget_mb; eval streams because the cache is "
                "larger), over the value after a warm-up eval in the same process, by phase",
        "target": "growth_mb <= 1.25 * budget_mb", "factor": args.factor, "runs": [],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory(prefix="bench-eval-memory-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        warm = make_corpus(work / "small")
        for budget in sorted(args.budgets):
            t0 = time.perf_counter()
            large = work / f"large-{budget}"
            cache = write_large_cache(large, int(args.factor * budget * 2**20))
            print(f"budget {budget} MB: cache of {cache['samples']} samples, {cache['keypoint_mb']:.0f} MB of "
                  f"keypoints ({time.perf_counter() - t0:.0f} s to write)", flush=True)
            train_run(warm, work / f"run-{budget}", budget)
            streamed, s_summary = probe(work / f"run-{budget}", warm, large, work / f"eval-{budget}")
            show("streamed", streamed, budget)
            row = {"budget_mb": budget, "limit_mb": 1.25 * budget, "cache": cache, "streamed": streamed,
                   "growth_over_budget": streamed["growth_mb"] / budget, "met": streamed["growth_mb"] <= 1.25 * budget}
            if not args.no_tuned:
                tuned, _ = probe(work / f"run-{budget}", warm, large, work / f"eval-{budget}-tuned", variant="tuned")
                show("malloc thresholds set", tuned, budget)
                row |= {"streamed_tuned_malloc": tuned, "met_tuned_malloc": tuned["growth_mb"] <= 1.25 * budget}
            if not args.no_reference and budget == min(args.budgets):
                train_run(warm, work / f"run-{budget}-memory", int(cache["keypoint_mb"]) * 2 + 64)
                memory, m_summary = probe(work / f"run-{budget}-memory", warm, large, work / f"eval-{budget}-memory")
                show("in memory", memory, budget)
                for s in (s_summary, m_summary):
                    for key in ("seconds", "keypoints", "run", "checkpoint"):
                        s.pop(key, None)
                row |= {"in_memory": memory, "same_summary": same(s_summary, m_summary)}
                print(f"  same summary streamed and in memory: {row['same_summary']}", flush=True)
            result["runs"].append(row)
            shutil.rmtree(large)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

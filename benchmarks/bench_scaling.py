"""Scaling benchmark: keypoint extraction with Dask workers, training throughput with torchrun ranks.

    .venv/bin/python benchmarks/bench_scaling.py [--videos 6] [--frames 30] [--steps 30]

Extraction: the same MediaPipe videos (one shard each) with the local backend (loky, 1 job: the
reference) and with joblib's Dask backend on a LocalCluster of 1 and of 2 single-threaded worker
processes (started here, reached through its scheduler address as a remote cluster would be).
Training: `torchrun --nproc_per_node 1` vs `2` on CPU (gloo) with configs/train/tiny_cpu.yaml on a
generated cache; throughput is the trainer's own samples/s (all ranks), median over its log lines
after the first. Ratios compare measurements of this same run. Writes benchmarks/results/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess.features import build_cache  # noqa: E402
from bench_features import person_videos  # noqa: E402  (this folder is on sys.path when run as a script)
from tests.helpers import make_corpus  # noqa: E402


def bench_extraction(work: Path, n_videos: int, n_frames: int) -> dict:
    from distributed import LocalCluster

    manifest = person_videos(work, n_videos, n_frames)

    def run(name, **kw):
        # a distinct cache root per run: no run may reuse another's cache
        t = build_cache(manifest, work / f"cache-{name}", shard_size=1, progress=False, **kw).timings
        return {"wall_s": t["wall"], "frames": t["frames"], "frames_per_s": t["frames"] / t["wall"]}

    out = {"loky_1": run("loky1", jobs=1)}
    for workers in (1, 2):
        # the cluster is up before the clock starts, as a cluster started by SLURM would be
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as c:
            out[f"dask_{workers}"] = run(f"dask{workers}", backend="dask", scheduler=c.scheduler_address)
    out["dask_2_vs_dask_1"] = out["dask_2"]["frames_per_s"] / out["dask_1"]["frames_per_s"]
    out["dask_1_vs_loky_1"] = out["dask_1"]["frames_per_s"] / out["loky_1"]["frames_per_s"]
    return out


def bench_training(work: Path, steps: int) -> dict:
    cache = make_corpus(work / "train-cache", train_per_label=40, val_per_label=2)
    out = {}
    for ranks in (1, 2):
        run = work / f"run-{ranks}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "s2t", "train", "--cache", str(cache), "--config", "configs/train/tiny_cpu.yaml",
               "--run-dir", str(run), f"max_steps={steps}", "log_every=5", "eval_every=100000",
               "ckpt_every=100000", "batch_size=24", "queue_start=0"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rates = [e["samples_per_s"] for e in logs if e["split"] == "train"][1:]  # the first window has start-up
        out[f"ranks_{ranks}"] = {"samples_per_s": float(np.median(rates)), "per_rank_batch": 24,
                                 "command": " ".join(["torchrun", *cmd[3:]])}
    out["ranks_2_vs_1"] = out["ranks_2"]["samples_per_s"] / out["ranks_1"]["samples_per_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--note", default="", help="stored with the results (e.g. what else the machine was doing)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the load average says whether the machine was idle: on a busy one the ratios mean little
        result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "processor": platform.machine(), "load_average_before": os.getloadavg()},
                  "command": " ".join([Path(sys.executable).name, *sys.argv]), "note": a.note,
                  "extraction": bench_extraction(work, a.videos, a.frames),
                  "training": bench_training(work, a.steps)}
        result["machine"]["load_average_after"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    e, t = result["extraction"], result["training"]
    print(f"extraction: loky 1 job {e['loky_1']['frames_per_s']:.1f} frames/s; dask 1 worker "
          f"{e['dask_1']['frames_per_s']:.1f}, 2 workers {e['dask_2']['frames_per_s']:.1f} "
          f"-> {e['dask_2_vs_dask_1']:.2f}x")
    print(f"training: 1 rank {t['ranks_1']['samples_per_s']:.1f} samples/s, 2 ranks "
          f"{t['ranks_2']['samples_per_s']:.1f} -> {t['ranks_2_vs_1']:.2f}x")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

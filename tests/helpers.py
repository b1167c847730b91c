"""Helpers shared by tests and benchmarks: a tiny synthetic corpus, written as a real cache, and a
model small enough that a few dozen training steps take seconds on a 2-core CPU; raw corpora for
`make features`, caches larger than a memory budget, and a process's memory measured as it runs."""
import csv
import json
import threading
import time
from pathlib import Path

import numpy as np

from preprocess import store
from preprocess.layout import COMPONENT_SLICES, POSE_INDEX
from preprocess.store import write_cache
from preprocess.text import load_tokenizer, tokenize
from s2t.config import load_config

ROOT = Path(__file__).resolve().parent.parent

SENTENCES = ["do you have pain in your chest", "take two tablets every morning",
             "the doctor will see you now", "are you allergic to penicillin",
             "we need to check your blood pressure", "call us if the fever gets worse"]

# A model small enough that a few dozen steps take seconds on a 2-core CPU.
TINY = ["embed_dim=64", "proj_dim=32", "heads=4", "batch_size=24", "samples_per_label=4",
        "queue_size=48", "queue_start=2", "warmup_steps=5", "lr=2e-3", "log_every=1"]


def synthetic_sample(label: int, rng, n_labels: int) -> np.ndarray:
    """(T, 543, 3): a body at a random place/size whose right wrist draws a label-specific loop
    with a label-specific hand shape; the left hand is sometimes not detected (NaN)."""
    T = int(rng.integers(16, 36))
    kp = np.full((T, 543, 3), np.nan, np.float32)
    shift, size = rng.normal(0, 0.03, 2), rng.uniform(0.8, 1.2)
    pose = rng.normal(0, 0.05, (33, 3)) * size
    pose[POSE_INDEX["left_shoulder"], :2], pose[POSE_INDEX["right_shoulder"], :2] = [0.1 * size, 0], [-0.1 * size, 0]
    kp[:, COMPONENT_SLICES["pose"]] = pose + [0.5 + shift[0], 0.5 + shift[1], 0]
    t = np.linspace(0, 1, T)
    freq, phase = 1 + label % 3, 2 * np.pi * label / n_labels
    wrist = np.stack([0.5 + shift[0] + 0.1 * size * np.cos(2 * np.pi * freq * t + phase),
                      0.4 + shift[1] + 0.1 * size * np.sin(2 * np.pi * freq * t + phase), np.zeros(T)], 1)
    shape = np.random.default_rng(label).normal(0, 0.03, (21, 3))
    shape[0] = 0
    kp[:, COMPONENT_SLICES["right_hand"]] = wrist[:, None] + shape * size + rng.normal(0, 0.003, (T, 21, 3))
    kp[:, COMPONENT_SLICES["left_hand"]] = [0.6, 0.6, 0] + shape[::-1] * size + rng.normal(0, 0.003, (T, 21, 3))
    kp[rng.random(T) < 0.2, COMPONENT_SLICES["left_hand"]] = np.nan
    return kp


def make_corpus(out, train_per_label=12, val_per_label=4, seed=0):
    rng = np.random.default_rng(seed)
    rows, kps = [], []
    for label, sentence in enumerate(SENTENCES):
        for j in range(train_per_label + val_per_label):
            rows.append({"id": f"s{label}_{j}", "text": sentence, "split": "train" if j < train_per_label else "val",
                         "signer": f"p{j % 3}", "label": sentence, "fps": 15.0})
            kps.append(synthetic_sample(label, rng, len(SENTENCES)))
    ids, lengths = tokenize(load_tokenizer("default"), [r["text"] for r in rows], 16)
    # frozen "sentence embeddings": one fixed random unit vector per sentence
    emb = np.random.default_rng(99).normal(size=(len(SENTENCES), 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    text = {"input_ids": ids, "lengths": lengths, "embeddings": emb[[SENTENCES.index(r["text"]) for r in rows]],
            "tokenizer": "default", "text_model": "random-per-sentence"}
    return write_cache(out, rows, kps, text)


def tiny_cfg(*overrides):
    return load_config("configs/train/tiny_cpu.yaml", [*TINY, *overrides])


def losses_by_step(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e for e in lines if e["split"] == "train"}, [e for e in lines if e["split"] == "val"]


# What the tiny run's training asked the data for (filled by conftest.py's tiny_run fixture).
TRAINING_READ: dict[str, set] = {}


# ----------------------------------------------------------------------------- `make features` inputs

NPY_SENTENCES = ["may i have your health insurance card", "where does it hurt", "do you have a fever",
                 "please take a deep breath"]


def write_npy_corpus(folder: Path, n: int, frames: int = 20, seed: int = 0) -> tuple[Path, list]:
    rng = np.random.default_rng(seed)
    (folder / "kp").mkdir(parents=True, exist_ok=True)
    rows, arrays = [], []
    for i in range(n):
        a = rng.normal(size=(frames + i % 5, 543, 3)).astype(np.float32)
        a[::4, COMPONENT_SLICES["right_hand"]] = np.nan
        np.save(folder / "kp" / f"v{i:03d}.npy", a)
        arrays.append(a)
        rows.append({"id": f"v{i:03d}", "path": f"kp/v{i:03d}.npy", "text": NPY_SENTENCES[i % len(NPY_SENTENCES)],
                     "split": ["train", "train", "val", "test"][i % 4], "signer": f"s{i % 3}"})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest, arrays


# ----------------------------------------------------------------------------- distributed (gloo)

def run_two_ranks(worker, args, timeout_s: float = 180) -> None:
    """Run worker(rank, *args) in two spawned processes (the gloo tests); fail the test if they hang."""
    import pytest  # (here: the benchmarks import this module without pytest)
    import torch.multiprocessing as mp

    # spawn, not fork: a forked child of a process whose OpenMP pool has run can deadlock
    ctx = mp.start_processes(worker, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the two gloo workers did not finish in {timeout_s:.0f} s")


# ----------------------------------------------------------------------------- memory

FRAME_BYTES = 2 * 3 * (33 + 21 + 21) + 4  # decoded pose + hands (float16 xyz) + presence flags, per frame


def write_large_cache(out: Path, target_bytes: int, shard_size: int = 256,
                      frames: int | tuple[int, int] = (75, 226), seed: int = 0) -> dict:
    """A sealed cache of synthetic clips whose decoded pose + hands + presence take target_bytes (whole
    shards, rounded up): one shard of clips is made and written again under new ids (it compresses
    well on disk; decoded, every shard costs its full size) until the size is reached. frames: the
    clips' length, fixed or drawn anew per shard in [low, high). One clip in 20 is in the test split,
    one in 20 in val, the rest in train."""
    rng = np.random.default_rng(seed)
    template = [synthetic_sample(i % len(SENTENCES), rng, len(SENTENCES)) for i in range(shard_size)]
    rows, n_frames, shard = [], 0, 0
    while n_frames * FRAME_BYTES < target_bytes:
        lengths = (np.full(shard_size, frames) if isinstance(frames, int)
                   else rng.integers(frames[0], frames[1], size=shard_size))
        kps = [kp[np.resize(np.arange(len(kp)), n)] for kp, n in zip(template, lengths)]
        ids = [f"c{shard}_{i}" for i in range(shard_size)]
        store.write_keypoint_shard(out, shard, "zarr", [{"id": x, "row": len(rows) + i, "fps": 15.0}
                                                        for i, x in enumerate(ids)], kps, [])
        for i, x in enumerate(ids):
            k = len(rows)
            split = "test" if k % 20 == 0 else "val" if k % 20 == 1 else "train"
            sentence = SENTENCES[i % len(SENTENCES)]
            rows.append({"id": x, "text": sentence, "split": split, "signer": f"p{k % 5}", "label": sentence})
        n_frames += int(lengths.sum())
        shard += 1
    store.seal_keypoints(out, shard, {"name": out.name, "fingerprint": "large", "format": "zarr",
                                      "settings": {}, "versions": {}})
    ids, lengths = tokenize(load_tokenizer("default"), [r["text"] for r in rows], 16)
    emb = np.random.default_rng(99).normal(size=(len(SENTENCES), 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ann = {k: [r[k] for r in rows] for k in ("id", "text", "split", "signer", "label")}
    store.write_text_store(out, "large", "zarr", ann, ids, lengths,
                           emb[[SENTENCES.index(r["text"]) for r in rows]],
                           {"tokenizer": "default", "text_model": "random-per-sentence"})
    return {"samples": len(rows), "frames": n_frames, "keypoint_mb": n_frames * FRAME_BYTES / 2**20,
            "test_samples": sum(r["split"] == "test" for r in rows), "shards": shard}


def anon_bytes() -> int:
    """This process's anonymous resident memory (RssAnon: heap and anonymous maps, where arrays and
    tensors live; library code pages are not in it). Linux only."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


class PeakWatch:
    """anon_bytes() sampled every 2 ms on a thread until stop(), which returns the peak of each phase:
    phase() names the phase a sample belongs to (by default one phase, None)."""

    def __init__(self, phase=lambda: None, every_s: float = 0.002):
        self.peaks: dict = {}
        self._phase, self._every = phase, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(self._every):
            now = anon_bytes()
            key = self._phase()
            self.peaks[key] = max(self.peaks.get(key, 0), now)

    def stop(self) -> dict:
        self._done.set()
        self._thread.join()
        return self.peaks

"""Helpers shared by tests and benchmarks: a tiny synthetic corpus, written as a real cache, and a
model small enough that a few dozen training steps take seconds on a 2-core CPU."""
import json

import numpy as np

from preprocess.layout import COMPONENT_SLICES, POSE_INDEX
from preprocess.store import write_cache
from preprocess.text import load_tokenizer, tokenize
from s2t.config import load_config

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

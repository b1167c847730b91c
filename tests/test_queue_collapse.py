"""The memory-queue collapse of open-set data (issue 15), reproduced small: one clip per sentence,
a queue that joins mid-training. With queued head outputs (`queue_keys: projected`, the recipe
before the fix) validation NegSim jumps once the queue joins; with keys re-projected through the
current heads (`queue_keys: pooled`, the fix) it keeps falling. The same check runs on both: it
must fail for the old keys (so it does detect the collapse) and pass for the new ones."""
import json

import numpy as np
import pytest

from preprocess.store import write_cache
from preprocess.text import load_tokenizer, tokenize
from s2t.train import train
from tests.helpers import synthetic_sample, tiny_cfg

QUEUE_START = 60
SETTINGS = [f"queue_start={QUEUE_START}", "max_steps=120", "eval_every=20", "ckpt_every=120", "log_every=20",
            "queue_size=512", "batch_size=32", "samples_per_label=2", "adapt_samples_per_label=true",
            "lr=3e-3", "loss_weights.ce=0.5"]


@pytest.fixture(scope="module")
def open_set_cache(tmp_path_factory):
    """240 clips, each its own sentence (one in six held out for validation)."""
    n, rng = 240, np.random.default_rng(0)
    rows = [{"id": f"c{i}", "text": f"sentence number {i}", "split": "train" if i % 6 else "val",
             "signer": "p0", "label": "", "fps": 15.0} for i in range(n)]
    kps = [synthetic_sample(i, rng, n) for i in range(n)]
    ids, lengths = tokenize(load_tokenizer("default"), [r["text"] for r in rows], 16)
    emb = np.random.default_rng(99).normal(size=(n, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return write_cache(tmp_path_factory.mktemp("open_set") / "cache", rows, kps,
                       {"input_ids": ids, "lengths": lengths, "embeddings": emb,
                        "tokenizer": "default", "text_model": "random-per-sentence"})


def neg_sim_after_the_queue_joins(cache, run, queue_keys: str) -> tuple[float, float]:
    """(val NegSim when the queue joins, the highest val NegSim after it)."""
    train(tiny_cfg(f"queue_keys={queue_keys}", *SETTINGS), cache, run)
    val = {e["step"]: e["neg_sim"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if e["split"] == "val"}
    return val[QUEUE_START], max(v for s, v in val.items() if s > QUEUE_START)


def test_the_queue_no_longer_collapses_open_set_embeddings(open_set_cache, tmp_path):
    joined, worst = neg_sim_after_the_queue_joins(open_set_cache, tmp_path / "pooled", "pooled")
    assert worst <= joined + 0.02, f"NegSim {joined:.3f} -> {worst:.3f} after the queue joined"
    # the same check on the recipe before the fix: it collapses (so the check can fail)
    joined_old, worst_old = neg_sim_after_the_queue_joins(open_set_cache, tmp_path / "projected", "projected")
    assert joined_old == pytest.approx(joined, abs=1e-4)  # identical until the queue joins
    assert worst_old > joined_old + 0.1, f"projected keys: NegSim {joined_old:.3f} -> {worst_old:.3f}"

"""`torchrun --nproc_per_node 2 -m s2t train` end to end on CPU (gloo): one writer, gathered
queue keys, resume under two ranks. (The loss/gradient equality of one distributed step with a
single process on the concatenated batch is tests/test_losses.py::test_two_ranks_equal_one_big_batch.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2t.checkpoint import load_checkpoint
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parent.parent


def torchrun(*args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "s2t", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.test_train import make_corpus
    return make_corpus(tmp_path_factory.mktemp("ddp") / "cache")


def test_torchrun_two_ranks_trains_resumes_and_only_rank0_writes(corpus, tmp_path):
    run = tmp_path / "run"
    # queue on from step 4: steps 4 and 5 each push the gathered batch of both ranks (2 x 24 keys)
    common = [*TINY, "max_steps=6", "eval_every=3", "ckpt_every=100", "queue_size=192", "queue_start=4"]
    torchrun("--cache", str(corpus), "--config", "configs/train/tiny_cpu.yaml", "--run-dir", str(run),
             "--stop-after", "3", *common)
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["last.safetensors", "step-000003.safetensors"]
    torchrun("--cache", str(corpus), "--run-dir", str(run), "--resume")

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [e["step"] for e in lines if e["split"] == "train"]
    # one line per step: a second writer would have doubled them (or interleaved its own)
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in lines if e["split"] == "val"] == [3, 6]
    assert len(list((run / "tb").glob("events.*"))) == 2  # one TensorBoard file per launch, rank 0's
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "last.safetensors", "step-000003.safetensors", "step-000006.safetensors"]
    tensors, meta = load_checkpoint(run / "last.safetensors")
    assert meta["step"] == 6 and meta["samples_seen"] == 6 * 24 * 2  # batch_size is per rank
    # the queues hold the keys of both ranks: 2 pushes x 2 ranks x 24, not 2 x 24
    for q in ("supcon", "clip_video", "clip_text"):
        assert int(tensors[f"queue.{q}.count"]) == 96, q
        assert (tensors[f"queue.{q}.labels"][:96] >= 0).all()

"""`torchrun --nproc_per_node 2 -m s2t train` end to end on CPU (gloo): one writer, gathered
queue keys, resume under two ranks. (The loss/gradient equality of one distributed step with a
single process on the concatenated batch is tests/test_losses.py::test_two_ranks_equal_one_big_batch.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2t.checkpoint import load_checkpoint
from tests.helpers import TINY

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
    from tests.helpers import make_corpus
    return make_corpus(tmp_path_factory.mktemp("ddp") / "cache")


def test_torchrun_two_ranks_trains_resumes_and_only_rank0_writes(corpus, tmp_path):
    run = tmp_path / "run"
    # queue on from step 4: steps 4 and 5 each push the gathered batch of both ranks (2 x 24 keys)
    common = [*TINY, "max_steps=6", "eval_every=3", "ckpt_every=100", "queue_size=192", "queue_start=4"]
    torchrun("--cache", str(corpus), "--config", "configs/train/tiny_cpu.yaml", "--run-dir", str(run),
             "--stop-after", "3", *common)
    # (best.safetensors: the step-3 validation is the best so far; only rank 0 writes it)
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "best.safetensors", "last.safetensors", "step-000003.safetensors"]
    torchrun("--cache", str(corpus), "--run-dir", str(run), "--resume")

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [e["step"] for e in lines if e["split"] == "train"]
    # one line per step: a second writer would have doubled them (or interleaved its own)
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in lines if e["split"] == "val"] == [3, 6]
    assert len(list((run / "tb").glob("events.*"))) == 2  # one TensorBoard file per launch, rank 0's
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "best.safetensors", "last.safetensors", "step-000003.safetensors", "step-000006.safetensors"]
    tensors, meta = load_checkpoint(run / "last.safetensors")
    assert meta["step"] == 6 and meta["samples_seen"] == 6 * 24 * 2  # batch_size is per rank
    # the queues hold the keys of both ranks: 2 pushes x 2 ranks x 24, not 2 x 24
    for q in ("supcon", "clip_video", "clip_text"):
        assert int(tensors[f"queue.{q}.count"]) == 96, q
        assert (tensors[f"queue.{q}.labels"][:96] >= 0).all()


# ------------------------------------------------------------------------------------------
# One DDP step equals one single-process step on the concatenated batch

def _one_step(corpus, rows, ddp: bool):
    """Loss and parameter gradients of one SupCon + CLIP step on samples `rows` (no dropout, no
    augmentation, no queue: nothing random), the model wrapped in DDP when `ddp`."""
    from s2t.checkpoint import build_model
    from s2t.data import KeypointData
    from s2t.losses import Losses
    from tests.helpers import tiny_cfg

    torch.set_num_threads(1)
    cfg = tiny_cfg("dropout=0.0", "augment.enabled=false", "loss_weights.ce=0.0", "queue_size=0")
    data = KeypointData(corpus, cfg)
    info = {"vocab": data.vocab.to_json(), "in_dim": data.feature_dim, "text_dim": data.text_dim}
    torch.manual_seed(0)  # the same initial weights everywhere
    model, _ = build_model(cfg, info)
    model.encoder.set_input_stats(*data.feature_stats("train"))
    losses = Losses(cfg, data.vocab, "cpu")
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if ddp else model
    batch = data.batch(rows)
    out = net(batch.x, batch.mask, None, batch.text_emb, heads=losses.heads())
    total, parts = losses(out, batch)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"total": total.detach(), **{k: v.detach() for k, v in parts.items()}}, grads


def _ddp_worker(rank, world, init_file, corpus, rows, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = len(rows) // world
    values, grads = _one_step(corpus, rows[rank * n:(rank + 1) * n], ddp=True)
    torch.save({"values": values, "grads": grads}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_one_ddp_step_equals_one_big_batch_step(corpus, tmp_path):
    """SupCon + CLIP through the real model, DDP on 2 gloo processes: the mean of the ranks' losses
    is the single-process loss on the concatenated batch, and the parameter gradients (after DDP's
    average) are its gradients - not world-size times them, though each rank's features got the
    gradient of every rank's loss through gather_with_grad."""
    import numpy as np

    from s2t.data import KeypointData
    from tests.helpers import run_two_ranks, tiny_cfg

    train_rows = KeypointData(corpus, tiny_cfg()).rows("train")
    rows = np.random.default_rng(0).permutation(train_rows)[:32]  # positives within and across ranks
    run_two_ranks(_ddp_worker, (2, str(tmp_path / "init"), str(corpus), rows, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    values, grads = _one_step(str(corpus), rows, ddp=False)
    for key in ("total", "supcon", "clip"):
        mean = (ranks[0]["values"][key] + ranks[1]["values"][key]) / 2
        torch.testing.assert_close(mean, values[key], rtol=1e-4, atol=1e-5)
    assert set(ranks[0]["grads"]) == set(grads) and len(grads) > 10
    for name, g in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=1e-3, atol=1e-5, msg=name)
        torch.testing.assert_close(ranks[1]["grads"][name], ranks[0]["grads"][name], msg=name)

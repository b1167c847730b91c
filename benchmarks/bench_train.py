"""Trainer benchmark: training throughput, batch-assembly share, padding efficiency, GPU memory.

    .venv/bin/python benchmarks/bench_train.py [--samples 512] [--steps 3] [--rec-steps 1]

Writes benchmarks/results/train.json. All measurements are taken in this run. Throughput runs
on a generated cache (random-walk keypoints) whose clips are all longer than max_frames, so every
batch is (B, max_frames): the worst case, and the same shape at every batch size. Padding
efficiency is computed from clip lengths of a sentence-level corpus (see corpus_lengths). On a machine without CUDA the GPU memory of recommended.yaml at batch
128 in fp16 is an ESTIMATE: parameters/gradients/AdamW state counted exactly, activations counted
as the bytes autograd saves for backward in one fp16-autocast forward pass on the CPU (a CUDA
run with flash attention saves less, so this errs high). With CUDA it is measured.

Batch assembly share (`--only-share` runs just this part; writes benchmarks/results/batch_assembly.json):
one training batch assembled by `KeypointData.batch` (frame index selection, gather, augmentation,
frame features) against one whole step of s2t.train.train_step (the trainer's own step: getting its
batch from the BatchFeed + forward + backward + AdamW) of tiny_cpu at batch 128, in one process with
the same thread count, medians of interleaved repeats; with tiny_cpu's augmentation and with the
recipe's (TrainConfig's Augment defaults: tiny_cpu turns the people augmentations off), in memory
and streamed. Two trainers take turns, step by step: one makes its batches in the loop
(prefetch_batches 0), the other ahead on its feed's thread (the default). "Wait" is the part of
the step the loop spends getting its batch (StepResult.data_s), what a user pays.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preprocess.layout import COMPONENT_SLICES, POSE_INDEX  # noqa: E402
from preprocess.store import write_cache  # noqa: E402
from s2t.checkpoint import build_model  # noqa: E402
from s2t.config import Augment, load_config  # noqa: E402
from s2t.data import BatchFeed, KeypointData, load_data  # noqa: E402
from s2t.losses import Losses  # noqa: E402
from s2t.sampler import PKBatchSampler  # noqa: E402
from s2t.train import (Job, TrainState, batch_assembler, make_generators, make_sampler,  # noqa: E402
                       resolve_precision, train_step)

CONFIGS = {"tiny_cpu": ROOT / "configs/train/tiny_cpu.yaml", "recommended": ROOT / "configs/train/recommended.yaml"}
BATCHES = (32, 128, 256)


def corpus_lengths(n: int, n_sentences: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sentence label, frames) of n clips: each sentence has a typical duration (lognormal around
    ~4 s at 25 fps) and each signing of it varies around that by ~15% (signer speed)."""
    rng = np.random.default_rng(seed)
    base = np.clip(rng.lognormal(np.log(100), 0.5, n_sentences), 25, 400)
    labels = np.arange(n) % n_sentences
    return labels, np.maximum(8, base[labels] * rng.lognormal(0, 0.15, n)).astype(np.int64)


def make_cache(out: Path, n: int, n_sentences: int, vocab_ids: int = 3000) -> Path:
    """n clips of 160-240 frames (longer than any preset's max_frames, even after augmentation)."""
    rng = np.random.default_rng(0)
    sentence_of, lengths = np.arange(n) % n_sentences, rng.integers(160, 240, n)
    rows, kps = [], []
    for i, T in enumerate(lengths):
        kp = np.full((T, 543, 3), np.nan, np.float32)
        for part in ("pose", "left_hand", "right_hand"):
            s = COMPONENT_SLICES[part]
            base = rng.uniform(0.3, 0.7, (1, s.stop - s.start, 3))
            kp[:, s] = base + np.cumsum(rng.normal(0, 0.003, (T, s.stop - s.start, 3)), axis=0)
        kp[:, POSE_INDEX["left_shoulder"], :2] = [0.6, 0.5]
        kp[:, POSE_INDEX["right_shoulder"], :2] = [0.4, 0.5]
        kps.append(kp)
        sentence = sentence_of[i]
        rows.append({"id": f"b{i}", "text": f"sentence {sentence}", "split": "train", "signer": "a",
                     "label": f"sentence {sentence}", "fps": 25.0})
    L = 24
    ids = np.zeros((n, L), np.int32)
    text_len = rng.integers(6, L, n)
    for i, m in enumerate(text_len):  # token ids of a few-thousand-word corpus
        ids[i, 0], ids[i, 1:m - 1], ids[i, m - 1] = 101, rng.integers(1000, 1000 + vocab_ids, m - 2), 102
    emb = rng.normal(size=(n, 384)).astype(np.float32)
    text = {"input_ids": ids, "lengths": text_len.astype(np.int32),
            "embeddings": emb / np.linalg.norm(emb, axis=1, keepdims=True), "tokenizer": "default",
            "text_model": "random"}
    return write_cache(out, rows, kps, text)


def throughput(cache: Path, name: str, batch: int, steps: int, device: torch.device, warmup: int = 1) -> dict:
    """Full training steps (batch assembly + forward + backward + AdamW) at a given batch size;
    the first `warmup` steps (allocations, kernel selection) are not timed."""
    cfg = load_config(CONFIGS[name], [f"batch_size={batch}", "device=" + device.type])
    data = KeypointData(cache, cfg, device)
    info = {"vocab": data.vocab.to_json(), "in_dim": data.feature_dim, "text_dim": data.text_dim}
    model = build_model(cfg, info)[0].to(device).train()
    losses = Losses(cfg, data.vocab, device, model=model, text_dim=data.text_dim)  # queue_keys: pooled needs both
    opt = torch.optim.AdamW(model.parameter_groups(cfg.weight_decay), lr=cfg.lr)
    amp = resolve_precision(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    rows = data.rows("train")
    sampler = PKBatchSampler(data.label_np[rows], data.lengths[rows], batch, cfg.samples_per_label, seed=0)
    gens = (torch.Generator().manual_seed(0), torch.Generator(device=device).manual_seed(1))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_data = t_total = 0.0
    frames = padded = 0
    for step in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        b = data.batch(rows[next(sampler)], *gens)
        sync()
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False):
            out = model(b.x, b.mask, b.tokens[:, :-1], b.text_emb)
            total, _ = losses(out, b)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.push(out, b)
        sync()
        if step >= warmup:
            t_data += t1 - t0
            t_total += time.perf_counter() - t0
            frames += int(b.mask.sum())
            padded += b.mask.numel()
    res = {"batch": batch, "frames": int(b.x.shape[1]), "steps_timed": steps, "warmup_steps": warmup,
           "samples_per_s": batch * steps / t_total,
           "step_s": t_total / steps, "batch_assembly_share": t_data / t_total,
           "batch_assembly_ms": 1000 * t_data / steps, "padding_efficiency": frames / padded,
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.type == "cuda":
        res["peak_gpu_mem_GB"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return res


# tiny_cpu's own augmentation, and the recipe's (every Augment default, people augmentations on)
AUGMENTATIONS = {"tiny_cpu": [], "recipe": [f"augment.{k}={v}" for k, v in vars(Augment()).items()]}
SHARE_TARGET = 0.01  # issue 14: batch assembly <= 1 % of a tiny_cpu step at batch 128 on the CPU


def _tiny_trainer(cache: Path, augmentation: str, device: torch.device, batch: int, stream: bool, ahead: int):
    """tiny_cpu's trainer as s2t.train builds it: (data, step function, feed, config, overrides). ahead: batches its
    feed makes ahead on its thread (prefetch_batches; 0: in the loop)."""
    overrides = [f"batch_size={batch}", "device=" + device.type, f"prefetch_batches={ahead}",
                 *AUGMENTATIONS[augmentation]]
    if stream:
        overrides += ["stream=true", "memory_budget_mb=4096"]
    cfg = load_config(CONFIGS["tiny_cpu"], overrides)
    data = load_data(cache, cfg, device)
    info = {"vocab": data.vocab.to_json(), "in_dim": data.feature_dim, "text_dim": data.text_dim}
    model = build_model(cfg, info)[0].to(device).train()
    losses = Losses(cfg, data.vocab, device, model=model, text_dim=data.text_dim)
    opt = torch.optim.AdamW(model.parameter_groups(cfg.weight_decay, cfg.text_encoder_lr_scale), lr=cfg.lr,
                            betas=tuple(cfg.adam_betas))
    amp = resolve_precision(cfg, device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else (lambda: torch.autocast(device.type,
                                                                                                    enabled=False))
    job = Job(0, 1, device)
    state = TrainState(model, losses, opt, torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
                       make_generators(cfg, job))
    rows = data.rows("train")
    feed = BatchFeed(data, make_sampler(cfg, data, rows, job), rows, batch_assembler(cfg, losses, state.gens),
                     state.gens, cfg.prefetch_batches)
    return data, (lambda: train_step(state, model, data, feed, cfg, autocast, 1)), feed, cfg, overrides


def batch_share(cache: Path, augmentation: str, steps: int, device: torch.device, batch: int = 128,
                stream: bool = False, ahead: int = 2, assemblies: int = 3, warmup: int = 2) -> dict:
    """Batch assembly vs a whole training step of tiny_cpu (see the module doc). Two trainers, the
    same but for where batches are made (in the loop; `ahead` on the feed's thread), take turns:
    one step each, in alternating order, so that the machine's drift hits both alike; after the
    in-loop trainer's step, `assemblies` standalone `data.batch` calls (in memory; their own
    sampler and generators, the step's batch size and augmentation). Wall and thread CPU time."""
    data, step_loop, feed_loop, cfg, overrides = _tiny_trainer(cache, augmentation, device, batch, stream, 0)
    _, step_ahead, feed_ahead, _, _ = _tiny_trainer(cache, augmentation, device, batch, stream, ahead)
    rows = data.rows("train")
    own = PKBatchSampler(data.label_np[rows], data.lengths[rows], batch, cfg.samples_per_label, seed=1)
    gens = (torch.Generator().manual_seed(2), torch.Generator(device=device).manual_seed(3))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {k: [] for k in ("step", "step_cpu", "wait", "assembly", "assembly_cpu", "step_ahead", "wait_ahead")}

    def timed_step(step, into: str, wait: str, keep: bool) -> None:
        sync()
        t, c = time.perf_counter(), time.thread_time()
        done = step()
        sync()
        if keep:
            times[into].append(time.perf_counter() - t)
            times[wait].append(done.data_s)
            if into == "step":
                times["step_cpu"].append(time.thread_time() - c)

    try:
        for i in range(warmup + steps):
            keep = i >= warmup
            for turn in ((0, 1) if i % 2 == 0 else (1, 0)):
                if turn == 1:
                    timed_step(step_ahead, "step_ahead", "wait_ahead", keep)
                    continue
                timed_step(step_loop, "step", "wait", keep)
                for _ in range(assemblies if not data.streams else 0):
                    idx = rows[next(own)]
                    sync()
                    t, c = time.perf_counter(), time.thread_time()
                    b = data.batch(idx, *gens)
                    sync()
                    if keep:
                        times["assembly"].append(time.perf_counter() - t)
                        times["assembly_cpu"].append(time.thread_time() - c)
    finally:
        feed_loop.close()
        feed_ahead.close()
    med = {k: float(np.median(v)) if v else None for k, v in times.items()}
    res = {"config": "tiny_cpu", "augmentation": augmentation, "overrides": overrides, "batch": batch,
           "frames": int(b.x.shape[1]) if med["assembly"] is not None else None, "stream": stream,
           "made_ahead": ahead, "threads": torch.get_num_threads(),
           "steps_timed": steps, "warmup_steps": warmup, "assemblies_timed": len(times["assembly"]),
           "step_ms": 1000 * med["step"], "step_cpu_ms": 1000 * med["step_cpu"], "wait_ms": 1000 * med["wait"],
           "wait_share": med["wait"] / med["step"],
           "ahead_step_ms": 1000 * med["step_ahead"], "ahead_wait_ms": 1000 * med["wait_ahead"],
           "ahead_wait_share": med["wait_ahead"] / med["step_ahead"],
           # each ahead step against the in-loop step next to it
           "ahead_vs_loop_step": float(np.median(np.array(times["step_ahead"]) / np.array(times["step"])))}
    if med["assembly"] is not None:
        compute = float(np.median(np.array(times["step"]) - np.array(times["wait"])))  # forward + backward + AdamW
        res |= {"assembly_ms": 1000 * med["assembly"], "assembly_cpu_ms": 1000 * med["assembly_cpu"],
                "assembly_share": med["assembly"] / med["step"],
                "assembly_share_of_compute": med["assembly"] / compute,
                "assembly_share_cpu": med["assembly_cpu"] / med["step_cpu"]}
    res["met"] = res["ahead_wait_share"] <= SHARE_TARGET
    res["raw_s"] = times
    return res


def share_line(r: dict) -> str:
    what = (f"assembly {r['assembly_ms']:.2f} ms = {100 * r['assembly_share']:.2f}% of a step "
            f"(CPU time: {100 * r['assembly_share_cpu']:.2f}%); " if "assembly_ms" in r else "")
    return (f"tiny_cpu batch {r['batch']}, {r['augmentation']} augmentation{', streamed' if r['stream'] else ''}, "
            f"{r['threads']} thread(s): {what}made in the loop: step {r['step_ms']:.0f} ms, the loop waits "
            f"{r['wait_ms']:.2f} ms = {100 * r['wait_share']:.2f}%; made {r['made_ahead']} ahead: step "
            f"{r['ahead_step_ms']:.0f} ms ({r['ahead_vs_loop_step']:.3f}x), the loop waits {r['ahead_wait_ms']:.2f} ms "
            f"= {100 * r['ahead_wait_share']:.2f}%")


def padding(n_clips: int, n_sentences: int, max_frames: int, batch: int, k: int, batches: int = 200) -> dict:
    """Real frames / padded frames per batch: the bucketed P x K sampler vs the same sampler
    without bucketing vs plain random batches (K = 1, no bucketing)."""
    labels, lengths = corpus_lengths(n_clips, n_sentences, seed=1)
    capped = np.minimum(lengths, max_frames)

    def eff(k_, window):
        s = PKBatchSampler(labels, capped, batch, k_, bucket_batches=window, seed=0)
        b = np.array([next(s) for _ in range(batches)])
        return float(capped[b].sum() / (capped[b].max(1) * batch).sum())
    return {"bucketed_pxk": eff(k, 50), "pxk_no_bucketing": eff(k, 1), "random": eff(1, 1),
            "batch": batch, "samples_per_label": k, "max_frames": max_frames, "n_clips": n_clips,
            "n_sentences": n_sentences}


def gpu_memory(cache: Path, batch: int = 128) -> dict:
    """recommended.yaml at `batch` with fp16: measured on CUDA, else estimated (see module doc)."""
    cfg = load_config(CONFIGS["recommended"], [f"batch_size={batch}"])
    if torch.cuda.is_available():
        r = throughput(cache, "recommended", batch, 2, torch.device("cuda"), warmup=1)
        return {"kind": "measured", "device": torch.cuda.get_device_name(), "peak_GB": r["peak_gpu_mem_GB"]}
    data = KeypointData(cache, cfg, "cpu")
    info = {"vocab": data.vocab.to_json(), "in_dim": data.feature_dim, "text_dim": data.text_dim}
    model = build_model(cfg, info)[0].train()
    n_params = sum(p.numel() for p in model.parameters())
    # the longest clips fill every batch to max_frames: the worst case
    rows = np.argsort(-data.lengths)[:batch]
    b = data.batch(rows)
    seen, saved = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            saved[0] += t.untyped_storage().nbytes()
        return t
    losses = Losses(cfg, data.vocab, "cpu", model=model, text_dim=data.text_dim)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(b.x, b.mask, b.tokens[:, :-1], b.text_emb)
            losses(out, b)
    state = n_params * (4 + 4 + 8)  # fp32 weights, fp32 grads, AdamW exp_avg + exp_avg_sq
    total = state + saved[0]
    return {"kind": "estimate (no CUDA here): parameters exact, activations = bytes saved for backward in "
                    "one CPU fp16-autocast forward; excludes the CUDA context (~0.5 GB) and allocator slack",
            "batch": batch, "frames": int(b.x.shape[1]), "tokens": int(b.tokens.shape[1]),
            "vocab": data.vocab.size, "params_M": n_params / 1e6, "weights_grads_adam_GB": state / 2**30,
            "activations_GB": saved[0] / 2**30, "total_GB": total / 2**30,
            "total_with_context_and_20pct_slack_GB": (total * 1.2 + 0.5 * 2**30) / 2**30,
            "fits_8GB": bool(total * 1.2 + 0.5 * 2**30 < 8 * 2**30)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=320, help="clips in the generated cache (>= 256)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per tiny_cpu measurement")
    p.add_argument("--rec-steps", type=int, default=1, help="timed steps per recommended measurement (slow on CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/train.json"))
    p.add_argument("--share-steps", type=int, default=12,
                   help="timed training steps per batch-assembly-share measurement (0: skip it)")
    p.add_argument("--only-share", action="store_true", help="measure the batch assembly share only")
    p.add_argument("--share-out", default=str(ROOT / "benchmarks/results/batch_assembly.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "device": str(device),
                          "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                          "load_avg_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        cache = make_cache(Path(tmp) / "cache", args.samples, n_sentences=args.samples // 4)
        if args.share_steps:
            shares = {"what": "KeypointData.batch of one training batch vs one s2t.train.train_step of tiny_cpu, "
                              "same process and threads, medians (see benchmarks/bench_train.py)",
                      "target": f"ahead_wait_share <= {SHARE_TARGET}", "machine": dict(result["machine"]), "rows": []}
            for augmentation, stream in (("tiny_cpu", False), ("recipe", False), ("tiny_cpu", True),
                                         ("recipe", True)):
                r = batch_share(cache, augmentation, args.share_steps, device, stream=stream)
                print(share_line(r), flush=True)
                shares["rows"].append(r)
            shares["machine"]["load_avg_at_end"] = os.getloadavg()
            Path(args.share_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.share_out).write_text(json.dumps(shares, indent=1) + "\n")
            print("wrote", args.share_out)
        if args.only_share:
            return 0
        result["throughput"] = {}
        for name in CONFIGS:
            steps = args.steps if name == "tiny_cpu" else args.rec_steps
            # recommended on a CPU: minutes per step, so its one timed step is also its first
            warmup = 0 if name == "recommended" and device.type == "cpu" else 1
            result["throughput"][name] = []
            for batch in BATCHES:
                r = throughput(cache, name, batch, steps, device, warmup)
                print(f"{name:12s} batch {batch:3d} x {r['frames']} frames: {r['samples_per_s']:7.1f} samples/s, "
                      f"step {r['step_s']:.2f}s, "
                      f"batch assembly {100 * r['batch_assembly_share']:.1f}% ({r['batch_assembly_ms']:.1f} ms)",
                      flush=True)
                result["throughput"][name].append(r)
        # 11k clips like the user's corpus; many repeats per sentence (20/sentence) or few (5)
        result["padding"] = {}
        for name, path in CONFIGS.items():
            c = load_config(path)
            for n_sent in (550, 2200):
                r = padding(11000, n_sent, c.max_frames, 128, c.samples_per_label)
                result["padding"][f"{name}_{11000 // n_sent}_per_sentence"] = r
                print(f"padding efficiency {name} (max_frames {c.max_frames}, K {c.samples_per_label}, "
                      f"{11000 // n_sent} clips/sentence): bucketed P x K {r['bucketed_pxk']:.3f}, "
                      f"P x K unbucketed {r['pxk_no_bucketing']:.3f}, random {r['random']:.3f}")
        result["gpu_memory_recommended_b128_fp16"] = gpu_memory(cache)
        print("GPU memory, recommended b128 fp16:", json.dumps(result["gpu_memory_recommended_b128_fp16"], indent=1))
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

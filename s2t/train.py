"""`python -m s2t train`: SupCon + CLIP + caption cross-entropy on a feature cache.

Plain PyTorch, top to bottom: load the cache into memory (or, with `stream: true`, read it batch
by batch under `memory_budget_mb`: caches larger than memory) -> build the model -> loop over
optimizer steps (accumulating micro-batches) -> validate / log / checkpoint. Resume restores
everything that decides the next step (weights, AdamW moments, GradScaler, sampler position,
augmentation and dropout RNG, memory queues), so a resumed run repeats the uninterrupted one.

Multi-GPU: `torchrun --nproc_per_node N -m s2t train --cache C --config Y --run-dir R` (spell
--run as --run-dir there: torchrun's parser reads --run as its own option); every rank draws its own
share of each epoch's batches and the contrastive losses score local against gathered features.
Resume is exact for a single process; with several ranks it continues from the same state but
reseeds each rank's augmentation/dropout streams (the checkpoint holds rank 0's).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from preprocess.cli import report_error
from preprocess.store import write_json_atomic
from preprocess.text import word_embeddings

from .checkpoint import (BEST, CONFIG, LAST, RUN_INFO, CheckpointError, build_model, link_checkpoint,
                         load_checkpoint, read_run, remove_stale_temps, save_checkpoint, strip,
                         write_run_info)
from .config import ConfigError, TrainConfig, load_config
from .data import Batch, BatchFeed, KeypointData, load_data
from .device import resolve_device
from .losses import Losses
from .metrics import derangement, embedding_metrics
from .report import validation_warnings
from .sampler import PKBatchSampler, samples_per_label
from .vocab import Vocab

log = logging.getLogger("s2t.train")
METRICS = "metrics.jsonl"
# validation metrics a best checkpoint can be chosen by -> whether higher is better
BEST_METRICS = {"ret1_v2t": True, "ret5_v2t": True, "ret1_t2v": True, "pos_sim": True, "rankme": True,
                "visual_dependence_ce": True, "loss": False, "ce": False, "clip": False, "supcon": False,
                "neg_sim": False}


class TrainingError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Small pieces

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = fp32): fp16 + GradScaler on CUDA by default, fp32 on CPU."""
    p = cfg.precision
    if p == "auto":
        p = "fp16" if device.type == "cuda" else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise TrainingError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[p]


def batch_assembler(cfg: TrainConfig, losses, gens: dict[str, torch.Generator]):
    """What the BatchFeed makes of a batch's rows: data.batch with the augmentation generators, then
    the decoder's input with token dropout, drawn from the same generator right after the batch's
    augmentation (the order the loop used when it made batches itself)."""
    def assemble(data: KeypointData, rows: np.ndarray, frames) -> Batch:
        batch = data.batch(rows, gens["aug_time"], gens["aug_space"], frames=frames)
        if losses.needs_decoder:
            batch.dec_in = batch.tokens[:, :-1]
            if cfg.token_dropout > 0:
                batch.dec_in = drop_tokens(batch.dec_in, cfg.token_dropout, data.vocab.unk, data.vocab.pad,
                                           gens["aug_space"])
        return batch
    return assemble


def drop_tokens(inputs: torch.Tensor, p: float, unk: int, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Decoder inputs with a share p of the real tokens after BOS replaced by [UNK] (word dropout,
    Bowman et al. 2016): the next word must then come from the video more often than from the words
    before it, which is what a decoder that recites training sentences lacks."""
    hit = torch.rand(inputs.shape, generator=gen, device=inputs.device) < p
    hit[:, 0] = False  # BOS stays
    return torch.where(hit & (inputs != pad), torch.full_like(inputs, unk), inputs)


@torch.no_grad()
def validate(model, data: KeypointData, losses: Losses, cfg: TrainConfig, autocast, split="val") -> dict:
    """Val losses (no queue), the collapse metrics of the video/text embeddings, and the decoder's
    visual dependence: its CE again with every video swapped for one of another sentence."""
    was_training = model.training
    model.eval()
    sums, n, video, text, labels, text_ids = {}, 0, [], [], [], []
    head = "clip" if "clip" in losses.active else "supcon"
    for batch in data.iterate(split, cfg.batch_size):
        with autocast():
            out = model(batch.x, batch.mask, batch.tokens[:, :-1], batch.text_emb, heads=("supcon", "clip"),
                        text_ids=batch.text_ids, text_attention=batch.text_attention)
            total, parts = losses(out, batch, training=False)
            if "ce" in parts:
                perm = derangement(batch.label.cpu()).to(batch.x.device)  # fixed seed: no RNG consumed
                swapped = model(batch.x[perm], batch.mask[perm], batch.tokens[:, :-1], batch.text_emb,
                                heads=("supcon", "clip"), text_ids=batch.text_ids,
                                text_attention=batch.text_attention)
                parts["ce_swapped"] = losses(swapped, batch, training=False)[1]["ce"]
        b = len(batch.index)
        for k, v in {"loss": total, **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        n += b
        video.append(out[head].float())
        text.append(out["text"].float())
        labels.append(batch.label)
        text_ids.append(batch.text_id)
    model.train(was_training)
    if n == 0:
        return {}
    metrics = embedding_metrics(torch.cat(video), torch.cat(text), torch.cat(labels).cpu(),
                                text_keys=torch.cat(text_ids).cpu())
    mean = {k: v / n for k, v in sums.items()}
    if "ce_swapped" in mean:
        mean["visual_dependence_ce"] = mean["ce_swapped"] - mean["ce"]
    return {**mean, "pos_sim": metrics["pos_sim"], "neg_sim": metrics["neg_sim"],
            "ret1_v2t": metrics["ret1_v2t"], "ret1_t2v": metrics["ret1_t2v"], "ret5_v2t": metrics["ret5_v2t"],
            "rankme": metrics["rankme"], "n_samples": n, "head": head}


def resolve_best_metric(cfg: TrainConfig) -> tuple[str, bool]:
    """(validation metric that picks best.safetensors, higher is better), refused before any work
    when this run cannot compute it."""
    active = [k for k, v in cfg.loss_weights.items() if v > 0]
    name = cfg.best_metric
    if name == "auto":
        name = "ret1_v2t" if "clip" in active else "ce" if "ce" in active else "loss"
    if name not in BEST_METRICS:
        raise TrainingError(f"best_metric {name!r} is not a validation metric; choose auto or one of "
                            f"{sorted(BEST_METRICS)}")
    loss = {"visual_dependence_ce": "ce"}.get(name, name)
    if loss in ("ce", "clip", "supcon") and loss not in active:
        raise TrainingError(f"best_metric {name!r}: that loss is switched off in this config")
    if name.endswith(("_v2t", "_t2v")) and "clip" not in active:
        # without the CLIP loss the video and text embeddings share no space: retrieval is noise
        raise TrainingError(f"best_metric {name!r} needs the CLIP loss (loss_weights.clip > 0); use ce or loss")
    return name, BEST_METRICS[name]


def improves(value, best: dict | None, higher: bool) -> bool:
    """Whether a validation value beats the best so far (ties do not: the earlier step stays)."""
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best["value"] if higher else value < best["value"])


NEG_SIM_JUMP = 0.2  # a rise of val NegSim this large between two validations is a collapse starting


def neg_sim_jump(before: dict, now: dict, cfg: TrainConfig, step: int) -> str | None:
    """A warning when val NegSim jumped since the last validation: the embedding space is folding
    into a cone (issue 15 saw 0.32 -> 0.90 right after the memory queue joined). Names the queue
    when it joined in between, since that is the usual cause."""
    a, b = before.get("neg_sim"), now.get("neg_sim")
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b - a < NEG_SIM_JUMP:
        return None
    cause = (f"; the memory queue joined at step {cfg.queue_start} (queue_keys: {cfg.queue_keys}): "
             "queue_keys: pooled re-projects queued keys through the current heads"
             if cfg.queue_size and cfg.queue_start <= step else "")
    return (f"NegSim rose from {a:.3f} to {b:.3f} since the last validation: the embeddings are "
            f"collapsing into one cone{cause}. The best checkpoint so far is kept as best.safetensors")


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (one host sync; one tiny all_reduce under DDP)."""
    ok = torch.isfinite(loss).float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


# ---------------------------------------------------------------------------------------------
# Checkpoint state

@dataclass
class TrainState:
    """What the optimizer steps change and a checkpoint saves, besides the sampler's position:
    weights, AdamW moments, GradScaler, augmentation/dropout generators, memory queues (in the
    losses), the step, and the counters that travel in the checkpoint metadata (so the best value
    so far survives --resume)."""
    model: torch.nn.Module  # the model itself, never its DDP wrapper
    losses: Losses
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gens: dict[str, torch.Generator]
    step: int = 0
    counters: dict = field(default_factory=lambda: {"bad_steps": 0, "samples_seen": 0, "best": None})


def training_state(model, opt, scaler, sampler, gen_states: dict[str, torch.Tensor], losses, step,
                   counters) -> tuple[dict, dict]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for pid, state in osd["state"].items():
        for name, value in state.items():
            tensors[f"optim.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    for qname, q in losses.queues.items():
        for key, value in q.state_dict().items():
            tensors[f"queue.{qname}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    for name, g_state in gen_states.items():
        tensors[f"rng.{name}"] = g_state
    meta = {"step": step, "optim_groups": osd["param_groups"], "scaler": scaler.state_dict(),
            "sampler": sampler.state_dict(), **counters}
    return tensors, meta


def restore_state(path: Path, model, opt, scaler, sampler, gens, losses) -> dict:
    tensors, meta = load_checkpoint(path)
    model.load_state_dict(strip(tensors, "model."))
    state: dict[int, dict] = {}
    for key, value in strip(tensors, "optim.").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
    if meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    sampler.load_state_dict(meta["sampler"])
    for qname, q in losses.queues.items():
        q.load_state_dict(strip(tensors, f"queue.{qname}."))
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    for name, g in gens.items():
        g.set_state(tensors[f"rng.{name}"].to(g.get_state().device))
    return meta


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------------------------------------
# The run

def train(cfg: TrainConfig, cache_dir, run_dir, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train; returns the last validation metrics (empty dict without a val split)."""
    run_dir = Path(run_dir)
    job = setup_distributed(cfg)
    device, main_proc = job.device, job.main
    amp_dtype = resolve_precision(cfg, device)
    autocast = partial(torch.autocast, device.type, dtype=amp_dtype) if amp_dtype else nullcontext
    best_metric, higher = resolve_best_metric(cfg)

    # --- data and model (the run folder's vocabulary on resume, so ids cannot shift)
    torch.manual_seed(cfg.seed + job.rank)
    info = open_run_folder(run_dir, resume)
    data = load_train_data(cfg, cache_dir, device, info, main_proc)
    train_rows, has_val = data.rows("train"), len(data.rows("val")) > 0
    info = info or {"cache": data.cache_dir, "vocab": data.vocab.to_json(), "components": data.components,
                    "in_dim": data.feature_dim, "text_dim": data.text_dim, "text_model": data.text_model}
    raw_model = build_train_model(cfg, info, data, device, fresh=not resume, main_proc=main_proc)
    losses = Losses(cfg, data.vocab, device, model=raw_model, text_dim=data.text_dim)
    model = job.wrap(raw_model, losses)  # what the training forward pass calls
    if main_proc:
        n_params = sum(p.numel() for p in raw_model.parameters())
        log.info("model: %.2fM parameters, precision %s, device %s", n_params / 1e6,
                 str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32", device)
    opt = torch.optim.AdamW(raw_model.parameter_groups(cfg.weight_decay, cfg.text_encoder_lr_scale), lr=cfg.lr,
                            betas=tuple(cfg.adam_betas), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    sampler = make_sampler(cfg, data, train_rows, job)
    state = TrainState(raw_model, losses, opt, scaler, make_generators(cfg, job))

    # --- where the run starts: the last checkpoint on resume, else step 0
    if resume:
        resume_state(state, sampler, run_dir, cfg, job, best_metric)
    elif main_proc:
        clear_run_folder(run_dir)
    if main_proc:
        info = {**info, "best_metric": best_metric, "best": state.counters["best"]}  # run.json says which step is best
        write_run_info(run_dir, cfg, info)  # the resolved config (with resume overrides) + vocabulary

    # --- the loop. The next batches are made on a background thread while this one trains; the
    # feed's sampler and generator states are those after the last batch trained on, so
    # checkpoints stay exact
    feed = BatchFeed(data, sampler, train_rows, batch_assembler(cfg, losses, state.gens), state.gens,
                     cfg.prefetch_batches)
    run_log = RunLog(run_dir, main_proc, state.step, cfg.max_steps)
    val = {}
    model.train()
    try:
        while state.step < cfg.max_steps:
            done = train_step(state, model, data, feed, cfg, autocast, job.world)
            step = state.step
            run_log.count(done)
            if main_proc and (step % cfg.log_every == 0 or step == cfg.max_steps):
                run_log.train_entry(step, done, state, data)
            run_log.bar.update(1)

            new_best = False
            if has_val and main_proc and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                val, new_best = validate_and_log(state, data, cfg, autocast, (best_metric, higher), val, run_log)
            job.barrier()

            stopping = stop_after is not None and step >= stop_after
            if main_proc and (step % cfg.ckpt_every == 0 or step == cfg.max_steps or stopping or new_best):
                write_checkpoint(state, feed, run_dir, cfg, info, best=new_best)
            if stopping:
                log.info("stopping after step %d as asked (--stop-after)", step)
                break
    finally:
        feed.close()
        run_log.close()
        job.close()
    return val


# ---------------------------------------------------------------------------------------------
# Setup: processes, run folder, data, model, sampler

@dataclass(frozen=True)
class Job:
    """This process's place in the training job: its rank among `world` (torchrun's environment;
    one process without torchrun) and its device. Rank 0 alone logs, validates and checkpoints."""
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model, losses: Losses):
        """The model as the training forward pass calls it: in DDP on several ranks."""
        if self.world > 1:  # a part of the model no active loss reads gets no gradient: tell DDP
            return torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=not losses.uses_whole_model)
        return model

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(cfg: TrainConfig) -> Job:
    """Rank, world size and device from torchrun's environment; with several ranks, the process
    group (NCCL on GPUs, Gloo on CPUs)."""
    rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in
                               (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    device = resolve_device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Job(rank, world, device)


def open_run_folder(run_dir: Path, resume: bool) -> dict | None:
    """The run info (run.json) of the run to resume, None for a new run. Refuses to resume a folder
    without a checkpoint, and to start a new run over an existing one."""
    if resume:
        if not (run_dir / LAST).is_file():
            raise TrainingError(f"{run_dir}: nothing to resume (no {LAST})")
        return read_run(run_dir)[1]
    if (run_dir / LAST).exists():
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it or pick a new --run")
    return None


def clear_run_folder(run_dir: Path) -> None:
    """A new run in a folder whose earlier run never reached a checkpoint: its log and best go."""
    for name in (METRICS, BEST):
        (run_dir / name).unlink(missing_ok=True)


def load_train_data(cfg: TrainConfig, cache_dir, device, info: dict | None, main_proc: bool) -> KeypointData:
    """The cache (in memory, or streamed with cfg.stream), with the resumed run's vocabulary when
    `info` is given; rank 0 says what it holds and warns about validation that predicts little."""
    t0 = time.time()
    data = load_data(cache_dir, cfg, device, vocab=Vocab.from_json(info["vocab"]) if info else None)
    train_rows, val_rows = data.rows("train"), data.rows("val")
    if len(train_rows) == 0:
        raise TrainingError(f"{cache_dir}: no samples with split 'train'")
    if not main_proc:
        return data
    log.info("cache %s: %d train / %d val samples, %d features per frame, vocabulary %d (%s), "
             "data on %s, loaded in %.1fs", cache_dir, len(train_rows), len(val_rows),
             data.feature_dim, data.vocab.size, data.vocab.kind,
             f"streamed from the cache ({cfg.memory_budget_mb} MB budget)" if data.streams else data.resident_device,
             time.time() - t0)
    if len(val_rows) == 0:
        log.warning("no 'val' split in the cache: no validation metrics will be computed")
    elif data.seen_val_signers():
        seen = data.seen_val_signers()
        log.warning("validation signers %s also sign in training: validation will not predict how "
                    "unseen people fare; hold whole signers out with val_signers=[...]%s", seen[:10],
                    "" if len(seen) < len(set(data.signers[val_rows].tolist())) else
                    " (every validation signer is a training signer)")
    if getattr(data, "mirrored", None) is not None and cfg.canonical_hand != "none":
        for split, r in (("train", train_rows), ("val", val_rows)):
            if len(r):
                log.info("canonical_hand: %.1f%% of %s clips mirrored (signed mainly with the left hand)",
                         100 * data.mirrored[r].mean(), split)
    return data


def build_train_model(cfg: TrainConfig, info: dict, data: KeypointData, device, fresh: bool, main_proc: bool):
    """The model on `device`. A fresh one gets the training set's input statistics and, with
    token_init: pretrained, the text model's word embeddings (on resume both come with the weights)."""
    model, _ = build_model(cfg, info)
    model.to(device)
    if fresh:
        model.encoder.set_input_stats(*data.feature_stats("train"))
        if cfg.token_init == "pretrained":
            source = data.vocab.tokenizer  # the model whose vocabulary the token ids index
            model.init_token_embeddings(torch.from_numpy(word_embeddings(source)))
            if main_proc:
                log.info("decoder token embeddings initialised from the word embeddings of %s", source)
    tower = model.text_tower
    if tower is not None and main_proc:
        n_train = sum(p.numel() for p in tower.parameters() if p.requires_grad)
        log.info("text_encoder: finetune: %s, %s trained (%.2fM parameters, lr x %g)%s", tower.text_model,
                 f"top {tower.train_layers} of {len(tower.model.encoder.layer)} layers" if tower.train_layers
                 else "all layers and the embeddings", n_train / 1e6, cfg.text_encoder_lr_scale,
                 "; the frozen bottom's output is kept per distinct sentence" if tower.frozen_layers else "")
    return model


def make_sampler(cfg: TrainConfig, data: KeypointData, train_rows, job: Job) -> PKBatchSampler:
    """P x K batches over the training rows (this rank's share of each epoch), K lowered to the
    median number of clips per training label when cfg.adapt_samples_per_label."""
    k = (samples_per_label(data.label_np[train_rows], cfg.samples_per_label, cfg.batch_size)
         if cfg.adapt_samples_per_label else cfg.samples_per_label)
    if job.main and k != cfg.samples_per_label:
        log.info("samples_per_label: %d instead of %d (the median training label has %d clips; more "
                 "would be augmented copies taking the place of other sentences)", k, cfg.samples_per_label,
                 int(np.median(np.unique(data.label_np[train_rows], return_counts=True)[1])))
    return PKBatchSampler(data.label_np[train_rows], data.lengths[train_rows], cfg.batch_size,
                          k, cfg.bucket_batches, seed=cfg.seed, rank=job.rank, world=job.world)


def make_generators(cfg: TrainConfig, job: Job) -> dict[str, torch.Generator]:
    """This rank's augmentation streams: time on the CPU, space (and token dropout) on the device."""
    return {"aug_time": torch.Generator().manual_seed(cfg.seed * 1000 + job.rank),
            "aug_space": torch.Generator(device=job.device).manual_seed(cfg.seed * 1000 + 500 + job.rank)}


# ---------------------------------------------------------------------------------------------
# One step

@dataclass
class StepResult:
    lr: float
    losses: dict[str, float]  # "loss" (the weighted sum) and each active loss, means over the micro-batches
    grad_norm: float  # before clipping; NaN for a skipped step
    samples: int  # trained on, all ranks together
    data_s: float  # seconds spent assembling batches


def train_step(state: TrainState, model, data: KeypointData, feed: BatchFeed, cfg: TrainConfig, autocast,
               world: int) -> StepResult:
    """One optimizer step over cfg.accumulation_steps micro-batches; advances state.step. A loss that
    is NaN/inf on any rank skips the step, counted: more than max_bad_steps stop the run."""
    losses, opt, scaler, counters = state.losses, state.opt, state.scaler, state.counters
    lr = lr_at(state.step, cfg)
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # lr_scale: the fine-tuned text tower's groups
    opt.zero_grad(set_to_none=True)
    parts_sum, finite, samples, data_s = None, True, 0, 0.0
    # the queue waits until the encoder drifts slowly (XBM, Wang et al. 2020): embeddings
    # queued while it still changes fast are stale and pull everything into one cone
    queue_on = state.step >= cfg.queue_start
    for micro in range(cfg.accumulation_steps):
        t_data = time.perf_counter()
        batch = next(feed)
        data_s += time.perf_counter() - t_data
        # DDP: all-reduce gradients once per step, on the last micro-batch
        last_micro = micro == cfg.accumulation_steps - 1
        with (model.no_sync() if world > 1 and not last_micro else nullcontext()), autocast():
            out = model(batch.x, batch.mask, batch.dec_in,
                        batch.text_emb if losses.needs_text else None, heads=losses.heads(),
                        text_ids=batch.text_ids, text_attention=batch.text_attention)
            total, parts = losses(out, batch, use_queue=queue_on)
            scaler.scale(total / cfg.accumulation_steps).backward()
        detached = torch.stack([total.detach(), *[p.detach() for p in parts.values()]])
        parts_sum = detached if parts_sum is None else parts_sum + detached
        ok = all_ranks_finite(total.detach())  # the same answer on every rank: collectives stay in step
        finite = finite and ok
        if queue_on and ok:  # never let a NaN embedding into the queues
            losses.push(out, batch)
        samples += len(batch.index) * world
    values = (parts_sum / cfg.accumulation_steps).tolist()
    if not finite:
        counters["bad_steps"] += 1
        opt.zero_grad(set_to_none=True)
        log.warning("step %d: loss is %s; step skipped (%d so far)", state.step + 1, values[0], counters["bad_steps"])
        if counters["bad_steps"] > cfg.max_bad_steps:
            raise TrainingError(f"{counters['bad_steps']} steps with a NaN/inf loss (max_bad_steps "
                                f"{cfg.max_bad_steps}); lower lr, check the cache, or use fp32")
        grad_norm = float("nan")
    else:
        scaler.unscale_(opt)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            state.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
        scaler.step(opt)
        scaler.update()
    state.step += 1
    counters["samples_seen"] += cfg.batch_size * cfg.accumulation_steps * world
    return StepResult(lr, dict(zip(["loss", *parts], values)), grad_norm, samples, data_s)


# ---------------------------------------------------------------------------------------------
# Validation and checkpoints (rank 0)

def validate_and_log(state: TrainState, data: KeypointData, cfg: TrainConfig, autocast, best_by: tuple[str, bool],
                     previous: dict, run_log: RunLog) -> tuple[dict, bool]:
    """Validation at state.step, logged with its warnings (collapse; NegSim jumped since `previous`)
    -> (metrics, whether they are the best so far by best_by = (metric, higher is better))."""
    step, (best_metric, higher) = state.step, best_by
    val = validate(state.model, data, state.losses, cfg, autocast)
    new_best = improves(val.get(best_metric), state.counters["best"], higher)
    if new_best:
        state.counters["best"] = {"metric": best_metric, "value": float(val[best_metric]), "step": step}
    run_log.record({"step": step, "split": "val", **{k: v for k, v in val.items() if k != "head"},
                    "best_metric": best_metric, "is_best": new_best})
    if new_best:
        log.info("step %d val: best %s so far (%.4f) -> %s", step, best_metric, val[best_metric], BEST)
    log.info("step %d val: loss %.3f PosSim %.3f NegSim %.3f Ret@1 v2t %.3f t2v %.3f", step,
             val["loss"], val["pos_sim"], val["neg_sim"], val["ret1_v2t"], val["ret1_t2v"])
    for warning in validation_warnings(val):  # the same rule as `s2t eval`'s verdict
        log.warning("step %d val (%s head): %s", step, val["head"], warning)
    drift = neg_sim_jump(previous, val, cfg, step)
    if drift:
        log.warning("step %d val: %s", step, drift)
    return val, new_best


def write_checkpoint(state: TrainState, feed: BatchFeed, run_dir: Path, cfg: TrainConfig, info: dict,
               best: bool = False) -> None:
    """step-NNNNNN.safetensors, linked as last (and as best), the oldest beyond keep_checkpoints removed."""
    tensors, meta = training_state(state.model, state.opt, state.scaler, feed, feed.generator_states(), state.losses,
                                   state.step, state.counters)
    periodic = run_dir / f"step-{state.step:06d}.safetensors"
    save_checkpoint(periodic, tensors, meta)
    link_checkpoint(periodic, run_dir / LAST)
    if best:  # after last: best is never newer than the checkpoint a resume starts from
        link_checkpoint(periodic, run_dir / BEST)
        write_json_atomic(run_dir / RUN_INFO, info | {"best": state.counters["best"]})
    for old in sorted(run_dir.glob("step-*.safetensors"))[: -cfg.keep_checkpoints]:
        old.unlink()


def resume_state(state: TrainState, sampler: PKBatchSampler, run_dir: Path, cfg: TrainConfig, job: Job,
                 best_metric: str) -> None:
    """Load last.safetensors into `state` and the sampler, and drop what was logged after it."""
    meta = restore_state(run_dir / LAST, state.model, state.opt, state.scaler, sampler, state.gens, state.losses)
    step = state.step = meta["step"]
    state.counters = {k: meta.get(k, v) for k, v in state.counters.items()}
    if job.main:
        state.counters["best"] = _resume_best(run_dir, state.counters["best"], best_metric, step)
    if job.world > 1:  # the checkpoint holds rank 0's RNG: give every rank its own stream again
        torch.manual_seed(cfg.seed + 7919 * step + job.rank)
        for i, g in enumerate(state.gens.values()):
            g.manual_seed(cfg.seed * 1000 + 7919 * step + 2 * job.rank + i)
    if job.main:
        truncate_metrics(run_dir / METRICS, step)
        # what was restored, in one line: where the sampler stands and how full the queues are
        losses = state.losses
        queued = losses.active_queues()
        queues = (", ".join(f"{n} {losses.queues[n].count}/{losses.queues[n].size}" for n in queued)
                  + f" (joining at step {cfg.queue_start})" if cfg.queue_size and queued else "off")
        log.info("resumed %s at step %d: sampler epoch %d, batch %d of %d in the epoch; memory queues %s; "
                 "%d samples seen", run_dir / LAST, step, sampler.epoch, sampler.position, len(sampler._plan),
                 queues, state.counters["samples_seen"])


def _resume_best(run_dir: Path, best: dict | None, metric: str, step: int) -> dict | None:
    """The best-so-far of the checkpoint we resume from, with best.safetensors made to agree."""
    path = run_dir / BEST
    if best is not None and best.get("metric") != metric:
        log.warning("best_metric is now %s (the run kept %s): best.safetensors starts again", metric,
                    best["metric"])
        best = None
    if best is None:
        if path.exists():
            path.unlink()
    elif best["step"] == step:  # killed between writing last and linking best: link it now
        link_checkpoint(run_dir / LAST, path)
    return best


# ---------------------------------------------------------------------------------------------
# Logging (rank 0)

class RunLog:
    """Rank 0's record of the run: metrics.jsonl, TensorBoard scalars (when tensorboard is
    installed), the progress bar, and the throughput since the last train entry. Other ranks get
    one that writes nothing and shows no bar."""

    def __init__(self, run_dir: Path, main_proc: bool, step: int, max_steps: int):
        self.writer = _tensorboard(run_dir) if main_proc else None
        self.file = open(run_dir / METRICS, "a") if main_proc else None
        self.bar = tqdm(total=max_steps, initial=step, disable=not main_proc, dynamic_ncols=True, desc="train")
        self._restart_window()

    def _restart_window(self) -> None:
        self.window_start, self.samples, self.data_s = time.time(), 0, 0.0

    def count(self, done: StepResult) -> None:
        self.samples += done.samples
        self.data_s += done.data_s

    def record(self, entry: dict) -> None:
        # strict JSON: a NaN/inf value (a skipped step, PosSim without pairs) is written as null
        entry = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in entry.items():
                if isinstance(v, (int, float)) and k != "step":  # (None is neither)
                    self.writer.add_scalar(f"{entry.get('split', 'train')}/{k}", v, entry["step"])

    def train_entry(self, step: int, done: StepResult, state: TrainState, data: KeypointData) -> None:
        elapsed = time.time() - self.window_start
        entry = {"step": step, "split": "train", **done.losses, "lr": done.lr, "grad_norm": done.grad_norm,
                 "logit_scale": float(state.model.clip_scale().detach()), "samples_per_s": self.samples / elapsed,
                 "data_share": self.data_s / elapsed, "bad_steps": state.counters["bad_steps"]}
        if data.streams:  # what the streaming reader holds: tune memory_budget_mb with these
            entry |= {"stream_held_mb": data.reader.bytes_held / 2**20,
                      "stream_peak_mb": data.reader.peak_bytes / 2**20,
                      "stream_blocks_read": data.reader.blocks_read}
        self.record(entry)
        self.bar.set_postfix({k: f"{entry[k]:.3f}" for k in done.losses})
        self._restart_window()

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _tensorboard(run_dir: Path):
    try:  # lazy: tensorboard is optional (a dev extra)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: metrics go to %s only", run_dir / METRICS)
        return None
    return SummaryWriter(str(run_dir / "tb"))


# ---------------------------------------------------------------------------------------------
# CLI

HELP = """Train a sign-to-text model on a feature cache made by `make features`.

The config is a YAML preset (configs/train/*.yaml) optionally followed by an overlay (e.g.
configs/train/cpu_scale.yaml: the same recipe with a CPU-sized model), then key=value
overrides, e.g. batch_size=256 loss_weights.clip=0.5 augment.enabled=false.
The run folder receives metrics.jsonl, TensorBoard logs (tb/), config.yaml, run.json and
checkpoints (last.safetensors, step-NNNNNN.safetensors, and best.safetensors: the best
validation value of best_metric, which `s2t eval` scores). --resume continues from
last.safetensors with the run's own config.yaml (+ any key=value overrides).
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s2t train", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="sealed cache folder (cache/<name>-<fingerprint>)")
    p.add_argument("--config", help="training preset YAML (not needed with --resume)")
    p.add_argument("--config-overlay", action="append", default=[],
                   help="YAML applied after --config (repeatable), e.g. configs/train/cpu_scale.yaml")
    p.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run folder for checkpoints and logs (--run-dir: the same, for torchrun, "
                        "whose own options make --run ambiguous)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its last checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="checkpoint and exit after this step, as if interrupted (time slicing, tests)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        if args.resume:
            saved = Path(args.run) / CONFIG
            if not saved.is_file():
                raise TrainingError(f"{args.run}: nothing to resume (no {CONFIG})")
            cfg = load_config([saved], args.overrides)
            if args.config:
                asked = load_config([args.config, *args.config_overlay], args.overrides)
                if asked != cfg:
                    log.warning("--resume uses the run's own %s; --config %s differs and is ignored",
                                saved, args.config)
        else:
            if not args.config:
                p.error("--config is required (unless --resume)")
            cfg = load_config([args.config, *args.config_overlay], args.overrides)
        if int(os.environ.get("RANK", 0)) == 0 and Path(args.run).is_dir():
            for tmp in remove_stale_temps(args.run):  # a checkpoint save cut short by a kill
                log.info("removed %s, left by an interrupted checkpoint save", tmp)
        train(cfg, args.cache, args.run, resume=args.resume, stop_after=args.stop_after)
    except (ConfigError, TrainingError, CheckpointError) as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())

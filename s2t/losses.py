"""Losses: supervised contrastive (SupCon), multi-positive CLIP, caption cross-entropy, and the
MoCo-style memory queue that feeds past embeddings to both contrastive losses; at the end, the
training objective: a registry of named losses (`LOSSES`, `register_loss`) that `Losses` combines
as sum(loss_weights[name] * term) over the losses the config weighs above 0.

All contrastive logits are computed in fp32 (inputs are cast), whatever autocast is active:
exp(logit / 0.05) overflows fp16 long before the softmax would saturate.

Distributed training: each rank scores its local anchors against the features of all ranks
(CLIP's "local loss"), so negatives grow with the number of GPUs. `gather_with_grad` is a
differentiable all_gather: the backward pass sends every rank the gradient its features got from
all ranks' losses, so the step equals one big-batch step. Without torch.distributed it is the identity.
"""
from __future__ import annotations

import abc

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# Masked logits get this value rather than -inf: a row that is all masked stays finite
# (softmax of equal values) instead of producing NaN in the backward pass.
_MASKED = -1e9


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for each slice (all_reduce) and hands
    each rank its own slice: the gradient a big single-process batch would give."""

    @staticmethod
    def forward(ctx, x):
        rank, world = _world()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # all_reduce, not reduce_scatter: gloo (CPU) has only the former
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Concatenate `x` from all ranks (rank order), differentiably: gradients flow back to the
    rank that owns each slice. Every rank must pass the same shape (P x K batches are fixed-size).
    Identity when not distributed or not `enabled` (e.g. validation on one rank)."""
    if not enabled or _world()[1] == 1:
        return x
    return _AllGather.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    rank, world = _world()
    if not enabled or world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _fp32(x: torch.Tensor):
    """Autocast off for the enclosed block: matmuls under fp16/bf16 autocast would otherwise be
    computed in 16 bits even on float32 inputs."""
    return torch.autocast(x.device.type, enabled=False)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j targets_ij * log softmax(logits)_ij (targets rows sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


class MemoryQueue:
    """FIFO of the last `size` (detached) embeddings and their labels: extra negatives and
    positives for the contrastive losses that do not depend on what fits in one step (MoCo).

    size 0 disables it (`get` returns None). State is plain tensors, so it checkpoints safely.
    """

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu"):
        self.size, self.dim = size, dim
        self.feats = torch.zeros(size, dim, device=device)
        self.labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.ptr = 0    # next slot to write
        self.count = 0  # filled slots (<= size)

    @torch.no_grad()
    def push(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        if self.size == 0:
            return
        feats, labels = gather_no_grad(feats.detach()), gather_no_grad(labels)
        feats, labels = feats[-self.size:], labels[-self.size:]  # more than fits: keep the newest
        n = feats.shape[0]
        idx = (self.ptr + torch.arange(n, device=self.feats.device)) % self.size
        self.feats[idx] = feats.float()
        self.labels[idx] = labels.long()
        self.ptr = (self.ptr + n) % self.size
        self.count = min(self.count + n, self.size)

    def get(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        if self.count == 0:
            return None, None
        return self.feats[: self.count], self.labels[: self.count]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"feats": self.feats.clone(), "labels": self.labels.clone(),
                "ptr": torch.tensor(self.ptr), "count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["feats"].shape) != (self.size, self.dim):
            raise ValueError(f"queue state has shape {tuple(state['feats'].shape)}, "
                             f"expected {(self.size, self.dim)} (queue_size/proj_dim changed?)")
        self.feats.copy_(state["feats"])
        self.labels.copy_(state["labels"])
        self.ptr, self.count = int(state["ptr"]), int(state["count"])


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, L_out): for anchor i with positives P(i)
    (same label, not i) among all other samples A(i) (batch of every rank + queue),

        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t) )

    averaged over the anchors that have at least one positive. Anchors without positives
    contribute nothing; a batch without any positive gives 0 (with a graph, so backward works).
    `features` must be L2-normalised.
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, features, labels, queue_features=None, queue_labels=None, gather: bool = True):
        """gather=False: score against this rank's batch only (validation on one rank)."""
        with _fp32(features):
            return self._forward(features, labels, queue_features, queue_labels, gather)

    def _forward(self, features, labels, queue_features, queue_labels, gather):
        anchors = features.float()
        n = anchors.shape[0]
        contrast = gather_with_grad(anchors, gather)
        contrast_labels = gather_no_grad(labels, gather)
        offset = _world()[0] * n if contrast.shape[0] > n else 0
        self_cols = offset + torch.arange(n, device=anchors.device)
        if queue_features is not None:
            contrast = torch.cat([contrast, queue_features.float()])
            contrast_labels = torch.cat([contrast_labels, queue_labels])

        logits = anchors @ contrast.T / self.temperature
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[torch.arange(n, device=anchors.device), self_cols] = True
        logits = logits.masked_fill(is_self, _MASKED)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)

        positive = (labels[:, None] == contrast_labels[None, :]) & ~is_self
        n_pos = positive.sum(1)
        mean_log_prob_pos = log_prob.masked_fill(~positive, 0.0).sum(1) / n_pos.clamp(min=1)
        has_pos = (n_pos > 0).float()
        # Mean over anchors with positives, written without indexing so it never divides by 0.
        return -(mean_log_prob_pos * has_pos).sum() / has_pos.sum().clamp(min=1)


class ClipLoss(nn.Module):
    """Symmetric video-text InfoNCE (CLIP) with multi-positive targets.

    The same sentence can occur several times in a batch (and in the queue): every video-text
    pair whose labels match is a positive, and the target distribution of a row is uniform over
    its positives — treating duplicates as negatives would push identical sentences apart.
    `logit_scale` is the (already exponentiated, clamped) learnable scale. Inputs L2-normalised.
    """

    def forward(self, video, text, logit_scale, labels,
                queue_video=None, queue_text=None, queue_labels=None, gather: bool = True):
        with _fp32(video):
            return self._forward(video, text, logit_scale, labels, queue_video, queue_text, queue_labels, gather)

    def _forward(self, video, text, logit_scale, labels, queue_video, queue_text, queue_labels, gather):
        video, text = video.float(), text.float()
        all_video, all_text = gather_with_grad(video, gather), gather_with_grad(text, gather)
        all_labels = gather_no_grad(labels, gather)
        if queue_video is not None:
            all_video = torch.cat([all_video, queue_video.float()])
            all_text = torch.cat([all_text, queue_text.float()])
            all_labels = torch.cat([all_labels, queue_labels])
        scale = logit_scale.float()
        logits_v2t = scale * video @ all_text.T
        logits_t2v = scale * text @ all_video.T
        targets = (labels[:, None] == all_labels[None, :]).float()
        targets = targets / targets.sum(1, keepdim=True)  # each row has at least its own pair
        return (_soft_cross_entropy(logits_v2t, targets) + _soft_cross_entropy(logits_t2v, targets)) / 2


class CaptionLoss(nn.Module):
    """Token cross-entropy of the decoder with label smoothing; `pad_id` positions are ignored."""

    def __init__(self, pad_id: int = 0, label_smoothing: float = 0.0):
        super().__init__()
        self.pad_id, self.label_smoothing = pad_id, label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with _fp32(logits):
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   ignore_index=self.pad_id, label_smoothing=self.label_smoothing)


# ---------------------------------------------------------------------------------------------
# The training objective: a registry of named losses, combined as sum(weight[name] * term)
#
# Adding a loss: write a subclass of `Objective` here, register it (`@register_loss`), and give it
# a weight in the config (`loss_weights: {mine: 0.5}` or `loss_weights.mine=0.5`). The trainer
# asks the model for what the active losses read, logs each term under its name in
# metrics.jsonl, and tells DDP when some part of the model gets no gradient.

HEADS = ("supcon", "clip")                 # the model's projection heads (s2t.model.SignTranslator)
MODEL_PARTS = (*HEADS, "text", "decoder")  # what a loss can read; "text": the projected sentence
                                           # embedding + logit scale, "decoder": the decoder logits


class Objective(abc.ABC):
    """One named loss term. Subclasses set:

    name    its key in `loss_weights`, in the registry and in metrics.jsonl
    reads   the parts of the model (MODEL_PARTS) it reads, so that the forward computes them and
            DDP knows which parameters get a gradient
    head    the projection head its queued video keys are re-projected through (if it has queues)
    queues  its memory queues: (queue name, "video" | "text", the batch field holding the labels)

    and `__call__(out, batch, queued, gather) -> scalar tensor`: `out` is SignTranslator.forward's,
    `queued(queue name) -> (keys, labels)` (None, None when no queue is used), `gather` False for
    validation on one rank."""

    name: str = ""
    reads: tuple[str, ...] = ()
    head: str | None = None
    queues: tuple[tuple[str, str, str], ...] = ()

    def __init__(self, cfg, vocab):
        pass

    @abc.abstractmethod
    def __call__(self, out: dict, batch, queued, gather: bool = True) -> torch.Tensor:
        """The loss term (every registered objective defines it)."""


LOSSES: dict[str, type[Objective]] = {}  # name -> Objective class, in the order terms are computed and logged


def register_loss(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make `cls` selectable by `loss_weights.<cls.name>`."""
    bad = [p for p in cls.reads if p not in MODEL_PARTS]
    if not cls.name or bad:
        raise ValueError(f"loss {cls.__name__}: needs a name and reads from {MODEL_PARTS}, got {cls.name!r}, {bad}")
    LOSSES[cls.name] = cls
    return cls


@register_loss
class SupConObjective(Objective):
    """SupCon over the "supcon" head's video embeddings; positives share `batch.label`."""
    name, reads, head = "supcon", ("supcon",), "supcon"
    queues = (("supcon", "video", "label"),)

    def __init__(self, cfg, vocab):
        self.loss = SupConLoss(cfg.temperature)

    def __call__(self, out, batch, queued, gather=True):
        qf, ql = queued("supcon")
        return self.loss(out["supcon"], batch.label, qf, ql, gather=gather)


@register_loss
class ClipObjective(Objective):
    """Video-text CLIP loss between the "clip" head and the projected sentence embedding."""
    name, reads, head = "clip", ("clip", "text"), "clip"
    queues = (("clip_video", "video", "text_id"), ("clip_text", "text", "text_id"))

    def __init__(self, cfg, vocab):
        self.loss = ClipLoss()

    def __call__(self, out, batch, queued, gather=True):
        (qv, ql), (qt, _) = queued("clip_video"), queued("clip_text")
        return self.loss(out["clip"], out["text"], out["logit_scale"], batch.text_id, qv, qt, ql, gather=gather)


@register_loss
class CaptionObjective(Objective):
    """Decoder cross-entropy on the next token (teacher forcing)."""
    name, reads = "ce", ("decoder",)

    def __init__(self, cfg, vocab):
        self.loss = CaptionLoss(vocab.pad, cfg.label_smoothing)

    def __call__(self, out, batch, queued, gather=True):
        return self.loss(out["logits"], batch.tokens[:, 1:])


def _no_queue(name: str):
    return None, None


class Losses:
    """The weighted sum of the active losses (weight > 0 in cfg.loss_weights, computed in registry
    order) and the memory queues that feed them.

    With cfg.queue_keys == "pooled" (and the model given) the queues hold what the heads read, not
    what they wrote: pooled encoder outputs and the frozen sentence embeddings, projected through
    the current heads whenever they are used. Head outputs queued a few hundred steps ago come from
    heads that have moved since; scored against them, the CLIP space folded into one cone when the
    queue joined (issue 15: NegSim 0.32 -> 0.90). Re-projected text keys are exact (the sentence
    encoder is frozen); video keys are only as stale as the encoder. With text_encoder: finetune the
    text keys are the tower's output at enqueue time (detached), as stale as the tower's top layers."""

    def __init__(self, cfg, vocab, device, model=None, text_dim: int | None = None):
        self.weights = {name: float(cfg.loss_weights.get(name, 0.0)) for name in LOSSES}
        self.active = [name for name, w in self.weights.items() if w > 0]
        self.objectives = {name: LOSSES[name](cfg, vocab) for name in self.active}
        self.reads = {part for name in self.active for part in LOSSES[name].reads}
        self.model = model if cfg.queue_keys == "pooled" else None
        if cfg.queue_keys == "pooled" and (model is None or text_dim is None):
            raise ValueError("queue_keys: pooled needs the model and text_dim to re-project queued keys")
        q, d = cfg.queue_size, cfg.proj_dim
        dims = {"video": cfg.embed_dim, "text": text_dim} if self.model is not None else {"video": d, "text": d}
        # every registered loss's queues, active or not: checkpoints hold the same tensors whatever the weights
        self._queue_specs = {qname: (cls, side, label) for cls in LOSSES.values() for qname, side, label in cls.queues}
        self.queues = {qname: MemoryQueue(q, dims[side], device) for qname, (_, side, _) in self._queue_specs.items()}

    @property
    def needs_text(self) -> bool:
        """Whether the forward must project the sentence embeddings."""
        return "text" in self.reads

    @property
    def needs_decoder(self) -> bool:
        """Whether the forward must run the decoder."""
        return "decoder" in self.reads

    @property
    def uses_whole_model(self) -> bool:
        """Whether every part of the model gets a gradient (else DDP needs find_unused_parameters)."""
        return set(MODEL_PARTS) <= self.reads

    def heads(self) -> tuple[str, ...]:
        return tuple(h for h in HEADS if h in self.reads)

    def active_queues(self) -> list[str]:
        """The queues the active losses fill and read."""
        return [q for q, (cls, _, _) in self._queue_specs.items() if cls.name in self.active]

    def _queued(self, name: str):
        """(keys, labels) of a queue, re-projected through the current head when keys are pooled."""
        feats, labels = self.queues[name].get()
        if feats is None or self.model is None:
            return feats, labels
        cls, side, _ = self._queue_specs[name]
        if side == "text":
            return self.model.text_embedding(feats), labels
        return self.model.project_pooled(feats, cls.head), labels

    def __call__(self, out: dict, batch, training: bool = True, use_queue: bool = True):
        """-> total, {name: loss} for the active losses. `out` is SignTranslator.forward's.
        training=False (validation, on one rank): no queue, no gathering across ranks."""
        queued = self._queued if training and use_queue else _no_queue
        parts = {name: objective(out, batch, queued, gather=training) for name, objective in self.objectives.items()}
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, parts

    def push(self, out: dict, batch) -> None:
        pooled = self.model is not None
        for qname in self.active_queues():
            cls, side, label = self._queue_specs[qname]
            if side == "text":
                # (with a fine-tuned text tower: its output before the projection, as it is now)
                keys = out.get("sentence", batch.text_emb) if pooled else out["text"]
            else:
                keys = out["pooled"] if pooled else out[cls.head]
            self.queues[qname].push(keys, getattr(batch, label))

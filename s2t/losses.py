"""Losses: supervised contrastive (SupCon), multi-positive CLIP, caption cross-entropy, and the
MoCo-style memory queue that feeds past embeddings to both contrastive losses.

All contrastive logits are computed in fp32 (inputs are cast), whatever autocast is active:
exp(logit / 0.05) overflows fp16 long before the softmax would saturate.

Distributed training: each rank scores its local anchors against the features of all ranks
(CLIP's "local loss"), so negatives grow with the number of GPUs. `gather_with_grad` is a
differentiable all_gather: the backward pass sends every rank the gradient its features got from
all ranks' losses, so the step equals one big-batch step. Without torch.distributed it is the identity.
"""
from __future__ import annotations

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

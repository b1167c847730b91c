"""The sign-to-text model, top to bottom:

    keypoint features (B,T,F) --FrameEmbedding + sinusoidal positions--> TransformerEncoder
        --> memory (B,T,D)  -- masked mean --> ProjectionHead "supcon" --> SupCon embedding
                            -- masked mean --> ProjectionHead "clip"   --> video embedding  <-CLIP->  text embedding
                            --------------------------------------> TransformerDecoder (cross-attention) --> tokens
    frozen sentence embedding (B,384) --TextProjection--> text embedding

The decoder reads the raw encoder output, so the contrastive losses shape their own heads and
not the decoder's input. `shared_head=True` reproduces the seed setup that collapsed: one head,
applied per frame, whose output is both the contrastive embedding (after pooling) and the
decoder's memory.

The decoder works in a "model vocabulary": the tokenizer ids seen in training (+ specials) when
the vocabulary is compacted, all ids otherwise. The buffer `token_ids` maps model ids back to
real tokenizer ids; `generate` returns real ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    """The model's shape. Training builds it from TrainConfig (from_train_config), whose defaults
    and presets are the only place model sizes are chosen: no defaults here that could drift."""
    in_dim: int            # features per frame (from s2t.frames.feature_dim)
    vocab_size: int        # model vocabulary size
    pad_id: int            # model ids of the specials
    bos_id: int
    eos_id: int
    text_dim: int          # cached sentence-embedding size
    embed_dim: int
    proj_dim: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ff_mult: int
    dropout: float
    shared_head: bool
    logit_scale_init: float    # CLIP's init and clamp (TrainConfig.clip_logit_scale_*)
    logit_scale_max: float
    decoder_reads_embedding: bool = False  # False: runs saved before the option load unchanged
    text_encoder: str = "frozen"  # "finetune": the model owns a TextTower (s2t.text_tower) over text_model
    text_encoder_layers: int = 0  # its trained top layers (0: all)
    text_model: str | None = None  # the cache's sentence encoder (run.json "text_model")

    @classmethod
    def from_train_config(cls, cfg, **data_dims) -> "ModelConfig":
        return cls(embed_dim=cfg.embed_dim, proj_dim=cfg.proj_dim, encoder_layers=cfg.encoder_layers,
                   decoder_layers=cfg.decoder_layers, heads=cfg.heads, ff_mult=cfg.ff_mult,
                   dropout=cfg.dropout, shared_head=cfg.shared_head,
                   logit_scale_init=cfg.clip_logit_scale_init, logit_scale_max=cfg.clip_logit_scale_max,
                   decoder_reads_embedding=cfg.decoder_reads_embedding, text_encoder=cfg.text_encoder,
                   text_encoder_layers=cfg.text_encoder_layers, **data_dims)


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """(length, dim) fixed sin/cos position codes (Vaswani et al.); any length works at inference."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B,T,D) over the frames where mask (B,T) is True."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


class ProjectionHead(nn.Module):
    """Linear-ReLU-Linear, as in SimCLR: the contrastive loss is applied on its output only."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x):
        return self.net(x)


class PoseEncoder(nn.Module):
    """Per-frame MLP embedding of the keypoint features, fixed positions, pre-norm Transformer."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        d = c.embed_dim
        self.register_buffer("in_mean", torch.zeros(c.in_dim))
        self.register_buffer("in_std", torch.ones(c.in_dim))
        self.embed = nn.Sequential(nn.Linear(c.in_dim, d), nn.GELU(), nn.Linear(d, d))
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(d, c.heads, d * c.ff_mult, c.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, c.encoder_layers, norm=nn.LayerNorm(d),
                                            enable_nested_tensor=False)

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-2) -> None:
        """Standardise each input feature with training-set statistics (saved with the weights).
        Without it the pooled clip embeddings start nearly identical (cosine ~0.998: the body and
        the positions are the same in every clip) and the contrastive losses stall there."""
        self.in_mean.copy_(mean)
        self.in_std.copy_(std.clamp(min=min_std))  # near-constant features: 1% of a shoulder width

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed((x - self.in_mean) / self.in_std)
        h = h + sinusoidal_positions(x.shape[1], h.shape[-1], x.device).to(h.dtype)
        return self.layers(self.drop(h), src_key_padding_mask=~mask)


class TextDecoder(nn.Module):
    """Pre-norm Transformer decoder with cross-attention; output layer tied to the token embedding."""

    def __init__(self, c: ModelConfig, memory_dim: int):
        super().__init__()
        d = c.embed_dim
        self.tokens = nn.Embedding(c.vocab_size, d, padding_idx=c.pad_id)
        nn.init.normal_(self.tokens.weight, std=d ** -0.5)
        with torch.no_grad():
            self.tokens.weight[c.pad_id].zero_()
        self.memory_in = nn.Linear(memory_dim, d) if memory_dim != d else nn.Identity()
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerDecoderLayer(d, c.heads, d * c.ff_mult, c.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, c.decoder_layers, norm=nn.LayerNorm(d))

    def forward(self, memory, memory_mask, input_ids, pad_id: int):
        L, d = input_ids.shape[1], self.tokens.embedding_dim
        # sqrt(d) keeps token embeddings (std d^-1/2, tied to the output) on the scale of the positions.
        h = self.tokens(input_ids) * math.sqrt(d) + sinusoidal_positions(L, d, input_ids.device)
        causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).triu(1)  # True = may not attend
        h = self.layers(self.drop(h), self.memory_in(memory), tgt_mask=causal, tgt_is_causal=True,
                        tgt_key_padding_mask=input_ids == pad_id, memory_key_padding_mask=~memory_mask)
        return F.linear(h, self.tokens.weight)


class SignTranslator(nn.Module):
    def __init__(self, c: ModelConfig, token_ids: torch.Tensor | None = None):
        super().__init__()
        self.config = c
        self.encoder = PoseEncoder(c)
        if c.shared_head:
            self.heads = nn.ModuleDict({"shared": ProjectionHead(c.embed_dim, c.proj_dim)})
        else:
            self.heads = nn.ModuleDict({"supcon": ProjectionHead(c.embed_dim, c.proj_dim),
                                        "clip": ProjectionHead(c.embed_dim, c.proj_dim)})
        self.text_proj = ProjectionHead(c.text_dim, c.proj_dim, hidden=c.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init)))
        memory_dim = c.proj_dim if c.shared_head else c.embed_dim
        self.decoder = TextDecoder(c, memory_dim=memory_dim)
        if c.decoder_reads_embedding:  # the sentence-level CLIP embedding as one more memory slot
            self.embedding_memory = nn.Linear(c.proj_dim, memory_dim)
        if token_ids is None:
            token_ids = torch.arange(c.vocab_size)
        if len(token_ids) != c.vocab_size:
            raise ValueError(f"token_ids has {len(token_ids)} entries for a vocabulary of {c.vocab_size}")
        self.register_buffer("token_ids", torch.as_tensor(token_ids, dtype=torch.long))
        self.text_tower = None  # text_encoder: frozen (the cached sentence embeddings)
        if c.text_encoder == "finetune":
            from .text_tower import TextTower
            with torch.random.fork_rng(devices=[]):  # the global RNG stream stays the frozen model's
                self.text_tower = TextTower(c.text_model, c.text_encoder_layers)
            if self.text_tower.dim != c.text_dim:
                raise ValueError(f"text model {c.text_model!r} gives {self.text_tower.dim}-d embeddings, "
                                 f"the cache's are {c.text_dim}-d")

    # --- the API the trainer, the evaluation and translation use --------------------------------
    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B,T,F) frame features, mask (B,T) True on real frames -> memory (B,T,D)."""
        return self.encoder(x, mask)

    def video_embedding(self, memory, mask, head: str = "clip") -> torch.Tensor:
        """(B, proj_dim) L2-normalised video embedding from the "clip" or "supcon" head."""
        if head not in ("clip", "supcon"):
            raise ValueError(f"head must be 'clip' or 'supcon', got {head!r}")
        if self.config.shared_head:  # seed setup: head per frame, then pool (what the decoder reads)
            return F.normalize(masked_mean(self.heads["shared"](memory), mask).float(), dim=-1)
        return self.project_pooled(masked_mean(memory, mask), head)

    def project_pooled(self, pooled: torch.Tensor, head: str = "clip") -> torch.Tensor:
        """(N, embed_dim) pooled encoder outputs -> (N, proj_dim) L2-normalised through the current
        head: how queued keys are re-projected (dedicated heads only)."""
        return F.normalize(self.heads[head](pooled).float(), dim=-1)

    def text_embedding(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings (B, text_dim): the cached frozen ones, or the text tower's
        (`s2t.text_tower.sentence_features`) -> (B, proj_dim) L2-normalised."""
        return F.normalize(self.text_proj(text_emb).float(), dim=-1)

    def clip_scale(self) -> torch.Tensor:
        """exp of the learnable log logit scale, clamped at logit_scale_max as in CLIP."""
        return self.logit_scale.clamp(0, self.config.logit_scale_max).exp()

    def decoder_memory(self, memory: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the decoder attends to: the encoder output (through the shared head in the seed
        setup) and, with decoder_reads_embedding, first the clip's CLIP embedding as one slot.
        That embedding already tells sentences apart (it is trained for retrieval); the decoder
        gets it without having to learn to pool frames itself. It is detached: the CLIP head stays
        shaped by the contrastive loss alone."""
        if self.config.shared_head:
            return self.heads["shared"](memory), mask
        if not self.config.decoder_reads_embedding:
            return memory, mask
        slot = self.embedding_memory(self.video_embedding(memory, mask, "clip").detach().to(memory.dtype))
        return (torch.cat([slot[:, None].to(memory.dtype), memory], 1),
                torch.cat([torch.ones_like(mask[:, :1]), mask], 1))

    def decoder_logits(self, memory, mask, input_ids) -> torch.Tensor:
        """Teacher forcing: input_ids (B,L) model ids starting with BOS -> next-token logits (B,L,V)."""
        mem, mem_mask = self.decoder_memory(memory, mask)
        return self.decoder(mem, mem_mask, input_ids, self.config.pad_id)

    def forward(self, x, mask, input_ids=None, text_emb=None, heads=("supcon", "clip"),
                text_ids=None, text_attention=None) -> dict:
        """Everything one training step needs in one call (so DistributedDataParallel sees a
        forward): memory, the requested video embeddings, text embedding, decoder logits. With a
        text tower (text_encoder: finetune) the text side is computed from text_ids/text_attention
        and out["sentence"] is its output before the projection (what pooled queues hold)."""
        memory = self.encode(x, mask)
        out = {"memory": memory, "logit_scale": self.clip_scale(), "pooled": masked_mean(memory, mask)}
        for h in heads:
            out[h] = self.video_embedding(memory, mask, h)
        if text_emb is not None and self.text_tower is not None:
            from .text_tower import sentence_features
            out["sentence"] = sentence_features(self, text_emb, text_ids, text_attention)
            out["text"] = self.text_embedding(out["sentence"])
        elif text_emb is not None:
            out["text"] = self.text_embedding(text_emb)
        if input_ids is not None:
            out["logits"] = self.decoder_logits(memory, mask, input_ids)
        return out

    @torch.no_grad()
    def generate(self, memory, mask, max_len: int = 40, beam_size: int = 1,
                 length_penalty: float = 1.0) -> list[list[int]]:
        """Batched greedy (beam_size 1) or beam search. Returns real tokenizer ids, no specials."""
        c = self.config
        B, device = memory.shape[0], memory.device
        K = max(1, beam_size)
        mem, mmask = self.decoder_memory(memory, mask)
        mem, mmask = mem.repeat_interleave(K, 0), mmask.repeat_interleave(K, 0)
        seqs = torch.full((B * K, 1), c.bos_id, dtype=torch.long, device=device)
        scores = torch.zeros(B, K, device=device)
        scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
        done = torch.zeros(B * K, dtype=torch.bool, device=device)
        banned = torch.tensor([c.pad_id, c.bos_id], device=device)
        for _ in range(max_len):
            logits = self.decoder(mem, mmask, seqs, c.pad_id)[:, -1].float()
            logp = F.log_softmax(logits, dim=-1)
            logp[:, banned] = float("-inf")
            # a finished beam can only append PAD, at no cost, so its score stays as it is
            logp[done] = float("-inf")
            logp[done, c.pad_id] = 0.0
            V = logp.shape[1]
            cand = (scores.reshape(B * K, 1) + logp).reshape(B, K * V)
            scores, flat = cand.topk(K, dim=1)
            beam = flat // V + torch.arange(B, device=device)[:, None] * K
            token = (flat % V).reshape(-1)
            seqs = torch.cat([seqs[beam.reshape(-1)], token[:, None]], dim=1)
            done = done[beam.reshape(-1)] | (token == c.eos_id)
            if bool(done.all()):
                break
        out = seqs[:, 1:].reshape(B, K, -1)
        is_eos_or_pad = (out == c.eos_id) | (out == c.pad_id)
        # length = tokens up to and including EOS; normalise scores by it to pick the final beam
        lengths = (~is_eos_or_pad).sum(-1) + (out == c.eos_id).any(-1).long()
        best = (scores / lengths.clamp(min=1).float() ** length_penalty).argmax(1)
        chosen = out[torch.arange(B, device=device), best]
        real = self.token_ids[chosen].tolist()
        result = []
        for row_model, row_real in zip(chosen.tolist(), real):
            words = []
            for m, r in zip(row_model, row_real):
                if m == c.eos_id or m == c.pad_id:
                    break
                words.append(r)
            result.append(words)
        return result

    @torch.no_grad()
    def init_token_embeddings(self, pretrained: torch.Tensor) -> None:
        """Start the decoder's (tied) token embeddings from a pretrained model's word embeddings
        `pretrained` (real vocabulary, dim): rows of this model's vocabulary, reduced to embed_dim
        by PCA when the widths differ (padded with zeros if narrower), rescaled to the init's std
        d^-1/2. Words that mean alike then start alike: the decoder need not learn every word of a
        sentence it has never seen from scratch."""
        d = self.decoder.tokens.embedding_dim
        rows = pretrained[self.token_ids.cpu()].float()
        rows = rows - rows.mean(0)
        if rows.shape[1] > d:
            _, _, v = torch.linalg.svd(rows, full_matrices=False)
            rows = rows @ v[:d].T  # (fewer than d columns when the vocabulary is smaller than d)
        if rows.shape[1] < d:
            rows = torch.cat([rows, rows.new_zeros(len(rows), d - rows.shape[1])], 1)
        rows = rows * (d ** -0.5) / rows.std().clamp(min=1e-8)
        rows[self.config.pad_id] = 0
        self.decoder.tokens.weight.copy_(rows.to(self.decoder.tokens.weight))

    def parameter_groups(self, weight_decay: float, text_lr_scale: float = 1.0) -> list[dict]:
        """AdamW groups: no weight decay on biases, norms, embeddings and the logit scale. The text
        tower's trained weights (text_encoder: finetune) come in two more groups whose lr is the
        step's lr times `lr_scale` (= text_lr_scale): pretrained weights move slowly."""
        decay, no_decay, tower_decay, tower_no_decay = [], [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            tower = name.startswith("text_tower.")
            if p.ndim < 2 or "tokens" in name or name == "logit_scale" or (tower and "embeddings" in name):
                (tower_no_decay if tower else no_decay).append(p)
            else:
                (tower_decay if tower else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups += [{"params": ps, "weight_decay": wd, "lr_scale": text_lr_scale}
                   for ps, wd in ((tower_decay, weight_decay), (tower_no_decay, 0.0)) if ps]
        return groups


def sequence_nats(model, memory, mask, tokens, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing, per row of tokens (B,L: BOS ... EOS PAD): the summed next-token
    cross-entropy in nats over the real target tokens, and their count. How well the decoder of
    `model` (anything with `decoder_logits`) explains a given sentence for a given video: the
    evaluation's CE and the reranker's likelihood."""
    logits = model.decoder_logits(memory, mask, tokens[:, :-1]).float()
    target = tokens[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=pad,
                           reduction="none").view(target.shape)
    return loss.sum(1), (target != pad).sum(1)

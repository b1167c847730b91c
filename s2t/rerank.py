"""Retrieval-augmented decoding: each clip's sentence chosen among the decoder's own hypotheses
and the k training sentences nearest to the clip in CLIP space, by the model's two judgements of a
(video, sentence) pair (docs/ARCHITECTURE.md §8):

    score = mean log-likelihood per token under the decoder + clip_weight * CLIP logit

where the CLIP logit is the model's logit scale times the cosine of the clip's CLIP embedding and
the sentence's CLIP text embedding (a hypothesis is embedded with the same frozen sentence encoder
that made the cache's text embeddings). The decoder alone must write every word from the video;
retrieval alone can only answer training sentences. Together, a training sentence wins where the
video clearly shows one (the user's corpus is mostly repeated sentences) and the decoder's own
sentence where none fits. The greedy decoder stays reported on its own beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .model import sequence_nats


@dataclass
class Gallery:
    """The candidate training sentences, on the model's device."""
    tokens: torch.Tensor  # (G, L) model ids: BOS ... EOS PAD
    emb: torch.Tensor     # (G, D) CLIP text embeddings (projected, unit length)


@dataclass
class Reranked:
    """Per clip (B rows) over its C = H hypotheses + k gallery candidates, in that order."""
    choice: torch.Tensor     # (B,) index of the winning candidate
    neighbours: torch.Tensor  # (B, k) gallery rows of the candidates H..C-1
    logprob: torch.Tensor    # (B, C) mean log-likelihood per token
    cosine: torch.Tensor     # (B, C) CLIP cosine
    score: torch.Tensor      # (B, C)


class HypothesisEmbedder:
    """Sentences -> the model's CLIP text embeddings, through the frozen sentence encoder that made
    the cache's text embeddings (loaded once; a few milliseconds per sentence on a CPU), or through
    the model's own fine-tuned text tower when it has one (text_encoder: finetune)."""

    def __init__(self, text_model: str, model):
        self.model = model
        self.encoder = None
        if getattr(model, "text_tower", None) is None:
            from preprocess.text import SentenceEncoder  # loads transformers: only when reranking

            self.encoder = SentenceEncoder(text_model)

    @torch.no_grad()
    def __call__(self, sentences: list[str]) -> torch.Tensor:
        if self.encoder is None:
            return self.model.text_embedding(self.model.text_tower.embed_texts(sentences)).float()
        device = next(self.model.parameters()).device
        emb = torch.from_numpy(self.encoder.embed(sentences)).to(device)
        return self.model.text_embedding(emb).float()


def add_rerank_arguments(ap) -> None:
    """`--rerank K` and `--rerank-weight W`, the same for `eval` and `translate`."""
    ap.add_argument("--rerank", type=int, default=5, metavar="K",
                    help="also answer with retrieval-augmented decoding: the decoder's hypotheses or one of "
                         "the K training sentences nearest in CLIP space, whichever the model scores higher "
                         "(decoder log-likelihood per token + CLIP logit; 0: off)")
    ap.add_argument("--rerank-weight", type=float, default=1.0,
                    help="weight of the CLIP logit against the decoder's mean log-likelihood per token")


def unavailable(text_model: str | None, n_gallery: int) -> str | None:
    """Why reranking cannot run (None: it can). New sentences are embedded with the cache's own
    sentence encoder, which must be on this machine: nothing is downloaded."""
    from preprocess.text import resolve_model

    if not n_gallery:
        return "no training sentences to retrieve"
    if not text_model or not Path(resolve_model(text_model)).is_dir():
        return (f"the cache's sentence encoder {text_model!r} is not a local folder, so new sentences "
                "cannot be embedded offline")
    return None


def hypothesis_tokens(vocab, hypotheses: list[list[int]], max_len: int) -> torch.Tensor:
    """Generated sentences (real tokenizer ids, no specials) -> (n, L) model ids BOS ... EOS PAD."""
    seqs = [[vocab.bos, *vocab.to_model(np.asarray(h[:max_len - 2], np.int64)).tolist(), vocab.eos]
            for h in hypotheses]
    out = torch.full((len(seqs), max(map(len, seqs), default=2)), vocab.pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(s)
    return out


def _pad_cat(a: torch.Tensor, b: torch.Tensor, pad: int) -> torch.Tensor:
    """Concatenate token tables (rows) of different widths, PAD-filled."""
    width = max(a.shape[1], b.shape[1])
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t in (a, b)])


@torch.no_grad()
def rerank(model, memory, mask, video: torch.Tensor, hyp_tokens: torch.Tensor, hyp_emb: torch.Tensor,
           gallery: Gallery, k: int = 5, clip_weight: float = 1.0) -> Reranked:
    """Choose each clip's sentence. memory/mask: the encoder output of B clips; video: (B, D) their
    CLIP embeddings; hyp_tokens: (B*H, L) their H hypotheses each (clip-major), hyp_emb: (B*H, D)
    the hypotheses' CLIP text embeddings."""
    B, device = memory.shape[0], memory.device
    H = len(hyp_tokens) // B
    video = video.to(device).float()
    k = min(k, len(gallery.emb))
    cos_g, near = (video @ gallery.emb.T).topk(k, dim=1) if k else (video.new_zeros(B, 0),) * 2
    near = near.long()
    cos_h = (video[:, None] * hyp_emb.to(device).view(B, H, -1)).sum(-1)
    # every clip's candidates in one (B, C, W) table: its H hypotheses, then its k gallery sentences
    both = _pad_cat(hyp_tokens.to(device), gallery.tokens[near.flatten()], model.config.pad_id)
    W = both.shape[1]
    cand = torch.cat([both[:B * H].view(B, H, W), both[B * H:].view(B, k, W)], 1)
    C = H + k
    nats, count = sequence_nats(model, memory.repeat_interleave(C, 0), mask.repeat_interleave(C, 0),
                                cand.flatten(0, 1), model.config.pad_id)
    logprob = -(nats / count.clamp(min=1)).view(B, C)
    cosine = torch.cat([cos_h, cos_g], 1)
    score = logprob + clip_weight * float(model.clip_scale()) * cosine
    return Reranked(score.argmax(1).cpu(), near.cpu(), logprob.cpu(), cosine.cpu(), score.cpu())


class Reranker:
    """What evaluation and `translate` call per batch: the gallery, the hypothesis embedder and
    the settings in one place. Returns per clip (gallery row, []) when a training sentence wins,
    (-1, token ids) when one of the decoder's hypotheses does."""

    def __init__(self, model, vocab, gallery: Gallery, text_model: str, k: int = 5,
                 clip_weight: float = 1.0, max_len: int = 40):
        self.model, self.vocab, self.gallery = model, vocab, gallery
        self.embed = HypothesisEmbedder(text_model, model)
        self.k, self.clip_weight, self.max_len = k, clip_weight, max_len

    def __call__(self, memory, mask, video, hypotheses: list[list[list[int]]]) -> list[tuple[int, list[int]]]:
        """hypotheses: one list per decoding (greedy, beam...), each with one id list per clip."""
        B, H = memory.shape[0], len(hypotheses)
        flat = [hypotheses[h][i] for i in range(B) for h in range(H)]  # clip-major
        r = rerank(self.model, memory, mask, video, hypothesis_tokens(self.vocab, flat, self.max_len),
                   self.embed(self.vocab.decode(flat)), self.gallery, self.k, self.clip_weight)
        return [(-1, flat[i * H + c]) if c < H else (int(r.neighbours[i, c - H]), [])
                for i, c in enumerate(r.choice.tolist())]

"""Evaluation metrics: embedding collapse, retrieval, generation quality, visual dependence.

Pure functions on torch tensors (numpy arrays are accepted too). Training uses them for its
periodic validation and `s2t.evaluate` for the full report, so both read the same numbers.

Conventions
- Embeddings are (N, D) rows; the caller passes the L2-normalised projections, cosine = dot.
- `labels` group samples that count as "the same" (the sentence or a user-given group); strings
  or ints, any sequence/array/tensor.
- Retrieval ties are broken pessimistically (a wrong item scoring exactly as high as the best
  right one ranks ahead of it), so identical (fully collapsed) embeddings cannot score Ret@1 = 1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jiwer
import numpy as np
import sacrebleu
import torch

RETRIEVAL_KS = (1, 5, 10)
BLOCK = 4096  # query rows per similarity block: 4096 x 11k fp32 = 180 MB


def _tensor(x) -> torch.Tensor:
    """Float32 CPU-or-device tensor from a tensor or array (fp16 embeddings are upcast)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.float()


def label_ids(labels) -> torch.Tensor:
    """Map arbitrary labels (strings, ints) to dense int64 ids 0..C-1."""
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long)


# --------------------------------------------------------------------------- collapse

def pos_neg_similarity(emb, labels) -> tuple[float, float]:
    """Mean cosine over same-label pairs (PosSim) and different-label pairs (NegSim), i != j.

    Exact and O(N*D): the sum of e_i.e_j over all pairs is |sum e|^2 and over same-label pairs
    sum_c |sum_{i in c} e_i|^2, so no N x N matrix is needed. NaN when a set of pairs is empty.
    """
    e = _tensor(emb).double()  # the sums cancel large terms; float64 keeps them exact enough
    y = label_ids(labels).to(e.device)
    n = e.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    class_sum = torch.zeros(int(y.max()) + 1, e.shape[1], dtype=e.dtype,
                            device=e.device).index_add_(0, y, e)
    counts = torch.bincount(y).double()
    self_sum = (e * e).sum()
    same = (class_sum * class_sum).sum() - self_sum          # same label, i != j
    total = (e.sum(0) ** 2).sum() - self_sum                  # all i != j
    n_pos = (counts * (counts - 1)).sum()
    n_neg = n * n - (counts ** 2).sum()
    pos = same / n_pos if n_pos > 0 else torch.tensor(float("nan"))
    neg = (total - same) / n_neg if n_neg > 0 else torch.tensor(float("nan"))
    return float(pos), float(neg)


PAIR_CHUNK = 8192  # pairs scored at a time by pair_similarities: 2 x 8192 x D floats, not 2 x max_pairs x D


def pair_similarities(emb, labels, max_pairs: int = 200_000, seed: int = 0, chunk: int = PAIR_CHUNK
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of (a random sample of) same-label and different-label pairs, for histograms.
    The pairs are drawn at once and scored `chunk` at a time (the same numbers: each cosine is its
    own row's sum), so memory stays a few MB whatever max_pairs and the embedding width."""
    e = _tensor(emb)
    y = label_ids(labels).to(e.device)
    n = e.shape[0]
    g = torch.Generator().manual_seed(seed)
    if n * (n - 1) <= max_pairs:  # all ordered pairs i != j
        i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        keep = i != j
        i, j = i[keep], j[keep]
    else:
        i = torch.randint(n, (max_pairs,), generator=g)
        j = (i + torch.randint(1, n, (max_pairs,), generator=g)) % n  # j != i
    i, j = i.to(e.device), j.to(e.device)
    sims = torch.empty(len(i), dtype=e.dtype, device=e.device)
    for a in range(0, len(i), chunk):
        b = min(len(i), a + chunk)
        sims[a:b] = (e[i[a:b]] * e[j[a:b]]).sum(1)
    same = y[i] == y[j]
    return sims[same].cpu().numpy(), sims[~same].cpu().numpy()


def alignment(video_emb, text_emb, alpha: float = 2.0) -> float:
    """Wang & Isola 2020: E ||f(x) - g(y)||^alpha over the positive (matched) video-text pairs."""
    v, t = _tensor(video_emb), _tensor(text_emb)
    return float((v - t).norm(dim=1).pow(alpha).mean())


def uniformity(emb, t: float = 2.0) -> float:
    """Wang & Isola 2020: log E_{i != j} exp(-t ||e_i - e_j||^2), computed in row blocks."""
    e = _tensor(emb)
    n = e.shape[0]
    if n < 2:
        return float("nan")
    sq = (e * e).sum(1)
    parts = []
    for start in range(0, n, BLOCK):
        rows = slice(start, min(start + BLOCK, n))
        d2 = (sq[rows, None] + sq[None, :] - 2 * e[rows] @ e.T).clamp_min(0)
        d2[torch.arange(d2.shape[0]), torch.arange(rows.start, rows.stop)] = float("inf")  # no self
        parts.append(torch.logsumexp((-t * d2).flatten(), 0))
    return float(torch.logsumexp(torch.stack(parts), 0) - np.log(n * (n - 1)))


def rankme(emb, eps: float = 1e-7) -> float:
    """Garrido et al. 2023: exp(entropy) of the normalised singular values — the effective rank."""
    s = torch.linalg.svdvals(_tensor(emb).double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


# --------------------------------------------------------------------------- retrieval

def _first_correct_ranks(queries: torch.Tensor, gallery: torch.Tensor, correct: Callable,
                         ignore: Callable | None = None, with_scores: bool = False):
    """1-based rank of the best-scoring correct gallery item for each query (ties pessimistic).

    `correct(rows)` gives the (len(rows), G) bool matrix of right answers for a block of queries;
    `ignore(rows)`, if given, the gallery items that are neither right nor wrong (not ranked).
    A query with no correct item in the gallery gets rank G + 1. with_scores: also return that
    best correct item's cosine (-inf when there is none).
    """
    ranks, scores = [], []
    for start in range(0, queries.shape[0], BLOCK):
        rows = torch.arange(start, min(start + BLOCK, queries.shape[0]), device=queries.device)
        sim = queries[rows] @ gallery.T
        ok = correct(rows)
        wrong = ~ok
        if ignore is not None:
            skip = ignore(rows)
            ok, wrong = ok & ~skip, wrong & ~skip
        best_ok = sim.masked_fill(~ok, float("-inf")).amax(1, keepdim=True)
        wrong_ahead = ((sim >= best_ok) & wrong).sum(1)
        ranks.append(torch.where(ok.any(1), wrong_ahead + 1, gallery.shape[0] + 1))
        scores.append(best_ok[:, 0])
    ranks = torch.cat(ranks).cpu() if ranks else torch.zeros(0, dtype=torch.long)
    if with_scores:
        return ranks, (torch.cat(scores).cpu() if scores else torch.zeros(0))
    return ranks


def retrieval_ranks(video_emb, text_emb, labels, text_keys=None, gallery=None) -> dict:
    """Ranks of the first correct answer, both directions, on one split.

    Galleries:
    - video -> text: the distinct sentences of the split, i.e. the text embeddings deduplicated by
      `text_keys` (default: `labels`; pass the sentence strings when one label groups several
      sentences). Each video is a query; a retrieved sentence is right when its label is the
      video's label (several videos share a sentence). `gallery=(text embeddings, labels)`
      searches that gallery instead: a group of a split is scored against the whole split's
      sentences, so its ranks are the split's ranks of the same videos.
    - text -> video: all N videos; each distinct sentence is one query; a retrieved video is right
      when it has the sentence's label.
    Returns {"v2t": (N,) ranks, "v2t_score": (N,) cosine of the best correct sentence,
    "t2v": (G,) ranks, "gallery_size", "n_videos", "distinct": (G,) positions of the distinct
    sentences among the inputs (their first occurrence)}.
    """
    v, t = _tensor(video_emb), _tensor(text_emb).to(_tensor(video_emb).device)
    n = v.shape[0]
    keys = label_ids(labels if text_keys is None else text_keys)
    # first occurrence of each distinct text key = that sentence's embedding and label
    order = torch.argsort(keys, stable=True)
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    distinct = order[first].sort().values.to(v.device)
    if gallery is None:
        y = label_ids(labels).to(v.device)
        g_emb, g_lab = t[distinct], y[distinct]
    else:  # one label space for the videos and the gallery
        ids = label_ids(np.concatenate([_array(labels), _array(gallery[1])])).to(v.device)
        y, g_lab = ids[:n], ids[n:]
        g_emb = _tensor(gallery[0]).to(v.device)
    v2t, v2t_score = _first_correct_ranks(v, g_emb, lambda r: y[r, None] == g_lab[None, :], with_scores=True)
    q_lab = y[distinct]
    t2v = _first_correct_ranks(t[distinct], v, lambda r: q_lab[r, None] == y[None, :])
    return {"v2t": v2t, "v2t_score": v2t_score, "t2v": t2v, "gallery_size": int(g_emb.shape[0]),
            "n_videos": int(n), "distinct": distinct.cpu()}


def _array(labels) -> np.ndarray:
    return labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


def recall_at(ranks: torch.Tensor, ks: Sequence[int] = RETRIEVAL_KS) -> dict[int, float]:
    """Share of queries whose first correct answer is within the top k."""
    ranks = torch.as_tensor(ranks)
    return {k: float((ranks <= k).double().mean()) if ranks.numel() else float("nan") for k in ks}


def embedding_metrics(video_emb, text_emb, labels, text_keys=None, gallery=None) -> dict:
    """All embedding metrics of one head on one split (see module doc for conventions).

    pos_sim/neg_sim/gap, rankme and uniformity are on the video embeddings; alignment is over the
    matched (video_i, text_i) pairs; retrieval as in `retrieval_ranks` (`gallery`: the video->text
    gallery to search, for a group of a split).
    """
    v, t = _tensor(video_emb), _tensor(text_emb)
    pos, neg = pos_neg_similarity(v, labels)
    ranks = retrieval_ranks(v, t, labels, text_keys, gallery)
    out = {"pos_sim": pos, "neg_sim": neg, "gap": pos - neg}
    for direction in ("v2t", "t2v"):
        for k, r in recall_at(ranks[direction]).items():
            out[f"ret{k}_{direction}"] = r
        out[f"median_rank_{direction}"] = float(ranks[direction].float().median())
    out.update({
        "alignment": alignment(v, t),
        "uniformity": uniformity(v),
        "rankme": rankme(v),
        "n_samples": int(v.shape[0]),
        "gallery_size": ranks["gallery_size"],
        "n_labels": int(label_ids(labels).max()) + 1 if v.shape[0] else 0,
    })
    return out


def video_retrieval_ranks(video_emb, labels) -> torch.Tensor:
    """Video -> video by label: for each video, the rank among all *other* videos of the first
    one with its label (ties pessimistic); N + 1 when no other video has it."""
    v = _tensor(video_emb)
    y = label_ids(labels).to(v.device)
    n = v.shape[0]
    return _first_correct_ranks(v, v, lambda r: y[r, None] == y[None, :],
                                ignore=lambda r: r[:, None] == torch.arange(n, device=v.device)[None, :])


def video_metrics(video_emb, labels) -> dict:
    """The metrics of a video-only embedding (a head trained without text, e.g. SupCon): PosSim,
    NegSim, gap, uniformity, RankMe, and Ret@k video -> video (is a nearest other video one of the
    same label?) over the videos whose label occurs at least twice (`n_v2v_queries`; NaN if none).
    Nothing is compared with text: the head does not live in the text's space."""
    v = _tensor(video_emb)
    y = label_ids(labels)
    pos, neg = pos_neg_similarity(v, y)
    has_pair = (torch.bincount(y)[y] > 1) if v.shape[0] else torch.zeros(0, dtype=torch.bool)
    ranks = video_retrieval_ranks(v, y)[has_pair]
    out = {"pos_sim": pos, "neg_sim": neg, "gap": pos - neg}
    out.update({f"ret{k}_v2v": r for k, r in recall_at(ranks).items()})
    out.update({
        "uniformity": uniformity(v),
        "rankme": rankme(v),
        "n_samples": int(v.shape[0]),
        "n_v2v_queries": int(has_pair.sum()),
        "n_labels": int(y.max()) + 1 if v.shape[0] else 0,
    })
    return out


# --------------------------------------------------------------------------- generation

def generation_metrics(hyps: Sequence[str], refs: Sequence[str],
                       train_sentences: Sequence[str] | None = None, lowercase: bool = False) -> dict:
    """Corpus-level WER (jiwer), BLEU-4 and chrF (sacrebleu, 0-100), exact match, train copy rate.

    Strings are compared as given (raw references as sacreBLEU reads them, or hyps and refs
    normalised the same way by the caller); lowercase=True folds case on both sides for every
    metric (sacrebleu's own `lowercase` option for BLEU/chrF; recorded in `sacrebleu_signatures`).
    WER splits words on whitespace (jiwer's default), so punctuation stays part of a word.
    train_copy_rate: share of hypotheses that are verbatim training sentences — near 1 with a
    high WER is the "language model over the training set" failure.
    """
    hyps, refs = [h.strip() for h in hyps], [r.strip() for r in refs]
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    if not hyps:
        return {"wer": float("nan"), "bleu4": float("nan"), "chrf": float("nan"),
                "exact_match": float("nan"), "train_copy_rate": float("nan"), "n_samples": 0}
    bleu, chrf = _scorers(lowercase)
    fold = (lambda x: [s.lower() for s in x]) if lowercase else list
    out = {
        "wer": float(jiwer.wer(fold(refs), fold(hyps))),
        "bleu4": float(bleu.corpus_score(hyps, [refs]).score),
        "chrf": float(chrf.corpus_score(hyps, [refs]).score),
        "exact_match": float(np.mean([h == r for h, r in zip(fold(hyps), fold(refs))])),
        "n_samples": len(hyps),
    }
    if train_sentences is not None:
        train = {s.strip() for s in train_sentences}
        out["train_copy_rate"] = float(np.mean([h in train for h in hyps]))
    return out


def sentence_wer(hyp: str, ref: str, lowercase: bool = False) -> float:
    """One sample's WER under generation_metrics' rules (for per-sample listings)."""
    hyp, ref = (hyp.strip().lower(), ref.strip().lower()) if lowercase else (hyp.strip(), ref.strip())
    if not ref:
        return float("nan")
    return float(jiwer.wer(ref, hyp))


def _scorers(lowercase: bool):
    return sacrebleu.metrics.BLEU(lowercase=lowercase), sacrebleu.metrics.CHRF(lowercase=lowercase)


def sacrebleu_signatures(lowercase: bool = False) -> dict[str, str]:
    """sacreBLEU's signature of the BLEU-4 and chrF that generation_metrics computes: what a
    reader needs to reproduce the number (references, casing, tokenizer, smoothing, version)."""
    signatures = {}
    for name, scorer in zip(("bleu4", "chrf"), _scorers(lowercase)):
        scorer.corpus_score(["a"], [["a"]])  # sacrebleu learns the number of references by scoring
        signatures[name] = str(scorer.get_signature())
    return signatures


# --------------------------------------------------------------------------- visual dependence

def derangement(labels, seed: int = 0) -> torch.Tensor:
    """A fixed permutation with perm[i] != i that pairs samples of different labels when possible.

    Samples are laid out grouped by label (random label order, random order inside a label) and
    each takes the sample `m` places further round the circle, m = the largest label count: a
    label's block is at most m long, so i and its partner fall in different labels whenever
    m <= N/2. With one label it is a plain rotation by one.
    """
    y = label_ids(labels)
    n = y.numel()
    if n < 2:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    label_rank = torch.randperm(int(y.max()) + 1, generator=g)[y]
    jitter = torch.randperm(n, generator=g)
    layout = torch.argsort(label_rank * n + jitter)           # positions -> sample ids
    m = int(torch.bincount(y).max())
    shift = min(max(m, 1), n - 1) if m < n else 1
    perm = torch.empty(n, dtype=torch.long)
    perm[layout] = layout.roll(-shift)
    return perm


def dependence(original: dict, swapped: dict) -> dict:
    """How much the metrics degrade when every sample gets another sample's encoder output.

    Positive = the model uses the video. WER drop is swapped - original (higher is worse);
    BLEU/chrF/Ret drops are original - swapped.
    """
    out = {}
    if "wer" in original:
        out["visual_dependence_wer"] = swapped["wer"] - original["wer"]
    for key in ("bleu4", "chrf", "ret1_v2t", "ret5_v2t", "ret1_t2v"):
        if key in original and key in swapped:
            out[f"visual_dependence_{key}"] = original[key] - swapped[key]
    if "ce" in original and "ce" in swapped:
        out["visual_dependence_ce"] = swapped["ce"] - original["ce"]
    return out


def changed_fraction(hyps: Sequence[str], hyps_swapped: Sequence[str]) -> float:
    """Share of samples whose output changes when their encoder output is swapped: 0 means the
    decoder's output does not depend on the video at all."""
    if not len(hyps):
        return float("nan")
    return float(np.mean([a.strip() != b.strip() for a, b in zip(hyps, hyps_swapped)]))

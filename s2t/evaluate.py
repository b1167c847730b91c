"""`python -m s2t eval --run DIR --split test [--beam 4]`: is the collapse gone?

One pass of the model over a split (no augmentation, no grad) gives, per sample: the CLIP and
SupCon video embeddings, the greedy (and optionally beam) translation, the teacher-forced CE;
and the same again with every sample's encoder output swapped for another sample's of a
different sentence (visual dependence). From those: the embedding and generation metrics of
`s2t.metrics`, two baselines (always the most frequent training sentence; the training sentence
nearest in CLIP space), plots, and RUN/eval/<split>/{summary.json, summary.md, *.png}.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics, plots, report
from .data import KeypointData, Vocab, words_of


class EvaluationError(RuntimeError):
    pass


@dataclass
class Outputs:
    """Everything one pass over a split produces, in the split's length-sorted row order (`index`).

    `perm` pairs every sample with another one (positions in that order): sample i "sees" the
    video of sample perm[i] in the visual-dependence comparison.
    """
    index: list = field(default_factory=list)
    perm: torch.Tensor | None = None
    clip: list = field(default_factory=list)
    supcon: list = field(default_factory=list)
    text: list = field(default_factory=list)          # projected text embeddings (CLIP side)
    greedy: list = field(default_factory=list)        # token id lists
    beam: list = field(default_factory=list)
    ce: list = field(default_factory=list)            # (summed nats, tokens) per batch
    ce_swapped: list = field(default_factory=list)    # the same targets, decoded from perm's memory

    def cat(self, name):
        return torch.cat(getattr(self, name)) if getattr(self, name) else None


def teacher_forced_ce(model, memory, mask, tokens, pad: int) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats) over real target tokens, and their count."""
    logits = model.decoder_logits(memory, mask, tokens[:, :-1]).float()
    target = tokens[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=pad, reduction="sum")
    return float(loss), int((target != pad).sum())


@torch.no_grad()
def run_model(model, data: KeypointData, split: str, batch_size: int = 64, max_len: int = 40,
              beam: int = 0, seed: int = 0) -> Outputs:
    """The model over every sample of `split`, plus what visual dependence needs.

    The swap is one `metrics.derangement` over the whole split (every sample is paired with a
    sample of a different label wherever the split allows), fixed before the pass. Only the
    teacher-forced CE has to be recomputed for it: sample i's own target tokens decoded from its
    partner's encoder output, which the same batch step encodes from the partner rows. Everything
    else that depends only on the memory is indexed afterwards (`swapped_outputs`).
    """
    model.eval()
    out = Outputs()
    pad = data.vocab.pad
    rows = data.rows(split)
    rows = rows[np.argsort(data.lengths[rows], kind="stable")]
    out.perm = metrics.derangement(data.label.cpu().numpy()[rows], seed=seed)
    partners = rows[out.perm.numpy()]
    for pos in np.array_split(np.arange(len(rows)), max(1, -(-len(rows) // batch_size))):
        b = data.batch(rows[pos])
        memory = model.encode(b.x, b.mask)
        out.index.append(b.index.cpu())
        out.clip.append(model.video_embedding(memory, b.mask, head="clip").float().cpu())
        out.supcon.append(model.video_embedding(memory, b.mask, head="supcon").float().cpu())
        out.text.append(model.text_embedding(b.text_emb).float().cpu())
        out.greedy += model.generate(memory, b.mask, max_len=max_len)
        if beam > 1:
            out.beam += model.generate(memory, b.mask, max_len=max_len, beam_size=beam)
        out.ce.append(teacher_forced_ce(model, memory, b.mask, b.tokens, pad))
        other = data.batch(partners[pos])  # the partners' videos, in the same order as b
        mem_other = model.encode(other.x, other.mask)
        out.ce_swapped.append(teacher_forced_ce(model, mem_other, other.mask, b.tokens, pad))
    return out


def swapped_outputs(out: Outputs) -> tuple[list, torch.Tensor]:
    """Greedy token ids and CLIP embeddings with every sample's memory replaced by its partner's.

    No second decoding pass is needed: generation (greedy) and the CLIP head are deterministic
    functions of one sample's memory and mask, so "sample i decoded from sample perm[i]'s memory"
    is exactly what was already decoded for sample perm[i]: greedy[perm], clip[perm]. (The
    references, labels and text embeddings stay those of sample i.)
    """
    perm = out.perm.tolist()
    return [out.greedy[j] for j in perm], out.cat("clip")[out.perm]


def reference_texts(vocab: Vocab, texts) -> list[str]:
    """Sentences normalised exactly as the model's output is (same tokenizer round trip, no
    truncation), so WER/BLEU do not count casing or accents the model cannot produce."""
    texts = [str(t) for t in texts]
    if vocab.kind == "word":
        return [" ".join(words_of(t)) for t in texts]
    from preprocess.text import load_tokenizer

    ids = load_tokenizer(vocab.tokenizer)(texts, add_special_tokens=False)["input_ids"]
    return vocab.decode(ids)


@torch.no_grad()
def training_gallery(model, data: KeypointData, batch_size: int = 1024):
    """Distinct training sentences (reference-normalised) and their CLIP text embeddings."""
    rows = data.rows("train")
    _, first = np.unique(data.text_id.cpu().numpy()[rows], return_index=True)
    rows = rows[np.sort(first)]
    device = next(model.parameters()).device
    emb = torch.cat([model.text_embedding(data.text_emb[torch.as_tensor(rows[a:a + batch_size])]
                                          .to(device)).float().cpu()
                     for a in range(0, len(rows), batch_size)]) if len(rows) else torch.zeros(0, 1)
    return reference_texts(data.vocab, data.texts[rows]), emb


def most_frequent_training_sentence(data: KeypointData) -> str:
    train_ids = data.text_id.cpu().numpy()[data.rows("train")]
    if not len(train_ids):
        return ""
    top = np.bincount(train_ids).argmax()
    return reference_texts(data.vocab, [data.texts[np.flatnonzero(data.text_id.cpu().numpy() == top)[0]]])[0]


def nearest_sentences(video_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int = 1, block: int = 4096):
    """Top-k (scores, indices) of gallery rows by cosine for each video, in row blocks."""
    scores, idx = [], []
    for a in range(0, len(video_emb), block):
        s, i = (video_emb[a:a + block] @ gallery_emb.T).topk(min(k, len(gallery_emb)), dim=1)
        scores.append(s)
        idx.append(i)
    return torch.cat(scores), torch.cat(idx)


def evaluate(model, data: KeypointData, split: str = "test", *, batch_size: int = 64,
             max_len: int = 40, beam: int = 0, seed: int = 0, n_examples: int = 12) -> tuple[dict, dict]:
    """Compute the whole summary for one split. Returns (summary, extras for the plots)."""
    if not len(data.rows(split)):
        raise EvaluationError(f"split {split!r} has no samples; "
                              f"splits here: {sorted(set(data.split.tolist()))}")
    out = run_model(model, data, split, batch_size, max_len, beam, seed)
    index = out.cat("index").numpy()
    labels = data.label.cpu().numpy()[index]
    text_keys = data.text_id.cpu().numpy()[index]
    refs = reference_texts(data.vocab, data.texts[index])
    gallery_text, gallery_emb = training_gallery(model, data)

    clip, text = out.cat("clip"), out.cat("text")
    greedy_swapped, clip_swapped = swapped_outputs(out)
    hyps, hyps_swapped = data.vocab.decode(out.greedy), data.vocab.decode(greedy_swapped)
    summary: dict = {"split": split, "n_samples": len(index)}
    summary["clip"] = metrics.embedding_metrics(clip, text, labels, text_keys)
    # the SupCon head is trained on videos only: it is not in the text's space, so no text metrics
    summary["supcon"] = metrics.video_metrics(out.cat("supcon"), labels)
    summary["greedy"] = {**metrics.generation_metrics(hyps, refs, gallery_text), "ce": _ce(out.ce)}
    if beam > 1:
        summary["beam"] = metrics.generation_metrics(data.vocab.decode(out.beam), refs, gallery_text)
        summary["beam_size"] = beam
    summary["swapped"] = {
        **metrics.embedding_metrics(clip_swapped, text, labels, text_keys),
        **metrics.generation_metrics(hyps_swapped, refs, gallery_text),
        "ce": _ce(out.ce_swapped),
    }
    original = {**summary["clip"], **summary["greedy"]}
    summary["visual_dependence"] = {
        **metrics.dependence(original, summary["swapped"]),
        "visual_dependence_changed": metrics.changed_fraction(hyps, hyps_swapped),
    }

    # baselines: what a model that ignores the video, or only retrieves, would score
    nearest = nearest_sentences(clip, gallery_emb)[1][:, 0].tolist() if len(gallery_text) else []
    retrieved = [gallery_text[i] for i in nearest] or [""] * len(refs)
    summary["baselines"] = {
        "most_frequent": metrics.generation_metrics([most_frequent_training_sentence(data)] * len(refs),
                                                    refs, gallery_text),
        "retrieval": metrics.generation_metrics(retrieved, refs, gallery_text),
    }
    # the flat keys the user and `compare` read first: CLIP head, greedy decoding
    summary.update({k: v for k, v in original.items() if k != "n_samples"})
    summary.update(summary["visual_dependence"])
    summary["warnings"] = report.diagnose(summary)

    pick = np.unique(np.linspace(0, len(refs) - 1, min(n_examples, len(refs))).round().astype(int))
    examples = [{"id": str(data.ids[index[i]]), "reference": refs[i], "hypothesis": hyps[i],
                 "swapped": hyps_swapped[i], "retrieved": retrieved[i]} for i in pick]
    pos_c, neg_c = metrics.pair_similarities(clip, labels, seed=seed)
    pos_s, neg_s = metrics.pair_similarities(out.cat("supcon"), labels, seed=seed)
    ranks = metrics.retrieval_ranks(clip, text, labels, text_keys)
    extras = {"examples": examples, "pairs": {"clip": (pos_c, neg_c), "supcon": (pos_s, neg_s)},
              "ranks": ranks}
    return summary, extras


def _ce(parts) -> float:
    nats, tokens = map(sum, zip(*parts)) if parts else (0.0, 0)
    return nats / tokens if tokens else float("nan")


def write_report(run_dir: Path, out_dir: Path, summary: dict, extras: dict) -> list[Path]:
    """summary.json, summary.md and the PNG plots."""
    files = [out_dir / "summary.json", report.write_summary(out_dir, summary, extras["examples"])]
    for head, (pos, neg) in extras["pairs"].items():
        files.append(plots.similarity_histogram(pos, neg, out_dir / f"similarity_{head}.png",
                                                f"{head} head, split {summary['split']}"))
    r = extras["ranks"]
    files.append(plots.rank_histogram(r["v2t"], r["t2v"], r["gallery_size"], out_dir / "retrieval_ranks.png",
                                      n_videos=r["n_videos"]))
    if extras["examples"]:
        files.append(plots.examples_figure(extras["examples"], out_dir / "examples.png"))
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        curves = plots.training_curves(log, out_dir / "training_curves.png")
        if curves:
            files.append(curves)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s2t eval", description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="run folder written by `s2t train`")
    ap.add_argument("--split", default="test")
    ap.add_argument("--beam", type=int, default=0, help="also decode with this beam size (0/1: greedy only)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cache", type=Path, help="evaluate on this cache instead of the run's")
    ap.add_argument("--checkpoint", help="checkpoint file name inside the run, e.g. step-000500.safetensors "
                                         "(default: last.safetensors)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--examples", type=int, default=12, help="example translations in the report")
    ap.add_argument("--seed", type=int, default=0, help="seed of the swap permutation")
    ap.add_argument("--out", type=Path, help="output folder (default RUN/eval/SPLIT)")
    args = ap.parse_args(argv)

    from preprocess.store import CacheError

    from .checkpoint import CheckpointError, load_run

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    t0 = time.time()
    try:
        model, cfg, info = load_run(args.run, device,
                                    **({"checkpoint": args.checkpoint} if args.checkpoint else {}))
        data = KeypointData(args.cache or info["cache"], cfg, device, vocab=_vocab(info))
        summary, extras = evaluate(model, data, args.split, batch_size=args.batch_size,
                                   max_len=cfg.max_text_len, beam=args.beam, seed=args.seed,
                                   n_examples=args.examples)
    except (CheckpointError, CacheError, EvaluationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary.update({"run": str(args.run), "cache": data.cache_dir, "seconds": round(time.time() - t0, 1),
                    "checkpoint": {k: v for k, v in info.items() if isinstance(v, (int, float, str))}})
    out_dir = args.out or args.run / "eval" / args.split
    files = write_report(args.run, out_dir, summary, extras)
    print((out_dir / "summary.md").read_text())
    for w in summary["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _vocab(info: dict) -> Vocab | None:
    v = info.get("vocab")
    return Vocab.from_json(v) if isinstance(v, dict) else v

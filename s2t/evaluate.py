"""`python -m s2t eval --run DIR --split test [--beam 4] [--by signer]`: is the collapse gone?

One pass of the model over a split (no augmentation, no grad) gives, per sample: the CLIP and
SupCon video embeddings, the greedy (and optionally beam) translation, the teacher-forced CE;
and the same again with every sample's encoder output swapped for another sample's of a
different sentence (visual dependence). From those: the embedding and generation metrics of
`s2t.metrics`, two baselines (always the most frequent training sentence; the training sentence
nearest in CLIP space), plots, and RUN/eval/<split>/{summary.json, summary.md, predictions.jsonl,
*.png}. Groups (`--by COLUMN`) are scored from the same pass: the metrics again on each subset.

Scores: WER/BLEU/chrF against the raw references of the manifest, as sacreBLEU computes them
(signature in the summary), lower-cased only when the model's vocabulary is uncased; the same
against references passed through the model's tokenizer under the `*_normalised` keys.
The checkpoint is best.safetensors (best on validation, written by `s2t train`) when the run has
one, else last.safetensors; the summary says which.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from preprocess.cli import report_error
from preprocess.layout import COMPONENT_SIZES, COMPONENTS
from preprocess.store import CacheError, open_cache

from . import baselines, html_report, metrics, plots, report
from .checkpoint import BEST, CheckpointError, default_checkpoint, load_checkpoint, load_run
from .data import KeypointData, load_data
from .model import sequence_nats
from .device import resolve_device
from .rerank import Gallery, Reranker, add_rerank_arguments, unavailable as rerank_unavailable
from .text_tower import rows_sentence_features, sentence_features
from .vocab import Vocab, cached_tokenizer, words_of


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
    ce_sample: list = field(default_factory=list)     # (nats, tokens) tensors per sample, per batch
    ce_swapped_sample: list = field(default_factory=list)
    reranked: list = field(default_factory=list)      # (training gallery row or -1, ids) per sample

    def cat(self, name):
        return torch.cat(getattr(self, name)) if getattr(self, name) else None


def teacher_forced_ce(model, memory, mask, tokens, pad: int, per_sample: bool = False):
    """Summed next-token cross-entropy (nats) over real target tokens, and their count; with
    per_sample, both per row ((B,) tensors on the CPU), so groups and single clips can be scored."""
    nats, count = (t.cpu() for t in sequence_nats(model, memory, mask, tokens, pad))
    if per_sample:
        return nats, count
    return float(nats.sum()), int(count.sum())


@torch.no_grad()
def run_model(model, data: KeypointData, split: str, batch_size: int = 64, max_len: int = 40,
              beam: int = 0, seed: int = 0, reranker: Reranker | None = None) -> Outputs:
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
        out.text.append(model.text_embedding(sentence_features(model, b.text_emb, b.text_ids, b.text_attention))
                        .float().cpu())
        decoded = [model.generate(memory, b.mask, max_len=max_len)]
        if beam > 1:
            decoded.append(model.generate(memory, b.mask, max_len=max_len, beam_size=beam))
            out.beam += decoded[1]
        out.greedy += decoded[0]
        if reranker is not None:
            out.reranked += reranker(memory, b.mask, out.clip[-1], decoded)
        own = teacher_forced_ce(model, memory, b.mask, b.tokens, pad, per_sample=True)
        other = data.batch(partners[pos])  # the partners' videos, in the same order as b
        mem_other = model.encode(other.x, other.mask)
        swapped = teacher_forced_ce(model, mem_other, other.mask, b.tokens, pad, per_sample=True)
        for whole, per, (nats, count) in ((out.ce, out.ce_sample, own),
                                          (out.ce_swapped, out.ce_swapped_sample, swapped)):
            per.append((nats, count))
            whole.append((float(nats.sum()), int(count.sum())))
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
    ids = cached_tokenizer(vocab.tokenizer)(texts, add_special_tokens=False)["input_ids"]
    return vocab.decode(ids)


def uncased(vocab: Vocab) -> bool:
    """Whether the model's vocabulary folds case (a word vocabulary, an uncased WordPiece): then
    its output can never match a capital, and raw-reference scores are taken lower-cased."""
    if vocab.kind == "word":
        return True  # words_of lower-cases
    tok, probe = cached_tokenizer(vocab.tokenizer), "Sign Language"
    return tok.decode(tok(probe, add_special_tokens=False)["input_ids"]).strip() == probe.lower()


def sample_columns(data) -> dict[str, np.ndarray]:
    """Per-sample columns the cache keeps from the manifest (id, split, signer, label, text, fps,
    n_frames), in cache row order. Stand-in data without a cache gives what it has."""
    if getattr(data, "cache_dir", None) is None:
        return {"id": np.asarray(data.ids), "text": np.asarray(data.texts), "split": np.asarray(data.split)}
    return dict(open_cache(data.cache_dir, text=data.cfg.text_store).samples)


def training_rows(data: KeypointData) -> np.ndarray:
    """One training row per distinct training sentence (its first), in row order."""
    rows = data.rows("train")
    _, first = np.unique(data.text_id.cpu().numpy()[rows], return_index=True)
    return rows[np.sort(first)]


@torch.no_grad()
def training_gallery(model, data: KeypointData, batch_size: int = 1024):
    """Distinct training sentences (reference-normalised) and their CLIP text embeddings."""
    rows = training_rows(data)
    device = next(model.parameters()).device
    # the cached frozen sentence embeddings, or the fine-tuned text tower's (text_encoder: finetune)
    emb = torch.cat([model.text_embedding(rows_sentence_features(model, data, rows[a:a + batch_size])
                                          .to(device)).float().cpu()
                     for a in range(0, len(rows), batch_size)]) if len(rows) else torch.zeros(0, 1)
    return reference_texts(data.vocab, data.texts[rows]), emb


def most_frequent_training_sentence(data: KeypointData, raw: bool = False) -> str:
    """The most frequent training sentence, normalised like the references (raw: as written)."""
    train_ids = data.text_id.cpu().numpy()[data.rows("train")]
    if not len(train_ids):
        return ""
    top = np.bincount(train_ids).argmax()
    text = data.texts[np.flatnonzero(data.text_id.cpu().numpy() == top)[0]]
    return str(text).strip() if raw else reference_texts(data.vocab, [text])[0]


def nearest_sentences(video_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int = 1, block: int = 4096):
    """Top-k (scores, indices) of gallery rows by cosine for each video, in row blocks."""
    scores, idx = [], []
    for a in range(0, len(video_emb), block):
        s, i = (video_emb[a:a + block] @ gallery_emb.T).topk(min(k, len(gallery_emb)), dim=1)
        scores.append(s)
        idx.append(i)
    return torch.cat(scores), torch.cat(idx)


def evaluate(model, data: KeypointData, split: str = "test", *, batch_size: int = 64,
             max_len: int = 40, beam: int = 0, seed: int = 0, n_examples: int = 12,
             by: list[str] | None = None, columns: dict | None = None, rerank: int = 0,
             rerank_weight: float = 1.0) -> tuple[dict, dict]:
    """Compute the whole summary for one split. Returns (summary, extras for the plots and
    predictions.jsonl). by: per-sample columns to group by (summary["by"][column][value]);
    columns: those columns in cache row order (default: `sample_columns(data)`); rerank: also
    score retrieval-augmented decoding (`s2t.rerank`) over the decoder's hypotheses and that many
    nearest training sentences, with CLIP weight rerank_weight (summary["rerank"])."""
    if not len(data.rows(split)):
        raise EvaluationError(f"split {split!r} has no samples; "
                              f"splits here: {sorted(set(data.split.tolist()))}")
    columns = sample_columns(data) if columns is None else columns
    for column in by or []:
        if column not in columns:
            raise EvaluationError(f"--by {column}: not a per-sample column of this cache; it keeps "
                                  f"{sorted(columns)}")
    gallery_rows = training_rows(data)
    gallery_text, gallery_emb = training_gallery(model, data)
    gallery_raw = [str(t).strip() for t in data.texts[gallery_rows]]
    reranker = None
    rerank_skipped = rerank_unavailable(getattr(data, "text_model", None), len(gallery_rows)) if rerank > 0 else None
    if rerank > 0 and not rerank_skipped:
        device = next(model.parameters()).device
        tokens = data.tokens[torch.as_tensor(gallery_rows, device=data.tokens.device)].to(device)
        reranker = Reranker(model, data.vocab, Gallery(tokens, gallery_emb.to(device)), data.text_model,
                            k=rerank, clip_weight=rerank_weight, max_len=max_len)
    out = run_model(model, data, split, batch_size, max_len, beam, seed, reranker)
    index = out.cat("index").numpy()
    n = len(index)
    labels = data.label.cpu().numpy()[index]
    text_keys = data.text_id.cpu().numpy()[index]
    lowercase = uncased(data.vocab)
    refs = reference_texts(data.vocab, data.texts[index])
    raw_refs = [str(t).strip() for t in data.texts[index]]

    clip, text, supcon = out.cat("clip"), out.cat("text"), out.cat("supcon")
    greedy_swapped, clip_swapped = swapped_outputs(out)
    hyps, hyps_swapped = data.vocab.decode(out.greedy), data.vocab.decode(greedy_swapped)
    beams = data.vocab.decode(out.beam) if beam > 1 else None
    reranked = None
    if out.reranked:  # the winner per clip: a training sentence (row >= 0) or a hypothesis
        won = data.vocab.decode([ids for row, ids in out.reranked if row < 0])[::-1]
        norm = [gallery_text[row] if row >= 0 else won.pop() for row, _ in out.reranked]
        raw = [gallery_raw[row] if row >= 0 else norm[i] for i, (row, _) in enumerate(out.reranked)]
        reranked = (norm, raw, np.array([row >= 0 for row, _ in out.reranked]))
    ce_own = [torch.cat(parts).double().numpy() for parts in zip(*out.ce_sample)]
    ce_swap = [torch.cat(parts).double().numpy() for parts in zip(*out.ce_swapped_sample)]
    # video->text gallery: the split's distinct sentences; a group is searched against it too
    ranks = metrics.retrieval_ranks(clip, text, labels, text_keys)
    distinct = ranks["distinct"].numpy()
    split_gallery = (text[distinct], labels[distinct])
    # baselines: what a model that ignores the video, or only retrieves, would score
    nearest_score, nearest = (nearest_sentences(clip, gallery_emb) if len(gallery_text)
                              else (torch.full((n, 1), float("nan")), None))
    retrieved = [gallery_text[i] for i in nearest[:, 0].tolist()] if nearest is not None else [""] * n
    retrieved_raw = [gallery_raw[i] for i in nearest[:, 0].tolist()] if nearest is not None else [""] * n
    frequent = (most_frequent_training_sentence(data), most_frequent_training_sentence(data, raw=True))
    # the training-free bar: the sentence of the nearest training clip by keypoint path (and with
    # the mirrored query tried too); a trained model below it has learnt less than template matching
    # (one pass for both; streamed data: block by block, within the memory budget)
    keypoint_nn = {}
    found = baselines.keypoint_nearest_neighbours(
        data, split, rows=index, mirrors=(False, True),
        memory_bytes=(data.cfg.memory_budget_mb << 20) // 8 if data.streams else None) \
        if isinstance(data, KeypointData) else {}
    for name, mirror in (("keypoint_nn", False), ("keypoint_nn_mirror", True)) if found else ():
        neighbour = found[mirror]["neighbour"]
        keypoint_nn[name] = (reference_texts(data.vocab, data.texts[neighbour]),
                             [str(t).strip() for t in data.texts[neighbour]],
                             data.text_id.cpu().numpy()[neighbour] == text_keys)
    if getattr(data, "streams", False):
        data.release()  # no keypoints are read past this point: the reader's blocks go before the metrics

    def generation(norm_hyps, raw_hyps, sel) -> dict:
        """One system on samples `sel`: against the raw references (sacreBLEU; the headline keys)
        and against the tokenizer-normalised ones (`*_normalised`)."""
        raw = metrics.generation_metrics([raw_hyps[i] for i in sel], [raw_refs[i] for i in sel],
                                         lowercase=lowercase)
        norm = metrics.generation_metrics([norm_hyps[i] for i in sel], [refs[i] for i in sel], gallery_text)
        raw.pop("train_copy_rate", None)
        return {**raw, **{f"{k}_normalised": norm[k] for k in NORMALISED},
                "train_copy_rate": norm.get("train_copy_rate", float("nan"))}

    def summarise(sel: np.ndarray) -> dict:
        """Every metric on the samples at positions `sel` of the pass (the whole split, or a group)."""
        emb = lambda video: metrics.embedding_metrics(video[sel], text[sel], labels[sel],  # noqa: E731
                                                      text_keys[sel], gallery=split_gallery)
        s: dict = {"n_samples": len(sel)}
        s["clip"] = emb(clip)
        # the SupCon head is trained on videos only: it is not in the text's space, so no text metrics
        s["supcon"] = metrics.video_metrics(supcon[sel], labels[sel])
        s["greedy"] = {**generation(hyps, hyps, sel), "ce": _ce_of(ce_own, sel)}
        if beams is not None:
            s["beam"] = generation(beams, beams, sel)
            s["beam_size"] = beam
        if reranked is not None:
            s["rerank"] = {**generation(reranked[0], reranked[1], sel),
                           "retrieved_rate": float(reranked[2][sel].mean()) if len(sel) else float("nan")}
            s["rerank_settings"] = {"k": rerank, "clip_weight": rerank_weight}
        s["swapped"] = {**emb(clip_swapped), **generation(hyps_swapped, hyps_swapped, sel),
                        "ce": _ce_of(ce_swap, sel)}
        original = {**s["clip"], **s["greedy"]}
        s["visual_dependence"] = {
            **metrics.dependence(original, s["swapped"]),
            "visual_dependence_changed": metrics.changed_fraction([hyps[i] for i in sel],
                                                                  [hyps_swapped[i] for i in sel]),
        }
        s["baselines"] = {
            "most_frequent": generation([frequent[0]] * n, [frequent[1]] * n, sel),
            "retrieval": generation(retrieved, retrieved_raw, sel),
            **{name: {**generation(norm, raw, sel), "ret1_v2t": float(hit[sel].mean()) if len(sel) else float("nan")}
               for name, (norm, raw, hit) in keypoint_nn.items()},
        }
        # the flat keys the user and `compare` read first: CLIP head, greedy decoding
        s.update({k: v for k, v in original.items() if k != "n_samples"})
        s.update(s["visual_dependence"])
        if reranked is not None:  # flat too: the demo's and `compare`'s tables read flat keys
            s.update({f"{k}_rerank": s["rerank"][k] for k in ("wer", "bleu4", "chrf", "retrieved_rate")})
        s["warnings"] = report.diagnose(s)
        return s

    summary = {"split": split, **summarise(np.arange(n))}
    if rerank_skipped:
        summary["warnings"].append(f"reranking skipped: {rerank_skipped}")
    summary["scoring"] = scoring(lowercase, data.vocab)
    # groups: the same pass, scored again on each subset (values as the cache writes them)
    summary["by"] = {}
    for column in by or []:
        values = np.asarray(columns[column])[index].astype(str)
        summary["by"][column] = {str(v): summarise(np.flatnonzero(values == v)) for v in sorted(set(values))}

    pick = np.unique(np.linspace(0, n - 1, min(n_examples, n)).round().astype(int))
    examples = [{"id": str(data.ids[index[i]]), "reference": refs[i], "hypothesis": hyps[i],
                 "swapped": hyps_swapped[i], "retrieved": retrieved[i]} for i in pick]
    # one record per sample, in cache row order
    top_score, top = nearest_sentences(clip, text[distinct], k=5)
    split_sentences = [raw_refs[i] for i in distinct]
    predictions = []
    for i in np.argsort(index, kind="stable"):
        row = int(index[i])
        record = {"id": str(data.ids[row]),
                  **{k: _plain(v[row]) for k, v in columns.items() if k not in ("id", "text")},
                  "reference": raw_refs[i], "reference_normalised": refs[i], "greedy": hyps[i]}
        if beams is not None:
            record["beam"] = beams[i]
        if reranked is not None:
            record["rerank"] = reranked[1][i]
            record["rerank_source"] = "retrieved" if reranked[2][i] else "decoder"
        record.update({
            "wer": metrics.sentence_wer(hyps[i], raw_refs[i], lowercase),
            "wer_normalised": metrics.sentence_wer(hyps[i], refs[i]),
            "ce": float(ce_own[0][i] / ce_own[1][i]) if ce_own[1][i] else None,
            "greedy_swapped": hyps_swapped[i],
            "retrieved_training": retrieved_raw[i],
            "retrieved_training_cosine": float(nearest_score[i, 0]),
            "rank_v2t": int(ranks["v2t"][i]),
            "true_cosine": float(ranks["v2t_score"][i]),
            "top5": [{"text": split_sentences[j], "cosine": float(c)}
                     for j, c in zip(top[i].tolist(), top_score[i].tolist())],
        })
        predictions.append(_finite_record(record))
    pos_c, neg_c = metrics.pair_similarities(clip, labels, seed=seed)
    pos_s, neg_s = metrics.pair_similarities(supcon, labels, seed=seed)
    extras = {"examples": examples, "pairs": {"clip": (pos_c, neg_c), "supcon": (pos_s, neg_s)},
              "ranks": ranks, "predictions": predictions}
    return summary, extras


NORMALISED = ("wer", "bleu4", "chrf", "exact_match")  # scores also kept against normalised references


def scoring(lowercase: bool, vocab: Vocab) -> dict:
    """How the generation scores were computed, for summary.json and summary.md."""
    case = ("lower-cased on both sides: the model's vocabulary is uncased, so its output can "
            "never match a capital" if lowercase else "case-sensitive: the model's vocabulary keeps case")
    return {
        "references": "raw (the manifest's text)",
        "lowercase": lowercase,
        "case": case,
        "sacrebleu": metrics.sacrebleu_signatures(lowercase),
        "wer": f"jiwer {_version('jiwer')}, words split on whitespace"
               + (", lower-cased" if lowercase else ""),
        "normalised": "keys *_normalised: the same scores against references passed through the model's "
                      f"tokenizer ({vocab.kind} {vocab.tokenizer or ''}".rstrip() + "), which drops what the "
                      "model cannot write (case, accents, punctuation it lacks)",
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _ce_of(parts, sel) -> float:
    """Nats per target token over the samples `sel` (parts: per-sample nats, per-sample tokens)."""
    if not parts:
        return float("nan")
    tokens = parts[1][sel].sum()
    return float(parts[0][sel].sum() / tokens) if tokens else float("nan")


def _plain(value):
    """A cache column's cell as a JSON value."""
    return value.item() if isinstance(value, np.generic) else value


def _finite_record(record: dict) -> dict:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def write_report(run_dir: Path, out_dir: Path, summary: dict, extras: dict) -> list[Path]:
    """summary.json, summary.md, predictions.jsonl, the PNG plots and report.html."""
    files = [out_dir / "summary.json", report.write_summary(out_dir, summary, extras["examples"])]
    if extras.get("predictions") is not None:
        files.append(write_predictions(out_dir / "predictions.jsonl", extras["predictions"]))
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
    # last: the page inlines the plots above and reads the chosen clips' keypoints from the cache
    files.append(html_report.write_html_report(out_dir, summary, extras.get("predictions") or [],
                                               extras["examples"], plots=[f for f in files if f.suffix == ".png"]))
    return files


def write_predictions(path: Path, records: list[dict]) -> Path:
    """One JSON object per line, written to a temporary name and renamed (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def checkpoint_note(run_dir, name: str, asked: bool) -> dict:
    """What the summary says about the checkpoint it scored."""
    meta = load_checkpoint(Path(run_dir) / name, prefix="\0")[1]  # the metadata only, no tensors
    best = meta.get("best")
    if asked:
        why = "asked for with --checkpoint"
    elif name == BEST and best:
        why = f"best on validation: {best['metric']} {best['value']:.4f} at step {best['step']}"
    else:
        why = f"the run has no {BEST} (no validation split, or a run from before it existed)"
    return {"file": name, "step": meta.get("step"), "selected": why, "best": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s2t eval", description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="run folder written by `s2t train`")
    ap.add_argument("--split", default="test")
    ap.add_argument("--beam", type=int, default=0, help="also decode with this beam size (0/1: greedy only)")
    add_rerank_arguments(ap)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cache", type=Path, help="evaluate on this cache instead of the run's")
    ap.add_argument("--memory-budget-mb", type=int, metavar="MB",
                    help="stream the keypoints from the cache, holding at most this many MB of them "
                         "(default: stream under the run's memory_budget_mb when its config says "
                         "stream: true or the cache's keypoints are larger than that; else load them)")
    ap.add_argument("--checkpoint", help="checkpoint file name inside the run, e.g. step-000500.safetensors "
                                         "(default: best.safetensors when the run has one, else last.safetensors)")
    ap.add_argument("--by", action="append", metavar="COLUMN",
                    help="also score each group of this per-sample column (signer, label, split, ...; "
                         "repeatable; default: signer when the split has signers; 'none': no groups)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--examples", type=int, default=12, help="example translations in the report")
    ap.add_argument("--seed", type=int, default=0, help="seed of the swap permutation")
    ap.add_argument("--out", type=Path, help="output folder (default RUN/eval/SPLIT)")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    t0 = time.time()
    try:
        name = args.checkpoint or default_checkpoint(args.run)
        model, cfg, info = load_run(args.run, device, checkpoint=name)
        cfg, loading = data_config(cfg, args.cache or info["cache"], args.memory_budget_mb)
        data = load_data(args.cache or info["cache"], cfg, device, vocab=Vocab.from_run_info(info),
                         whole_budget=True)  # streamed: memory_budget_mb bounds all eval holds, not only the LRU
        columns = sample_columns(data)
        by = default_by(columns, data.rows(args.split)) if args.by is None else \
            [c for c in args.by if c.lower() != "none"]
        summary, extras = evaluate(model, data, args.split, batch_size=args.batch_size,
                                   max_len=cfg.max_text_len, beam=args.beam, seed=args.seed,
                                   n_examples=args.examples, by=by, columns=columns,
                                   rerank=args.rerank, rerank_weight=args.rerank_weight)
        note = checkpoint_note(args.run, name, asked=args.checkpoint is not None)
    except (CheckpointError, CacheError, EvaluationError) as e:
        return report_error(e)
    cache_dir = data.cache_dir
    del data  # the streaming reader's blocks go before the report reads its clips
    summary.update({"run": str(args.run), "cache": cache_dir, "keypoints": loading,
                    "seconds": round(time.time() - t0, 1),
                    "checkpoint": {**{k: v for k, v in info.items() if isinstance(v, (int, float, str))},
                                   **note}})
    out_dir = args.out or args.run / "eval" / args.split
    files = write_report(args.run, out_dir, summary, extras)
    print((out_dir / "summary.md").read_text())
    for w in summary["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def data_config(cfg, cache_dir, budget_mb: int | None = None) -> tuple:
    """The run's config with `stream` set as evaluation loads the cache, and a note saying how and
    why. The same switch as training (`load_data`: in memory, or streamed under memory_budget_mb):
    streamed when asked for (budget_mb, or the run's stream: true) or when the keypoints the model
    reads (pose + its components + presence, float16 as stored) are larger than the budget."""
    if budget_mb is not None:
        if budget_mb <= 0:
            raise EvaluationError(f"--memory-budget-mb must be positive, got {budget_mb}")
        cfg, why = replace(cfg, stream=True, memory_budget_mb=budget_mb), "--memory-budget-mb"
    elif cfg.stream:
        why = "the run's config (stream: true)"
    else:
        size = keypoint_bytes(cache_dir, cfg.components)
        if size <= cfg.memory_budget_mb << 20:
            return cfg, {"streamed": False, "why": f"{size / 2**20:.0f} MB of keypoints fit the "
                                                   f"{cfg.memory_budget_mb} MB budget: loaded in memory"}
        cfg, why = replace(cfg, stream=True), (f"the cache's {size / 2**20:.0f} MB of keypoints exceed "
                                                f"memory_budget_mb")
    print(f"keypoints streamed from the cache under {cfg.memory_budget_mb} MB ({why})", file=sys.stderr)
    return cfg, {"streamed": True, "memory_budget_mb": cfg.memory_budget_mb, "why": why}


def keypoint_bytes(cache_dir, components) -> int:
    """Bytes of the keypoints `components` (and pose, for the shoulders) plus the presence flags of
    every sample of the cache, as the store holds them (float16): what loading them in memory reads."""
    needed = dict.fromkeys(["pose", *components])
    frames = int(np.asarray(open_cache(cache_dir).samples["n_frames"], np.int64).sum())
    return frames * (sum(2 * 3 * COMPONENT_SIZES[c] for c in needed) + len(COMPONENTS))


def default_by(columns: dict, rows: np.ndarray) -> list[str]:
    """Group by signer when the split's samples name their signers."""
    signers = columns.get("signer")
    return ["signer"] if signers is not None and any(str(s) for s in np.asarray(signers)[rows]) else []



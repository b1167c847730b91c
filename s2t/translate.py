"""`python -m s2t translate FILE --run DIR [--beam 4] [--top 5]`: one new input to text.

FILE is a video (MediaPipe Holistic runs on it), a .pose file or a .npy/.npz of (T, 543, 3|4)
landmarks. It goes through the same path as training: the training frame rate (`training_fps`),
`s2t.frames`' normalisation, the run's model. Prints the decoded sentence and the training sentences nearest in
the CLIP space with their cosine. An input without a person is an error (exit 1), never a
made-up sentence.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from preprocess.cli import report_error
from preprocess.keypoint_sources import SourceError, load_keypoints
from preprocess.manifest import normalise_text
from preprocess.store import CacheError, open_cache

from .checkpoint import CheckpointError, default_checkpoint, load_run
from .device import resolve_device
from .frames import normalise_keypoints
from .rerank import Gallery, Reranker, add_rerank_arguments, unavailable as rerank_unavailable
from .vocab import Vocab, encode_texts, rebind_vocab


NO_WORDS = "(none: the model ended the sentence at once)"


@dataclass
class Translation:
    sentence: str
    neighbours: list[tuple[str, float]]  # (training sentence, cosine), best first
    n_frames: int
    reranked: str | None = None           # retrieval-augmented answer (`s2t.rerank`), when asked
    reranked_source: str | None = None    # "retrieved" (a training sentence) or "decoder"


def training_sentence_rows(cache) -> np.ndarray:
    """Cache rows of the distinct training sentences (the first clip of each), in row order."""
    texts = np.asarray(cache.samples["text"]).astype(str)
    rows = np.flatnonzero(np.asarray(cache.samples["split"]).astype(str) == "train")
    _, first = np.unique([normalise_text(t) for t in texts[rows]], return_index=True)
    return rows[np.sort(first)]


def training_sentences(cache, tx, rows: np.ndarray, model, device,
                       batch_size: int = 1024) -> tuple[list[str], torch.Tensor]:
    """The training sentences at cache `rows` and their CLIP text embeddings, from the text store
    `tx` (= cache.text(), read once by the caller; no keypoints are loaded)."""
    texts = np.asarray(cache.samples["text"]).astype(str)
    sentence_emb = torch.from_numpy(np.asarray(tx.embeddings, np.float32)[rows])
    tower = getattr(model, "text_tower", None)
    if tower is not None:  # text_encoder: finetune: the run's fine-tuned text tower on the cache's ids
        from .text_tower import tower_inputs

        ids, attention = (torch.from_numpy(a[rows]) for a in tower_inputs(tx, texts))
        with torch.no_grad():
            sentence_emb = torch.cat([tower(ids[a:a + 256].to(device), attention[a:a + 256].to(device)).cpu()
                                      for a in range(0, len(rows), 256)]) if len(rows) else sentence_emb
    with torch.no_grad():
        emb = [model.text_embedding(sentence_emb[a:a + batch_size].to(device)).float().cpu()
               for a in range(0, len(rows), batch_size)]
    return list(texts[rows]), torch.cat(emb) if emb else torch.zeros(0, 1)


def training_reranker(cache, tx, rows: np.ndarray, model, cfg, vocab: Vocab, gallery_emb: torch.Tensor,
                      k: int, weight: float, device) -> tuple[Reranker | None, str | None]:
    """The reranker over the training sentences at cache `rows` (those of `training_sentences`),
    or why there is none."""
    why = rerank_unavailable(tx.text_model, len(rows))
    if why:
        return None, why
    texts = np.asarray(cache.samples["text"]).astype(str)
    tokens = torch.from_numpy(encode_texts(vocab, tx, texts, cfg.max_text_len)[rows]).to(device)
    gallery = Gallery(tokens, gallery_emb.to(device))
    return Reranker(model, vocab, gallery, tx.text_model, k=k, clip_weight=weight, max_len=cfg.max_text_len), None


def training_fps(cache) -> float | None:
    """The frame rate the model was trained at: the cache's fps setting, or where that is null
    (the cache kept each source's own rate) the median rate of its training samples (all samples
    if it has no train split). None only for a cache without frame rates."""
    fps = cache.meta.get("settings", {}).get("fps")
    if fps:
        return float(fps)
    rates = np.asarray(cache.samples.get("fps", []), np.float64)
    train = np.asarray(cache.samples["split"]).astype(str) == "train" if "split" in cache.samples else None
    if train is not None and len(train) == len(rates) and train.any():
        rates = rates[train]
    rates = rates[np.isfinite(rates) & (rates > 0)]
    return round(float(np.median(rates)), 3) if len(rates) else None  # float32 29.97 -> 29.97


def model_input(keypoints: np.ndarray, cfg, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's (1, T, F) features and (1, T) mask, made exactly as the evaluation batches
    make them (same components, normalisation and subsampling to max_frames)."""
    x = torch.from_numpy(normalise_keypoints(keypoints, cfg.components, cfg.max_frames,
                                             cfg.canonical_hand))[None].to(device)
    return x, torch.ones(x.shape[:2], dtype=torch.bool, device=device)


@torch.no_grad()
def translate(keypoints: np.ndarray, model, cfg, vocab: Vocab, gallery: tuple[list[str], torch.Tensor],
              beam: int = 1, top: int = 5, device="cpu", reranker: Reranker | None = None) -> Translation:
    """(T, 543, 3) keypoints -> the model's sentence and its `top` nearest training sentences
    (and with a reranker, the sentence it chooses among the decoder's and the training ones)."""
    x, mask = model_input(keypoints, cfg, device)
    model.eval()
    memory = model.encode(x, mask)
    ids = model.generate(memory, mask, max_len=cfg.max_text_len, beam_size=max(1, beam))
    sentence = vocab.decode(ids)[0]
    texts, emb = gallery
    video = model.video_embedding(memory, mask, head="clip").float().cpu()
    scores, idx = (video @ emb.T)[0].topk(min(top, len(texts))) if len(texts) else (torch.zeros(0),) * 2
    result = Translation(sentence, [(texts[i], float(s)) for s, i in zip(scores.tolist(), idx.tolist())],
                         int(x.shape[1]))
    if reranker is not None:
        (row, won), = reranker(memory, mask, video, [ids])
        result.reranked = texts[row] if row >= 0 else vocab.decode([won])[0]
        result.reranked_source = "retrieved" if row >= 0 else "decoder"
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s2t translate", description=__doc__.split("\n")[0])
    ap.add_argument("file", type=Path, help="video, .pose, .npy or .npz")
    ap.add_argument("--run", required=True, type=Path, help="run folder written by `s2t train`")
    ap.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    ap.add_argument("--top", type=int, default=5, help="how many nearest training sentences to list")
    add_rerank_arguments(ap)
    ap.add_argument("--cache", type=Path, help="cache for frame rate and training sentences (default: the run's)")
    ap.add_argument("--checkpoint", help="checkpoint file name inside the run (default: best.safetensors "
                                         "when the run has one, else last.safetensors, as `eval`)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    try:
        model, cfg, info = load_run(args.run, device, checkpoint=args.checkpoint or default_checkpoint(args.run))
        cache = open_cache(args.cache or info["cache"], text=cfg.text_store)
    except CheckpointError as e:
        return report_error(e)
    except CacheError as e:
        return report_error(CacheError(f"{e} (the training sentences and frame rate come from the run's "
                                       "cache; pass --cache if it moved)"))
    train_fps = training_fps(cache)
    settings = cache.meta.get("settings", {})
    # the model's frame rate; a .npy without one is taken to be at that rate. The same checks as
    # `make features` (no inf, no value beyond the frame, a person in some frame): never a made-up sentence
    try:
        keypoints, fps = load_keypoints(args.file, target_fps=train_fps,
                                        default_fps=settings.get("default_fps") or train_fps or 25.0)
    except SourceError as e:
        return report_error(SourceError(e.path, f"cannot translate it: {e.reason}"))
    tx, rows = cache.text(), training_sentence_rows(cache)  # the text store is read and verified once
    gallery = training_sentences(cache, tx, rows, model, device)
    vocab = rebind_vocab(Vocab.from_run_info(info), tx)  # a tokenizer trained into the cache moved with it
    reranker, why = (training_reranker(cache, tx, rows, model, cfg, vocab, gallery[1], args.rerank,
                                       args.rerank_weight, device) if args.rerank > 0 else (None, None))
    result = translate(keypoints, model, cfg, vocab, gallery, beam=args.beam, top=args.top,
                       device=device, reranker=reranker)
    print(f"{args.file} ({len(keypoints)} frames at {fps:g} fps, {result.n_frames} to the model)")
    print(f"translation: {result.sentence or NO_WORDS}")
    print("nearest training sentences (cosine, CLIP space):")
    for rank, (text, score) in enumerate(result.neighbours, 1):
        print(f"  {rank}. {score:+.3f}  {text}")
    if result.reranked is not None:
        source = "a training sentence" if result.reranked_source == "retrieved" else "the decoder's"
        print(f"reranked with training sentences: {result.reranked or NO_WORDS} ({source})")
    elif why:
        print(f"reranking skipped: {why}")
    return 0

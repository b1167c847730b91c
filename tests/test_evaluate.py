"""`s2t eval`, `s2t compare` and `s2t translate` end to end on a tiny trained run.

The run: the built-in synthetic corpus at its tiny scale (20 sentences x 6 signers, split by
signer) written straight into a cache, trained for 20 steps on the CPU (enough for the decoder to
emit words). It is far from converged: these tests check the plumbing and the consistency between
the commands, not quality.
"""
import csv
import json
import math

import jiwer
import numpy as np
import pytest
import torch

from preprocess.store import write_cache
from preprocess.synthetic import generate_corpus
from preprocess.text import load_tokenizer, tokenize
from s2t import compare, evaluate, translate
from s2t.config import load_config
from s2t.train import train

REQUIRED = ["pos_sim", "neg_sim", "ret1_v2t", "ret1_t2v", "ret5_v2t", "wer", "bleu4", "chrf",
            "visual_dependence_wer", "n_samples", "gallery_size"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_corpus")
    generate_corpus(root, "tiny", seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_run")
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    texts = [r["text"] for r in rows]
    ids, lengths = tokenize(load_tokenizer("default"), texts, 48)
    # one fixed random unit vector per sentence stands in for the frozen sentence encoder
    sentences = sorted(set(texts))
    table = np.random.default_rng(0).standard_normal((len(sentences), 384)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    emb = table[[sentences.index(t) for t in texts]]
    cache = write_cache(root / "cache", [{**r, "label": "", "fps": float(r["fps"])} for r in rows],
                        [np.load(corpus / r["path"]) for r in rows],
                        text={"input_ids": ids, "lengths": lengths, "embeddings": emb,
                              "tokenizer": "default", "text_model": "random"})
    cfg = load_config("configs/train/tiny_cpu.yaml",
                      ["max_steps=20", "batch_size=16", "lr=3e-3", "warmup_steps=2", "queue_size=32",
                       "log_every=5", "eval_every=10", "ckpt_every=20"])
    train(cfg, cache, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    assert evaluate.main(["--run", str(tiny_run), "--split", "test", "--beam", "2"]) == 0
    out = tiny_run / "eval" / "test"
    return tiny_run, json.loads((out / "summary.json").read_text()), out


def test_eval_writes_the_summary_and_plots(evaluated, corpus):
    run, summary, out = evaluated
    for key in REQUIRED:
        assert key in summary, key
    test_rows = [r for r in csv.DictReader(open(corpus / "manifest.csv")) if r["split"] == "test"]
    assert summary["n_samples"] == len(test_rows) == 20
    assert summary["gallery_size"] == len({r["text"] for r in test_rows})
    # one signer signs each sentence once: no same-sentence pairs, PosSim undefined (null), not 0
    assert summary["pos_sim"] is None
    for key in ("neg_sim", "ret1_v2t", "ret1_t2v", "ret5_v2t", "wer", "bleu4", "chrf",
                "visual_dependence_wer", "visual_dependence_ce"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key]), key
    assert 0 <= summary["ret1_v2t"] <= summary["ret5_v2t"] <= 1
    assert summary["beam_size"] == 2 and "wer" in summary["beam"]
    # the decoder cross-attends to the memory, so another video must change its loss somewhat
    assert summary["visual_dependence_ce"] != 0
    assert summary["swapped"]["ce"] == pytest.approx(summary["ce"] + summary["visual_dependence_ce"])
    for png in ("similarity_clip.png", "similarity_supcon.png", "retrieval_ranks.png",
                "examples.png", "training_curves.png"):
        assert (out / png).stat().st_size > 5000, png
    md = (out / "summary.md").read_text()
    assert ("**Collapsed.**" in md) != ("**Not collapsed.**" in md)
    assert "| WER |" in md and "baseline: most frequent sentence" in md


def test_most_frequent_baseline_is_what_jiwer_gives(evaluated, corpus):
    _, summary, _ = evaluated
    tok = load_tokenizer("default")
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    norm = lambda t: tok.decode(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    train_texts = [r["text"] for r in rows if r["split"] == "train"]
    counts = {t: train_texts.count(t) for t in train_texts}
    top = max(counts.values())
    refs = [norm(r["text"]) for r in rows if r["split"] == "test"]
    # every training sentence is equally frequent here: any of the tied ones is a valid answer
    candidates = {jiwer.wer(refs, [norm(t)] * len(refs)) for t, c in counts.items() if c == top}
    assert any(summary["baselines"]["most_frequent"]["wer"] == pytest.approx(w) for w in candidates)
    assert summary["baselines"]["retrieval"]["train_copy_rate"] == 1.0


def test_compare_puts_runs_side_by_side(evaluated, tmp_path, capsys):
    run, summary, _ = evaluated
    out = tmp_path / "cmp.md"
    assert compare.main([str(run), str(run), "--split", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == out.read_text().strip()
    header = next(line for line in printed.splitlines() if line.startswith("| metric"))
    assert header.count("|") == 4  # metric + two runs
    assert f"{summary['wer']:.3f}" in printed
    assert compare.main([str(tmp_path / "missing")]) == 1


def test_translate_a_sample_matches_its_evaluation(evaluated, corpus, tmp_path, capsys):
    """A test sample's keypoints as .npy go through translate's own path (load, normalise, encode)
    and must give what `eval` decoded for it in a batch."""
    run, summary, _ = evaluated
    example = summary["examples"][-1]  # the longest: subsampled to max_frames like in training
    npy = tmp_path / f"{example['id']}.npy"
    np.save(npy, np.load(corpus / "keypoints" / f"{example['id']}.npy"))
    assert translate.main([str(npy), "--run", str(run), "--top", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("translation:"))
    assert lines[i] == f"translation: {example['hypothesis'] or translate.NO_WORDS}"
    # and its nearest training sentence is the retrieval baseline's answer for that sample
    tok = load_tokenizer("default")
    nearest = lines[i + 2].split(maxsplit=2)[2]
    assert tok.decode(tok(nearest, add_special_tokens=False)["input_ids"]) == example["retrieved"]


def test_translate_feeds_the_model_what_evaluation_feeds_it(tiny_run, corpus):
    """translate's input path (file -> keypoints -> features) equals the evaluation batch of the
    same sample, for a clip longer than max_frames (so the subsampling is compared too)."""
    from preprocess.keypoint_sources import load_keypoints
    from s2t.checkpoint import load_run
    from s2t.data import KeypointData

    model, cfg, info = load_run(tiny_run)
    data = KeypointData(info["cache"], cfg, vocab=info["vocab"])
    row = int(np.argmax(np.where(data.split == "test", data.lengths, -1)))
    assert data.lengths[row] > cfg.max_frames
    keypoints, _ = load_keypoints(corpus / "keypoints" / f"{data.ids[row]}.npy")
    x, mask = translate.model_input(keypoints, cfg)
    batch = data.batch(np.array([row]))
    assert x.shape == batch.x.shape and mask.all() and batch.mask.all()
    torch.testing.assert_close(x, batch.x)


def test_translate_a_real_video(tiny_run, person_video, corpus, capsys):
    assert translate.main([str(person_video), "--run", str(tiny_run), "--top", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("translation:"))
    assert lines[i][len("translation:"):].strip() not in ("", translate.NO_WORDS), "no sentence"
    ranked = lines[i + 2:i + 7]
    assert [line.split(".")[0].strip() for line in ranked] == ["1", "2", "3", "4", "5"]
    scores = [float(line.split()[1]) for line in ranked]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    train_sentences = {r["text"] for r in csv.DictReader(open(corpus / "manifest.csv")) if r["split"] == "train"}
    assert all(line.split(maxsplit=2)[2] in train_sentences for line in ranked)


def test_translate_refuses_a_video_without_a_person(tiny_run, tmp_path, capsys):
    from tests.media import make_empty_scene_video

    video = make_empty_scene_video(tmp_path / "empty.mp4")
    assert translate.main([str(video), "--run", str(tiny_run)]) == 1
    captured = capsys.readouterr()
    assert "no person" in captured.err
    assert "translation:" not in captured.out

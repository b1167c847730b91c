"""`s2t eval`, `s2t compare` and `s2t translate` end to end on a tiny trained run.

The run (conftest.py's tiny_run): the built-in synthetic corpus at its tiny scale (20 sentences x 6
signers, split by signer; the held-out signers sign each sentence twice) written straight into a
cache, trained for 20 steps on the CPU (enough for the decoder to emit words). It is far from
converged: these tests check the plumbing and the consistency between the commands, not quality.
"""
import csv
import json
import math

import jiwer
import numpy as np
import pytest
import torch

from preprocess.store import write_cache
from preprocess.text import load_tokenizer, tokenize
from s2t import compare, evaluate, report, translate
from s2t.data import Batch
from s2t.metrics import generation_metrics, recall_at
from s2t.train import BEST
from s2t.vocab import Vocab, encode_texts, words_of
from tests.helpers import TRAINING_READ

REQUIRED = ["pos_sim", "neg_sim", "ret1_v2t", "ret1_t2v", "ret5_v2t", "wer", "bleu4", "chrf",
            "visual_dependence_wer", "n_samples", "gallery_size"]


@pytest.fixture(scope="module")
def corpus(tiny_synthetic_corpus):
    """Here `corpus` is the synthetic corpus that conftest.py's tiny_run trains on."""
    return tiny_synthetic_corpus


def accented(text: str) -> str:
    """A sentence as a language with capitals and accents writes it ("Díd thé pain..."): the uncased
    tokenizer maps it back to the plain sentence, so the model sees the same ids."""
    return text[:1].upper() + text[1:].replace("e", "é")


@pytest.fixture(scope="module")
def two_signers(corpus, tiny_run, tmp_path_factory):
    """The tiny run evaluated (default checkpoint, default --by) on a copy of its cache whose test
    split holds two signers (the val signer joins the test one) and whose test sentences are
    capitalised and accented, as raw references of a real corpus are."""
    root = tmp_path_factory.mktemp("two_signers")
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    plain = [r["text"] for r in rows]
    sentences = sorted(set(plain))
    for r in rows:
        if r["split"] != "train":
            r["split"], r["text"] = "test", accented(r["text"])
    texts = [r["text"] for r in rows]
    ids, lengths = tokenize(load_tokenizer("default"), texts, 48)
    table = np.random.default_rng(0).standard_normal((len(sentences), 384)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)  # the same stand-in embeddings as tiny_run's
    cache = write_cache(root / "cache", [{**r, "label": "", "fps": float(r["fps"])} for r in rows],
                        [np.load(corpus / r["path"]) for r in rows],
                        text={"input_ids": ids, "lengths": lengths,
                              "embeddings": table[[sentences.index(t) for t in plain]],
                              "tokenizer": "default", "text_model": "random"})
    out = root / "eval"
    assert evaluate.main(["--run", str(tiny_run), "--cache", str(cache), "--split", "test",
                          "--out", str(out)]) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    test_rows = [r for r in rows if r["split"] == "test"]
    train_sentences = {r["text"] for r in rows if r["split"] == "train"}
    return json.loads((out / "summary.json").read_text()), predictions, test_rows, out, train_sentences


def test_eval_writes_the_summary_and_plots(evaluated, corpus):
    run, summary, out = evaluated
    for key in REQUIRED:
        assert key in summary, key
    test_rows = [r for r in csv.DictReader(open(corpus / "manifest.csv")) if r["split"] == "test"]
    assert summary["n_samples"] == len(test_rows) > 0
    assert summary["gallery_size"] == len({r["text"] for r in test_rows}) < len(test_rows)
    # the held-out signers repeat sentences: same-sentence pairs exist, so PosSim is defined
    for key in ("pos_sim", "neg_sim", "ret1_v2t", "ret1_t2v", "ret5_v2t", "wer", "bleu4", "chrf",
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


def test_training_never_reads_the_test_split(tiny_run):
    assert "test" not in TRAINING_READ["splits"], TRAINING_READ
    assert TRAINING_READ["batched"] == {"train", "val"}  # (val: the periodic validation)


def test_predictions_hold_every_sample_and_reproduce_the_retrieval_scores(two_signers):
    summary, predictions, test_rows, _, train_sentences = two_signers
    assert [p["id"] for p in predictions] == [r["id"] for r in test_rows]  # cache row order
    assert len(predictions) == summary["n_samples"] == 80
    for p, r in zip(predictions, test_rows):
        assert (p["signer"], p["split"], p["label"], p["reference"]) == (r["signer"], "test", "", r["text"])
        assert p["n_frames"] > 0 and p["fps"] == 15.0 and isinstance(p["greedy"], str)
        assert p["reference_normalised"] == p["reference"].lower().replace("é", "e")
        assert len(p["top5"]) == 5 and [t["cosine"] for t in p["top5"]] == sorted(
            (t["cosine"] for t in p["top5"]), reverse=True)
        assert p["retrieved_training"] in train_sentences and -1 <= p["retrieved_training_cosine"] <= 1
        if p["rank_v2t"] == 1:  # ranked first: the top sentence is its own (ties count against it)
            assert p["top5"][0]["text"] == p["reference"]
            assert p["true_cosine"] == pytest.approx(p["top5"][0]["cosine"], abs=1e-6)
    ranks = torch.tensor([p["rank_v2t"] for p in predictions])
    for k, value in recall_at(ranks).items():
        assert summary[f"ret{k}_v2t"] == pytest.approx(value)
    assert summary["median_rank_v2t"] == float(ranks.float().median())


def test_scores_are_against_the_raw_references_with_sacrebleus_signature(two_signers):
    summary, predictions, _, out, _ = two_signers
    hyps, raw = [p["greedy"] for p in predictions], [p["reference"] for p in predictions]
    assert summary["scoring"]["lowercase"] is True  # DistilBERT-uncased cannot write a capital
    assert summary["scoring"]["sacrebleu"]["bleu4"].startswith("nrefs:1|case:lc|")
    expected = generation_metrics(hyps, raw, lowercase=True)
    for key in ("wer", "bleu4", "chrf", "exact_match"):
        assert summary[key] == pytest.approx(expected[key]), key
    # the retrieval baseline answers with real training sentences: scored raw, accents count
    base = summary["baselines"]["retrieval"]
    assert base["wer_normalised"] < base["wer"] and base["bleu4_normalised"] > base["bleu4"]
    md = (out / "summary.md").read_text()
    assert summary["scoring"]["sacrebleu"]["bleu4"] in md and "normalised references" in md


def test_groups_by_signer_are_the_metrics_of_their_samples(two_signers):
    summary, predictions, test_rows, out, _ = two_signers
    groups = summary["by"]["signer"]
    assert sorted(groups) == sorted({r["signer"] for r in test_rows}) and len(groups) == 2
    assert sum(g["n_samples"] for g in groups.values()) == summary["n_samples"]
    for signer, g in groups.items():
        mine = [p for p in predictions if p["signer"] == signer]
        assert g["n_samples"] == len(mine)
        ranks = torch.tensor([p["rank_v2t"] for p in mine])  # against the whole split's gallery
        assert g["gallery_size"] == summary["gallery_size"]
        for k, value in recall_at(ranks).items():
            assert g[f"ret{k}_v2t"] == pytest.approx(value)
        gen = generation_metrics([p["greedy"] for p in mine], [p["reference"] for p in mine], lowercase=True)
        for key in ("wer", "bleu4", "chrf"):
            assert g[key] == pytest.approx(gen[key]), (signer, key)
        for key in ("pos_sim", "neg_sim", "ret1_t2v", "ce", "visual_dependence_wer"):
            assert key in g and key in g["clip"] | g["greedy"] | g["visual_dependence"]
    # a mean over samples: the groups' sample-weighted mean is the split's figure
    assert sum(g["ret1_v2t"] * g["n_samples"] for g in groups.values()) / summary["n_samples"] == \
        pytest.approx(summary["ret1_v2t"])
    md = (out / "summary.md").read_text()
    assert "## By signer" in md and all(f"| {s} |" in md for s in groups)


def test_eval_scores_the_best_checkpoint_and_says_so(two_signers, tiny_run, tmp_path):
    summary = two_signers[0]
    best = json.loads((tiny_run / "run.json").read_text())["best"]
    assert (tiny_run / BEST).is_file()
    assert summary["checkpoint"]["file"] == BEST and summary["checkpoint"]["step"] == best["step"]
    assert summary["checkpoint"]["selected"].startswith("best on validation")
    assert f"Checkpoint: `{BEST}` (step {best['step']}" in (two_signers[3] / "summary.md").read_text()
    assert evaluate.main(["--run", str(tiny_run), "--split", "test", "--checkpoint", "last.safetensors",
                          "--out", str(tmp_path / "last")]) == 0
    asked = json.loads((tmp_path / "last" / "summary.json").read_text())
    assert asked["checkpoint"]["file"] == "last.safetensors" and asked["checkpoint"]["step"] == 20
    assert "asked for" in asked["checkpoint"]["selected"]


def test_compare_aggregates_runs_that_differ_only_in_seed(evaluated, tmp_path, capsys):
    """Three seeds of one config and one run of another config: the seeds form one group with
    mean ± sd (n) of each metric; the other run stays alone."""
    import yaml

    run, summary, _ = evaluated
    runs = []
    for name, seed, lr, wer in (("exp-seed0", 0, 3e-3, 0.2), ("exp-seed1", 1, 3e-3, 0.4),
                                ("exp-seed2", 2, 3e-3, 0.9), ("other", 0, 1e-3, 0.5)):
        d = tmp_path / name
        (d / "eval" / "test").mkdir(parents=True)
        cfg = yaml.safe_load((run / "config.yaml").read_text()) | {"seed": seed, "lr": lr}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "run.json").write_text((run / "run.json").read_text())
        (d / "eval" / "test" / "summary.json").write_text(json.dumps(summary | {"wer": wer}))
        runs.append(str(d))
    assert compare.main(runs) == 0
    printed = capsys.readouterr().out
    seeds = printed[printed.index("## Over seeds"):]
    header = next(line for line in seeds.splitlines() if line.startswith("| metric"))
    assert header.split("|")[2:4] == [" exp (3 seeds) ", " other "]
    wer_row = next(line for line in seeds.splitlines() if line.startswith("| WER |"))
    assert wer_row.split("|")[2].strip() == f"0.500 ± {np.std([0.2, 0.4, 0.9], ddof=1):.3f} (3)"
    assert wer_row.split("|")[3].strip() == "0.500 (1)"


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
    assert any(summary["baselines"]["most_frequent"]["wer_normalised"] == pytest.approx(w) for w in candidates)
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
    # the fully trained weights: the best-on-validation step of this 20-step run is an early one
    assert translate.main([str(person_video), "--run", str(tiny_run), "--top", "5",
                           "--checkpoint", "last.safetensors"]) == 0
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


def test_translate_resamples_to_the_training_frame_rate(evaluated, corpus, tmp_path, capsys):
    """The run's cache has no fps setting (null: sources kept their rate), so translate must fall
    back to the training samples' rate (15 fps): the same clip at 30 fps (every frame twice, in an
    .npz with its fps) is resampled to the very frames eval saw, and gives its sentence."""
    run, summary, _ = evaluated
    example = summary["examples"][0]  # the shortest: no subsampling to max_frames hides the frame rate
    keypoints = np.load(corpus / "keypoints" / f"{example['id']}.npy")
    npz = tmp_path / f"{example['id']}_30fps.npz"
    np.savez(npz, keypoints=np.repeat(keypoints, 2, axis=0), fps=np.float32(30.0))
    assert translate.main([str(npz), "--run", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"({len(keypoints)} frames at 15 fps," in lines[0], lines[0]
    i = next(k for k, line in enumerate(lines) if line.startswith("translation:"))
    assert lines[i] == f"translation: {example['hypothesis'] or translate.NO_WORDS}"


# ---------------------------------------------------------------------------------------------
# Visual dependence through the product path (`evaluate.run_model` / `evaluate.evaluate`), with
# stand-in models whose dependence on the video is known, on stand-in data.

SENTENCES = ["the patient has a headache", "take two pills", "where does it hurt",
             "do you smoke", "open your mouth wide", "breathe in slowly"]


class FakeData:
    """What `evaluate` reads from KeypointData. Sample i's video is T frames holding the number i.
    Every sentence is signed 4 times in the test split with the same length, so length-sorted
    batches of 4 hold repeats of one sentence: a swap inside a batch would pair equal sentences."""

    def __init__(self, train_repeats=2, test_repeats=4):
        self.texts = np.array([t for t in SENTENCES for _ in range(train_repeats)]
                              + [t for t in SENTENCES for _ in range(test_repeats)])
        self.split = np.array(["train"] * (len(SENTENCES) * train_repeats)
                              + ["test"] * (len(SENTENCES) * test_repeats))
        self.ids = np.array([f"s{i}" for i in range(len(self.texts))])
        sentence = torch.tensor([SENTENCES.index(t) for t in self.texts])
        self.label = self.text_id = sentence
        self.lengths = 3 + sentence.numpy()
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + sorted({w for t in SENTENCES for w in words_of(t)})
        self.vocab = Vocab("word", np.arange(len(words)), pad=0, unk=1, bos=2, eos=3, words=words)
        self.tokens = torch.from_numpy(encode_texts(self.vocab, None, self.texts, 12))
        self.text_emb = torch.nn.functional.one_hot(sentence, len(SENTENCES)).float()

    def rows(self, split):
        return np.flatnonzero(self.split == split)

    def batch(self, idx):
        idx = torch.as_tensor(np.asarray(idx, np.int64))
        lengths = torch.as_tensor(self.lengths)[idx]
        mask = torch.arange(int(lengths.max()))[None] < lengths[:, None]
        x = idx.float()[:, None, None] * mask[..., None]
        L = int((self.tokens[idx] != self.vocab.pad).sum(1).max())
        return Batch(x=x, mask=mask, tokens=self.tokens[idx][:, :L], text_emb=self.text_emb[idx],
                     label=self.label[idx], text_id=self.text_id[idx], index=idx)


class StandIn(torch.nn.Module):
    """copy=True: reads the sample number from its memory and writes (and scores) that sample's
    sentence. copy=False: the decoder ignores the memory (always sentence 0; logits from the
    input tokens only). Both embed a video as its sentence's one-hot."""

    def __init__(self, data: FakeData, copy: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.data, self.copy, self.V = data, copy, data.vocab.size

    def encode(self, x, mask):
        return x

    def _rows(self, memory):
        return memory[:, 0, 0].round().long()

    def video_embedding(self, memory, mask, head="clip"):
        return self.data.text_emb[self._rows(memory)]

    def text_embedding(self, e):
        return torch.nn.functional.normalize(e, dim=-1)

    def decoder_logits(self, memory, mask, input_ids):
        if not self.copy:
            return 10 * torch.nn.functional.one_hot(input_ids, self.V).float()
        target = self.data.tokens[self._rows(memory)][:, 1:input_ids.shape[1] + 1]
        return 10 * torch.nn.functional.one_hot(target, self.V).float()

    def generate(self, memory, mask, max_len=40, beam_size=1):
        rows = self._rows(memory) if self.copy else torch.zeros(len(memory), dtype=torch.long)
        return [[t for t in self.data.tokens[r, 1:].tolist() if t > 3] for r in rows]


def test_a_decoder_that_ignores_the_video_has_no_visual_dependence():
    data = FakeData()
    summary, _ = evaluate.evaluate(StandIn(data, copy=False), data, "test", batch_size=4)
    assert summary["visual_dependence_wer"] == pytest.approx(0)
    assert summary["visual_dependence_ce"] == pytest.approx(0)
    assert summary["visual_dependence_changed"] == 0
    assert any("ignores the video" in w for w in summary["warnings"])


def test_a_decoder_that_copies_the_video_has_a_large_visual_dependence():
    data = FakeData()
    summary, extras = evaluate.evaluate(StandIn(data, copy=True), data, "test", batch_size=4)
    assert summary["wer"] == 0 and summary["ce"] < 0.01
    # every sample is given the video of a different sentence, though each batch holds one sentence
    assert summary["visual_dependence_changed"] == 1
    assert summary["visual_dependence_wer"] > 0.5
    assert summary["visual_dependence_ce"] > 5
    assert summary["visual_dependence_ret1_v2t"] == pytest.approx(1)
    assert not any("ignores the video" in w for w in summary["warnings"])
    assert all(e["swapped"] != e["reference"] for e in extras["examples"])


def test_the_supcon_head_is_scored_on_videos_only(tmp_path):
    data = FakeData()
    summary, _ = evaluate.evaluate(StandIn(data, copy=True), data, "test", batch_size=4)
    supcon = summary["supcon"]
    assert not any(k.endswith(("_v2t", "_t2v")) or k == "alignment" for k in supcon)
    assert supcon["ret1_v2v"] == 1 and supcon["n_v2v_queries"] == 24
    assert supcon["pos_sim"] == pytest.approx(1) and supcon["neg_sim"] == pytest.approx(0)
    md = report.summary_markdown(summary)
    header = next(line for line in md.splitlines() if line.startswith("| metric"))
    col = [c.strip() for c in header.split("|")].index("SupCon head (video only)")
    for line in (line for line in md.splitlines() if line.startswith("| ")):
        cells = [c.strip() for c in line.split("|")]
        if "video→text" in line or "text→video" in line or "alignment" in line:
            assert cells[col] == "", line
        if line.startswith("| Ret@1 video→video"):
            assert cells[col] == "100.0%"


def test_swapped_outputs_are_the_decoders_real_output_for_the_partner_video():
    """A real (random, tiny) model: indexing the unswapped outputs by the permutation gives what
    decoding from the partner's encoder output gives, and the swapped CE is the CE of the sample's
    own sentence given the partner's video."""
    from s2t.model import ModelConfig, SignTranslator

    torch.manual_seed(0)
    data = FakeData()
    model = SignTranslator(ModelConfig(in_dim=1, vocab_size=data.vocab.size, pad_id=0, bos_id=2, eos_id=3,
                                       text_dim=len(SENTENCES), embed_dim=16, proj_dim=8, encoder_layers=1,
                                       decoder_layers=1, heads=2, ff_mult=2, dropout=0.0,
                                       shared_head=False, logit_scale_init=2.0, logit_scale_max=4.6))
    out = evaluate.run_model(model, data, "test", batch_size=4, max_len=6)
    rows, perm = out.cat("index").numpy(), out.perm.numpy()
    assert (data.label[rows[perm]] != data.label[rows]).all()
    greedy_swapped, clip_swapped = evaluate.swapped_outputs(out)
    own, other = data.batch(rows), data.batch(rows[perm])
    with torch.no_grad():
        memory = model.encode(other.x, other.mask)
        assert model.generate(memory, other.mask, max_len=6) == greedy_swapped
        torch.testing.assert_close(model.video_embedding(memory, other.mask), clip_swapped)
        nats, tokens = evaluate.teacher_forced_ce(model, memory, other.mask, own.tokens, data.vocab.pad)
    assert sum(n for n, _ in out.ce_swapped) == pytest.approx(nats, rel=1e-4)
    assert sum(t for _, t in out.ce_swapped) == tokens


def test_a_group_holding_the_whole_split_has_the_splits_metrics():
    """Groups are scored by the same code as the split: one group of everything is the split."""
    data = FakeData()
    summary, _ = evaluate.evaluate(StandIn(data, copy=True), data, "test", batch_size=4, by=["split"])
    whole = summary["by"]["split"]["test"]
    for key, value in summary.items():
        if key in whole and key not in ("split", "by"):
            assert whole[key] == (pytest.approx(value, nan_ok=True) if isinstance(value, float) else value), key
    with pytest.raises(evaluate.EvaluationError, match="--by signer.*'id', 'split', 'text'"):
        evaluate.evaluate(StandIn(data, copy=True), data, "test", batch_size=4, by=["signer"])

"""Retrieval-augmented decoding (s2t/rerank.py): the candidates are scored exactly as the decoder
and the CLIP heads score them one at a time, the weight moves the choice between the two, and
evaluation reports it beside the greedy decoder on a real run with the real sentence encoder."""
import json

import jiwer
import numpy as np
import pytest
import torch

from preprocess.store import write_cache
from preprocess.text import SentenceEncoder, load_tokenizer, tokenize
from s2t import evaluate, translate
from s2t.checkpoint import build_model
from s2t.data import KeypointData
from s2t.model import sequence_nats
from s2t.rerank import Gallery, Reranker, hypothesis_tokens, rerank
from s2t.train import train
from tests.helpers import SENTENCES, synthetic_sample, tiny_cfg


def _model_and_batch(data, cfg):
    info = {"vocab": data.vocab.to_json(), "in_dim": data.feature_dim, "text_dim": data.text_dim}
    torch.manual_seed(0)
    model = build_model(cfg, info)[0].eval()
    b = data.batch(data.rows("val")[:6])
    with torch.no_grad():
        memory = model.encode(b.x, b.mask)
        video = model.video_embedding(memory, b.mask, head="clip")
    return model, b, memory, video


@torch.no_grad()
def test_candidates_are_scored_as_the_model_scores_each_alone(corpus):  # noqa: F811
    cfg = tiny_cfg("dropout=0.0")
    data = KeypointData(corpus, cfg)
    model, b, memory, video = _model_and_batch(data, cfg)
    rows = data.rows("train")[::16]  # a few training sentences as the gallery
    gallery = Gallery(data.tokens[rows], model.text_embedding(data.text_emb[rows]))
    hyps = [model.generate(memory, b.mask), model.generate(memory, b.mask, beam_size=2)]
    flat = [hyps[h][i] for i in range(len(memory)) for h in range(2)]
    tokens = hypothesis_tokens(data.vocab, flat, 16)
    hyp_emb = torch.nn.functional.normalize(torch.randn(len(flat), gallery.emb.shape[1]), dim=-1)
    r = rerank(model, memory, b.mask, video, tokens, hyp_emb, gallery, k=3, clip_weight=0.0)
    assert r.logprob.shape == (len(memory), 5)
    for i in range(len(memory)):
        near = (video[i] @ gallery.emb.T).topk(3).indices
        assert r.neighbours[i].tolist() == near.tolist()
        cands = [tokens[2 * i], tokens[2 * i + 1]] + [gallery.tokens[j] for j in near]
        for c, t in enumerate(cands):  # one candidate alone, unpadded: the same mean log-likelihood
            t = t[: int((t != data.vocab.pad).sum())][None]
            nats, count = sequence_nats(model, memory[i:i + 1], b.mask[i:i + 1], t, data.vocab.pad)
            assert r.logprob[i, c].item() == pytest.approx(-(nats / count).item(), abs=1e-4)
        cos = [hyp_emb[2 * i] @ video[i], hyp_emb[2 * i + 1] @ video[i]] + [gallery.emb[j] @ video[i] for j in near]
        assert r.cosine[i].tolist() == pytest.approx([float(x) for x in cos], abs=1e-5)
    # weight 0: the decoder decides; a huge weight: CLIP decides
    assert r.choice.tolist() == r.logprob.argmax(1).tolist()
    clip_only = rerank(model, memory, b.mask, video, tokens, hyp_emb, gallery, k=3, clip_weight=1e6)
    assert clip_only.choice.tolist() == clip_only.cosine.argmax(1).tolist()


@pytest.fixture(scope="module")
def reranked_run(tmp_path_factory):
    """make_corpus-like clips with the packaged MiniLM's embeddings of the sentences (what `make
    features` stores, so the decoder's hypotheses can be embedded the same way), a short training
    run on them, and its evaluation with reranking. The test clips are kept as .npy for translate."""
    root = tmp_path_factory.mktemp("rerank")
    rng = np.random.default_rng(0)
    rows, kps = [], []
    for label, sentence in enumerate(SENTENCES):
        for j in range(14):
            split = "train" if j < 10 else ("val" if j < 12 else "test")
            rows.append({"id": f"s{label}_{j}", "text": sentence, "split": split, "signer": f"p{j % 3}",
                         "label": sentence, "fps": 15.0})
            kps.append(synthetic_sample(label, rng, len(SENTENCES)))
            if split == "test":
                np.save(root / f"{rows[-1]['id']}.npy", kps[-1])
    texts = [r["text"] for r in rows]
    ids, lengths = tokenize(load_tokenizer("default"), texts, 16)
    cache = write_cache(root / "cache", rows, kps, {"input_ids": ids, "lengths": lengths,
                                                    "embeddings": SentenceEncoder("default").embed(texts),
                                                    "tokenizer": "default", "text_model": "default"})
    train(tiny_cfg("max_steps=60", "eval_every=30", "ckpt_every=60", "log_every=10"), cache, root / "run")
    out = root / "eval"
    assert evaluate.main(["--run", str(root / "run"), "--split", "test", "--rerank", "3",
                          "--out", str(out), "--by", "none"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    return root, summary, preds


def test_eval_reports_reranking_beside_the_decoder(reranked_run):
    root, summary, preds = reranked_run
    for p in preds:  # every answer is the decoder's own or a retrieved training sentence, as labelled
        assert (p["rerank_source"] == "decoder" and p["rerank"] == p["greedy"]) or \
               (p["rerank_source"] == "retrieved" and p["rerank"] in SENTENCES)
    rr = summary["rerank"]
    assert rr["retrieved_rate"] == pytest.approx(np.mean([p["rerank_source"] == "retrieved" for p in preds]))
    wer = jiwer.wer([p["reference"].lower() for p in preds], [p["rerank"].lower() for p in preds])
    assert rr["wer"] == pytest.approx(wer, abs=1e-6)
    assert summary["wer_rerank"] == rr["wer"] and summary["rerank_settings"] == {"k": 3, "clip_weight": 1.0}
    # the model learnt (retrieval above chance), and the choice is never worse than both its parts
    assert summary["ret1_v2t"] > 2 / len(SENTENCES)
    assert rr["wer"] <= max(summary["wer"], summary["baselines"]["retrieval"]["wer"]) + 1e-9
    assert "reranked" in (root / "eval" / "summary.md").read_text()


def test_translate_reranks_as_evaluation_does(reranked_run, capsys):
    root, _, preds = reranked_run
    for p in preds[:3]:
        assert translate.main([str(root / f"{p['id']}.npy"), "--run", str(root / "run"), "--rerank", "3"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("reranked"))
        source = "a training sentence" if p["rerank_source"] == "retrieved" else "the decoder's"
        assert line == f"reranked with training sentences: {p['rerank'] or translate.NO_WORDS} ({source})"


def test_reranking_is_skipped_with_a_reason_when_the_encoder_is_not_local(corpus, tmp_path):  # noqa: F811
    cfg = tiny_cfg("max_steps=2", "eval_every=2", "ckpt_every=2")
    train(cfg, corpus, tmp_path / "run")
    out = tmp_path / "eval"
    assert evaluate.main(["--run", str(tmp_path / "run"), "--split", "val", "--out", str(out), "--by", "none"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "rerank" not in summary
    assert any("reranking skipped" in w and "random-per-sentence" in w for w in summary["warnings"])


def test_the_reranker_answers_a_training_sentence_or_a_hypothesis(corpus):  # noqa: F811
    cfg = tiny_cfg("dropout=0.0")
    data = KeypointData(corpus, cfg)
    model, b, memory, video = _model_and_batch(data, cfg)
    rows = data.rows("train")[::16]
    gallery = Gallery(data.tokens[rows], model.text_embedding(data.text_emb[rows]))
    greedy = model.generate(memory, b.mask)
    for weight in (1e6, 0.0):
        reranker = Reranker(model, data.vocab, gallery, "default", k=2, clip_weight=weight)
        answers = reranker(memory, b.mask, video, [greedy])
        for (row, ids), hyp in zip(answers, greedy):
            assert (row >= 0 and ids == []) or (row == -1 and ids == hyp)


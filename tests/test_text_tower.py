"""The learnable text encoder of the CLIP loss (`text_encoder: finetune`, s2t/text_tower.py): the
tower starts as the cached frozen embeddings, training moves only its top layers, checkpoints keep
them, and `s2t eval` (gallery, reranking) reads the fine-tuned tower, not the cache's embeddings."""
import json

import numpy as np
import pytest
import torch

from preprocess.store import write_cache
from preprocess.text import SentenceEncoder, load_tokenizer, tokenize
from s2t import evaluate
from s2t.checkpoint import load_checkpoint, load_run
from s2t.config import ConfigError
from s2t.data import KeypointData
from s2t.text_tower import TextTower, rows_sentence_features
from s2t.train import main as train_main, train
from tests.helpers import SENTENCES, synthetic_sample, tiny_cfg

FINETUNE = ["text_encoder=finetune", "text_encoder_layers=1", "text_encoder_lr_scale=1.0", "queue_keys=pooled"]


@pytest.fixture(scope="module")
def real_text_corpus(tmp_path_factory):
    """tests.helpers' tiny corpus, its text store made by the shipped all-MiniLM-L6-v2 ("default")
    as `make features` makes it: real sentence embeddings of a local text model."""
    rng = np.random.default_rng(0)
    rows, kps = [], []
    for label, sentence in enumerate(SENTENCES):
        for j in range(8):
            rows.append({"id": f"s{label}_{j}", "text": sentence, "split": "train" if j < 6 else "val",
                         "signer": f"p{j % 3}", "label": sentence, "fps": 15.0})
            kps.append(synthetic_sample(label, rng, len(SENTENCES)))
    texts = [r["text"] for r in rows]
    ids, lengths = tokenize(load_tokenizer("default"), texts, 16)
    text = {"input_ids": ids, "lengths": lengths, "embeddings": SentenceEncoder("default").embed(texts),
            "tokenizer": "default", "text_model": "default"}
    return write_cache(tmp_path_factory.mktemp("real_text") / "cache", rows, kps, text)


@pytest.mark.parametrize("layers", [2, 0])
def test_the_tower_at_initialisation_gives_the_cached_embeddings(real_text_corpus, layers):
    data = KeypointData(real_text_corpus, tiny_cfg("text_encoder=finetune"))
    tower = TextTower("default", layers).eval()
    rows = np.arange(0, data.n, 5)
    batch = data.batch(rows)
    assert batch.text_ids is not None and batch.text_ids.shape == batch.text_attention.shape
    with torch.no_grad():
        got = tower(batch.text_ids, batch.text_attention)
        again = tower(batch.text_ids, batch.text_attention)  # the frozen bottom from its memo now
    torch.testing.assert_close(got, batch.text_emb, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, got, atol=1e-6, rtol=0)
    # new sentences (reranking, translate) are tokenised as the cache's sentences were
    torch.testing.assert_close(tower.embed_texts(data.texts[rows]), batch.text_emb, atol=1e-5, rtol=0)
    assert (tower.memo_bytes() > 0) == (layers > 0)
    trained = {n for n, p in tower.named_parameters() if p.requires_grad}
    if layers:
        assert trained and all(n.startswith("model.encoder.layer.4.") or n.startswith("model.encoder.layer.5.")
                               for n in trained)
    else:
        assert any("word_embeddings" in n for n in trained)


def test_the_memo_filled_under_autocast_serves_evaluation_in_float32(real_text_corpus):
    data = KeypointData(real_text_corpus, tiny_cfg("text_encoder=finetune"))
    batch = data.batch(np.arange(0, data.n, 5))
    tower = TextTower("default", 1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training with precision: bf16
        tower(batch.text_ids, batch.text_attention).sum().backward()
    tower.eval()
    with torch.no_grad():  # evaluation, no autocast: the memo holds float32
        got = tower(batch.text_ids, batch.text_attention)
    assert got.dtype == torch.float32 and (got * batch.text_emb).sum(1).min() > 0.99


def test_the_frozen_default_carries_no_token_ids(corpus):
    data = KeypointData(corpus, tiny_cfg())
    batch = data.batch(np.arange(4))
    assert data.text_ids is None and batch.text_ids is None and batch.text_attention is None


def test_finetune_trains_the_top_layers_saves_them_and_eval_uses_them(real_text_corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(*FINETUNE, "max_steps=12", "eval_every=6", "ckpt_every=6"), real_text_corpus, run)
    tensors, _ = load_checkpoint(run / "last.safetensors", prefix="model.text_tower.")
    pretrained = TextTower("default", 1).state_dict()
    saved = {k[len("model.text_tower."):]: v for k, v in tensors.items()}
    assert saved.keys() == pretrained.keys()
    moved = {k for k in saved if not torch.equal(saved[k], pretrained[k])}
    assert moved and all(k.startswith("model.encoder.layer.5.") for k in moved)  # the top layer only
    assert "model.encoder.layer.5.attention.self.query.weight" in moved

    model, cfg, info = load_run(run)
    assert cfg.text_encoder == "finetune" and info["text_model"] == "default"
    data = KeypointData(real_text_corpus, cfg, vocab=info["vocab"])
    rows = evaluate.training_rows(data)
    tuned = rows_sentence_features(model, data, rows)
    assert not torch.allclose(tuned, data.text_emb[rows], atol=1e-4)  # the gallery is the tower's
    _, gallery = evaluate.training_gallery(model, data)
    torch.testing.assert_close(gallery, model.text_embedding(tuned).float())

    assert evaluate.main(["--run", str(run), "--split", "val", "--by", "none"]) == 0
    summary = json.loads((run / "eval" / "val" / "summary.json").read_text())
    assert summary["gallery_size"] == len(SENTENCES) and summary["ret1_v2t"] > 1 / len(SENTENCES)
    assert "rerank" in summary and "wer_rerank" in summary  # hypotheses embedded by the tower


def test_finetune_refuses_a_text_model_that_is_not_a_local_folder(corpus, tmp_path, capsys):
    # tests.helpers' corpus: its embeddings come from "random-per-sentence", not a model on this machine
    with pytest.raises(ConfigError, match="'random-per-sentence'.*not a local folder"):
        train(tiny_cfg(*FINETUNE, "max_steps=1"), corpus, tmp_path / "run")
    assert train_main(["--cache", str(corpus), "--config", "configs/train/tiny_cpu.yaml", "--run",
                       str(tmp_path / "run2"), *FINETUNE, "max_steps=1"]) == 1
    assert "not a local folder" in capsys.readouterr().err


def test_config_checks_the_text_encoder_settings():
    for bad, why in ((["text_encoder=bert"], "text_encoder must be"),
                     (["text_encoder=finetune", "loss_weights.clip=0"], "CLIP loss"),
                     (["text_encoder_layers=-1"], "text_encoder_layers"),
                     (["text_encoder_lr_scale=0"], "text_encoder_lr_scale")):
        with pytest.raises(ConfigError, match=why):
            tiny_cfg(*bad)

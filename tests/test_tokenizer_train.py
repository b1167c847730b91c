"""`tokenizer: train`: a vocabulary learnt from the training sentences, kept in the text store.

A real (small) cache from .npy keypoints and German sentences with umlauts and capitals, through
`make features`' own build_cache, then the s2t vocabulary/decoder path on it."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from preprocess.cli import CommandError
from preprocess.features import DEFAULT_CONFIG, build_cache
from preprocess.store import TOKENIZER_FOLDER, CacheError, open_cache
from preprocess.text import load_tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["Schöne Grüße aus München", "Im Süden gibt es morgen Gewitter und Regen.",
         "Übermorgen wird es im Norden schön, aber kühl.", "Äpfel und Öl kaufen wir in Köln",
         "Schöne Grüße aus Düsseldorf", "Der Föhn weht über die Berge"]
HELD_OUT = ["Grüße an die Nordsee, es bleibt trüb", "Straßen in Würzburg sind glatt"]
SETTINGS = {"model": "bpe", "vocab_size": 300, "lowercase": False, "strip_accents": False, "min_frequency": 1}


def write_corpus(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    (folder / "kp").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (text, split) in enumerate([(t, "train") for t in TRAIN] + [(t, "test") for t in HELD_OUT]):
        np.save(folder / "kp" / f"v{i}.npy", rng.normal(size=(6 + i, 543, 3)).astype(np.float32))
        rows.append({"id": f"v{i}", "path": f"kp/v{i}.npy", "text": text, "split": split, "signer": "s0"})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def build(manifest, out, **settings):
    return build_cache(manifest, out, jobs=1, progress=False, tokenizer="train",
                       train_tokenizer={**SETTINGS, **settings})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_tok")
    manifest = write_corpus(root / "data")
    res = build(manifest, root / "cache")
    return manifest, root / "cache", res, Path(open_cache(res.path).text().tokenizer).parent.name


def test_german_round_trips_with_case_and_umlauts(corpus):
    _, _, res, name = corpus
    cache = open_cache(res.path, text=name)
    t = cache.text()
    store = res.path / name
    assert Path(t.tokenizer) == (store / TOKENIZER_FOLDER).resolve() and Path(t.tokenizer).is_absolute()
    assert f"{TOKENIZER_FOLDER}/tokenizer.json" in t.meta["files"]  # checksummed like the arrays
    assert t.meta["tokenizer"] == "train" and t.meta["train_tokenizer"]["n_sentences"] == len(TRAIN)
    tok = load_tokenizer(t.tokenizer)
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id] == [0, 1, 2, 3]
    texts = list(cache.samples["text"])
    assert set(texts) == set(TRAIN + HELD_OUT)
    for i, text in enumerate(texts):
        ids = t.input_ids[i, :t.lengths[i]].tolist()
        assert ids[0] == 2 and ids[-1] == 3 and (t.input_ids[i, t.lengths[i]:] == 0).all()
        assert tok.decode(ids, skip_special_tokens=True) == text  # held-out sentences too
    assert tok.decode(tok("Schöne Grüße aus München")["input_ids"], skip_special_tokens=True) \
        == "Schöne Grüße aus München"


def test_a_second_build_reuses_the_trained_store(corpus, capfd):
    manifest, out, first, name = corpus
    store = first.path / name
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    again = build(manifest, out)
    assert again.path == first.path and again.reused_keypoints and again.reused_text
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == stamps
    assert "training a" not in capfd.readouterr().err  # no retraining


def test_changed_settings_rebuild_the_text_store_only(corpus, capfd):
    manifest, out, first, name = corpus
    smaller = build(manifest, out, vocab_size=280)
    assert "training a bpe tokenizer (vocabulary 280" in capfd.readouterr().err
    assert smaller.path == first.path and smaller.reused_keypoints and not smaller.reused_text
    small_name = Path(open_cache(first.path).text().tokenizer).parent.name
    lower = build(manifest, out, lowercase=True)
    assert lower.path == first.path and lower.reused_keypoints and not lower.reused_text
    t = open_cache(first.path).text()  # the newest store is the default
    assert len({name, small_name, Path(t.tokenizer).parent.name}) == 3
    tok = load_tokenizer(t.tokenizer)
    assert tok.decode(tok("Schöne Grüße")["input_ids"], skip_special_tokens=True) == "schöne grüße"
    wordpiece = build(manifest, out, model="wordpiece")
    assert wordpiece.reused_keypoints and not wordpiece.reused_text
    t = open_cache(first.path).text()
    tok = load_tokenizer(t.tokenizer)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    texts = list(open_cache(first.path).samples["text"])
    assert tok.batch_decode(t.input_ids, skip_special_tokens=True) == texts
    with pytest.raises(CommandError, match="train_tokenizer.model must be one of"):
        build(manifest, out, model="unigram")


def test_the_same_sentences_give_byte_identical_vocabularies(tmp_path):
    sentences = TRAIN * 3 + ["Wie geht es Ihnen, Frau Müller?", "Sonnig, später Schauer!"]
    for model in ("bpe", "wordpiece"):
        folders = [tmp_path / f"{model}{i}" for i in range(3)]
        for folder in folders:
            train_tokenizer(sentences, folder, model=model, vocab_size=90 if model == "wordpiece" else 290,
                            min_frequency=1)
        files = [{p.name: p.read_bytes() for p in f.iterdir()} for f in folders]
        assert files[0] == files[1] == files[2] and "tokenizer.json" in files[0]


def test_s2t_vocabulary_decodes_and_follows_a_moved_cache(corpus, tmp_path):
    from s2t.config import TrainConfig
    from s2t.vocab import build_vocab, encode_texts, rebind_vocab
    from s2t.evaluate import reference_texts, uncased

    _, _, res, name = corpus
    moved = tmp_path / "elsewhere" / res.path.name
    shutil.copytree(res.path, tmp_path / "first" / res.path.name)
    cache = open_cache(tmp_path / "first" / res.path.name, text=name)
    tx, texts = cache.text(), np.asarray(cache.samples["text"]).astype(str)
    train_rows = np.flatnonzero(np.asarray(cache.samples["split"]) == "train")
    cfg = TrainConfig()
    vocab = build_vocab(cfg, tx, texts, train_rows)
    assert vocab.kind == "wordpiece" and vocab.tokenizer == tx.tokenizer
    model_ids = encode_texts(vocab, tx, texts, cfg.max_text_len)
    special = {vocab.pad, vocab.bos, vocab.eos}
    real = [[int(vocab.token_ids[m]) for m in row if m not in special] for row in model_ids]
    assert vocab.decode([real[i] for i in train_rows]) == list(texts[train_rows])
    assert not uncased(vocab)  # a cased vocabulary: scores keep case
    assert reference_texts(vocab, texts[train_rows]) == list(texts[train_rows])

    # the cache moves: the store reader gives the new folder, the run's vocabulary follows it
    shutil.move(tmp_path / "first" / res.path.name, moved)
    tx_moved = open_cache(moved, text=name).text()
    assert tx_moved.tokenizer.startswith(str(moved.resolve())) and not Path(vocab.tokenizer).exists()
    rebound = rebind_vocab(vocab, tx_moved)
    assert rebound.tokenizer == tx_moved.tokenizer and (rebound.token_ids == vocab.token_ids).all()
    np.testing.assert_array_equal(encode_texts(rebound, tx_moved, texts, cfg.max_text_len), model_ids)
    assert load_tokenizer(rebound.tokenizer).decode(real[0]) == texts[0]
    other = next(n for n in open_cache(res.path).text_names if n != name)
    assert rebind_vocab(vocab, open_cache(res.path).text(other)) is vocab  # another store: left alone

    # the vocabulary is checksummed with the store: damage is caught when it is read
    victim = moved / name / TOKENIZER_FOLDER / "tokenizer.json"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum mismatch"):
        open_cache(moved, text=name).text()


def test_cli_tokenizer_train(corpus, tmp_path):
    manifest, out, first, _ = corpus
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["text"]["train_tokenizer"] = dict(SETTINGS)
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "preprocess", "features", "--manifest", str(manifest), "--out", str(out),
           "--quiet", "--jobs", "1", "--tokenizer", "train", "--config", str(tmp_path / "features.yaml")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert f"reused the cache {first.path}" in r.stdout

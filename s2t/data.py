"""Training data from a sealed cache: loaded once, normalised once, batched by gather.

    data = KeypointData(cache_dir, cfg, device)        # all samples in memory (GPU when it fits)
    data = load_data(cache_dir, cfg, device)           # ... or streamed from the cache (cfg.stream)
    sampler = PKBatchSampler(...)                      # label-aware, length-bucketed, seeded
    batch = data.batch(next(sampler), augment=rng)     # (B, T, F) features + masks + text, no Python loop
    for batch in data.iterate("val", 64): ...          # deterministic evaluation batches

Per frame, the model sees (in `cfg.components` order):
    normalised xyz of every point           shoulder-centred, divided by the shoulder width
    hands again, relative to their wrist    hand shape independent of where the hand is
    one presence flag per component         missing points are 0, the flag says "not detected"
The normalisation (numpy, once per sample) and the feature assembly (torch, per batch) are the
same functions that `translate` applies to one new sample, so training and inference agree.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from preprocess.layout import COMPONENT_SIZES, COMPONENTS, POSE_INDEX, WRIST

HANDS = ("left_hand", "right_hand")
_L_SHOULDER, _R_SHOULDER = POSE_INDEX["left_shoulder"], POSE_INDEX["right_shoulder"]
# Shoulder width (image-normalised units) assumed for a lone sample in which no shoulder is ever
# seen: about a signer framed from the hips up. Only used when nothing better exists.
_FALLBACK_WIDTH = 0.3
_CHUNK = 1 << 18  # frames normalised per numpy step on load (bounds the float32 temporaries)


# ------------------------------------------------------------------------------------------
# Normalisation and features (shared with translation)

def feature_dim(components) -> int:
    points = sum(COMPONENT_SIZES[c] for c in components)
    hands = sum(COMPONENT_SIZES[c] for c in components if c in HANDS)
    return 3 * points + 3 * hands + len(components)


def _shoulders(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    left = pose[:, _L_SHOULDER, :2].astype(np.float32)
    right = pose[:, _R_SHOULDER, :2].astype(np.float32)
    width = np.linalg.norm(left - right, axis=1)
    return (left + right) / 2, width, np.isfinite(width) & (width > 1e-4)


def good_shoulder_widths(pose: np.ndarray) -> np.ndarray:
    """The shoulder widths of the frames of `pose` (F, 33, 3) where both shoulders were seen."""
    _, width, good = _shoulders(pose)
    return width[good]


def shoulder_frames(pose: np.ndarray, offsets: np.ndarray,
                    global_width: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame centre (F, 2) and width (F,) from the two shoulders of `pose` (F, 33, 3).

    Frames without both shoulders take the median of their sample's good frames; a sample with
    no good frame at all takes the median point of its pose as centre and `global_width`: by
    default the median width of the other samples (or _FALLBACK_WIDTH when alone); a reader that
    sees one sample at a time passes the whole cache's median (see StreamingKeypointData)."""
    centre, width, good = _shoulders(pose)
    if good.all():
        return centre, width
    n = len(offsets) - 1
    sample_of = np.searchsorted(offsets, np.flatnonzero(~good), side="right") - 1
    if global_width is None:
        global_width = float(np.median(width[good])) if good.any() else _FALLBACK_WIDTH
    for i in np.unique(sample_of):  # once at load time, only samples with missing shoulders
        a, b = offsets[i], offsets[i + 1]
        ok = good[a:b]
        if ok.any():
            c, w = np.median(centre[a:b][ok], axis=0), np.median(width[a:b][ok])
        else:
            pts = pose[a:b, :, :2].reshape(-1, 2).astype(np.float32)
            pts = pts[np.isfinite(pts).all(1)]
            c = np.median(pts, axis=0) if len(pts) else np.full(2, 0.5, np.float32)
            w = global_width
        centre[a:b][~ok] = c
        width[a:b][~ok] = w
    assert n >= 0
    return centre, width


def normalise_points(frames: dict[str, np.ndarray], pose: np.ndarray, offsets: np.ndarray,
                     components, global_width: float | None = None) -> np.ndarray:
    """Shoulder-centred, shoulder-width-scaled points of `components`, concatenated:
    (F, sum P, 3) float16 with NaN where missing. frames[c]: (F, P_c, 3); pose: (F, 33, 3)."""
    centre, width = shoulder_frames(pose, offsets, global_width)
    total = len(pose)
    out = np.empty((total, sum(COMPONENT_SIZES[c] for c in components), 3), dtype=np.float16)
    for a in range(0, total, _CHUNK):
        b = min(total, a + _CHUNK)
        shift = np.zeros((b - a, 1, 3), np.float32)
        shift[:, 0, :2] = centre[a:b]
        scale = width[a:b, None, None]
        pts = np.concatenate([frames[c][a:b].astype(np.float32) for c in components], axis=1)
        out[a:b] = (pts - shift) / scale  # z is not centred: MediaPipe gives it relative already
    return out


# ------------------------------------------------------------------------------------------
# Handedness: a left-handed signer mirrored into a right-handed one

# MediaPipe pose points 0-32 and their mirror partner (left <-> right landmark of the same kind).
POSE_MIRROR = np.array([0, 4, 5, 6, 1, 2, 3, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 18, 17, 20, 19,
                        22, 21, 24, 23, 26, 25, 28, 27, 30, 29, 32, 31])
HAND_CHOICES = ("none", "right")


def dominant_left(pose: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n,) bool: which samples are signed mainly with the left hand. The dominant hand signs the
    one-handed signs and leads the two-handed ones, so over a sentence it is held higher (the other
    hand rests low or serves as a base) and travels further. Score per sample: how much higher the
    left wrist is held than the right (shoulder widths, mean over frames) + the left wrist's share
    of the two wrists' path minus one half. Pose wrists are used: MediaPipe reports them in every
    frame where the body is seen. On the `signers` corpus this picks the signing hand in 99.4% of
    left-handed and 99.8% of right-handed clips (the path alone: 88% / 85%)."""
    n = len(offsets) - 1
    if n == 0 or len(pose) == 0:
        return np.zeros(n, bool)
    p = pose[:, :, :2].astype(np.float32)
    left, right = p[:, POSE_INDEX["left_wrist"]], p[:, POSE_INDEX["right_wrist"]]
    centre, width, good = _shoulders(pose)
    first = offsets[:-1]

    def per_sample_mean(v: np.ndarray) -> np.ndarray:
        ok = np.isfinite(v)
        total = np.add.reduceat(np.where(ok, v, 0.0), first) if len(v) else np.zeros(n)
        count = np.add.reduceat(ok.astype(np.float32), first) if len(v) else np.zeros(n)
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)

    lifted = np.where(good, (right[:, 1] - left[:, 1]) / np.where(good, width, 1), np.nan)  # y grows downwards
    step = np.linalg.norm(np.diff(np.stack([left, right], 1), axis=0), axis=-1)  # (F-1, 2)
    step = np.concatenate([np.zeros((1, 2), np.float32), np.nan_to_num(step, nan=0.0)])
    step[first] = 0  # no step across a sample boundary
    travelled = np.stack([np.add.reduceat(step[:, k], first) for k in (0, 1)], 1)
    share = travelled[:, 0] / np.maximum(travelled.sum(1), 1e-9)
    return per_sample_mean(lifted) + np.where(travelled.sum(1) > 0, share - 0.5, 0.0) > 0


def mirror_permutation(components) -> np.ndarray:
    """Index permutation of the concatenated points of `components` that swaps every left
    landmark with its right partner (pose pairs and the two hands). Face points keep their
    indices (their mirror pairs are not part of MediaPipe's layout): only their x is reflected."""
    if ("left_hand" in components) != ("right_hand" in components):
        raise ValueError("canonical_hand needs both hands or neither among the components "
                         f"(mirroring swaps them), got {list(components)}")
    starts, at = {}, 0
    for c in components:
        starts[c] = at
        at += COMPONENT_SIZES[c]
    perm = np.arange(at)
    if "pose" in components:
        perm[starts["pose"]:starts["pose"] + 33] = starts["pose"] + POSE_MIRROR
    if "left_hand" in components:
        left, right = starts["left_hand"], starts["right_hand"]
        perm[left:left + 21], perm[right:right + 21] = np.arange(right, right + 21), np.arange(left, left + 21)
    return perm


def canonicalise_hands(points: np.ndarray, present: np.ndarray, pose: np.ndarray, offsets: np.ndarray,
                       components, canonical_hand: str) -> np.ndarray:
    """Mirror, in place, the samples signed mainly with the left hand so that every sample is
    signed with the right: x negated about the shoulder midline (points are already centred there)
    and left/right landmarks swapped, presence flags too. The same function runs at training,
    evaluation and `translate`. Returns the (n,) mirrored flags."""
    n = len(offsets) - 1
    if canonical_hand == "none":
        return np.zeros(n, bool)
    if canonical_hand not in HAND_CHOICES:
        raise ValueError(f"canonical_hand must be one of {HAND_CHOICES}, got {canonical_hand!r}")
    flip = dominant_left(pose, offsets)
    if not flip.any():
        return flip
    frames = np.repeat(flip, np.diff(offsets))
    perm = mirror_permutation(components)
    mirrored = points[frames][:, perm]
    mirrored[..., 0] *= -1
    points[frames] = mirrored
    cols = list(components)
    if "left_hand" in cols:
        a, b = cols.index("left_hand"), cols.index("right_hand")
        present[frames, a], present[frames, b] = present[frames, b], present[frames, a].copy()
    return flip


def feature_columns(components) -> dict[str, list[slice]]:
    """Which feature columns (of `frame_features`' output) belong to each component."""
    cols: dict[str, list[slice]] = {c: [] for c in components}
    at = 0
    for c in components:  # absolute coordinates
        cols[c].append(slice(at, at + 3 * COMPONENT_SIZES[c]))
        at += 3 * COMPONENT_SIZES[c]
    for c in components:  # wrist-relative hands
        if c in HANDS:
            cols[c].append(slice(at, at + 3 * COMPONENT_SIZES[c]))
            at += 3 * COMPONENT_SIZES[c]
    for c in components:  # presence flags
        cols[c].append(slice(at, at + 1))
        at += 1
    return cols


def frame_features(points: torch.Tensor, present: torch.Tensor, components) -> torch.Tensor:
    """(B, T, P, 3) float32 normalised points (NaN missing) + (B, T, C) presence -> (B, T, F)."""
    parts = [points.flatten(2)]
    at = 0
    for c in components:
        size = COMPONENT_SIZES[c]
        if c in HANDS:
            hand = points[:, :, at:at + size]
            parts.append((hand - hand[:, :, WRIST:WRIST + 1]).flatten(2))
        at += size
    parts.append(present.to(points.dtype))
    return torch.nan_to_num_(torch.cat(parts, dim=2), nan=0.0)


def uniform_frame_indices(n: int, max_frames: int) -> np.ndarray:
    """Indices of at most max_frames frames spread uniformly over n (all of them when n fits)."""
    t = min(n, max_frames)
    return np.floor((np.arange(t) + 0.5) * n / t).astype(np.int64)


def normalise_keypoints(keypoints: np.ndarray, components, max_frames: int | None = None,
                        canonical_hand: str = "none") -> np.ndarray:
    """One sample (T, 543, 3|4) in the MediaPipe layout -> model input features (T', F) float32,
    exactly as the evaluation batches compute them (same float16 rounding, same subsampling,
    same handedness canonicalisation)."""
    from preprocess.layout import COMPONENT_SLICES

    kp = np.asarray(keypoints, dtype=np.float32)[..., :3]
    if kp.ndim != 3 or kp.shape[1] != 543:
        raise ValueError(f"keypoints must be (T, 543, 3), got {kp.shape}")
    if max_frames is not None:
        kp = kp[uniform_frame_indices(len(kp), max_frames)]
    frames = {c: kp[:, COMPONENT_SLICES[c]].astype(np.float16) for c in COMPONENTS}
    offsets = np.array([0, len(kp)])
    points = normalise_points(frames, frames["pose"], offsets, components)
    present = np.stack([~np.isnan(frames[c]).all(axis=(1, 2)) for c in components], axis=1)
    canonicalise_hands(points, present, frames["pose"], offsets, components, canonical_hand)
    x = frame_features(torch.from_numpy(points).float()[None], torch.from_numpy(present)[None], components)
    return x[0].numpy()


# ------------------------------------------------------------------------------------------
# Vocabulary: tokenizer ids <-> the decoder's (optionally compacted) model ids

_WORD_RE = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def words_of(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
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
        return _tokenizer(self.tokenizer).batch_decode(sequences, skip_special_tokens=True)

    def to_json(self) -> dict:
        return {"kind": self.kind, "token_ids": self.token_ids.tolist(), "pad": self.pad, "bos": self.bos,
                "eos": self.eos, "unk": self.unk, "tokenizer": self.tokenizer, "words": self.words}

    @classmethod
    def from_json(cls, d: dict) -> "Vocab":
        return cls(**{**d, "token_ids": np.asarray(d["token_ids"], dtype=np.int64)})


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


@functools.lru_cache(maxsize=8)
def _arm_groups(components: tuple) -> dict:
    """Point positions (in the concatenation of `components`) of each arm with its hand, and the
    first point of each hand: what `_personal_style` moves together."""
    starts, at = {}, 0
    for c in components:
        starts[c] = at
        at += COMPONENT_SIZES[c]
    arms = []
    for side, pose_points in (("left", (13, 15, 17, 19, 21)), ("right", (14, 16, 18, 20, 22))):
        idx = [starts["pose"] + i for i in pose_points] if "pose" in starts else []
        if f"{side}_hand" in starts:
            idx += range(starts[f"{side}_hand"], starts[f"{side}_hand"] + 21)
        if idx:
            arms.append(torch.tensor(idx))
    hands = [h for h in HANDS if h in starts]
    wrists = {"left_hand": POSE_INDEX["left_wrist"], "right_hand": POSE_INDEX["right_wrist"]}
    return {"arms": arms, "hands": [starts[h] for h in hands], "pose": starts.get("pose"),
            "hand_wrists": [wrists[h] if "pose" in starts else None for h in hands]}


def _rotation_matrices(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations by angle (B,) about unit axis (B, 3) (Rodrigues)."""
    zero = torch.zeros_like(angle)
    x, y, z = axis.unbind(1)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], 1).reshape(-1, 3, 3)
    eye = torch.eye(3, device=axis.device).expand_as(k)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return eye + s * k + (1 - c) * (k @ k)


# ------------------------------------------------------------------------------------------
# The in-memory dataset

@dataclass
class Batch:
    x: torch.Tensor         # (B, T, F) float32 frame features
    mask: torch.Tensor      # (B, T) bool, True on real frames
    tokens: torch.Tensor    # (B, L) model ids [BOS] ... [EOS] PAD
    text_emb: torch.Tensor  # (B, D) frozen sentence embeddings
    label: torch.Tensor     # (B,) SupCon group
    text_id: torch.Tensor   # (B,) sentence identity: CLIP positives
    index: torch.Tensor     # (B,) row in the cache


class KeypointData:
    """Every sample of a cache as flat tensors: points (F_total, P, 3) float16, presence
    (F_total, C), offsets; plus per-sample labels, tokens and text embeddings."""

    streams = False  # StreamingKeypointData: samples are read from the cache batch by batch

    def __init__(self, cache_dir, cfg, device="cpu", vocab: Vocab | None = None):
        from preprocess.manifest import normalise_text
        from preprocess.store import is_url, location, open_cache

        self.cfg, self.components = cfg, list(cfg.components)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.cache_dir = str(cache_dir) if is_url(location(cache_dir)) else str(Path(cache_dir).resolve())
        cache = open_cache(cache_dir, text=cfg.text_store)
        s = cache.samples
        if "text" not in s:
            raise ValueError(f"{cache_dir}: the cache has no text store; training needs sentences")
        self.n = cache.n
        self.split = np.asarray(s["split"]).astype(str)
        self.signers = np.asarray(s["signer"]).astype(str) if "signer" in s else np.full(cache.n, "")
        if cfg.val_signers:  # whole people held out: validation then says how unseen signers fare
            unknown = sorted(set(cfg.val_signers) - set(self.signers.tolist()))
            if unknown:
                raise ValueError(f"val_signers {unknown} are not signers of {cache_dir} "
                                 f"(its signers: {sorted(set(self.signers.tolist()))[:20]})")
            self.split = np.where((self.split == "train") & np.isin(self.signers, cfg.val_signers),
                                  "val", self.split)
        self.texts = np.asarray(s["text"]).astype(str)
        self.ids = np.asarray(s["id"]).astype(str)
        labels = np.where(np.asarray(s["label"]).astype(str) == "", self.texts, s["label"]).astype(str)
        self.label_names, label = np.unique(labels, return_inverse=True)
        _, text_id = np.unique([normalise_text(t) for t in self.texts], return_inverse=True)
        self.lengths = np.asarray(s["n_frames"], np.int64)
        if (self.lengths == 0).any():
            raise ValueError(f"{cache_dir}: samples with 0 frames: {self.ids[self.lengths == 0][:5]}")

        self._open_keypoints(cache)

        tx = cache.text()
        # a trained run brings its own vocabulary (evaluation); otherwise build it from the train split
        self.vocab = rebind_vocab(vocab, tx) or build_vocab(cfg, tx, self.texts, self.rows("train"))
        tokens = encode_texts(self.vocab, tx, self.texts, cfg.max_text_len)
        self.text_dim = tx.embeddings.shape[1]
        self.text_model = tx.text_model  # the sentence encoder that made text_emb (reranking embeds new text with it)
        self.token_lengths = (tokens != self.vocab.pad).sum(1)
        self.label_np = label.astype(np.int64)

        # Where the big arrays live: on the GPU when they fit (gather there), else pinned host memory.
        self.store = self._placement(self._resident_bytes() + tx.embeddings.nbytes)
        pin = self.store.type == "cpu" and self.device.type == "cuda"
        put = (lambda a: torch.from_numpy(np.ascontiguousarray(a)).pin_memory()) if pin else \
              (lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.store))
        self._place_keypoints(put)
        self.n_frames = torch.from_numpy(self.lengths.copy())
        self.tokens = put(tokens)
        self.text_emb = put(np.asarray(tx.embeddings, np.float32))
        self.label = put(label.astype(np.int64))
        self.text_id = put(text_id.astype(np.int64))

    # -- where the keypoints come from (StreamingKeypointData overrides these four)
    def _open_keypoints(self, cache) -> None:
        """Load and normalise every frame once."""
        needed = list(dict.fromkeys(["pose", *self.components]))  # pose: for the shoulders
        kp = cache.load_keypoints(components=needed)
        self._offsets_np = kp.offsets
        self._points_np = normalise_points(kp.frames, kp.frames["pose"], kp.offsets, self.components)
        self._present_np = kp.present[:, [COMPONENTS.index(c) for c in self.components]]
        self.mirrored = canonicalise_hands(self._points_np, self._present_np, kp.frames["pose"], kp.offsets,
                                           self.components, self.cfg.canonical_hand)

    def _resident_bytes(self) -> int:
        return self._points_np.nbytes + self._present_np.nbytes

    def _place_keypoints(self, put) -> None:
        self.points, self.present = put(self._points_np), put(self._present_np)
        self.offsets = torch.from_numpy(self._offsets_np[:-1].copy())  # index math runs on the CPU
        del self._points_np, self._present_np, self._offsets_np

    def _frames_of(self, idx: np.ndarray, frames=None):
        """(points table, presence table, (B,) first row of each sample in them) for samples idx:
        here the whole cache's tables; `frames` is what `read_frames` returned (streaming only)."""
        return self.points, self.present, self.offsets[torch.from_numpy(np.asarray(idx, np.int64))]

    def read_frames(self, idx: np.ndarray):
        """The I/O part of a batch, safe to run ahead on another thread (nothing to do in memory)."""
        return None

    def _placement(self, nbytes: int) -> torch.device:
        if self.device.type != "cuda":
            return torch.device("cpu")
        free, _ = torch.cuda.mem_get_info(self.device)
        # leave most of the card to the model: the data may take at most a quarter of free memory
        return self.device if nbytes < free / 4 else torch.device("cpu")

    @property
    def feature_dim(self) -> int:
        return feature_dim(self.components)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def seen_val_signers(self) -> list[str]:
        """Validation signers who also sign in training: validation on them says little about
        new people (the usual case when a manifest's val split is a held-out repetition)."""
        train = set(self.signers[self.rows("train")].tolist()) - {""}
        return sorted(train & set(self.signers[self.rows("val")].tolist()))

    # -- batches
    def frame_index(self, idx: np.ndarray, gen: torch.Generator | None = None, first: torch.Tensor | None = None):
        """(B, T) flat frame indices and mask for samples `idx`: random crop + speed change when
        `gen` (a CPU torch.Generator) is given, else all frames uniformly subsampled to max_frames.
        first: (B,) row of each sample's first frame in the table gathered from (default: the cache's)."""
        cfg, aug = self.cfg, self.cfg.augment
        idx_t = torch.from_numpy(np.asarray(idx, np.int64))
        n = self.n_frames[idx_t].double()
        warp = None
        if gen is not None and aug.enabled:
            u = torch.rand(3, len(idx), generator=gen, dtype=torch.float64)
            kept = torch.clamp(torch.round(n * (1 - aug.crop * u[0])), min=1)
            start = torch.floor(u[1] * (n - kept + 1))
            speed = 1 + aug.speed * (2 * u[2] - 1)
            t = torch.clamp(torch.round(kept / speed), 1, cfg.max_frames)
            if aug.time_warp > 0:  # drawn only when on: older configs keep their random streams
                warp = aug.time_warp * (torch.rand(2, len(idx), generator=gen, dtype=torch.float64) - 0.5)
        else:
            kept, start = n, torch.zeros_like(n)
            t = torch.clamp(n, max=cfg.max_frames)
        T = int(t.max())
        j = torch.arange(T, dtype=torch.float64)
        if warp is None:
            src = start[:, None] + torch.floor((j[None] + 0.5) * kept[:, None] / t[:, None])
        else:
            # p + a1/pi sin(pi p) + a2/(2 pi) sin(2 pi p): ends fixed, local speed 1 +- (|a1| + |a2|) > 0
            pos = (j[None] + 0.5) / t[:, None]  # where each output frame sits in the kept span, (0, 1)
            pos = (pos + warp[0, :, None] / math.pi * torch.sin(math.pi * pos)
                   + warp[1, :, None] / (2 * math.pi) * torch.sin(2 * math.pi * pos)).clamp(0, 1 - 1e-9)
            src = start[:, None] + torch.floor(pos * kept[:, None])
        src = torch.minimum(src, start[:, None] + kept[:, None] - 1).long()
        mask = j[None] < t[:, None]
        first = self.offsets[idx_t] if first is None else first
        flat = torch.where(mask, first[:, None] + src, first[:, None])
        return flat, mask

    def batch(self, idx: np.ndarray, gen: torch.Generator | None = None,
              device_gen: torch.Generator | None = None, frames=None) -> Batch:
        """Assemble samples `idx`. With generators (CPU: time, device: geometry) it augments.
        frames: `read_frames(idx)` done ahead (streaming: by the prefetch thread)."""
        dev, augment = self.device, device_gen is not None and self.cfg.augment.enabled
        points_table, present_table, first = self._frames_of(idx, frames)
        flat, mask = self.frame_index(idx, gen, first)
        flat = flat.to(points_table.device)
        points = self._gather(points_table, flat).float()  # (B, T, P, 3)
        present = self._gather(present_table, flat)
        mask = mask.to(dev, non_blocking=True)
        if augment:
            points = self._affine(points, device_gen)
            points = self._personal_style(points, device_gen)
        x = frame_features(points, present, self.components)
        if augment:
            mask = self._drop(x, mask, device_gen)
        rows = torch.from_numpy(np.asarray(idx, np.int64)).to(self.store)
        L = int(self.token_lengths[idx].max())

        def pick(a):
            return self._gather(a, rows)

        return Batch(x=x, mask=mask, tokens=pick(self.tokens)[:, :L], text_emb=pick(self.text_emb),
                     label=pick(self.label), text_id=pick(self.text_id), index=rows.to(dev))

    def _gather(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """table[index] on the training device. From pinned host memory (data too big for the GPU)
        the rows are gathered into a pinned buffer so the copy to the GPU is asynchronous."""
        if table.device == self.device:  # (index_select copies whole rows: several times faster than table[index])
            return torch.index_select(table, 0, index.reshape(-1)).view(index.shape + table.shape[1:])
        out = torch.empty(index.shape + table.shape[1:], dtype=table.dtype, pin_memory=True)
        torch.index_select(table, 0, index.reshape(-1), out=out.view(-1, *table.shape[1:]))
        return out.to(self.device, non_blocking=True)

    def _affine(self, points: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Per-sample random rotation + scale + shift in the image plane (z scaled alike), in place
        on the freshly gathered points (strided in-place ops: no (B, T, P, 3) temporaries)."""
        aug, B = self.cfg.augment, points.shape[0]
        u = torch.rand(B, 4, generator=g, device=points.device)
        theta = math.radians(aug.rotate_deg) * (2 * u[:, 0] - 1)
        scale = 1 + aug.scale * (2 * u[:, 1] - 1)

        def per(v):
            return v[:, None, None]

        cos, sin = per(torch.cos(theta) * scale), per(torch.sin(theta) * scale)
        shift = aug.shift * (2 * u[:, 2:4] - 1)
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        x_old = x.clone()
        x.mul_(cos).addcmul_(y, -sin).add_(per(shift[:, 0]))
        y.mul_(cos).addcmul_(x_old, sin).add_(per(shift[:, 1]))
        z.mul_(per(scale))
        return points

    def _personal_style(self, points: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Make each sample look signed by another person (augment.path_offset, hand_rotate_deg,
        finger_noise; each off at 0 and then draws nothing): a slow drift of each arm and hand,
        each hand turned about its wrist, and each finger point shifted by a constant offset
        from the wrist (another person's handshape). Points (B, T, P, 3), NaN stays NaN."""
        aug, (B, T) = self.cfg.augment, points.shape[:2]
        groups = _arm_groups(tuple(self.components))
        dev = points.device
        if aug.path_offset > 0 and groups["arms"]:
            time = torch.linspace(0, 1, T, device=dev)
            for arm in groups["arms"]:
                u = torch.rand(B, 3, 3, generator=g, device=dev)  # amplitude, frequency, phase per axis
                amp = aug.path_offset * (2 * u[:, 0] - 1)
                wave = torch.sin(2 * math.pi * ((0.5 + u[:, 1, :, None]) * time + u[:, 2, :, None]))
                points[:, :, arm] += (amp[:, :, None] * wave).transpose(1, 2)[:, :, None]
        if aug.yaw_deg > 0 and groups["pose"] is not None:
            points = self._yaw(points, groups, math.radians(aug.yaw_deg), g)
        for start in groups["hands"]:
            hand = points[:, :, start:start + 21]
            if aug.hand_rotate_deg == 0 and aug.finger_noise == 0:
                # nothing to turn or shift: wrist + (hand - wrist) as below (with its rounding, so the
                # batches stay the same), in place, the wrist tiled to the hand's shape (fast broadcasting)
                wrist = hand[:, :, 0].repeat(1, 1, 21).view(hand.shape)
                hand.sub_(wrist).add_(wrist)
                continue
            wrist = hand[:, :, :1]
            rel = hand - wrist
            if aug.hand_rotate_deg > 0:
                axis = torch.nn.functional.normalize(torch.randn(B, 3, generator=g, device=dev), dim=1)
                angle = math.radians(aug.hand_rotate_deg) * (2 * torch.rand(B, generator=g, device=dev) - 1)
                rel = rel @ _rotation_matrices(axis, angle).transpose(1, 2)[:, None]
            if aug.finger_noise > 0:
                shift = aug.finger_noise * torch.randn(B, 1, 21, 3, generator=g, device=dev)
                shift[:, :, 0] = 0  # the wrist stays where it is
                rel = rel + shift
            points[:, :, start:start + 21] = wrist + rel
        return points

    @staticmethod
    def _yaw(points: torch.Tensor, groups: dict, max_angle: float, g: torch.Generator) -> torch.Tensor:
        """Another camera viewpoint: the body turned about the vertical axis by up to max_angle.
        Pose points turn about the shoulder midline (x is centred there, z is MediaPipe's depth
        relative to the hips); each hand turns about its own wrist and moves with the pose wrist
        (MediaPipe gives hand z relative to the wrist). Mirroring a left-handed signer also mirrors
        their viewpoint, so seen yaws must cover both signs."""
        B, dev = points.shape[0], points.device
        angle = max_angle * (2 * torch.rand(B, generator=g, device=dev) - 1)
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]

        def turn(x, z):
            return x * cos + z * sin, z * cos - x * sin

        pose = slice(groups["pose"], groups["pose"] + 33)
        old_x = points[:, :, pose, 0].clone()
        points[:, :, pose, 0], points[:, :, pose, 2] = turn(points[:, :, pose, 0], points[:, :, pose, 2])
        for start, wrist in zip(groups["hands"], groups["hand_wrists"]):
            if wrist is None:
                continue
            hand = points[:, :, start:start + 21]
            rel_x, rel_z = turn(hand[..., 0] - hand[:, :, :1, 0], hand[..., 2] - hand[:, :, :1, 2])
            moved = (points[:, :, groups["pose"] + wrist, 0] - old_x[:, :, wrist])[..., None]
            points[:, :, start:start + 21, 0] = hand[:, :, :1, 0] + moved + rel_x
            points[:, :, start:start + 21, 2] = hand[:, :, :1, 2] + rel_z
        return points

    def _drop(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Whole-hand dropout (in place on the features: the hand reads as not detected) and frame
        dropout (frames hidden from attention; frame 0 always stays so no sample is empty)."""
        aug, B = self.cfg.augment, x.shape[0]
        for c, cols in feature_columns(self.components).items():
            if c in HANDS:
                keep = torch.rand(B, generator=g, device=x.device) >= aug.hand_drop
                if x.device.type == "cpu":  # only the dropped samples are touched (x * 1 is x)
                    gone = torch.nonzero(~keep).flatten()
                    if len(gone):
                        for sl in cols:
                            x[gone, :, sl] *= 0
                    continue
                for sl in cols:  # (on a GPU: no host sync)
                    x[:, :, sl] *= keep.to(x.dtype)[:, None, None]
        keep = torch.rand(mask.shape, generator=g, device=x.device) >= aug.frame_drop
        keep[:, 0] = True
        return mask & keep

    @torch.no_grad()
    def feature_stats(self, split: str = "train", batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of every input feature over the real (unaugmented) frames of a split.
        Modest batches, squared in place: the temporaries stay small next to a streaming budget."""
        total = torch.zeros(self.feature_dim, dtype=torch.float64, device=self.device)
        total_sq, n = torch.zeros_like(total), 0
        for b in self.iterate(split, batch_size):
            x = b.x[b.mask].double()
            total += x.sum(0)
            total_sq += x.square_().sum(0)
            n += len(x)
        mean = total / max(n, 1)
        return mean.float(), (total_sq / max(n, 1) - mean ** 2).clamp(min=0).sqrt().float()

    def iterate(self, split: str, batch_size: int):
        """Deterministic, non-augmented batches over a split (sorted by length, `index` says which
        rows). Every sample appears exactly once."""
        rows = self.rows(split)
        rows = rows[np.argsort(self.lengths[rows], kind="stable")]
        for a in range(0, len(rows), batch_size):
            yield self.batch(rows[a:a + batch_size])


# ------------------------------------------------------------------------------------------
# Streaming: caches larger than memory

class StreamingKeypointData(KeypointData):
    """KeypointData for caches larger than memory (`stream: true`). Samples are read from the store
    when a batch needs them, through the cache's KeypointReader, whose LRU of decoded storage chunks
    holds at most cfg.memory_budget_mb; each sample is normalised exactly as the in-memory path does
    it (same float16 rounding, same whole-cache fallback shoulder width), so for the same rows and
    generators `batch` returns the same tensors. Labels, tokens and text embeddings (a few hundred
    bytes to 1.5 kB per sample) stay in memory; only keypoints stream."""

    streams = True

    def _open_keypoints(self, cache) -> None:
        needed = list(dict.fromkeys(["pose", *self.components]))
        self.reader = cache.keypoint_reader(needed, self.cfg.memory_budget_mb << 20)
        # One pass over the poses for the median shoulder width (the fallback of a sample with no
        # shoulder in any frame) as the in-memory path computes it; 4 bytes per frame, freed at once.
        widths = [good_shoulder_widths(block["pose"]) for block in self.reader.scan(["pose"])]
        widths = np.concatenate(widths) if widths else np.zeros(0, np.float32)
        self.global_width = float(np.median(widths)) if len(widths) else _FALLBACK_WIDTH
        self._present_cols = [COMPONENTS.index(c) for c in self.components]

    def _resident_bytes(self) -> int:
        return 0

    def _place_keypoints(self, put) -> None:
        self.offsets = None  # no whole-cache table: every batch brings its own (read_frames)

    def read_frames(self, idx: np.ndarray):
        """Read and normalise samples idx: (points (F, P, 3) float16, presence (F, C), (B,) first
        row of each sample), pinned on CUDA so the copy to the GPU is asynchronous."""
        samples = [self.reader.read(int(i)) for i in np.asarray(idx)]
        # the batch's samples back to back, then normalised in one call, as the in-memory path does
        frames = {c: np.concatenate([f[c] for f, _ in samples]) for c in samples[0][0]}
        offsets = np.concatenate([[0], np.cumsum([len(p) for _, p in samples])]).astype(np.int64)
        points = normalise_points(frames, frames["pose"], offsets, self.components, self.global_width)
        present = np.concatenate([p for _, p in samples])[:, self._present_cols]
        canonicalise_hands(points, present, frames["pose"], offsets, self.components, self.cfg.canonical_hand)
        put = (lambda a: torch.from_numpy(a).pin_memory()) if self.device.type == "cuda" else torch.from_numpy
        return put(points), put(present), torch.from_numpy(offsets[:-1].copy())

    def _frames_of(self, idx: np.ndarray, frames=None):
        points, present, first = frames if frames is not None else self.read_frames(idx)
        return points.to(self.device, non_blocking=True), present.to(self.device, non_blocking=True), first

    def read_filmed(self, idx: np.ndarray):
        """Samples idx as filmed: `read_frames` without the handedness canonicalisation (what the
        keypoint baseline reads), on the CPU: (points (F, P, 3) float16, presence (F, C), (B,) first
        row of each sample). The same values as the in-memory table with its mirrored clips undone."""
        samples = [self.reader.read(int(i)) for i in np.asarray(idx)]
        frames = {c: np.concatenate([f[c] for f, _ in samples]) for c in samples[0][0]}
        offsets = np.concatenate([[0], np.cumsum([len(p) for _, p in samples])]).astype(np.int64)
        points = normalise_points(frames, frames["pose"], offsets, self.components, self.global_width)
        present = np.concatenate([p for _, p in samples])[:, self._present_cols]
        return torch.from_numpy(points), torch.from_numpy(present), torch.from_numpy(offsets[:-1].copy())

    def release(self) -> None:
        """Drop the decoded blocks the reader holds (evaluation, after its last clip): a fresh reader
        over the same cache and budget takes its place and reads again whatever is asked later."""
        old = self.reader
        self.reader = old.cache.keypoint_reader([n for n in old.names if n != "present"], old.budget)


def load_data(cache_dir, cfg, device="cpu", vocab: Vocab | None = None) -> KeypointData:
    """The cache in memory, or streamed from it when cfg.stream."""
    return (StreamingKeypointData if cfg.stream else KeypointData)(cache_dir, cfg, device, vocab=vocab)


class BatchFeed:
    """The training loop's batch rows, drawn from the sampler; when the data streams, the rows of
    the next `depth` batches are drawn and their samples read (I/O, decoding, normalisation) on a
    background thread. Augmentation stays on the caller's thread with its generators, so batches
    and every RNG stream are exactly the in-memory path's, and state_dict() is the sampler state
    after the last batch handed out: a checkpoint never counts batches read ahead but not trained on."""

    def __init__(self, data: KeypointData, sampler, rows: np.ndarray, depth: int = 2):
        self.data, self.sampler, self.rows = data, sampler, np.asarray(rows)
        self.depth = depth if data.streams else 0
        self._state = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self):
        return self

    def __next__(self):
        """-> (cache rows of the batch, what to pass to data.batch(rows, ..., frames=))."""
        if self.depth == 0:
            rows = self.rows[next(self.sampler)]
            return rows, (self.data.read_frames(rows) if self.data.streams else None)
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.depth)
            self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        rows, frames, self._state = item
        return rows, frames

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                rows = self.rows[next(self.sampler)]
                item = (rows, self.data.read_frames(rows), copy.deepcopy(self.sampler.state_dict()))
                self._put(item)
        except BaseException as e:  # handed to the training thread, raised there
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def state_dict(self) -> dict:
        return self._state if self._state is not None else self.sampler.state_dict()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ------------------------------------------------------------------------------------------
# The sampler

_UNIT_JITTER = 0.1  # +-10% noise on lengths when grouping a label's clips into units of K


def samples_per_label(labels: np.ndarray, k_max: int, batch_size: int) -> int:
    """K of the P x K sampler for these training labels: k_max, but no more than the median label
    has clips (at least 2, so SupCon always has a positive: an augmented second view). With one
    clip per sentence (open-vocabulary data) K = 4 would fill a batch with 3 copies of every clip
    and the decoder would see a quarter of the distinct sentences; K = 2 gives it half the batch."""
    if k_max <= 2:
        return k_max
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    k = int(min(k_max, max(2, np.median(counts)))) if len(counts) else k_max
    while batch_size % k:  # P x K must fill the batch exactly
        k -= 1
    return max(k, 1)


class PKBatchSampler:
    """Endless training batches of P labels x K samples, bucketed by length.

    One epoch: each label's samples are shuffled and cut into units of K (a short last unit is
    filled by redrawing from its own label, so a label with fewer than K samples contributes
    augmented copies: SimCLR-style positives); inside a label, clips of similar length (with
    random jitter) share a unit. Units are shuffled, sorted by length inside windows
    of `bucket_batches` batches (similar lengths -> little padding), cut into batches of P units,
    and the batches shuffled. Everything comes from one numpy Generator; the state saved is the
    generator state at the start of the epoch plus the position in it, so resume is exact.
    """

    def __init__(self, labels: np.ndarray, lengths: np.ndarray, batch_size: int, k: int,
                 bucket_batches: int = 50, seed: int = 0, rank: int = 0, world: int = 1):
        if batch_size % k:
            raise ValueError(f"batch_size {batch_size} is not a multiple of samples_per_label {k}")
        self.labels, self.lengths = np.asarray(labels), np.asarray(lengths)
        self.batch_size, self.k, self.p = batch_size, k, batch_size // k
        self.bucket_batches, self.rank, self.world = bucket_batches, rank, world
        order = np.argsort(self.labels, kind="stable")
        bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
        self.groups = np.split(order, bounds)
        if len(self.labels) < batch_size * world:
            raise ValueError(f"the training split has {len(self.labels)} samples, fewer than one batch "
                             f"of {batch_size} (x {world} ranks); lower batch_size")
        self.rng = np.random.default_rng(seed)
        self.epoch, self.position = 0, 0
        self._start_epoch()

    def _start_epoch(self):
        self._epoch_state = self.rng.bit_generator.state
        self._plan = self._make_plan()

    def _make_plan(self) -> np.ndarray:
        rng, k = self.rng, self.k
        units = []
        for g in self.groups:  # once per epoch, not per step
            perm = rng.permutation(g)
            if len(perm) % k:
                perm = np.concatenate([perm, rng.choice(g, k - len(perm) % k)])
            # K clips of similar length per unit (little padding), jittered so units change each epoch
            jitter = rng.uniform(1 - _UNIT_JITTER, 1 + _UNIT_JITTER, len(perm))
            perm = perm[np.argsort(self.lengths[perm] * jitter, kind="stable")]
            units.append(perm.reshape(-1, k))
        units = np.concatenate(units)[rng.permutation(sum(len(u) for u in units))]
        unit_len = self.lengths[units].mean(1)
        window = self.bucket_batches * self.p
        for a in range(0, len(units), window):
            units[a:a + window] = units[a:a + window][np.argsort(unit_len[a:a + window], kind="stable")]
        n_batches = len(units) // self.p // self.world * self.world
        batches = units[: n_batches * self.p].reshape(n_batches, self.batch_size)
        batches = batches[rng.permutation(n_batches)]
        return batches[self.rank::self.world]

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self.position >= len(self._plan):
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
        batch = self._plan[self.position]
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch_start_rng": self._epoch_state, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["epoch_start_rng"]
        self.epoch, self.position = state["epoch"], state["position"]
        self._start_epoch()

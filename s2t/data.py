"""Training data from a sealed cache: loaded once, normalised once, batched by gather.

    data = KeypointData(cache_dir, cfg, device)        # all samples in memory (GPU when it fits)
    data = load_data(cache_dir, cfg, device)           # ... or streamed from the cache (cfg.stream)
    sampler = PKBatchSampler(...)                      # s2t.sampler: label-aware, length-bucketed, seeded
    batch = data.batch(rows, gen, device_gen)          # (B, T, F) features + masks + text, no Python loop
    for batch in data.iterate("val", 64): ...          # deterministic evaluation batches

What the features of a frame are: s2t.frames; the augmentation: s2t.augment.
"""
from __future__ import annotations

import copy
import math
import queue
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from preprocess.layout import COMPONENT_SIZES, COMPONENTS

from .augment import affine, arm_groups, dropout, personal_style
from .frames import (FALLBACK_WIDTH, canonicalise_hands, feature_dim, frame_features, good_shoulder_widths,
                     normalise_points, planar_frame_features, planar_points)
from .vocab import Vocab, build_vocab, encode_texts, rebind_vocab


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
    text_ids: torch.Tensor | None = None        # (B, Lt) the text model's token ids (text_encoder: finetune only)
    text_attention: torch.Tensor | None = None  # (B, Lt) 1 on real tokens of text_ids
    dec_in: torch.Tensor | None = None          # (B, L - 1) training: the decoder's input (s2t.train.batch_assembler)


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
        self.resident_device = self._placement(self._resident_bytes() + tx.embeddings.nbytes)
        pin = self.resident_device.type == "cpu" and self.device.type == "cuda"
        put = (lambda a: torch.from_numpy(np.ascontiguousarray(a)).pin_memory()) if pin else \
              (lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.resident_device))
        self._place_keypoints(put)
        self.n_frames = torch.from_numpy(self.lengths.copy())
        self.tokens = put(tokens)
        self.text_emb = put(np.asarray(tx.embeddings, np.float32))
        self.label = put(label.astype(np.int64))
        self.text_id = put(text_id.astype(np.int64))
        self.text_ids = self.text_attention = None  # the text tower's inputs: only when it is fine-tuned
        if getattr(cfg, "text_encoder", "frozen") == "finetune":
            from .text_tower import tower_inputs
            ids, attention = tower_inputs(tx, self.texts)
            self.text_ids, self.text_attention = put(ids), put(attention)
            self.tower_lengths = attention.sum(1)

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
        points = self._gather(points_table, flat)  # (B, T, P, 3) float16
        if augment:  # float32 planes: the augmentation's per-coordinate ops run over contiguous rows
            points, planes = planar_points(points, self.components)
        else:
            points = points.float()
        present = self._gather(present_table, flat)
        mask = mask.to(dev, non_blocking=True)
        if augment:
            points = affine(points, self.cfg.augment, device_gen)
            points = personal_style(points, self.cfg.augment, arm_groups(tuple(self.components)), device_gen)
        if augment:
            x = planar_frame_features(points, planes, present, self.components)
            mask = dropout(x, mask, self.cfg.augment, self.components, device_gen)
        else:
            x = frame_features(points, present, self.components)
        rows = torch.from_numpy(np.asarray(idx, np.int64)).to(self.resident_device)
        L = int(self.token_lengths[idx].max())

        def pick(a):
            return self._gather(a, rows)

        batch = Batch(x=x, mask=mask, tokens=pick(self.tokens)[:, :L], text_emb=pick(self.text_emb),
                      label=pick(self.label), text_id=pick(self.text_id), index=rows.to(dev))
        if self.text_ids is not None:
            Lt = int(self.tower_lengths[idx].max())
            batch.text_ids, batch.text_attention = pick(self.text_ids)[:, :Lt], pick(self.text_attention)[:, :Lt]
        return batch

    def _gather(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """table[index] on the training device. From pinned host memory (data too big for the GPU)
        the rows are gathered into a pinned buffer so the copy to the GPU is asynchronous."""
        if table.device == self.device:  # (index_select copies whole rows: several times faster than table[index])
            return torch.index_select(table, 0, index.reshape(-1)).view(index.shape + table.shape[1:])
        out = torch.empty(index.shape + table.shape[1:], dtype=table.dtype, pin_memory=True)
        torch.index_select(table, 0, index.reshape(-1), out=out.view(-1, *table.shape[1:]))
        return out.to(self.device, non_blocking=True)

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
    bytes to 1.5 kB per sample) stay in memory; only keypoints stream.

    whole_budget (evaluation): memory_budget_mb bounds everything this process holds beyond what it
    held when the data was opened, not only the LRU. What the rest holds (`held_bytes`: the
    per-sample arrays, the batches being read and the model pass on them, what the caller keeps,
    what the allocator keeps of freed memory) is measured as the process's anonymous resident
    memory beside the LRU, its highest value so far, sampled every WATCH_S on a thread and at every
    read; the LRU is cut to the budget minus that at once (`KeypointReader.resize`), never below
    MIN_BLOCKS blocks. Linux; elsewhere the LRU keeps the whole budget. Only which blocks are read
    again changes, never a value read.
    What glibc keeps of freed memory (holes in its heap) counts in the rest, so it shrinks the LRU;
    MALLOC_EVAL = (mmap threshold, trim threshold) would also set glibc's malloc thresholds for the
    process while it streams (`tune_malloc`, until `release`): arrays of 512 kB and more in memory
    maps of their own, handed back when freed. Off: measured on a cache 4x the budget
    (benchmarks/bench_eval_memory.py) it lowered the growth at a 64 MB budget from 1.17x to 1.04x
    but made eval 1.6-1.7x slower (page faults) at 256 and 1024 MB, where it was 1.02x without."""

    streams = True
    MIN_BLOCKS = 2       # the LRU's floor under whole_budget, in decoded blocks
    MALLOC_EVAL = None   # whole_budget: (mmap, trim) thresholds for glibc's malloc while streaming, e.g.
                         # (512 << 10, 4 << 20); None: leave them as glibc sets them (see above)
    WATCH_S = 0.002      # whole_budget: how often the process's memory is sampled
    NORMALISE_CHUNK = 2048  # frames per float32 step of normalise_points here (a few MB of temporaries)

    def __init__(self, cache_dir, cfg, device="cpu", vocab: Vocab | None = None, whole_budget: bool = False):
        self.whole_budget, self._opened_at = whole_budget, anon_bytes() if whole_budget else None
        self.held_bytes, self._watch = 0, None
        self._malloc_tuned = (whole_budget and self._opened_at is not None and self.MALLOC_EVAL is not None
                              and tune_malloc(*self.MALLOC_EVAL))
        super().__init__(cache_dir, cfg, device, vocab)
        self._fit_lru()
        if self._opened_at is not None:
            self._watch = threading.Event()
            threading.Thread(target=_watch_memory, args=(weakref.ref(self), self._watch, self.WATCH_S),
                             name="eval-memory-watch", daemon=True).start()

    def _open_keypoints(self, cache) -> None:
        needed = list(dict.fromkeys(["pose", *self.components]))
        self.reader = cache.keypoint_reader(needed, self.cfg.memory_budget_mb << 20)
        # One pass over the poses for the median shoulder width (the fallback of a sample with no
        # shoulder in any frame) as the in-memory path computes it; 4 bytes per frame, freed at once.
        widths = [good_shoulder_widths(block["pose"]) for block in self.reader.scan(["pose"])]
        widths = np.concatenate(widths) if widths else np.zeros(0, np.float32)
        self.global_width = float(np.median(widths)) if len(widths) else FALLBACK_WIDTH
        self._present_cols = [COMPONENTS.index(c) for c in self.components]

    def _resident_bytes(self) -> int:
        return 0

    def _place_keypoints(self, put) -> None:
        self.offsets = None  # no whole-cache table: every batch brings its own (read_frames)

    def _fit_lru(self) -> None:
        """whole_budget: the LRU's budget = memory_budget_mb - the most the rest was seen to hold."""
        reader, now = getattr(self, "reader", None), anon_bytes() if self._opened_at is not None else None
        if now is None or reader is None:
            return
        held = now - self._opened_at - reader.bytes_held
        if held <= self.held_bytes and reader.budget < self.cfg.memory_budget_mb << 20:
            return  # nothing new (the LRU was fitted to at least this much already)
        self.held_bytes = max(self.held_bytes, held)
        from preprocess import store

        frame_bytes = sum(2 * 3 * COMPONENT_SIZES[n] for n in reader.names if n != "present") + len(COMPONENTS)
        block = min(store.FRAME_CHUNK, int(reader.shard_frames.max(initial=1))) * frame_bytes
        budget = self.cfg.memory_budget_mb << 20
        reader.resize(max(min(self.MIN_BLOCKS * block, budget), budget - self.held_bytes))

    def _read_samples(self, idx: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
        """The samples idx back to back, each copied into its rows of one array per component as it
        is read (no list of per-sample copies): ({component: (F, P, 3) float16}, presence (F, 4),
        offsets (B + 1,))."""
        self._fit_lru()
        idx = np.asarray(idx, np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.reader.lengths[idx])]).astype(np.int64)
        names = [n for n in self.reader.names if n != "present"]
        frames = {c: np.empty((offsets[-1], COMPONENT_SIZES[c], 3), np.float16) for c in names}
        present = np.empty((offsets[-1], len(COMPONENTS)), bool)
        for k, i in enumerate(idx):
            sample, flags = self.reader.read(int(i))
            a, b = offsets[k], offsets[k + 1]
            for c in names:
                frames[c][a:b] = sample[c]
            present[a:b] = flags
        return frames, present, offsets

    def read_frames(self, idx: np.ndarray):
        """Read and normalise samples idx: (points (F, P, 3) float16, presence (F, C), (B,) first
        row of each sample), pinned on CUDA so the copy to the GPU is asynchronous."""
        # the batch's samples back to back, then normalised in one call, as the in-memory path does
        frames, present, offsets = self._read_samples(idx)
        points = normalise_points(frames, frames["pose"], offsets, self.components, self.global_width,
                                  chunk=self.NORMALISE_CHUNK)
        present = present[:, self._present_cols]
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
        frames, present, offsets = self._read_samples(idx)
        points = normalise_points(frames, frames["pose"], offsets, self.components, self.global_width,
                                  chunk=self.NORMALISE_CHUNK)
        present = present[:, self._present_cols]
        return torch.from_numpy(points), torch.from_numpy(present), torch.from_numpy(offsets[:-1].copy())

    def release(self) -> None:
        """Drop the decoded blocks the reader holds (evaluation, after its last clip): a fresh reader
        over the same cache and budget takes its place and reads again whatever is asked later; the
        freed memory is handed back to the system (`trim_heap`)."""
        if self._watch is not None:
            self._watch.set()  # no reads past this point: nothing left to fit
        old = self.reader
        self.reader = old.cache.keypoint_reader([n for n in old.names if n != "present"], old.budget)
        del old
        self._untune()
        trim_heap()

    def _untune(self) -> None:
        if getattr(self, "_malloc_tuned", False):
            tune_malloc(*MALLOC_DYNAMIC_CEILING)
            self._malloc_tuned = False

    def __del__(self):
        try:
            if getattr(self, "_watch", None) is not None:
                self._watch.set()
            self._untune()
        except Exception:  # (at interpreter exit ctypes may be gone already)
            pass


def anon_bytes() -> int | None:
    """This process's anonymous resident memory (Linux: RssAnon of /proc/self/status: heap and
    anonymous maps, where arrays and tensors live), None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


MALLOC_DYNAMIC_CEILING = (32 << 20, 64 << 20)  # glibc's own ceilings for its mmap and trim thresholds (64-bit)


def tune_malloc(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc malloc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD for this process (mallopt through
    ctypes; a no-op elsewhere), from the next allocation on. Setting them also ends glibc's own
    raising of both (it then keeps them as set). Returns whether they were set."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(mmap_threshold))) and bool(libc.mallopt(-1, int(trim_threshold)))
    except (OSError, AttributeError):  # -3: M_MMAP_THRESHOLD, -1: M_TRIM_THRESHOLD (malloc.h)
        return False


def trim_heap() -> bool:
    """Hand the allocator's free memory back to the system (glibc malloc_trim, through ctypes; a
    no-op elsewhere): after large arrays are freed glibc keeps much of their memory for later
    allocations, and it counts as the process's. Returns whether it ran."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def load_data(cache_dir, cfg, device="cpu", vocab: Vocab | None = None, whole_budget: bool = False) -> KeypointData:
    """The cache in memory, or streamed from it when cfg.stream (whole_budget: see StreamingKeypointData)."""
    if cfg.stream:
        return StreamingKeypointData(cache_dir, cfg, device, vocab=vocab, whole_budget=whole_budget)
    return KeypointData(cache_dir, cfg, device, vocab=vocab)


class BatchFeed:
    """The training loop's batches, in order: rows drawn from the sampler, samples read (streaming),
    then `assemble(data, rows, frames)` (data.batch with the augmentation generators, and whatever
    else the step draws from them). With depth > 0 the next `depth` batches are made on a
    background thread while the loop trains (PyTorch's ops release the GIL), one after another in
    the loop's order: the same draws from the same generators, so every batch is the one the loop
    would have made itself, bit for bit. `gens` are those generators; state_dict() and
    generator_states() are the sampler's and theirs after the last batch handed out: a checkpoint
    never counts batches made ahead but not trained on, and a resumed run makes them again."""

    def __init__(self, data: KeypointData, sampler, rows: np.ndarray, assemble, gens: dict[str, torch.Generator],
                 depth: int = 2):
        self.data, self.sampler, self.rows = data, sampler, np.asarray(rows)
        self.assemble, self.gens, self.depth = assemble, gens, depth
        self._state: tuple[dict, dict] | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._threads = torch.get_num_threads()

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self.depth == 0:
            return self._make()
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.depth)
            self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def _make(self) -> Batch:
        rows = self.rows[next(self.sampler)]
        return self.assemble(self.data, rows, self.data.read_frames(rows))  # (None in memory)

    def _work(self) -> None:
        # One intra-op thread here: the loop's ops keep every core, and an OpenMP team of this
        # thread's own would contend with theirs (its threads spin between ops). OpenMP keeps the
        # thread count per thread; close() puts back the default that threads started later inherit.
        torch.set_num_threads(1)
        try:
            while not self._stop.is_set():
                batch = self._make()
                state = (copy.deepcopy(self.sampler.state_dict()), self._generator_states_now())
                self._put((batch, state))
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
        return self._state[0] if self._state is not None else self.sampler.state_dict()

    def generator_states(self) -> dict[str, torch.Tensor]:
        return self._state[1] if self._state is not None else self._generator_states_now()

    def _generator_states_now(self) -> dict[str, torch.Tensor]:
        return {name: g.get_state() for name, g in self.gens.items()}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            torch.set_num_threads(self._threads)


def _watch_memory(ref, stop: threading.Event, every_s: float) -> None:
    """StreamingKeypointData(whole_budget=True)'s sampler: fits its LRU every `every_s` until
    stopped or the data are gone."""
    while not stop.wait(every_s):
        data = ref()
        if data is None:
            return
        data._fit_lru()
        del data

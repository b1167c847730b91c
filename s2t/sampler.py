"""Training batch rows: the label-aware, length-bucketed, seeded and resumable P x K sampler."""
from __future__ import annotations

import numpy as np

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

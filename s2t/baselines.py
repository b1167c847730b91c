"""A training-free baseline the trained model must beat: nearest neighbour on keypoint paths.

Every clip becomes one vector: the shoulder-normalised points of both arms and hands (pose
elbows, wrists, finger tips and the 21 points of each hand; the model's normalisation, but the
clip as filmed: a run's handedness canonicalisation is undone), resampled to `frames` frames, each
dimension standardised with training statistics. A clip's answer is the sentence of the
training clip with the highest cosine. With `mirror=True` the mirrored query (x negated,
left/right swapped) is tried as well and the better match kept: what a left-handed signer
needs when nothing else canonicalises the clip.

If a trained model does not beat this, it has learnt less about signs than plain template
matching knows (`make eval` reports it as baselines.keypoint_nn).

The training clips' paths are computed and searched block by block, never held whole, so the
baseline also runs on streamed data (`stream: true`) within a memory budget (`memory_bytes`).
"""
from __future__ import annotations

import numpy as np
import torch

from preprocess.layout import COMPONENT_SIZES, COMPONENTS

from .augment import arm_groups
from .data import KeypointData
from .frames import mirror_permutation


def _blocks(data: KeypointData, rows: np.ndarray, frames: int, batch_size: int,
            block_bytes: int | None) -> list[np.ndarray]:
    """`rows` cut into consecutive blocks of at most batch_size rows and, when block_bytes is given,
    of about that many bytes of what reading them takes at once: each clip's frames twice as read
    and normalised (float16 and float32 steps), its path in float32 and float64 a few times over."""
    rows = np.asarray(rows)
    if block_bytes is None or not len(rows):
        return [rows[a:a + batch_size] for a in range(0, len(rows), batch_size)]
    points = sum(COMPONENT_SIZES[c] for c in data.components)
    stored = sum(6 * COMPONENT_SIZES[c] for c in dict.fromkeys(["pose", *data.components])) + len(COMPONENTS)
    cost = data.lengths[rows] * (2 * stored + 30 * points) + frames * points * 3 * 4 * 6
    out, start, used = [], 0, 0
    for i, c in enumerate(cost.tolist()):
        if i > start and (used + c > block_bytes or i - start == batch_size):
            out.append(rows[start:i])
            start, used = i, 0
        used += c
    return out + [rows[start:]]


@torch.no_grad()
def _path_blocks(data: KeypointData, rows: np.ndarray, frames: int = 32, batch_size: int = 256,
                 mirrors: tuple = (False,), block_bytes: int | None = None):
    """Per block of rows (`_blocks`): one (b, frames * points * 3) float32 path tensor per entry
    of `mirrors` (the clips as filmed, or mirrored). Only one block's frames are read at a time:
    with streamed data, the keypoints pass through the cache reader's memory budget."""
    arms = arm_groups(tuple(data.components))["arms"]
    if not arms:
        raise ValueError(f"the keypoint baseline needs arm or hand points; components are {data.components}")
    cols = torch.cat(arms)
    both_hands = "left_hand" in data.components and "right_hand" in data.components
    perm = torch.from_numpy(mirror_permutation(data.components)) if both_hands else None
    # the clips as filmed: the model's canonicalisation undone (in memory: data.mirrored says which
    # were mirrored; streamed: read without it), so that the baseline is the same whatever the run's
    # canonical_hand
    canonical = None if data.streams else getattr(data, "mirrored", None)
    if not data.streams and canonical is None and data.cfg.canonical_hand != "none":
        raise ValueError("the keypoint baseline needs data that records mirrored clips (KeypointData)")
    if any(mirrors) and perm is None:
        raise ValueError(f"mirroring needs both hands among the components, got {data.components}")

    def mirrored(pts, which):
        out = pts[which][:, :, perm]
        out[..., 0] = -out[..., 0]
        pts[which] = out
        return pts

    j = torch.arange(frames, dtype=torch.float64)
    for idx in _blocks(data, rows, frames, batch_size, block_bytes):
        table, _, first = data.read_filmed(idx) if data.streams else data._frames_of(idx)
        n = data.n_frames[torch.from_numpy(idx)].double()
        flat = first[:, None] + torch.floor((j[None] + 0.5) * n[:, None] / frames).long()
        pts = table[flat.to(table.device)].float().cpu()  # (B, frames, P, 3)
        if canonical is not None and canonical[idx].any():
            pts = mirrored(pts, torch.from_numpy(canonical[idx]))
        yield tuple((mirrored(pts.clone(), torch.ones(len(idx), dtype=torch.bool)) if m else pts)[:, :, cols]
                    .flatten(1) for m in mirrors)


@torch.no_grad()
def keypoint_paths(data: KeypointData, rows: np.ndarray, frames: int = 32, batch_size: int = 256,
                   mirror: bool = False) -> torch.Tensor:
    """(n, frames * points * 3) float32 paths of the arm and hand points of `rows` (NaN -> 0 later)."""
    arms = arm_groups(tuple(data.components))["arms"]
    width = frames * sum(len(a) for a in arms) * 3
    out = [paths for paths, in _path_blocks(data, rows, frames, batch_size, (mirror,))]
    return torch.cat(out) if out else torch.zeros(0, width)


def _standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    z = torch.nan_to_num((x - mean) / std, nan=0.0)  # a missing point sits at the training mean
    return torch.nn.functional.normalize(z, dim=1)


@torch.no_grad()
def _gallery_stats(data: KeypointData, train: np.ndarray, frames: int,
                   block_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the training paths over their detected points, accumulated
    block by block in float64 (the gallery is never held whole)."""
    total = total_sq = count = None
    for paths, in _path_blocks(data, train, frames, block_bytes=block_bytes):
        x = paths.double()
        seen = (~torch.isnan(x)).sum(0)
        x = torch.nan_to_num_(x, nan=0.0)
        if total is None:
            total, total_sq, count = (torch.zeros(x.shape[1], dtype=torch.float64) for _ in range(3))
        total += x.sum(0)
        total_sq += x.square_().sum(0)
        count += seen
    mean = total / count  # NaN where a point is never detected: it is then 0 after standardising
    std = torch.sqrt((total_sq / count - mean.square()).clamp(min=0))
    return mean.float(), std.float().nan_to_num(1.0).clamp(min=1e-2)


@torch.no_grad()
def keypoint_nearest_neighbours(data: KeypointData, split: str, rows: np.ndarray | None = None,
                                frames: int = 32, mirrors: tuple = (False, True), block: int = 256,
                                memory_bytes: int | None = None) -> dict[bool, dict]:
    """keypoint_nearest_neighbour for each `mirror` setting of `mirrors`, from one read of the
    split's clips and two of the training clips (statistics, then the search, at most `block`
    clips at a time): the gallery's paths are never held whole. memory_bytes: about the most the
    search holds at once beyond the data (half for the split's paths, half for one block of clips
    read); more split than that: the search runs once per part of it. None: no limit."""
    train = data.rows("train")
    rows = data.rows(split) if rows is None else np.asarray(rows)
    if not len(train):
        raise ValueError("the keypoint baseline needs training clips")
    block_bytes = None if memory_bytes is None else memory_bytes // 2
    mean, std = _gallery_stats(data, train, frames, block_bytes)
    flips = (False, True) if any(mirrors) else (False,)
    # per query row: its standardised paths per flip, twice while they are put together (float32)
    per_row = 2 * 4 * len(mean) * len(flips)
    step = len(rows) if memory_bytes is None else max(1, memory_bytes // 2 // per_row)
    best_sim = torch.full((len(flips), len(rows)), -2.0)  # [f]: queries as filmed (0), mirrored (1)
    best = torch.zeros((len(flips), len(rows)), dtype=torch.long)
    for q0 in range(0, len(rows), max(step, 1)):
        part = rows[q0:q0 + step]
        queries = [[] for _ in flips]
        for paths in _path_blocks(data, part, frames, block, flips, block_bytes):
            for f, p in enumerate(paths):
                queries[f].append(_standardise(p, mean, std))
        queries = [torch.cat(q) for q in queries]
        at = 0
        for gallery, in _path_blocks(data, train, frames, block, block_bytes=block_bytes):
            gallery = _standardise(gallery, mean, std)
            for f, query in enumerate(queries):
                for a in range(0, len(part), 1024):
                    sim, nn = (query[a:a + 1024] @ gallery.T).max(1)
                    here = slice(q0 + a, q0 + a + len(sim))
                    better = sim > best_sim[f, here]  # ties: the earlier training clip, as one search
                    best_sim[f, here] = torch.where(better, sim, best_sim[f, here])
                    best[f, here] = torch.where(better, nn + at, best[f, here])
            at += len(gallery)
    found = {}
    for mirror in mirrors:
        sim, nn = best_sim[0], best[0]
        if mirror:  # the better of the clip as filmed and mirrored (as filmed on a tie)
            better = best_sim[1] > sim
            sim, nn = torch.where(better, best_sim[1], sim), torch.where(better, best[1], nn)
        found[mirror] = {"rows": rows, "neighbour": train[nn.numpy()], "cosine": sim.numpy()}
    return found


@torch.no_grad()
def keypoint_nearest_neighbour(data: KeypointData, split: str, rows: np.ndarray | None = None,
                               frames: int = 32, mirror: bool = False) -> dict:
    """For every clip of `split` (or the given `rows`): the training clip with the most similar
    standardised keypoint path. Returns rows, the neighbour's cache row and the cosine."""
    return keypoint_nearest_neighbours(data, split, rows, frames, mirrors=(mirror,))[mirror]

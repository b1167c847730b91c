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
"""
from __future__ import annotations

import numpy as np
import torch

from .data import KeypointData, _arm_groups, mirror_permutation


@torch.no_grad()
def keypoint_paths(data: KeypointData, rows: np.ndarray, frames: int = 32, batch_size: int = 256,
                   mirror: bool = False) -> torch.Tensor:
    """(n, frames * points * 3) float32 paths of the arm and hand points of `rows` (NaN -> 0 later)."""
    arms = _arm_groups(tuple(data.components))["arms"]
    if not arms:
        raise ValueError(f"the keypoint baseline needs arm or hand points; components are {data.components}")
    cols = torch.cat(arms)
    both_hands = "left_hand" in data.components and "right_hand" in data.components
    perm = torch.from_numpy(mirror_permutation(data.components)) if both_hands else None
    # the clips as filmed: the model's canonicalisation (data.mirrored) undone, so that the
    # baseline is the same whatever the run's canonical_hand
    canonical = getattr(data, "mirrored", None)
    if canonical is None and data.cfg.canonical_hand != "none":
        raise ValueError("the keypoint baseline needs the in-memory data (which records mirrored clips)")
    out = []
    j = torch.arange(frames, dtype=torch.float64)
    for a in range(0, len(rows), batch_size):
        idx = np.asarray(rows[a:a + batch_size])
        table, _, first = data._frames_of(idx, data.read_frames(idx) if data.streams else None)
        n = data.n_frames[torch.from_numpy(idx)].double()
        flat = first[:, None] + torch.floor((j[None] + 0.5) * n[:, None] / frames).long()
        pts = table[flat.to(table.device)].float().cpu()  # (B, frames, P, 3)
        flip = np.full(len(idx), mirror) ^ (canonical[idx] if canonical is not None else False)
        if flip.any():
            if perm is None:
                raise ValueError(f"mirroring needs both hands among the components, got {data.components}")
            f = torch.from_numpy(flip)
            mirrored = pts[f][:, :, perm]
            mirrored[..., 0] = -mirrored[..., 0]
            pts[f] = mirrored
        out.append(pts[:, :, cols].flatten(1))
    return torch.cat(out) if out else torch.zeros(0, frames * len(cols) * 3)


def _standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    z = torch.nan_to_num((x - mean) / std, nan=0.0)  # a missing point sits at the training mean
    return torch.nn.functional.normalize(z, dim=1)


@torch.no_grad()
def keypoint_nearest_neighbour(data: KeypointData, split: str, rows: np.ndarray | None = None,
                               frames: int = 32, mirror: bool = False) -> dict:
    """For every clip of `split` (or the given `rows`): the training clip with the most similar
    standardised keypoint path. Returns rows, the neighbour's cache row and the cosine."""
    train = data.rows("train")
    rows = data.rows(split) if rows is None else np.asarray(rows)
    gallery = keypoint_paths(data, train, frames)
    mean = torch.nanmean(gallery, dim=0)
    std = torch.sqrt(torch.nanmean((gallery - mean) ** 2, dim=0)).nan_to_num(1.0).clamp(min=1e-2)
    gallery = _standardise(gallery, mean, std)
    best_sim, best = torch.full((len(rows),), -2.0), torch.zeros(len(rows), dtype=torch.long)
    for flip in ((False, True) if mirror else (False,)):
        query = _standardise(keypoint_paths(data, rows, frames, mirror=flip), mean, std)
        for a in range(0, len(rows), 1024):
            sim, nn = (query[a:a + 1024] @ gallery.T).max(1)
            better = sim > best_sim[a:a + 1024]
            best_sim[a:a + 1024] = torch.where(better, sim, best_sim[a:a + 1024])
            best[a:a + 1024] = torch.where(better, nn, best[a:a + 1024])
    return {"rows": rows, "neighbour": train[best.numpy()], "cosine": best_sim.numpy()}

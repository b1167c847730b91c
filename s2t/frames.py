"""Keypoints -> model input: shoulder normalisation, handedness canonicalisation (mirroring), frame
features and frame subsampling; the same functions at training, evaluation and `translate`."""
from __future__ import annotations

import numpy as np
import torch

from preprocess.layout import COMPONENT_SIZES, COMPONENT_SLICES, COMPONENTS, POSE_INDEX, WRIST

HANDS = ("left_hand", "right_hand")
_L_SHOULDER, _R_SHOULDER = POSE_INDEX["left_shoulder"], POSE_INDEX["right_shoulder"]
# Shoulder width (image-normalised units) assumed for a lone sample in which no shoulder is ever
# seen: about a signer framed from the hips up. Only used when nothing better exists.
FALLBACK_WIDTH = 0.3
_CHUNK = 1 << 18  # frames normalised per numpy step on load (bounds the float32 temporaries)

# Per frame, the model sees (in `cfg.components` order):
#     normalised xyz of every point           shoulder-centred, divided by the shoulder width
#     hands again, relative to their wrist    hand shape independent of where the hand is
#     one presence flag per component         missing points are 0, the flag says "not detected"
# The normalisation (numpy, once per sample) and the feature assembly (torch, per batch) are the
# same functions that `translate` applies to one new sample, so training and inference agree.


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
    default the median width of the other samples (or FALLBACK_WIDTH when alone); a reader that
    sees one sample at a time passes the whole cache's median (see s2t.data.StreamingKeypointData)."""
    centre, width, good = _shoulders(pose)
    if good.all():
        return centre, width
    n = len(offsets) - 1
    sample_of = np.searchsorted(offsets, np.flatnonzero(~good), side="right") - 1
    if global_width is None:
        global_width = float(np.median(width[good])) if good.any() else FALLBACK_WIDTH
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
                     components, global_width: float | None = None, chunk: int = _CHUNK) -> np.ndarray:
    """Shoulder-centred, shoulder-width-scaled points of `components`, concatenated:
    (F, sum P, 3) float16 with NaN where missing. frames[c]: (F, P_c, 3); pose: (F, 33, 3).
    chunk: frames per float32 step (the same values whatever it is; its temporaries ~1.2 kB a frame)."""
    centre, width = shoulder_frames(pose, offsets, global_width)
    total = len(pose)
    out = np.empty((total, sum(COMPONENT_SIZES[c] for c in components), 3), dtype=np.float16)
    for a in range(0, total, chunk):
        b = min(total, a + chunk)
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


# Planar batches (training, augmented): the same features, computed faster on the CPU. Points
# stored (B, T, P, 3) put x, y and z in every third float, and PyTorch's elementwise ops over
# every third float run several times slower than over contiguous memory; an augmentation works
# on one coordinate at a time. So an augmented batch is held as planes, (3, B, T, W): each
# coordinate's rows contiguous, room after the points for the wrist-relative hands and the
# presence flags, and the feature rows come from one transposition at the end.

def planar_points(points: torch.Tensor, components) -> tuple[torch.Tensor, torch.Tensor]:
    """Gathered points (B, T, P, 3) as float32 planes: (a (B, T, P, 3) view for the augmentation
    to change in place, the planar storage (3, B, T, W) behind it for `planar_frame_features`)."""
    B, T, P = points.shape[:3]
    width = P + sum(COMPONENT_SIZES[c] for c in components if c in HANDS) + 1
    storage = torch.empty((3, B, T, width), dtype=torch.float32, device=points.device)
    storage[..., :P].copy_(points.permute(3, 0, 1, 2))
    return storage[..., :P].permute(1, 2, 3, 0), storage


def planar_frame_features(points: torch.Tensor, storage: torch.Tensor, present: torch.Tensor,
                          components) -> torch.Tensor:
    """`frame_features(points, present, components)`, the same values, for points that are (still)
    the view `planar_points` returned: the wrist-relative hands are written into the storage's next
    columns and the presence flags (one per component: 3 with pose and both hands) into its last,
    one more "point", so that the features are the storage transposed to (B, T, W, 3)."""
    _, B, T, W = storage.shape
    P = points.shape[2]
    if (len(components) != 3 or points.data_ptr() != storage.data_ptr()
            or points.stride() != (T * W, W, 1, B * T * W)):  # not (or no longer) that view
        return frame_features(points, present, components)
    at, col = 0, P
    for c in components:
        size = COMPONENT_SIZES[c]
        if c in HANDS:
            torch.sub(storage[..., at:at + size], storage[..., at + WRIST:at + WRIST + 1],
                      out=storage[..., col:col + size])
            col += size
        at += size
    storage[..., W - 1].copy_(present.permute(2, 0, 1))
    out = torch.empty((B, T, 3 * W), dtype=storage.dtype, device=storage.device)
    rows = out.view(-1, 3)
    for k in range(3):  # one strided copy per coordinate, over the whole batch
        rows[:, k].copy_(storage[k].view(-1))
    return torch.nan_to_num_(out, nan=0.0)


def uniform_frame_indices(n: int, max_frames: int) -> np.ndarray:
    """Indices of at most max_frames frames spread uniformly over n (all of them when n fits)."""
    t = min(n, max_frames)
    return np.floor((np.arange(t) + 0.5) * n / t).astype(np.int64)


def normalise_keypoints(keypoints: np.ndarray, components, max_frames: int | None = None,
                        canonical_hand: str = "none") -> np.ndarray:
    """One sample (T, 543, 3|4) in the MediaPipe layout -> model input features (T', F) float32,
    exactly as the evaluation batches compute them (same float16 rounding, same subsampling,
    same handedness canonicalisation)."""
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


"""Batched, on-device augmentation of training batches: geometry (affine, another person's style,
another viewpoint) and dropout; each function draws from the generator it is given, in a fixed order."""
from __future__ import annotations

import functools
import math

import torch

from preprocess.layout import COMPONENT_SIZES, POSE_INDEX

from .config import Augment
from .frames import HANDS, feature_columns


@functools.lru_cache(maxsize=8)
def arm_groups(components: tuple) -> dict:
    """Point positions (in the concatenation of `components`) of each arm with its hand, and the
    first point of each hand: what `personal_style` moves together."""
    starts, at = {}, 0
    for c in components:
        starts[c] = at
        at += COMPONENT_SIZES[c]
    arms, arm_slices = [], []
    for side, first in (("left", 13), ("right", 14)):  # pose elbow, wrist, pinky, index, thumb: first::2
        pieces = [slice(starts["pose"] + first, starts["pose"] + first + 9, 2)] if "pose" in starts else []
        if f"{side}_hand" in starts:
            pieces.append(slice(starts[f"{side}_hand"], starts[f"{side}_hand"] + 21))
        if pieces:
            arms.append(torch.cat([torch.arange(p.start, p.stop, p.step or 1) for p in pieces]))
            arm_slices.append(pieces)
    hands = [h for h in HANDS if h in starts]
    wrists = {"left_hand": POSE_INDEX["left_wrist"], "right_hand": POSE_INDEX["right_wrist"]}
    # arm_slices: the same points as `arms`, as basic slices (in-place adds on views, no index copies)
    return {"arms": arms, "arm_slices": arm_slices, "hands": [starts[h] for h in hands], "pose": starts.get("pose"),
            "hand_wrists": [wrists[h] if "pose" in starts else None for h in hands]}


def _rotation_matrices(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations by angle (B,) about unit axis (B, 3) (Rodrigues)."""
    zero = torch.zeros_like(angle)
    x, y, z = axis.unbind(1)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], 1).reshape(-1, 3, 3)
    eye = torch.eye(3, device=axis.device).expand_as(k)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return eye + s * k + (1 - c) * (k @ k)


def affine(points: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """Per-sample random rotation + scale + shift in the image plane (z scaled alike), in place
    on the freshly gathered points (strided in-place ops: no (B, T, P, 3) temporaries)."""
    B = points.shape[0]
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


def personal_style(points: torch.Tensor, aug: Augment, groups: dict, g: torch.Generator) -> torch.Tensor:
    """Make each sample look signed by another person (augment.path_offset, hand_rotate_deg,
    finger_noise; each off at 0 and then draws nothing): a slow drift of each arm and hand,
    each hand turned about its wrist, and each finger point shifted by a constant offset
    from the wrist (another person's handshape). Points (B, T, P, 3), NaN stays NaN; groups: arm_groups."""
    B, T = points.shape[:2]
    dev = points.device
    if aug.path_offset > 0 and groups["arms"]:
        time = torch.linspace(0, 1, T, device=dev)
        for arm in groups["arm_slices"]:
            u = torch.rand(B, 3, 3, generator=g, device=dev)  # amplitude, frequency, phase per axis
            amp = aug.path_offset * (2 * u[:, 0] - 1)
            wave = torch.sin(2 * math.pi * ((0.5 + u[:, 1, :, None]) * time + u[:, 2, :, None]))
            drift = (amp[:, :, None] * wave).transpose(1, 2)[:, :, None]
            for piece in arm:  # in place on views: the same sums as points[:, :, index] += drift
                points[:, :, piece] += drift
    if aug.yaw_deg > 0 and groups["pose"] is not None:
        points = yaw(points, groups, math.radians(aug.yaw_deg), g)
    for start in groups["hands"]:
        hand = points[:, :, start:start + 21]
        wrist = hand[:, :, :1].clone()  # (a copy: the in-place ops below also change hand's wrist)
        if aug.hand_rotate_deg == 0 and aug.finger_noise == 0:
            # nothing to turn or shift: wrist + (hand - wrist) as below (with its rounding, so the
            # batches stay the same), in place
            hand.sub_(wrist).add_(wrist)
            continue
        rel = hand.sub_(wrist)  # hand - wrist, in place (hand is written again as wrist + rel below)
        if aug.hand_rotate_deg > 0:
            axis = torch.nn.functional.normalize(torch.randn(B, 3, generator=g, device=dev), dim=1)
            angle = math.radians(aug.hand_rotate_deg) * (2 * torch.rand(B, generator=g, device=dev) - 1)
            rel = rotate(rel, _rotation_matrices(axis, angle))
        if aug.finger_noise > 0:
            shift = aug.finger_noise * torch.randn(B, 1, 21, 3, generator=g, device=dev)
            shift[:, :, 0] = 0  # the wrist stays where it is
            rel = rel.add_(shift) if aug.hand_rotate_deg > 0 else rel + shift  # (not in place on hand itself)
        torch.add(wrist, rel, out=hand)
    return points


def rotate(v: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """v @ rot.transpose(1, 2)[:, None] for v (B, T, N, 3) and rot (B, 3, 3) without a 3 x 3 matmul
    per frame: the same sums in the same order as the batched matmul computes them for these sizes
    on the CPU, ((0 + v0 r_j0) + v1 r_j1) + v2 r_j2, each product rounded (bit for bit, -0.0 too);
    on planar points (s2t.data.KeypointData.batch) each term is a pass over contiguous planes."""
    out = torch.zeros_like(v)
    for j in range(3):
        r = rot[:, j, :, None, None]  # (B, 3, 1, 1): row j
        for k in range(3):
            out[..., j] += v[..., k] * r[:, k]
    return out


def yaw(points: torch.Tensor, groups: dict, max_angle: float, g: torch.Generator) -> torch.Tensor:
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


def dropout(x: torch.Tensor, mask: torch.Tensor, aug: Augment, components, g: torch.Generator) -> torch.Tensor:
    """Whole-hand dropout (in place on the features: the hand reads as not detected) and frame
    dropout (frames hidden from attention; frame 0 always stays so no sample is empty)."""
    B = x.shape[0]
    columns = feature_columns(components)
    keeps = {c: torch.rand(B, generator=g, device=x.device) >= aug.hand_drop for c in columns if c in HANDS}
    if x.device.type == "cpu" and keeps:
        # only the samples that lose a hand are touched, in one gather, multiply and scatter over
        # the columns that hold hands: those of a dropped hand * 0, the others * 1 (x * 1 is x)
        gone = ~torch.stack(list(keeps.values()))  # (hands, B)
        rows = torch.nonzero(gone.any(0)).flatten()
        if len(rows):
            lo = min(sl.start for c in keeps for sl in columns[c])
            hi = max(sl.stop for c in keeps for sl in columns[c])
            factor = torch.ones(len(rows), 1, hi - lo, dtype=x.dtype)
            for dropped, c in zip(gone[:, rows], keeps):
                for sl in columns[c]:
                    factor[dropped, :, sl.start - lo:sl.stop - lo] = 0
            x[rows, :, lo:hi] *= factor
    else:
        for c, keep in keeps.items():
            for sl in columns[c]:  # (on a GPU: no host sync)
                x[:, :, sl] *= keep.to(x.dtype)[:, None, None]
    keep = torch.rand(mask.shape, generator=g, device=x.device) >= aug.frame_drop
    keep[:, 0] = True
    return mask & keep

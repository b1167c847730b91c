"""The one keypoint layout used everywhere: MediaPipe Holistic, 543 points in pose-format order.

pose 33 | face 468 | left hand 21 | right hand 21; x, y image-normalised, z as MediaPipe gives it;
NaN where a part was not detected.
"""
from __future__ import annotations

COMPONENTS: tuple[str, ...] = ("pose", "face", "left_hand", "right_hand")
COMPONENT_SIZES: dict[str, int] = {"pose": 33, "face": 468, "left_hand": 21, "right_hand": 21}
N_POINTS = sum(COMPONENT_SIZES.values())  # 543
N_DIMS = 3  # x, y, z (a 4th "visibility/confidence" column in inputs is dropped)

# Slice of each component inside the 543-point array.
COMPONENT_SLICES: dict[str, slice] = {}
_start = 0
for _name in COMPONENTS:
    COMPONENT_SLICES[_name] = slice(_start, _start + COMPONENT_SIZES[_name])
    _start += COMPONENT_SIZES[_name]

# pose-format component names of MediaPipe Holistic, mapped to ours.
POSE_FORMAT_NAMES: dict[str, str] = {
    "POSE_LANDMARKS": "pose",
    "FACE_LANDMARKS": "face",
    "LEFT_HAND_LANDMARKS": "left_hand",
    "RIGHT_HAND_LANDMARKS": "right_hand",
}

# MediaPipe pose landmark indices the trainer and the synthetic generator rely on.
POSE_INDEX = {
    "nose": 0, "left_shoulder": 11, "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14,
    "left_wrist": 15, "right_wrist": 16, "left_hip": 23, "right_hip": 24,
}
WRIST = 0  # index of the wrist inside each 21-point hand

"""What every keypoint reader shares: the error it raises and which frames a time window and a
frame-rate stride keep.

Its own module so that the readers import it and not each other: keypoint_sources (files, and the
dispatcher `load_keypoints`) imports mediapipe_extract only when a video is read, and
mediapipe_extract imports nothing of keypoint_sources; reading a .pose or .npy never loads mediapipe.
"""
from __future__ import annotations

import numpy as np


class SourceError(Exception):
    """One input could not be turned into keypoints; `path` and `reason` go to the failures file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across joblib/multiprocessing workers
        return (type(self), (self.path, self.reason))


def frame_kept(i, fps_in: float, target_fps: float | None):
    """Whether frame i (int or int array) survives resampling fps_in -> target_fps by stride.

    Frame i (time i/fps_in) is kept when it is the first frame at or after a target tick k/target_fps,
    i.e. when floor(i*r) > floor((i-1)*r) with r = target/fps_in. Never upsamples.
    """
    i = np.asarray(i, dtype=np.float64)
    if target_fps is None or target_fps >= fps_in:
        return np.ones(i.shape, dtype=bool)
    r = target_fps / fps_in
    eps = 1e-9  # ticks that land exactly on a frame time must count despite float rounding
    return np.floor(i * r + eps) > np.floor((i - 1) * r + eps)


def stride_mask(n_frames: int, fps_in: float, target_fps: float | None) -> np.ndarray:
    """Boolean mask over n_frames of the frames kept by `frame_kept`."""
    return frame_kept(np.arange(n_frames), fps_in, target_fps)


def first_frame(fps: float, start: float | None) -> int:
    """Index of the first frame at or after `start` seconds (0 when start is None)."""
    return 0 if start is None else max(0, int(np.ceil(start * fps - 1e-6)))


def before_end(i: int, fps: float, end: float | None) -> bool:
    """Whether frame i starts before `end` seconds (the window is [start, end))."""
    return end is None or i / fps < end - 1e-6


def output_fps(fps_in: float, target_fps: float | None) -> float:
    return float(fps_in) if target_fps is None or target_fps >= fps_in else float(target_fps)

"""Small real test media: a video of a real person (made from Debian opencv-doc's messi5.jpg),
a corrupt "video", and a video of an empty scene."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

MESSI_JPG = Path("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")


def _writer(path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v video {path}")
    return writer


def make_person_video(path, n_frames: int = 30, fps: float = 15, size: tuple[int, int] = (640, 360)) -> Path:
    """Write an mp4v video of the messi photo drifting and zooming gently (body and hands stay in view)."""
    photo = cv2.imread(str(MESSI_JPG))
    if photo is None:
        raise FileNotFoundError(f"{MESSI_JPG} missing: install Debian's opencv-doc package")
    width, height = size
    base = height / photo.shape[0]  # fit the photo's height; the wider frame leaves side margins
    writer = _writer(path, fps, size)
    try:
        for k in range(n_frames):
            phase = 2 * math.pi * k / max(n_frames, 1)
            scale = base * (1.0 + 0.04 * math.sin(phase))  # +-4% zoom
            dx = (width - photo.shape[1] * scale) / 2 + 12 * math.sin(phase)
            dy = (height - photo.shape[0] * scale) / 2 + 6 * math.cos(phase)
            affine = np.float32([[scale, 0, dx], [0, scale, dy]])
            writer.write(cv2.warpAffine(photo, affine, size, borderMode=cv2.BORDER_REPLICATE))
    finally:
        writer.release()
    return Path(path)


def make_empty_scene_video(path, n_frames: int = 10, fps: float = 15, size: tuple[int, int] = (320, 240)) -> Path:
    """Write an mp4v video of a slowly shifting colour gradient: no person in it."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    writer = _writer(path, fps, size)
    try:
        for k in range(n_frames):
            frame = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                              np.full((height, width), 8.0 * k)], -1)
            writer.write(frame.astype(np.uint8))
    finally:
        writer.release()
    return Path(path)


def make_corrupt_video(path) -> Path:
    """Write bytes that are not a video under a video extension."""
    Path(path).write_bytes(b"this is not a video\n" * 200)
    return Path(path)

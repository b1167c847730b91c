"""MediaPipe Holistic keypoints from a video (or a folder of frame images).

The only module that imports mediapipe, and only inside a function: importing it costs ~1 s and
most of the project never needs it (keypoint_sources imports this module for videos only).
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from preprocess.layout import COMPONENT_SLICES, N_DIMS, N_POINTS
from preprocess.source_base import SourceError, before_end, first_frame, frame_kept, output_fps

FRAME_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")  # what a folder of frames holds

_local = threading.local()  # one Holistic per thread: an instance must not be shared across threads
_stderr_lock = threading.Lock()

# Holistic parts in our layout order, with the attribute MediaPipe returns them under.
_RESULT_FIELDS = {
    "pose": "pose_landmarks",
    "face": "face_landmarks",
    "left_hand": "left_hand_landmarks",
    "right_hand": "right_hand_landmarks",
}


# Lines MediaPipe's C++ side prints each time a graph starts (absl logging, which no environment
# variable or Python call reaches): 8 per video. Dropped from stderr; everything else is kept.
_NATIVE_NOISE = (b"inference_feedback_manager.cc", b"Created TensorFlow Lite XNNPACK delegate",
                 b"All log messages before absl::InitializeLog()")


def _import_holistic():
    os.environ.setdefault("GLOG_minloglevel", "2")  # quiets glog; must be set before mediapipe loads
    from mediapipe.python.solutions import holistic

    return holistic


def extract_video(path, target_fps: float | None = None, *, progress: Callable[[int], object] | None = None,
                  frames_fps: float = 25.0, start: float | None = None,
                  end: float | None = None) -> tuple[np.ndarray, float]:
    """Run MediaPipe Holistic over a video: ((T, 543, 3) float32, NaN = not detected; fps of the output).

    target_fps subsamples by stride (never upsamples); start/end keep frames in [start, end) seconds
    (frame times are index/fps: constant frame rate assumed). progress, if given, is called with 1
    per processed frame (tqdm's `update` fits). A folder of images is read as frames at `frames_fps`.
    Raises SourceError when the video cannot be decoded, has no frames, or shows no person.
    """
    path = Path(path)
    fps_in, frames = _open_frames(path, frames_fps)
    model = _holistic_for_new_video()
    i0 = first_frame(fps_in, start)
    rows: list[np.ndarray] = []
    n_decoded = 0
    with closing(frames), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
        for i, rgb in enumerate(frames):
            n_decoded += 1
            if not before_end(i, fps_in, end):
                break
            if i < i0 or not frame_kept(i - i0, fps_in, target_fps):  # stride ticks start at `start`
                continue
            rgb.flags.writeable = False  # lets MediaPipe skip a copy
            if rows:
                rows.append(_to_array(model.process(rgb)))
            else:  # the graph starts on the first frame and logs its noise then
                with _without_native_noise():
                    rows.append(_to_array(model.process(rgb)))
            if progress is not None:
                progress(1)
    if n_decoded == 0:
        raise SourceError(path, "zero frames decoded")
    if not rows:
        raise SourceError(path, f"no frames between {start} s and {end} s ({n_decoded} frames decoded)")
    points = np.stack(rows)
    pose = points[:, COMPONENT_SLICES["pose"], 0]
    if np.isnan(pose).all():
        raise SourceError(path, f"no person detected in any of {len(rows)} frames")
    return points, output_fps(fps_in, target_fps)


def _holistic_for_new_video():
    """This thread's Holistic instance, reset for a new video.

    static_image_mode=False tracks the person across frames (and smooths landmarks); that state must
    not leak from one video into the next. reset() starts a new graph run, which clears it: results
    after reset() equal a fresh instance's exactly (checked), and a fresh instance per video costs
    about a second more (graph setup and model loading; measured on a busy 2-core machine).
    """
    model = getattr(_local, "holistic", None)
    if model is None:
        model = _local.holistic = _import_holistic().Holistic(static_image_mode=False, model_complexity=1)
    else:
        model.reset()
    return model


@contextmanager
def _without_native_noise():
    """Route fd 2 to a temporary file for the block, then replay all but the known noise lines."""
    with _stderr_lock, tempfile.TemporaryFile() as captured:  # the lock keeps threads' fd swaps apart
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not any(noise in line for noise in _NATIVE_NOISE)]
            if kept:
                os.write(2, b"".join(kept))


def _to_array(results) -> np.ndarray:
    out = np.full((N_POINTS, N_DIMS), np.nan, dtype=np.float32)
    for comp, field in _RESULT_FIELDS.items():
        landmarks = getattr(results, field)
        if landmarks is not None:
            out[COMPONENT_SLICES[comp]] = [(p.x, p.y, p.z) for p in landmarks.landmark]
    return out


def _open_frames(path: Path, frames_fps: float) -> tuple[float, Iterator[np.ndarray]]:
    """(fps, iterator of RGB uint8 frames). OpenCV first; PyAV when OpenCV cannot open or read it."""
    if not path.exists():
        raise SourceError(path, "file not found")
    if path.is_dir():
        return _folder_frames(path, frames_fps)
    opened = _opencv_frames(path)
    return opened if opened is not None else _pyav_frames(path)


def _opencv_frames(path: Path):
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    fps = cap.get(cv2.CAP_PROP_FPS) if ok else 0.0
    if not ok or not fps > 0:  # unreadable or no frame rate: let PyAV try
        cap.release()
        return None

    def frames():
        try:
            frame = first
            while frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = cap.read()
                if not ok:
                    frame = None
        finally:
            cap.release()

    return float(fps), frames()


def _pyav_frames(path: Path):
    import av  # lazy: PyAV (~0.3 s to import) is the fallback for videos OpenCV cannot read

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise SourceError(path, f"cannot open video (OpenCV and PyAV both failed: {e})") from e
    if not container.streams.video:
        container.close()
        raise SourceError(path, "no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        container.close()
        raise SourceError(path, "video has no frame rate")

    def frames():
        i = 0
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
                i += 1
        except av.error.FFmpegError as e:
            raise SourceError(path, f"cannot decode frame {i}: {e}") from e
        finally:
            container.close()

    return float(rate), frames()


def _folder_frames(folder: Path, fps: float):
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise SourceError(folder, f"folder holds no frame images ({', '.join(FRAME_EXTENSIONS)})")

    def frames():
        for f in files:
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SourceError(f, "cannot read frame image")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return float(fps), frames()

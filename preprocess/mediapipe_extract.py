"""MediaPipe Holistic keypoints from a video (or a folder of frame images).

The only module that imports mediapipe, and only inside a function: importing it costs ~1 s and
most of the project never needs it (keypoint_sources imports this module for videos only).

One extraction = one busy thread, so that N workers keep N cores busy and no more: MediaPipe's
graph, FFmpeg's decoder (in OpenCV and in PyAV) and OpenCV's pool each default to a thread per
core; here each gets one (GRAPH_THREADS, DECODE_THREADS, OPENCV_THREADS; measurements in
BENCHMARKS.md, "Extraction"). Frames that `--fps` or the time window drop are not converted (nor
read, for a folder of images).
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from contextlib import closing, contextmanager
from operator import attrgetter
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from preprocess.layout import COMPONENT_SLICES, N_DIMS, N_POINTS
from preprocess.source_base import SourceError, before_end, first_frame, frame_kept, output_fps

FRAME_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")  # what a folder of frames holds

# Threads per extraction, as measured on the 2-core machine (/proc/<pid>/task of a loky worker):
# MediaPipe runs a graph on a pool of one thread per core ("mediapipe/<tid>": 2 here, both busy,
# at times at once: one process reached 1.36 cores of CPU per second when a core was free), so one
# worker took more than a core and two workers on two cores competed for them. With one graph
# thread a worker has 2 threads (the graph's and Python's) and takes 1.0 core; CPU per frame was
# the same within noise, the keypoints the same bit for bit. TFLite's XNNPACK delegate starts no
# thread (it runs on the graph's). Before, a worker had up to 6 threads at once: besides those 3,
# FFmpeg's decoder in OpenCV adds a thread per core for each video (2 here; PyAV's default was 2x
# slower per frame than 1 thread) and OpenCV's pool one per core but one (cvtColor was no faster
# with 2). (OpenBLAS's pool: loky sets OPENBLAS/OMP/MKL_NUM_THREADS to cores / jobs in workers.)
GRAPH_THREADS = 1
DECODE_THREADS = 1
OPENCV_THREADS = 1

_local = threading.local()  # one Holistic per thread: an instance must not be shared across threads
_stderr_lock = threading.Lock()
_opencv_lock = threading.Lock()
_opencv_users = [0, None]  # extractions running in this process, OpenCV's thread count before the first

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
    with _opencv_threads():
        fps_in, frames = _open_loaders(path, frames_fps)
        with closing(frames):
            return _extract(path, fps_in, frames, target_fps, progress, start, end)


def kept_frames(path, target_fps: float | None = None, *, frames_fps: float = 25.0, start: float | None = None,
                end: float | None = None) -> list[np.ndarray]:
    """The RGB frames that extract_video with these arguments gives MediaPipe, in order, all in
    memory (for benchmarks and tests)."""
    path = Path(path)
    fps_in, frames = _open_loaders(path, frames_fps)
    with closing(frames):
        return [load() for load in _select(frames, fps_in, target_fps, start, end, [0])]


def _select(frames: Iterator[Callable[[], np.ndarray]], fps_in: float, target_fps, start, end,
            seen: list[int]) -> Iterator[Callable[[], np.ndarray]]:
    """The loaders of the frames kept by the time window and the stride; seen[0] counts the frames
    read from the source."""
    i0 = first_frame(fps_in, start)
    for i, load in enumerate(frames):
        seen[0] += 1
        if not before_end(i, fps_in, end):
            return
        if i >= i0 and frame_kept(i - i0, fps_in, target_fps):  # stride ticks start at `start`
            yield load  # (a dropped frame is decoded where the codec needs it, never converted)


def _extract(path: Path, fps_in: float, frames: Iterator[Callable[[], np.ndarray]], target_fps, progress,
             start, end) -> tuple[np.ndarray, float]:
    model = _holistic_for_new_video()
    rows: list[np.ndarray] = []
    seen = [0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
        for load in _select(frames, fps_in, target_fps, start, end, seen):
            rgb = load()
            rgb.flags.writeable = False  # lets MediaPipe skip a copy
            if rows:
                rows.append(_to_array(model.process(rgb)))
            else:  # the graph starts on the first frame and logs its noise then
                with _without_native_noise():
                    rows.append(_to_array(model.process(rgb)))
            if progress is not None:
                progress(1)
    if seen[0] == 0:
        raise SourceError(path, "zero frames decoded")
    if not rows:
        raise SourceError(path, f"no frames between {start} s and {end} s ({seen[0]} frames decoded)")
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
        model = _local.holistic = new_holistic()
    else:
        model.reset()
    return model


def new_holistic(graph_threads: int | None = GRAPH_THREADS):
    """A Holistic for video (tracking, model_complexity=1) whose graph runs on `graph_threads`
    threads (None: MediaPipe's default, min(cores, graph nodes)). The thread count does not change
    the keypoints (checked bit for bit on 100 frames)."""
    holistic = _import_holistic()
    if graph_threads is None:
        return holistic.Holistic(static_image_mode=False, model_complexity=1)

    class _Holistic(holistic.Holistic):
        def _initialize_graph_interface(self, *args, **kwargs):
            # SolutionBase's step that returns the graph config before the graph is built: the one
            # place to set its thread count without copying Holistic's constructor
            config = super()._initialize_graph_interface(*args, **kwargs)
            # Holistic's config lists the default executor ('') with no options; MediaPipe refuses
            # a default executor entry together with the graph-level num_threads
            named = [e for e in config.executor if e.name]
            del config.executor[:]
            config.executor.extend(named)
            config.num_threads = graph_threads
            return config

    return _Holistic(static_image_mode=False, model_complexity=1)


@contextmanager
def _opencv_threads(n: int = OPENCV_THREADS):
    """OpenCV's pool at n threads while extractions run in this process; the caller's count after
    the last one ends (changing it restarts the pool, ~1.5 ms)."""
    with _opencv_lock:
        if _opencv_users[0] == 0:
            _opencv_users[1] = cv2.getNumThreads()
            if _opencv_users[1] != n:
                cv2.setNumThreads(n)
        _opencv_users[0] += 1
    try:
        yield
    finally:
        with _opencv_lock:
            _opencv_users[0] -= 1
            if _opencv_users[0] == 0 and _opencv_users[1] != n:
                cv2.setNumThreads(_opencv_users[1])


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


_xyz = attrgetter("x", "y", "z")


def _to_array(results) -> np.ndarray:
    out = np.full((N_POINTS, N_DIMS), np.nan, dtype=np.float32)
    for comp, field in _RESULT_FIELDS.items():
        landmarks = getattr(results, field)
        if landmarks is not None:
            out[COMPONENT_SLICES[comp]] = list(map(_xyz, landmarks.landmark))  # (~20 % faster than a comprehension)
    return out


def _open_loaders(path: Path, frames_fps: float) -> tuple[float, Iterator[Callable[[], np.ndarray]]]:
    """(fps, iterator with one loader per frame). A loader returns the frame as RGB uint8 and is
    valid until the iterator moves on: a frame whose loader is not called is never converted to
    RGB (nor read at all, for a folder of images). OpenCV first; PyAV when OpenCV cannot open or
    read it."""
    if not path.exists():
        raise SourceError(path, "file not found")
    if path.is_dir():
        return _folder_loaders(path, frames_fps)
    opened = _opencv_loaders(path)
    return opened if opened is not None else _pyav_loaders(path)


def _open_frames(path: Path, frames_fps: float) -> tuple[float, Iterator[np.ndarray]]:
    """(fps, iterator of every frame as RGB uint8): what _open_loaders gives, each frame loaded."""
    return _loaded(_open_loaders(path, frames_fps))


def _opencv_frames(path: Path):
    return _loaded(_opencv_loaders(path))


def _pyav_frames(path: Path):
    return _loaded(_pyav_loaders(path))


def _loaded(opened):
    if opened is None:
        return None
    fps, loaders = opened

    def frames():
        with closing(loaders):
            for load in loaders:
                yield load()

    return fps, frames()


def _opencv_loaders(path: Path):
    # grab() decodes a frame, retrieve() converts it to BGR: only kept frames are retrieved. Every
    # frame is decoded: inter-coded frames need the ones before them (seeking to `start` would skip
    # some, but OpenCV's seeking is not frame-exact in every container).
    cap = cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, DECODE_THREADS])
    if not cap.isOpened():  # a backend that does not take the thread count: open it as it comes
        cap.release()
        cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    fps = cap.get(cv2.CAP_PROP_FPS) if ok else 0.0
    if not ok or not fps > 0:  # unreadable or no frame rate: let PyAV try
        cap.release()
        return None

    def retrieve():
        ok, bgr = cap.retrieve()
        if not ok:
            raise SourceError(path, "cannot decode a frame (OpenCV)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def frames():
        try:
            yield lambda: cv2.cvtColor(first, cv2.COLOR_BGR2RGB)
            while cap.grab():
                yield retrieve
        finally:
            cap.release()

    return float(fps), frames()


def _pyav_loaders(path: Path):
    import av  # lazy: PyAV (~0.3 s to import) is the fallback for videos OpenCV cannot read

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise SourceError(path, f"cannot open video (OpenCV and PyAV both failed: {e})") from e
    if not container.streams.video:
        container.close()
        raise SourceError(path, "no video stream")
    stream = container.streams.video[0]
    stream.thread_count = DECODE_THREADS  # (0, PyAV's default, is a thread per core)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        container.close()
        raise SourceError(path, "video has no frame rate")

    def frames():
        i = 0
        try:
            for frame in container.decode(stream):  # every frame decoded; only kept ones converted
                yield lambda frame=frame: frame.to_ndarray(format="rgb24")
                i += 1
        except av.error.FFmpegError as e:
            raise SourceError(path, f"cannot decode frame {i}: {e}") from e
        finally:
            container.close()

    return float(rate), frames()


def _folder_loaders(folder: Path, fps: float):
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise SourceError(folder, f"folder holds no frame images ({', '.join(FRAME_EXTENSIONS)})")

    def load(f: Path) -> np.ndarray:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SourceError(f, "cannot read frame image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def frames():
        for f in files:  # images of dropped frames are never read
            yield lambda f=f: load(f)

    return float(fps), frames()

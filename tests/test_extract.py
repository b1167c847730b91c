"""MediaPipe extraction: dropped frames are skipped without changing what is kept, and one
extraction runs on one thread (MediaPipe's graph, the decoder, OpenCV), in a worker as in-process."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess import mediapipe_extract as mpx
from tests.media import MESSI_JPG

# 15 fps -> 5 fps in the window [0.4 s, 1.6 s): frames 6..23, a tick every 3 frames from frame 6
WINDOW = {"target_fps": 5.0, "start": 0.4, "end": 1.6}
WINDOW_KEPT = [6, 9, 12, 15, 18, 21]


def _kept(opened, **window):
    """What the extractor keeps from (fps, loaders) of a reader, each kept frame loaded."""
    fps, loaders = opened
    return [load() for load in mpx._select(loaders, fps, window["target_fps"], window.get("start"),
                                           window.get("end"), [0])]


@pytest.mark.parametrize("reader", ["opencv", "pyav"])
def test_skipping_keeps_exactly_the_frames_of_decoding_every_frame(person_video, reader):
    """Dropped frames are never converted; the kept ones equal, pixel for pixel, the same indices
    of every frame decoded and converted."""
    every = list(getattr(mpx, f"_{reader}_frames")(Path(person_video))[1])
    assert len(every) == 30
    kept = _kept(getattr(mpx, f"_{reader}_loaders")(Path(person_video)), **WINDOW)
    assert len(kept) == len(WINDOW_KEPT)
    for frame, i in zip(kept, WINDOW_KEPT):
        np.testing.assert_array_equal(frame, every[i])


def test_opencv_converts_only_kept_frames(person_video, monkeypatch):
    calls = []
    real = cv2.cvtColor
    monkeypatch.setattr(mpx.cv2, "cvtColor", lambda *a, **k: calls.append(1) or real(*a, **k))
    frames = mpx.kept_frames(person_video, **WINDOW)
    assert len(frames) == len(calls) == len(WINDOW_KEPT)


def test_folder_reads_only_kept_images(tmp_path):
    """A folder of frames (PHOENIX) at 15 fps -> 5 fps: only images 0 and 3 are read (the others
    here are not even images)."""
    photo = cv2.resize(cv2.imread(str(MESSI_JPG)), (160, 100))
    for i in range(6):
        if i in (0, 3):
            cv2.imwrite(str(tmp_path / f"images{i:04d}.png"), np.roll(photo, i, axis=1))
        else:
            (tmp_path / f"images{i:04d}.png").write_bytes(b"not an image")
    frames = mpx.kept_frames(tmp_path, target_fps=5, frames_fps=15)
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[1], cv2.cvtColor(np.roll(photo, 3, axis=1), cv2.COLOR_BGR2RGB))


def test_keypoints_equal_mediapipe_on_every_decoded_frame(person_video):
    """extract_video (skipping, one graph thread) gives bit for bit what MediaPipe's own Holistic
    (its default threads) gives on the kept frames of a full decode."""
    points, fps = mpx.extract_video(person_video, **WINDOW)
    every = list(mpx._open_frames(Path(person_video), 25.0)[1])
    reference = mpx.new_holistic(graph_threads=None)
    try:
        expected = np.stack([mpx._to_array(reference.process(every[i])) for i in WINDOW_KEPT])
    finally:
        reference.close()
    assert fps == 5.0 and points.shape == expected.shape
    np.testing.assert_array_equal(points, expected)  # NaN where NaN


def _threads() -> dict[str, str]:
    tasks = Path("/proc/self/task")
    out = {}
    for t in tasks.iterdir():
        try:
            out[t.name] = (t / "comm").read_text().strip()
        except OSError:  # ended meanwhile
            pass
    return out


def _extract_and_watch(path: str) -> dict:
    """Extract a video, looking at this process's threads and OpenCV's pool at every frame."""
    before = _threads()
    opencv_before = cv2.getNumThreads()
    seen = []
    points, _ = mpx.extract_video(path, progress=lambda n: seen.append((_threads(), cv2.getNumThreads())))
    during = {tid: name for threads, _ in seen for tid, name in threads.items()}
    return {"pid": os.getpid(), "frames": len(points), "new": [name for tid, name in during.items() if tid not in before],
            "mediapipe": sorted({tid for threads, _ in seen for tid, name in threads.items()
                                 if name.startswith("mediapipe")}),
            "opencv_during": sorted({n for _, n in seen}), "opencv_before": opencv_before,
            "opencv_after": cv2.getNumThreads()}


def _check_one_thread(seen: dict, n_frames: int) -> None:
    assert seen["frames"] == n_frames
    assert len(seen["mediapipe"]) == mpx.GRAPH_THREADS == 1  # the graph's one thread
    # no decoder threads: nothing else started while the video was read (the graph's thread aside)
    assert all(name.startswith("mediapipe") for name in seen["new"]), seen["new"]
    assert seen["opencv_during"] == [mpx.OPENCV_THREADS] == [1]
    assert seen["opencv_after"] == seen["opencv_before"]  # the caller's OpenCV setting is given back


def test_thread_settings_in_process(person_video):
    """`--jobs 1`: extraction runs in the calling process."""
    caller = cv2.getNumThreads()
    cv2.setNumThreads(2)  # a caller's setting other than extraction's
    try:
        _check_one_thread(_extract_and_watch(str(person_video)), 30)
    finally:
        cv2.setNumThreads(caller)


def test_thread_settings_in_a_worker(person_video):
    """`--jobs 2`: joblib's loky workers, as make features starts them."""
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="loky"):
        results = Parallel(n_jobs=2)(delayed(_extract_and_watch)(str(person_video)) for _ in range(2))
    assert all(r["pid"] != os.getpid() for r in results)
    for seen in results:
        _check_one_thread(seen, 30)

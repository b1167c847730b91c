"""Keypoint sources: real MediaPipe on a real person, real .pose files, npy/npz arrays."""
from pathlib import Path

import cv2
import numpy as np
import numpy.ma as ma
import pytest

from preprocess.keypoint_sources import (SourceError, load_keypoints, source_kind, stride_mask)
from preprocess.layout import COMPONENT_SLICES, N_POINTS, POSE_INDEX, WRIST
from tests.media import MESSI_JPG, make_corrupt_video, make_empty_scene_video, make_person_video

REDUCED_POSE = Path(__file__).parent / "data" / "mediapipe_reduced.pose"


def detected(points, comp):
    """Per-frame: every point of the component present."""
    return ~np.isnan(points[:, COMPONENT_SLICES[comp]]).any(axis=(1, 2))


@pytest.fixture(scope="module")
def person_keypoints(person_video):
    return load_keypoints(person_video)


# --- videos through MediaPipe ------------------------------------------------------------------

def test_mediapipe_finds_pose_hands_and_face(person_keypoints):
    points, fps = person_keypoints
    assert points.shape == (30, N_POINTS, 3) and points.dtype == np.float32
    assert fps == 15.0
    for comp in ("pose", "face", "left_hand", "right_hand"):
        assert detected(points, comp).mean() >= 0.8, comp
    # x, y are image-normalised: the person is inside the frame.
    pose_xy = points[:, COMPONENT_SLICES["pose"], :2]
    assert np.nanmin(pose_xy) > -0.1 and np.nanmax(pose_xy) < 1.1


def test_hands_are_the_subjects_own(person_keypoints):
    """left_hand is the person's left hand: its wrist sits on the pose model's left wrist."""
    points, _ = person_keypoints
    for side in ("left", "right"):
        hand_wrist = points[:, COMPONENT_SLICES[f"{side}_hand"].start + WRIST, :2]
        pose_wrist = points[:, POSE_INDEX[f"{side}_wrist"], :2]
        other = points[:, POSE_INDEX[f"{'right' if side == 'left' else 'left'}_wrist"], :2]
        near = np.nanmedian(np.linalg.norm(hand_wrist - pose_wrist, axis=-1))
        far = np.nanmedian(np.linalg.norm(hand_wrist - other, axis=-1))
        assert near < 0.05 < far, (side, near, far)


def test_target_fps_strides_and_videos_are_independent(person_video, tmp_path):
    """15 -> 5 fps keeps frames 0, 3, ..., 27. Tracking state must not leak between videos: the same
    video gives the same keypoints whatever was extracted before it."""
    calls = []
    first, fps = load_keypoints(person_video, target_fps=5, progress=calls.append)
    other = make_person_video(tmp_path / "other.mp4", n_frames=8, fps=15, size=(560, 360))
    load_keypoints(other)
    second, _ = load_keypoints(person_video, target_fps=5)
    assert first.shape[0] == 10 and fps == 5.0
    assert sum(calls) == 10
    np.testing.assert_array_equal(first, second)


def test_video_time_window(person_video):
    """[0.4 s, 1.0 s) at 15 fps is frames 6..14; at 5 fps the ticks start at 0.4 s: frames 6, 9, 12."""
    points, fps = load_keypoints(person_video, target_fps=5, start=0.4, end=1.0)
    assert points.shape[0] == 3 and fps == 5.0
    with pytest.raises(SourceError, match="no frames between 5.0 s and 6.0 s"):
        load_keypoints(person_video, start=5.0, end=6.0)


def test_corrupt_video_names_path(tmp_path):
    bad = make_corrupt_video(tmp_path / "broken.mp4")
    with pytest.raises(SourceError) as err:
        load_keypoints(bad)
    assert err.value.path == str(bad) and str(err.value).startswith(f"{bad}: cannot open video")


def test_video_without_person(tmp_path):
    empty = make_empty_scene_video(tmp_path / "empty.mp4")
    with pytest.raises(SourceError, match="no person detected in any of 10 frames"):
        load_keypoints(empty)


def test_pyav_decodes_what_opencv_decodes(person_video):
    """The PyAV fallback yields the same frames (same count, rate, near-equal pixels) as OpenCV."""
    from preprocess.mediapipe_extract import _opencv_frames, _pyav_frames

    fps_cv, frames_cv = _opencv_frames(Path(person_video))
    fps_av, frames_av = _pyav_frames(Path(person_video))
    frames_cv, frames_av = list(frames_cv), list(frames_av)
    assert fps_cv == fps_av == 15.0 and len(frames_cv) == len(frames_av) == 30
    diff = np.abs(frames_cv[7].astype(int) - frames_av[7].astype(int)).mean()
    assert diff < 3.0  # same RGB order; only decoder rounding differs


def test_native_noise_dropped_other_stderr_kept(capfd):
    import os

    from preprocess.mediapipe_extract import _without_native_noise

    with _without_native_noise():
        os.write(2, b"W0000 00:00:17 1 inference_feedback_manager.cc:114] Feedback manager requires...\n"
                    b"E0000 a real error\n")
    assert capfd.readouterr().err == "E0000 a real error\n"


def test_frame_folder(tmp_path):
    """PHOENIX-style folder of frame images, read at the caller's frame rate."""
    photo = cv2.imread(str(MESSI_JPG))
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"images{i:04d}.png"), photo)
    points, fps = load_keypoints(tmp_path, default_fps=25.0)
    assert points.shape == (4, N_POINTS, 3) and fps == 25.0
    assert detected(points, "pose").all()


# --- .pose files --------------------------------------------------------------------------------

def test_reduced_pose_file_maps_points_by_name():
    from pose_format import Pose

    points, fps = load_keypoints(REDUCED_POSE)
    assert points.shape == (170, N_POINTS, 3) and fps == 24.0
    pose = points[:, COMPONENT_SLICES["pose"], 0]
    present = [11, 12, 13, 14, 15, 16, 23, 24]
    assert not np.isnan(pose[:, present]).any()
    assert np.isnan(np.delete(pose, present, axis=1)).all()
    face = points[:, COMPONENT_SLICES["face"], 0]
    assert (~np.isnan(face)).sum(axis=1).tolist() == [128] * 170
    assert np.isnan(points[:, COMPONENT_SLICES["left_hand"]]).all()  # never detected in this clip
    assert 100 < detected(points, "right_hand").sum() < 170

    # Values: the file's pixels divided by its 1250x1250 frame; face point "10" lands at face index 10.
    raw = Pose.read(REDUCED_POSE.read_bytes())
    data = ma.getdata(raw.body.data)[:, 0]
    face_names = raw.header.components[1].points
    src = 8 + face_names.index("10")
    np.testing.assert_allclose(points[:, 33 + 10], data[:, src] / [1250, 1250, 1], rtol=1e-6)
    np.testing.assert_allclose(points[:, POSE_INDEX["left_wrist"]], data[:, 4] / [1250, 1250, 1], rtol=1e-6)


def _write_pose(path, points, fps, width=640, height=480):
    """Write (T, 543, 3) normalised keypoints the way pose-format's MediaPipe writer does (pixels),
    with components and face points in a shuffled order to prove reading goes by name."""
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderDimensions
    from pose_format.utils.holistic import holistic_components

    comps = holistic_components("XYZC")[:4]
    comps = [comps[3], comps[1], comps[0], comps[2]]  # right hand, face, pose, left hand
    face = comps[1]
    face.points = list(reversed(face.points))
    face.limbs = []
    order = {"RIGHT_HAND_LANDMARKS": "right_hand", "FACE_LANDMARKS": "face",
             "POSE_LANDMARKS": "pose", "LEFT_HAND_LANDMARKS": "left_hand"}
    cols = []
    for c in comps:
        idx = np.arange(N_POINTS)[COMPONENT_SLICES[order[c.name]]]
        cols.append(idx[::-1] if c.name == "FACE_LANDMARKS" else idx)
    cols = np.concatenate(cols)
    pix = points[:, cols] * np.array([width, height, 1], np.float32)
    missing = np.isnan(pix).any(-1)
    conf = np.where(missing, 0.0, 1.0).astype(np.float32)
    data = ma.masked_array(np.nan_to_num(pix)[:, None], mask=np.repeat(missing[:, None, :, None], 3, -1))
    body = NumPyPoseBody(fps=fps, data=data, confidence=conf[:, None])
    header = PoseHeader(0.1, PoseHeaderDimensions(width, height, 1), comps)
    with open(path, "wb") as f:
        Pose(header, body).write(f)


def test_pose_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (12, N_POINTS, 3)).astype(np.float32)
    points[:, COMPONENT_SLICES["left_hand"]] = np.nan  # a hand never seen
    points[3:6, COMPONENT_SLICES["face"]] = np.nan  # face lost for a few frames
    path = tmp_path / "known.pose"
    _write_pose(path, points, fps=30)
    back, fps = load_keypoints(path)
    assert fps == 30.0
    np.testing.assert_allclose(back, points, rtol=1e-5, atol=1e-6)  # NaN where NaN
    strided, fps = load_keypoints(path, target_fps=10)
    assert fps == 10.0
    np.testing.assert_allclose(strided, points[[0, 3, 6, 9]], rtol=1e-5, atol=1e-6)


def test_damaged_pose_file(tmp_path):
    bad = tmp_path / "bad.pose"
    bad.write_bytes(REDUCED_POSE.read_bytes()[:300])
    with pytest.raises(SourceError, match="cannot read .pose file"):
        load_keypoints(bad)


# --- arrays -------------------------------------------------------------------------------------

def test_npy_round_trip_drops_fourth_column(tmp_path):
    arr = np.random.default_rng(1).normal(size=(20, N_POINTS, 4)).astype(np.float32)
    arr[2, 5] = np.nan
    np.save(tmp_path / "a.npy", arr)
    back, fps = load_keypoints(tmp_path / "a.npy", default_fps=20.0)
    assert fps == 20.0
    np.testing.assert_array_equal(back, arr[..., :3])
    half, fps = load_keypoints(tmp_path / "a.npy", target_fps=10, default_fps=20.0)
    assert fps == 10.0
    np.testing.assert_array_equal(half, arr[::2, :, :3])


def test_array_time_window(tmp_path):
    arr = np.random.default_rng(3).normal(size=(50, N_POINTS, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    window, _ = load_keypoints(tmp_path / "a.npy", default_fps=10.0, start=1.0, end=2.5)
    np.testing.assert_array_equal(window, arr[10:25])
    window, fps = load_keypoints(tmp_path / "a.npy", 5, default_fps=10.0, start=1.0, end=2.5)
    np.testing.assert_array_equal(window, arr[10:25:2])
    assert fps == 5.0


def test_npz_keys_and_fps(tmp_path):
    arr = np.random.default_rng(2).normal(size=(6, N_POINTS, 3)).astype(np.float32)
    np.savez(tmp_path / "single.npz", whatever=arr)
    np.savez(tmp_path / "keyed.npz", keypoints=arr, extra=np.zeros(3), fps=np.float64(12.5))
    np.savez(tmp_path / "ambiguous.npz", a=arr, b=arr)
    back, fps = load_keypoints(tmp_path / "single.npz")
    np.testing.assert_array_equal(back, arr)
    assert fps == 25.0
    back, fps = load_keypoints(tmp_path / "keyed.npz")
    np.testing.assert_array_equal(back, arr)
    assert fps == 12.5
    with pytest.raises(SourceError, match=r"holds arrays \['a', 'b'\]"):
        load_keypoints(tmp_path / "ambiguous.npz")


def test_wrong_shape_names_the_shape(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((10, 75, 3), np.float32))
    with pytest.raises(SourceError, match=r"flat.npy: array has shape \(10, 75, 3\)"):
        load_keypoints(tmp_path / "flat.npy")


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="unsupported file type '.txt'"):
        load_keypoints(tmp_path / "notes.txt")
    with pytest.raises(SourceError, match="file not found"):
        load_keypoints(tmp_path / "gone.mp4")
    assert source_kind("a/b.MP4") == "video" and source_kind("x.pose") == "pose"
    assert source_kind("x.npz") == "npz" and source_kind(tmp_path) == "frames"


def test_stride_mask_counts():
    assert stride_mask(30, 15, 5).nonzero()[0].tolist() == list(range(0, 30, 3))
    assert stride_mask(10, 25, None).all() and stride_mask(10, 25, 50).all()  # never upsample
    # 29.97 -> 25 fps: one frame in ~6 dropped, count = floor((n-1) * r) + 1
    assert stride_mask(300, 29.97, 25).sum() == int(299 * 25 / 29.97) + 1


def test_source_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(SourceError("v.mp4", "zero frames")))
    assert (err.path, err.reason, str(err)) == ("v.mp4", "zero frames", "v.mp4: zero frames")

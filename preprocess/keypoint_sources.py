"""Read one sample's keypoints from any supported source into the shared 543-point layout.

Sources: a video (MediaPipe Holistic, see mediapipe_extract), a folder of frame images (PHOENIX),
a pose-format `.pose` file (points mapped by name), or a `.npy`/`.npz` array of (T, 543, 3|4).
Every reader returns (float32 array (T, 543, 3) with NaN for missing points, fps).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from pose_format import Pose

from preprocess.layout import COMPONENT_SLICES, N_DIMS, N_POINTS, POSE_FORMAT_NAMES
from preprocess.source_base import SourceError, before_end, first_frame, output_fps, stride_mask

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".webm", ".mkv")
KEYPOINT_EXTENSIONS: tuple[str, ...] = (".pose", ".npy", ".npz")
# No detector puts a point 10 frame widths off the image: an x or y beyond is a unit mix-up (pixels)
# or garbage. z has no such unit (pose-format files keep MediaPipe's z scaled by the frame width),
# but beyond float16's largest value it would turn into inf in the cache.
MAX_COORDINATE = 10.0
MAX_DEPTH = float(np.finfo(np.float16).max)


def source_kind(path) -> str:
    """'video', 'frames' (a folder of images), 'pose', 'npy' or 'npz'; SourceError otherwise."""
    p = Path(path)
    if p.is_dir():
        return "frames"
    ext = p.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in KEYPOINT_EXTENSIONS:
        return ext[1:]
    raise SourceError(path, f"unsupported file type {ext or '(no extension)'!r}; expected a video "
                      f"({', '.join(VIDEO_EXTENSIONS)}), {', '.join(KEYPOINT_EXTENSIONS)} "
                      "or a folder of frame images")


def load_keypoints(path, target_fps: float | None = None, *, default_fps: float = 25.0,
                   start: float | None = None, end: float | None = None,
                   progress=None) -> tuple[np.ndarray, float]:
    """(T, 543, 3) float32 keypoints (NaN = missing) and their frame rate, from any source.

    target_fps: subsample by stride (never upsamples). start/end: keep only frames in [start, end)
    seconds (How2Sign clips of a long video). default_fps: frame rate of .npy files, of .npz files
    without an `fps` key and of frame folders. progress: optional callable, called with 1 per
    processed video frame (e.g. tqdm's update).
    """
    p = Path(path)
    if not p.exists():
        raise SourceError(path, "file not found")
    kind = source_kind(p)
    if kind in ("video", "frames"):
        # lazy: mediapipe (~1 s to import) loads for videos only
        from preprocess.mediapipe_extract import extract_video
        points, fps = extract_video(p, target_fps, progress=progress, frames_fps=default_fps, start=start, end=end)
        check_keypoints(path, points)
        return points, fps
    points, fps = _read_pose(p) if kind == "pose" else _read_array(p, default_fps)
    if len(points) == 0:
        raise SourceError(path, "zero frames")
    i0 = first_frame(fps, start)
    i1 = next((i for i in range(i0, len(points)) if not before_end(i, fps, end)), len(points))
    points = points[i0:i1]
    if len(points) == 0:
        raise SourceError(path, f"no frames between {start} s and {end} s")
    keep = stride_mask(len(points), fps, target_fps)
    points = np.ascontiguousarray(points[keep])
    check_keypoints(path, points)
    return points, output_fps(fps, target_fps)


def has_person(points: np.ndarray) -> bool:
    """Any frame with a detected body or hand point (a face alone is not someone signing)."""
    parts = [points[:, COMPONENT_SLICES[c], :2] for c in ("pose", "left_hand", "right_hand")]
    return bool(np.isfinite(np.concatenate(parts, axis=1)).any())


def check_keypoints(path, points: np.ndarray) -> None:
    """Refuse, as a SourceError (a line in failures.jsonl), keypoints no detector can produce:
    infinite values, x or y beyond +-MAX_COORDINATE, z beyond +-MAX_DEPTH, or no person in any frame."""
    finite = np.isfinite(points)
    infinite = ~finite & ~np.isnan(points)
    if infinite.any():
        frame = int(np.argwhere(infinite)[0][0])
        raise SourceError(path, f"{int(infinite.sum())} infinite coordinate(s), the first in frame {frame}; "
                                "keypoints must be finite numbers, NaN where a point was not detected")
    magnitude = np.abs(np.where(finite, points, 0.0))
    too_far = magnitude[..., :2] > MAX_COORDINATE
    if too_far.any():
        frame = int(np.argwhere(too_far)[0][0])
        raise SourceError(path, f"{int(too_far.sum())} x/y coordinate(s) beyond +-{MAX_COORDINATE:g} (largest "
                                f"{float(magnitude[..., :2].max()):.4g}, the first in frame {frame}); x and y must "
                                "be image-normalised (0..1 across the frame, as MediaPipe gives them), not pixels")
    too_deep = magnitude[..., 2] > MAX_DEPTH
    if too_deep.any():
        frame = int(np.argwhere(too_deep)[0][0])
        raise SourceError(path, f"{int(too_deep.sum())} z coordinate(s) beyond +-{MAX_DEPTH:g}, the first in "
                                f"frame {frame}: too large for the cache's float16")
    if not has_person(points):
        raise SourceError(path, f"no person detected in any of {len(points)} frames (no body or hand point)")


def _read_array(path: Path, default_fps: float) -> tuple[np.ndarray, float]:
    """The keypoints of a .npy, or of a .npz's 'keypoints' array (or its only one) with its optional
    'fps', told apart by their content. Whatever else such a file holds (a pickle, an object, integer
    or complex array, a damaged zip, a truncated file, a header that lies) is a SourceError: headers
    are checked before any data is read, so a damaged one cannot ask for gigabytes."""
    fps = default_fps
    try:
        with open(path, "rb") as f:
            head = f.read(len(np.lib.format.MAGIC_PREFIX))
            f.seek(0)
            if head.startswith(b"PK"):
                arr, fps = _read_npz(path, default_fps)
            elif head == np.lib.format.MAGIC_PREFIX:
                arr = _read_npy(path, f, os.fstat(f.fileno()).st_size, "the array")
            elif not head:
                raise SourceError(path, "cannot read array file: it is empty (0 bytes)")
            else:
                raise SourceError(path, f"cannot read array file: not a NumPy .npy/.npz file (it starts with "
                                        f"{head!r}); pickled objects are never loaded")
    except SourceError:
        raise
    except Exception as e:  # numpy, zipfile and zlib raise assorted errors on damaged files
        raise SourceError(path, f"cannot read array file ({type(e).__name__}: {e})") from e
    if not (np.isfinite(fps) and fps > 0):
        raise SourceError(path, f"frame rate {fps} is not a positive finite number")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which check_keypoints reports
        return arr[..., :N_DIMS].astype(np.float32), fps


def _read_npz(path: Path, default_fps: float) -> tuple[np.ndarray, float]:
    with zipfile.ZipFile(path) as z:
        members = {(n[:-4] if n.endswith(".npy") else n): z.getinfo(n) for n in z.namelist() if not n.endswith("/")}
        keys = [k for k in members if k != "fps"]
        if "keypoints" in keys:
            key = "keypoints"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise SourceError(path, f"npz holds arrays {keys}; expected one array or a 'keypoints' key")
        with z.open(members[key]) as f:
            arr = _read_npy(path, f, members[key].file_size, f"array {key!r} of the npz")
        if "fps" not in members:
            return arr, default_fps
        with z.open(members["fps"]) as f:
            fps = _read_npy(path, f, members["fps"].file_size, "the npz's 'fps'", keypoints=False)
        if fps.size != 1 or fps.dtype.kind not in "iuf":
            raise SourceError(path, f"the npz's 'fps' is a {fps.dtype} array of shape {fps.shape}; "
                                    "expected one number")
        return arr, float(fps.reshape(()))


def _read_npy(path: Path, f, size: int, what: str, keypoints: bool = True) -> np.ndarray:
    """One .npy stream of `size` bytes; for keypoints, its header is checked before the data is read."""
    fmt = np.lib.format
    if f.read(len(fmt.MAGIC_PREFIX)) != fmt.MAGIC_PREFIX:
        raise SourceError(path, f"cannot read array file: {what} is not a NumPy array (.npy) but another format "
                                "(a pickle?); pickled objects are never loaded")
    f.seek(0)
    version = fmt.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise SourceError(path, f"cannot read array file: {what} has .npy format version {version}; "
                                "expected 1.0, 2.0 or 3.0")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    if any(n < 0 for n in shape):
        raise SourceError(path, f"cannot read array file: the header of {what} is damaged (shape {shape})")
    if keypoints and (len(shape) != 3 or shape[1] != N_POINTS or shape[2] not in (3, 4)):
        raise SourceError(path, f"array has shape {shape}; expected (T, {N_POINTS}, 3 or 4)")
    if dtype.hasobject:
        raise SourceError(path, f"{what} holds Python objects (dtype {dtype}); pickled objects are never loaded")
    if keypoints and dtype.kind != "f":
        raise SourceError(path, f"array has dtype {dtype}; expected floating point")
    count = int(np.prod(shape, dtype=np.int64))
    header_size = f.tell()
    if size - header_size < count * dtype.itemsize:
        raise SourceError(path, f"cannot read array file: {what} is truncated (its header says shape {shape} "
                                f"{dtype}, {count * dtype.itemsize} bytes of data; {size - header_size} are there)")
    data = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype, count=count)
    return data.reshape(shape[::-1]).T if fortran_order else data.reshape(shape)


def _read_pose(path: Path) -> tuple[np.ndarray, float]:
    """First person of a pose-format file, mapped by point name into the 543 layout.

    pose-format's MediaPipe writer stores x*width, y*height (pixels) and z as given; we divide x, y by
    the header's width/height to get back MediaPipe's image-normalised units (as videos give).
    """
    try:
        with open(path, "rb") as f:
            pose = Pose.read(f.read())
    except Exception as e:  # pose-format raises assorted struct/value errors on damaged files
        raise SourceError(path, f"cannot read .pose file ({type(e).__name__}: {e})") from e
    header, body = pose.header, pose.body
    if body.data.ndim != 4 or body.data.shape[1] == 0:
        raise SourceError(path, f"pose body has shape {body.data.shape}; expected (frames, people>=1, points, dims)")

    index = _layout_index()
    src_cols, dst_cols, offset = [], [], 0
    for comp in header.components:
        ours = POSE_FORMAT_NAMES.get(comp.name)
        for j, point in enumerate(comp.points):
            if ours is not None and (ours, point) in index:
                src_cols.append(offset + j)
                dst_cols.append(index[(ours, point)])
        offset += len(comp.points)
    if not src_cols:
        names = [c.name for c in header.components]
        raise SourceError(path, f"no MediaPipe Holistic points in components {names}; expected "
                          f"{sorted(POSE_FORMAT_NAMES)}")

    data = np.ma.getdata(body.data)[:, 0].astype(np.float32)  # first person
    missing = np.ma.getmaskarray(body.data)[:, 0].any(-1) | (np.asarray(body.confidence)[:, 0] <= 0)
    n_dims = min(data.shape[-1], N_DIMS)
    out = np.full((data.shape[0], N_POINTS, N_DIMS), np.nan, dtype=np.float32)
    picked = data[:, src_cols, :n_dims]
    if n_dims < N_DIMS:  # 2D file: points were detected, depth unknown -> 0, not NaN (NaN means absent)
        picked = np.concatenate([picked, np.zeros(picked.shape[:2] + (N_DIMS - n_dims,), np.float32)], -1)
    out[:, dst_cols] = picked
    width, height = header.dimensions.width, header.dimensions.height
    if width > 0 and height > 0:
        out[..., 0] /= width
        out[..., 1] /= height
    rows, cols = np.nonzero(missing[:, src_cols])
    out[rows, np.asarray(dst_cols)[cols]] = np.nan
    return out, float(body.fps)


# MediaPipe Holistic's point names per component of our layout, as pose-format's MediaPipe writer
# names them (MediaPipe's PoseLandmark and HandLandmark members; face points by index). Written
# out because pose_format.utils.holistic, which has them, imports mediapipe; a test checks them
# against it.
_BODY_POINTS = (
    "NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE", "RIGHT_EYE_OUTER",
    "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW",
    "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY", "RIGHT_PINKY", "LEFT_INDEX", "RIGHT_INDEX",
    "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP", "RIGHT_HIP", "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE", "RIGHT_ANKLE",
    "LEFT_HEEL", "RIGHT_HEEL", "LEFT_FOOT_INDEX", "RIGHT_FOOT_INDEX")
_HAND_POINTS = (
    "WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP", "INDEX_FINGER_MCP", "INDEX_FINGER_PIP",
    "INDEX_FINGER_DIP", "INDEX_FINGER_TIP", "MIDDLE_FINGER_MCP", "MIDDLE_FINGER_PIP", "MIDDLE_FINGER_DIP",
    "MIDDLE_FINGER_TIP", "RING_FINGER_MCP", "RING_FINGER_PIP", "RING_FINGER_DIP", "RING_FINGER_TIP",
    "PINKY_MCP", "PINKY_PIP", "PINKY_DIP", "PINKY_TIP")
HOLISTIC_POINT_NAMES: dict[str, tuple[str, ...]] = {
    "pose": _BODY_POINTS, "face": tuple(str(i) for i in range(468)),
    "left_hand": _HAND_POINTS, "right_hand": _HAND_POINTS}


def _layout_index() -> dict[tuple[str, str], int]:
    """(our component, pose-format point name) -> index in the 543 layout."""
    index = {}
    for comp, names in HOLISTIC_POINT_NAMES.items():
        start = COMPONENT_SLICES[comp].start
        for j, name in enumerate(names):
            index[(comp, name)] = start + j
    return index

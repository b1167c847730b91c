"""Reading a .pose or .npy file never imports mediapipe (~1 s, and not needed): only a video does."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from preprocess.keypoint_sources import HOLISTIC_POINT_NAMES
from preprocess.layout import COMPONENT_SIZES, N_POINTS, POSE_FORMAT_NAMES

ROOT = Path(__file__).resolve().parent.parent
REDUCED_POSE = ROOT / "tests" / "data" / "mediapipe_reduced.pose"


def test_reading_pose_and_npy_does_not_import_mediapipe(tmp_path):
    npy = tmp_path / "a.npy"
    np.save(npy, np.random.default_rng(0).uniform(0, 1, (5, N_POINTS, 3)).astype(np.float32))
    code = ("import sys\n"
            "from preprocess.keypoint_sources import load_keypoints\n"
            f"assert load_keypoints({str(REDUCED_POSE)!r})[0].shape[0] == 170\n"
            f"assert load_keypoints({str(npy)!r})[0].shape[0] == 5\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mediapipe', 'preprocess')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)
    assert not [m for m in loaded if m.startswith("mediapipe")], loaded
    assert "preprocess.mediapipe_extract" not in loaded, loaded


def test_point_names_are_pose_formats():
    """The names written out in keypoint_sources are those pose-format's MediaPipe writer uses."""
    from pose_format.utils.holistic import holistic_components  # imports mediapipe

    theirs = {POSE_FORMAT_NAMES[c.name]: tuple(c.points) for c in holistic_components()
              if c.name in POSE_FORMAT_NAMES}
    assert theirs == HOLISTIC_POINT_NAMES
    assert {k: len(v) for k, v in HOLISTIC_POINT_NAMES.items()} == COMPONENT_SIZES

"""`make features` end to end: real files in, sealed cache out; reuse, invalidation, failures, kill/resume."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocess.features import build_cache
from preprocess.layout import COMPONENTS, COMPONENT_SLICES
from preprocess.store import open_cache
from tests.helpers import ROOT, write_npy_corpus


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_npy_round_trip_through_features(tmp_path, fmt):
    manifest, arrays = write_npy_corpus(tmp_path / "data", 9)
    res = build_cache(manifest, tmp_path / "cache", format=fmt, shard_size=4, jobs=1, progress=False)
    assert not res.reused_keypoints and not res.reused_text and res.n_samples == 9
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [res.path.name]  # the only new folder
    cache = open_cache(res.path)
    kp = cache.load_keypoints(COMPONENTS)
    for i, a in enumerate(arrays):
        got = np.concatenate([kp.frames[c][kp.offsets[i]:kp.offsets[i + 1]] for c in COMPONENTS], axis=1)
        np.testing.assert_allclose(got.astype(np.float32), a, rtol=1e-3, atol=1e-3, equal_nan=True)
    t = cache.text()
    first = list(cache.samples["text"]).index("may i have your health insurance card")
    assert list(t.input_ids[first, :t.lengths[first]]) == [101, 2089, 1045, 2031, 2115, 2740, 5427, 4003, 102]
    assert t.embeddings.shape == (9, 384)
    np.testing.assert_allclose(np.linalg.norm(t.embeddings, axis=1), 1.0, atol=1e-5)


def test_rerun_reuses_and_settings_invalidate_only_their_store(tmp_path):
    manifest, _ = write_npy_corpus(tmp_path / "data", 6)
    first = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False)
    stamp = (first.path / "keypoints.json").stat().st_mtime_ns
    again = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False)
    assert again.path == first.path and again.reused_keypoints and again.reused_text
    assert (first.path / "keypoints.json").stat().st_mtime_ns == stamp

    longer = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False, max_length=20)
    assert longer.path == first.path and longer.reused_keypoints and not longer.reused_text
    assert len(open_cache(first.path).text_names) == 2

    slower = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False, fps=10.0)
    assert slower.path != first.path and not slower.reused_keypoints

    os.utime(tmp_path / "data" / "kp" / "v003.npy", ns=(1, 1))  # an input file changed
    touched = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False)
    assert touched.path not in (first.path, slower.path)


def test_cli_says_it_reused_the_cache(tmp_path):
    manifest, _ = write_npy_corpus(tmp_path / "data", 3)
    cmd = [sys.executable, "-m", "preprocess", "features", "--manifest", str(manifest),
           "--out", str(tmp_path / "cache"), "--jobs", "1", "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    assert "reused the cache" in out
    cache_dir = next((tmp_path / "cache").iterdir())
    info = json.loads(subprocess.run([sys.executable, "-m", "preprocess", "inspect", str(cache_dir), "--json"],
                                     check=True, capture_output=True, text=True, cwd=ROOT).stdout)
    assert info["n_samples"] == 3 and info["failures"] == []
    assert info["splits"] == {"train": 2, "val": 1}


def test_bad_inputs_are_reported_and_skipped(tmp_path):
    from tests.media import make_corrupt_video, make_empty_scene_video, make_person_video

    manifest, _ = write_npy_corpus(tmp_path / "data", 3)
    make_person_video(tmp_path / "data" / "person.mp4", n_frames=12)
    make_corrupt_video(tmp_path / "data" / "broken.mp4")
    make_empty_scene_video(tmp_path / "data" / "empty.mp4")
    (tmp_path / "data" / "short.npy").write_bytes(b"not an array")
    with open(manifest, "a") as f:
        f.write("person,person.mp4,where does it hurt,train,s9\n")
        f.write("broken,broken.mp4,do you have a fever,train,s9\n")
        f.write("empty,empty.mp4,do you have a fever,train,s9\n")
        f.write("garbage,short.npy,do you have a fever,train,s9\n")
    res = build_cache(manifest, tmp_path / "cache", jobs=2, shard_size=2, progress=False)
    assert res.n_samples == 4
    failed = {f["id"]: f for f in res.failures}
    assert set(failed) == {"broken", "empty", "garbage"}
    assert "person" in failed["empty"]["reason"].lower()
    assert all(f["path"].endswith((".mp4", ".npy")) and f["reason"] for f in failed.values())
    cache = open_cache(res.path)
    i = list(cache.samples["id"]).index("person")
    person = cache.sample(i)
    assert np.isfinite(person[:, COMPONENT_SLICES["pose"]]).all(axis=(1, 2)).mean() > 0.8
    lines = (res.path / "failures.jsonl").read_text().splitlines()
    assert {json.loads(x)["id"] for x in lines} == {"broken", "empty", "garbage"}


def _markers(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*/keypoints/shard-*.json")}


def test_sigkill_then_resume_completes_without_loss_duplicates_or_redone_shards(tmp_path):
    manifest, arrays = write_npy_corpus(tmp_path / "data", 40, frames=120)
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "preprocess", "features", "--manifest", str(manifest), "--out", str(out),
           "--shard-size", "1", "--quiet", "--jobs"]
    # two kills at different points, then a run to the end; with 2 jobs only the parent dies and its
    # worker processes live on while the next run starts (what a killed joblib run really leaves)
    for kill_after, jobs in ((1, "1"), (8, "2")):
        proc = subprocess.Popen(cmd + [jobs], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(_markers(out)) < kill_after and proc.poll() is None:
            try:
                proc.wait(timeout=0.01)
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    sealed_before = _markers(out)
    assert 0 < len(sealed_before) < 40
    subprocess.run(cmd + ["2"], cwd=ROOT, check=True, capture_output=True)
    after = _markers(out)
    assert all(after[name] == stamp for name, stamp in sealed_before.items())  # nothing redone
    cache = open_cache(next(p for p in out.iterdir() if (p / "keypoints.json").exists()))
    assert list(cache.samples["id"]) == [f"v{i:03d}" for i in range(40)]
    kp = cache.load_keypoints(("pose",))
    for i, a in enumerate(arrays):
        np.testing.assert_allclose(kp.frames["pose"][kp.offsets[i]:kp.offsets[i + 1]].astype(np.float32),
                                   a[:, :33], atol=1e-2, rtol=1e-3)

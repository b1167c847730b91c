"""Bad inputs and faults: one `error:` line and exit 1 instead of a traceback, nothing bad cached,
checkpoints that refuse edits and clean up after a kill, range-checked configs, a cache reused
without a write, concurrent text-store writers."""
import csv
import io
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from preprocess import cli, store
from preprocess.features import build_cache
from preprocess.inspect import describe
from preprocess.layout import COMPONENT_SLICES
from preprocess.store import open_cache, write_cache
from s2t import translate
from s2t.checkpoint import LAST, CheckpointError, load_checkpoint, remove_stale_temps, save_checkpoint
from s2t.config import ConfigError, load_config
from s2t.train import main as train_main
from s2t.train import train
from tests.helpers import make_corpus, tiny_cfg

ROOT = Path(__file__).resolve().parent.parent


def run_cli(package: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", package, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def assert_one_error_line(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)
    return lines[0]


def pose_sample(frames: int, seed: int) -> np.ndarray:
    """(T, 543, 3) image-normalised keypoints with a body and hands; the face missing every 3rd frame."""
    a = np.random.default_rng(seed).uniform(0.1, 0.9, size=(frames, 543, 3)).astype(np.float32)
    a[::3, COMPONENT_SLICES["face"]] = np.nan
    return a


def write_manifest(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    """One .npy (or .npz where the id ends in _npz) per id and a manifest listing them all."""
    rows = []
    for i, (id_, a) in enumerate(arrays.items()):
        name = f"{id_}.npz" if id_.endswith("_npz") else f"{id_}.npy"
        np.savez(folder / name, keypoints=a) if name.endswith(".npz") else np.save(folder / name, a)
        rows.append({"id": id_, "path": name, "text": ["where does it hurt", "do you have a fever"][i % 2],
                     "split": "train"})
    return write_rows(folder / "manifest.csv", rows)


def write_rows(manifest: Path, rows: list[dict]) -> Path:
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "cache")


@pytest.fixture(scope="module")
def tiny_run(corpus, tmp_path_factory):
    """A 2-step run (checkpoints at steps 1 and 2)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_cfg("max_steps=2", "ckpt_every=1", "eval_every=100"), corpus, run)
    return run


# ----------------------------------------------------------------------------- 1. one error line

def test_manifest_problems_are_one_error_line_with_the_rows(tmp_path):
    np.save(tmp_path / "a.npy", pose_sample(4, 0))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "m.csv").write_text("id,path,text\na,a.npy,hi\na,a.npy,hello\nb,missing.npy,hi\n"
                                    "c,loop,hi\nd,a.npy,\n")
    out = run_cli("preprocess", "features", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "cache")
    line = assert_one_error_line(out, "row 3: duplicate id 'a'", "row 4: path does not exist",
                                 "row 5: path 'loop' cannot be resolved", "row 6: empty text")
    assert "m.csv: 4 problem(s); fix them and run again" in line
    assert not (tmp_path / "cache").exists()  # validated before any work


def test_file_system_errors_name_the_path_and_what_to_do(tmp_path):
    manifest = write_manifest(tmp_path, {"a": pose_sample(4, 0)})
    (tmp_path / "file").write_text("a file where the cache folder should go")
    out = run_cli("preprocess", "features", "--manifest", manifest, "--out", tmp_path / "file" / "cache")
    line = assert_one_error_line(out)
    assert re.search(r"error: .*file.*: Not a directory \(ENOTDIR\); a file is where a folder is expected", line)


def test_missing_cache_debug_flag_and_env_show_the_traceback(tmp_path):
    plain = run_cli("preprocess", "inspect", tmp_path / "nothing")
    assert_one_error_line(plain, "not a sealed cache", "run `make features`")
    for out in (run_cli("preprocess", "inspect", tmp_path / "nothing", "--debug"),
                run_cli("preprocess", "inspect", tmp_path / "nothing", env={"S2T_DEBUG": "1"})):
        assert out.returncode == 1 and "Traceback" in out.stderr and "CacheError" in out.stderr
        assert out.stderr.splitlines()[-1].startswith("error: ")
    usage = run_cli("preprocess", "inspect")  # argparse's usage errors keep their code
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_a_bad_tokenizer_path_is_one_line(tmp_path):
    manifest = write_manifest(tmp_path, {"a": pose_sample(4, 0)})
    out = run_cli("preprocess", "features", "--manifest", manifest, "--out", tmp_path / "cache", "--jobs", "1",
                  "--quiet", "--tokenizer", tmp_path / "no_such_tokenizer")
    assert_one_error_line(out, "cannot load the tokenizer", "no_such_tokenizer", "--tokenizer")


@pytest.mark.parametrize("case", ["yaml_syntax", "python_tag", "lr_negative", "text_store_outside", "no_cache"])
def test_train_errors_are_one_line(case, corpus, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text({"yaml_syntax": "lr: [1e-3\n",
                       "python_tag": "lr: !!python/object/apply:os.system ['touch pwned']\n"}.get(case, "{}\n"))
    args = {"lr_negative": ["lr=-1"], "text_store_outside": ["text_store=../../x"]}.get(case, [])
    cache = tmp_path / "no_cache" if case == "no_cache" else corpus
    out = run_cli("s2t", "train", "--cache", cache, "--config", config, "--run", tmp_path / "run", *args)
    expected = {"yaml_syntax": "config.yaml: not valid YAML", "python_tag": "config.yaml: not valid YAML",
                "lr_negative": "lr = -1.0 is out of range: it must be in (0, inf)",
                "text_store_outside": "no text store '../../x'", "no_cache": "not a sealed cache"}[case]
    assert_one_error_line(out, expected)
    assert not (ROOT / "pwned").exists()


def test_dispatch_reports_known_errors_and_lets_bugs_through(tmp_path, monkeypatch, capsys):
    (tmp_path / "faulty_command.py").write_text(
        "from preprocess.store import CacheError\n"
        "def main(argv):\n"
        "    if argv == ['bug']:\n"
        "        return 1 / 0\n"
        "    raise CacheError('cache/x: shard 3 is damaged; delete the cache folder')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    commands = {"run": ("faulty_command", "a command that fails")}
    assert cli.dispatch("prog", commands, ["run"]) == 1
    assert capsys.readouterr().err == "error: cache/x: shard 3 is damaged; delete the cache folder\n"
    with pytest.raises(ZeroDivisionError):  # a real bug keeps its traceback
        cli.dispatch("prog", commands, ["run", "bug"])


# ----------------------------------------------------------------------------- 2. non-finite keypoints

def test_non_finite_and_empty_keypoints_are_failures_and_the_rest_is_cached(tmp_path):
    good = {f"good{i}": pose_sample(5 + i, i) for i in range(3)}
    inf, neg_inf, nan_only, pixels = pose_sample(6, 10), pose_sample(6, 11), pose_sample(6, 12), pose_sample(6, 13)
    inf[2, 40, 0] = np.inf
    neg_inf[0, 0, 1] = -np.inf
    nan_only[:] = np.nan
    pixels[..., :2] *= 640  # pixel coordinates instead of image-normalised ones
    deep = pose_sample(6, 14)
    deep[1, 5, 2] = 1e5  # finite in the file, inf in the cache's float16
    manifest = write_manifest(tmp_path, {**good, "inf": inf, "neg_inf_npz": neg_inf, "nan_only": nan_only,
                                         "pixels": pixels, "deep": deep})
    res = build_cache(manifest, tmp_path / "cache", jobs=1, shard_size=3, progress=False)
    failed = {f["id"]: f["reason"] for f in res.failures}
    assert set(failed) == {"inf", "neg_inf_npz", "nan_only", "pixels", "deep"}
    assert "1 infinite coordinate(s), the first in frame 2" in failed["inf"]
    assert "infinite" in failed["neg_inf_npz"]
    assert "no person detected in any of 6 frames" in failed["nan_only"]
    assert "x/y coordinate(s) beyond +-10" in failed["pixels"] and "not pixels" in failed["pixels"]
    assert "1 z coordinate(s) beyond +-65504, the first in frame 1" in failed["deep"]
    recorded = [json.loads(x) for x in (res.path / "failures.jsonl").read_text().splitlines()]
    assert {x["id"]: x["reason"] for x in recorded} == failed
    cache = open_cache(res.path)
    assert list(cache.samples["id"]) == list(good)
    for i, a in enumerate(good.values()):
        np.testing.assert_allclose(cache.sample(i), a, rtol=1e-3, atol=1e-3, equal_nan=True)


def test_translate_refuses_non_finite_input(tiny_run, tmp_path, capsys):
    bad = pose_sample(20, 0)
    bad[5, 3, 0] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    np.save(tmp_path / "empty.npy", np.full((20, 543, 3), np.nan, np.float32))
    for name, reason in (("inf.npy", "infinite coordinate"), ("empty.npy", "no person detected")):
        assert translate.main([str(tmp_path / name), "--run", str(tiny_run)]) == 1
        captured = capsys.readouterr()
        assert f"error: {tmp_path / name}: cannot translate it: " in captured.err and reason in captured.err
        assert "translation:" not in captured.out and "nan" not in captured.out


# ----------------------------------------------------------------------------- 2b. fuzzed array files

def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _good_array(rng) -> np.ndarray:
    """What a detector gives: (T, 543, 3|4) floats, whole parts missing (NaN) in some frames."""
    frames = int(rng.integers(1, 12))
    a = rng.uniform(-0.5, 1.5, size=(frames, 543, 3)).astype(np.float64)
    a[..., 2] *= rng.choice([1.0, 500.0])  # z: MediaPipe units or pose-format's width-scaled ones
    for part in ("face", "left_hand", "right_hand", "pose"):
        a[rng.random(frames) < 0.3, COMPONENT_SLICES[part]] = np.nan
    a[0, COMPONENT_SLICES["pose"]] = rng.uniform(0.2, 0.8, size=(33, 3))  # somebody in frame 0
    if rng.random() < 0.3:
        a = np.concatenate([a, rng.uniform(0, 1, size=(frames, 543, 1))], axis=2)  # a visibility column
    dtype = rng.choice(["<f4", "<f8", "<f2", ">f4", ">f8"])
    a = np.asarray(a, dtype=np.dtype(dtype))
    return np.asfortranarray(a) if rng.random() < 0.2 else a


def _bad_file(path: Path, rng, kind: str, nth: int) -> None:
    """Write the nth bad .npy/.npz of the given kind (the name's extension says which container); the
    variants of a kind take turns, so every one is written whatever the seed."""
    def variant(options):
        return options[nth % len(options)]

    frames = int(rng.integers(1, 12))
    good = rng.uniform(0.2, 0.8, size=(frames, 543, 3)).astype(np.float32)
    if kind == "ndim":
        shape = variant([(frames, 543), (543, 3), (frames, 543, 3, 1), (), (frames * 543 * 3,)])
        arr = rng.uniform(0, 1, size=shape).astype(np.float32)
    elif kind == "points":
        arr = rng.uniform(0, 1, size=(frames, int(rng.choice([0, 1, 33, 75, 542, 544, 553])), 3)).astype(np.float32)
    elif kind == "dims":
        arr = rng.uniform(0, 1, size=(frames, 543, int(rng.choice([0, 1, 2, 5, 6])))).astype(np.float32)
    elif kind == "dtype":
        dtype = variant(["i1", "i4", "i8", "u1", "?", "c8", "c16", "M8[s]", "U3", "V12"])
        arr = (good * 100).astype(dtype) if dtype[0] not in "MmUSV" else np.zeros(good.shape, dtype=dtype)
    elif kind == "structured":
        arr = np.zeros((frames, 543), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    elif kind == "empty":
        arr = np.zeros(variant([(0, 543, 3), (0,), (frames, 0, 3), (0, 0, 0)]), np.float32)
    elif kind == "nan_only":
        arr = np.full(good.shape, np.nan, np.float32)
    elif kind == "face_only":  # a face and nothing else is not someone signing
        arr = np.full(good.shape, np.nan, np.float32)
        arr[:, COMPONENT_SLICES["face"]] = good[:, COMPONENT_SLICES["face"]]
    elif kind == "inf":
        arr = good.copy()
        n = int(rng.integers(1, 20))
        arr.reshape(-1)[rng.choice(arr.size, n, replace=False)] = rng.choice([np.inf, -np.inf], n)
    elif kind == "overflow":  # finite float64 that is inf once float32
        arr = good.astype(np.float64)
        arr[int(rng.integers(frames)), int(rng.integers(543)), int(rng.integers(3))] = rng.choice([1e39, -1e300])
    elif kind == "pixels":
        arr = good.copy()
        arr[..., :2] *= rng.choice([640.0, 1920.0])
    elif kind == "far_point":
        arr = good.copy()
        arr[int(rng.integers(frames)), int(rng.integers(543)), int(rng.integers(2))] = rng.choice([11.0, -50.0, 3e4])
    elif kind == "deep":
        arr = good.copy()
        arr[int(rng.integers(frames)), int(rng.integers(543)), 2] = rng.choice([7e4, -1e6, 3e38])
    elif kind == "object":  # pickled inside the .npy: one object per frame, or per coordinate
        arr = np.empty(variant([(frames,), good.shape]), dtype=object)
        arr[:] = [good[i] for i in range(frames)] if arr.ndim == 1 else good
    if kind in {"ndim", "points", "dims", "dtype", "structured", "empty", "nan_only", "face_only", "inf",
                "overflow", "pixels", "far_point", "deep", "object"}:
        if path.suffix == ".npz":
            np.savez(path, **{str(rng.choice(["keypoints", "arr_0", "data"])): arr})
        else:
            np.save(path, arr, allow_pickle=True)
        return
    if kind == "truncated":  # a good file cut anywhere: in the magic, the header or the data
        buf = io.BytesIO()
        save = rng.choice([np.savez, np.savez_compressed]) if path.suffix == ".npz" else np.save
        save(buf, keypoints=good) if path.suffix == ".npz" else save(buf, good)
        data = buf.getvalue()
        path.write_bytes(data[: int(rng.integers(0, len(data)))])
    elif kind == "random_bytes":
        prefix = variant([b"", np.lib.format.MAGIC_PREFIX, b"PK\x03\x04", b"\x80\x04"])
        path.write_bytes(prefix + rng.bytes(int(rng.integers(0, 3000))))
    elif kind == "lying_header":  # a valid header whose data is missing, short or absurdly large
        shape = variant([(frames + int(rng.integers(1, 50)), 543, 3), (10**7, 543, 3), (2**40, 543, 3),
                         (frames, 543, 3)])
        body = good.tobytes()[: int(rng.integers(0, good.nbytes))] if shape[0] == frames else good.tobytes()
        data = _npy_header(shape) + body
        if path.suffix == ".npz":
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("keypoints.npy", data)
        else:
            path.write_bytes(data)
    elif kind == "garbage_header":
        header = variant([b"{'descr': '<f4', 'fortran_order': False}", b"{'shape': (3, 543, 3)}",
                          b"not a dict at all", b"{'descr': 'zz', 'fortran_order': 0, 'shape': (1,)}",
                          b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 543, 3)}"])
        header = header + b" " * (-(len(header) + 11) % 64) + b"\n"
        path.write_bytes(np.lib.format.MAGIC_PREFIX + b"\x01\x00" + len(header).to_bytes(2, "little") + header
                         + good.tobytes())
    elif kind == "pickled":
        obj = variant([good, {"keypoints": good}, "a string", ("tuple", 1)])
        if path.suffix == ".npz":
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("keypoints.npy", pickle.dumps(obj))
        else:
            path.write_bytes(pickle.dumps(obj))
    elif kind == "npz_keys":  # several arrays and none called keypoints, or none at all
        arrays = variant([{}, {"a": good, "b": good}])
        np.savez(path.with_suffix(".npz"), **arrays)
    elif kind == "npz_fps":
        fps = variant([0.0, -25.0, np.nan, np.inf, -np.inf, np.array([25.0, 30.0]), np.array("fast"), np.array([])])
        np.savez(path.with_suffix(".npz"), keypoints=good, fps=fps)
    elif kind == "npz_object_fps":
        np.savez(path.with_suffix(".npz"), keypoints=good, fps=np.array([{"fps": 25}], dtype=object))
    elif kind == "bitflip_npz":  # one byte of the array's data changed: the zip's CRC32 no longer matches
        buf = io.BytesIO()
        np.savez(buf, keypoints=good)
        data = bytearray(buf.getvalue())
        start = data.index(np.lib.format.MAGIC_PREFIX)
        start += 10 + int.from_bytes(data[start + 8:start + 10], "little")  # past the .npy header
        data[start + int(rng.integers(good.nbytes))] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
    else:
        raise AssertionError(kind)


BAD_KINDS = ["ndim", "points", "dims", "dtype", "structured", "empty", "nan_only", "face_only", "inf", "overflow",
             "pixels", "far_point", "deep", "object", "truncated", "random_bytes", "lying_header",
             "garbage_header", "pickled", "npz_keys", "npz_fps", "npz_object_fps", "bitflip_npz"]
NPZ_ONLY = {"npz_keys", "npz_fps", "npz_object_fps", "bitflip_npz"}


def test_fuzzed_array_files_are_reported_or_cached_exactly(tmp_path):
    """A seeded mix of 230 bad and 60 good .npy/.npz files in one manifest: `features` exits 0 with no
    traceback, every bad file is in failures.jsonl with the reason the source's checks give (a
    SourceError, not a library's exception), and every good one is cached as the file holds it (float16)."""
    rng = np.random.default_rng(11)
    files = tmp_path / "files"
    files.mkdir()
    kinds = ["good"] * 60 + BAD_KINDS * 10
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    good, bad, rows = {}, {}, []
    for i, kind in enumerate(kinds):
        ext = ".npz" if kind in NPZ_ONLY or rng.random() < 0.4 else ".npy"
        id_, path = f"f{i:03d}_{kind}", files / f"f{i:03d}{ext}"
        if kind == "good":
            a = _good_array(rng)
            if ext == ".npz":
                save = np.savez if rng.random() < 0.5 else np.savez_compressed
                save(path, **({"keypoints": a, "fps": np.float64(30)} if rng.random() < 0.5 else {"arr_0": a}))
            else:
                np.save(path, a)
            good[id_] = a
        else:
            _bad_file(path, rng, kind, nth=sum(k == kind for k in kinds[:i]))
            bad[id_] = kind
        rows.append({"id": id_, "path": str(path), "text": ["where does it hurt", "do you have a fever"][i % 2],
                     "split": "train"})
    manifest = write_rows(tmp_path / "manifest.csv", rows)

    out = run_cli("preprocess", "features", "--manifest", manifest, "--out", tmp_path / "cache", "--jobs", "1",
                  "--quiet")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (cache_dir,) = (tmp_path / "cache").iterdir()
    failures = [json.loads(line) for line in (cache_dir / store.FAILURES).read_text().splitlines()]
    reasons = {f["id"]: f["reason"] for f in failures}
    assert len(reasons) == len(failures)
    got_through = sorted(set(bad) - set(reasons))
    assert not got_through, got_through
    assert set(reasons) == set(bad)
    for f in failures:  # refused by the source's checks, in their words: no stray exception from a library
        assert isinstance(f["reason"], str) and f["reason"].strip(), f
        assert "SourceError" in f["where"], f
    cache = open_cache(cache_dir)
    assert list(cache.samples["id"]) == list(good)
    for i, (id_, a) in enumerate(good.items()):
        expected = a[..., :3].astype(np.float32).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(cache.sample(i), expected, err_msg=id_)


# ----------------------------------------------------------------------------- 3-4. checkpoints

def run_cache(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["cache"]


def test_edited_checkpoint_metadata_is_refused(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = (run / LAST).read_bytes()
    assert data.count(b'\\"step\\": 2,') == 1
    (run / LAST).write_bytes(data.replace(b'\\"step\\": 2,', b'\\"step\\": 7,'))  # one digit, same length
    with pytest.raises(CheckpointError, match="checksum mismatch in its metadata"):
        load_checkpoint(run / LAST)
    assert train_main(["--cache", run_cache(run), "--run", str(run), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "last.safetensors: checksum mismatch in its metadata" in err
    assert "Traceback" not in err


KILL_DURING_SAVE = """
import os, signal, sys, torch
import s2t.checkpoint as ck
ck.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die after writing, before the rename
ck.save_checkpoint(sys.argv[1], {"w": torch.zeros(3)}, {"step": 3})
"""


def test_a_temp_checkpoint_left_by_a_kill_is_removed_and_training_continues(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(run / "step-000003.safetensors")],
                            cwd=ROOT, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    left = list(run.glob("*.tmp-*"))
    assert len(left) == 1 and left[0].name.startswith("step-000003.safetensors.tmp-")
    assert train_main(["--cache", run_cache(run), "--run", str(run), "--resume", "max_steps=3"]) == 0
    assert not list(run.glob("*.tmp-*"))
    _, meta = load_checkpoint(run / LAST)
    assert meta["step"] == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and sorted(set(steps)) == [1, 2, 3]


def test_only_temp_checkpoints_of_dead_writers_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"step-000004.safetensors.tmp-{gone}").write_bytes(b"half")
        (tmp_path / f"last.safetensors.tmp-{gone}").write_bytes(b"half")
        (tmp_path / f"step-000005.safetensors.tmp-{alive.pid}").write_bytes(b"being written")
        save_checkpoint(tmp_path / "step-000006.safetensors", {"w": torch.ones(2)}, {"step": 6})
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "step-000005.safetensors.tmp-%d" % alive.pid, "step-000006.safetensors"]
        assert remove_stale_temps(tmp_path) == []
    finally:
        alive.kill()
        alive.wait()
    assert [p.name for p in remove_stale_temps(tmp_path)] == [f"step-000005.safetensors.tmp-{alive.pid}"]


def test_resume_logs_the_step_sampler_position_and_queue_fill(corpus, tmp_path, caplog):
    """72 training clips in batches of 24: 3 batches an epoch, so step 4 is the 1st batch of epoch 1;
    the queue (96 slots, joining at step 2) is part-filled."""
    run, common = tmp_path / "run", ["max_steps=5", "ckpt_every=100", "eval_every=100", "queue_size=96"]
    train(tiny_cfg(*common), corpus, run, stop_after=4)
    tensors, meta = load_checkpoint(run / LAST)
    fill = {q: int(tensors[f"queue.{q}.count"]) for q in ("supcon", "clip_video", "clip_text")}
    assert meta["step"] == 4 and (meta["sampler"]["epoch"], meta["sampler"]["position"]) == (1, 1)
    assert 0 < fill["supcon"] < 96 and fill["supcon"] % 24 == 0 and len(set(fill.values())) == 1
    caplog.set_level(logging.INFO, logger="s2t.train")
    train(tiny_cfg(*common), corpus, run, resume=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed ")]
    n = fill["supcon"]
    assert lines == [f"resumed {run / LAST} at step 4: sampler epoch 1, batch 1 of 3 in the epoch; memory queues "
                     f"supcon {n}/96, clip_video {n}/96, clip_text {n}/96 (joining at step 2); "
                     f"{meta['samples_seen']} samples seen"]
    assert meta["samples_seen"] == 4 * 24


# ----------------------------------------------------------------------------- 5. config ranges

@pytest.mark.parametrize("override, message", [
    ("lr=-1", "lr = -1.0 is out of range: it must be in (0, inf)"),
    ("lr=0", "lr = 0.0 is out of range: it must be in (0, inf)"),
    ("lr=.nan", "lr = nan is out of range"),
    ("dropout=2", "dropout = 2.0 is out of range: it must be in [0, 1)"),
    ("decoder_layers=0", "decoder_layers = 0 is out of range: it must be in [1, inf) while loss_weights.ce > 0"),
    ("label_smoothing=5", "label_smoothing = 5.0 is out of range: it must be in [0, 1)"),
    ("queue_size=-1", "queue_size = -1 is out of range: it must be in [0, inf)"),
    ("queue_start=-1", "queue_start = -1 is out of range"),
    ("weight_decay=-1", "weight_decay = -1.0 is out of range: it must be in [0, inf)"),
    ("warmup_steps=-5", "warmup_steps = -5 is out of range: it must be in [0, inf)"),
    ("min_lr_ratio=1.5", "min_lr_ratio = 1.5 is out of range: it must be in [0, 1]"),
    ("grad_clip=-0.5", "grad_clip = -0.5 is out of range"),
    ("augment.frame_drop=1.2", "augment.frame_drop = 1.2 is out of range: it must be in [0, 1)"),
    ("augment.hand_drop=-0.1", "augment.hand_drop = -0.1 is out of range: it must be in [0, 1]"),
])
def test_out_of_range_config_values_are_refused_by_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/train/tiny_cpu.yaml", [override])
    assert message in str(e.value)


def test_edge_values_and_presets_are_accepted():
    for preset in ("recommended", "seed_baseline", "tiny_cpu"):
        load_config([f"configs/train/{preset}.yaml", "configs/train/cpu_scale.yaml"])
    cfg = load_config("configs/train/tiny_cpu.yaml", ["min_lr_ratio=1", "dropout=0", "warmup_steps=0",
                                                      "grad_clip=0", "loss_weights.ce=0", "decoder_layers=0"])
    assert cfg.decoder_layers == 0 and cfg.min_lr_ratio == 1.0


# ----------------------------------------------------------------------------- 6. reuse without writing

def _stat_all(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in [folder, *folder.rglob("*")]}


def test_reusing_a_sealed_cache_writes_nothing(tmp_path):
    manifest = write_manifest(tmp_path, {f"s{i}": pose_sample(5, i) for i in range(3)})
    first = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False)
    before = _stat_all(first.path)  # ctime moves on any write, utime or chmod
    again = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False)
    assert again.reused_keypoints and again.reused_text
    assert _stat_all(first.path) == before

    # with two text stores, the one asked for last is still made the default (one touch, as before)
    longer = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False, max_length=20)
    assert not longer.reused_text
    newest = open_cache(first.path)._text_name
    back = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False)  # asks for the older store
    assert back.reused_text and open_cache(first.path)._text_name not in (None, newest)


# ----------------------------------------------------------------------------- 7. concurrent text writers

TEXT_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from preprocess import store

cache, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for r in range(rounds):
    (cache.parent / f"ready-{r}-{me}").touch()
    deadline = time.monotonic() + 5  # (a crashed partner must fail the test, not hang it)
    while len(list(cache.parent.glob(f"ready-{r}-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)  # both writers start each store at once
    n = 6
    path = store.write_text_store(cache, f"{r:02d}" * 6, "zarr", {"id": [str(i) for i in range(n)]},
                                  np.ones((n, 4), np.int32), np.full(n, 4), np.ones((n, 8), np.float32),
                                  {"tokenizer": "default", "text_model": "default"})
    print(path.name)
"""


def test_two_processes_writing_one_text_store_both_succeed(tmp_path):
    cache, rounds = tmp_path / "cache", 20  # (the unlocked writer failed 2 runs in 3 at 8 rounds)
    cache.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", TEXT_WRITER, str(cache), me, str(rounds)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in "ab"]
    try:
        outputs = [w.communicate(timeout=120) for w in writers]
    finally:
        for w in writers:
            w.kill()
    assert [w.returncode for w in writers] == [0, 0], outputs
    stores = [f"text-{r:02d}" + f"{r:02d}" * 5 for r in range(rounds)]
    assert [out.split() for out, _ in outputs] == [stores, stores]
    # one store per fingerprint, sealed, and no temporary folder left
    assert sorted(p.name for p in cache.glob("text-*")) == stores
    for name in stores:
        assert store.read_json_checked(cache / name / store.TEXT_INDEX, name)["n_samples"] == 6


def test_stale_text_temps_are_removed_unless_their_writer_holds_the_lock(tmp_path):
    live, dead = tmp_path / "text-aaaaaaaaaaaa.tmp-1-x", tmp_path / "text-bbbbbbbbbbbb.tmp-2-y"
    live.mkdir()
    dead.mkdir()
    with store.file_lock(tmp_path / ".text-aaaaaaaaaaaa.lock"):
        store.clean_text_temps(tmp_path)
    assert live.exists() and not dead.exists()


# ----------------------------------------------------------------------------- 8. inspect

def test_inspect_reports_the_shortest_sample(tmp_path, capsys):
    lengths = [7, 5, 9]
    rows = [{"id": f"s{i}", "fps": 25.0} for i in range(3)]
    path = write_cache(tmp_path / "c", rows, [pose_sample(n, i) for i, n in enumerate(lengths)])
    frames = describe(open_cache(path))["frames"]
    assert (frames["min"], frames["median"], frames["max"], frames["total"]) == (5, 7.0, 9, 21)
    from preprocess.inspect import main

    assert main([str(path)]) == 0
    assert "per sample min 5, median 7, max 9" in capsys.readouterr().out

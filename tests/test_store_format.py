"""The cache's byte layout (format 2) and its integrity: arrays stored raw in one piece and read
straight into memory, checked once per process until a file changes, format 1 caches still read."""
import dataclasses
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

import preprocess.store as store
from preprocess.layout import COMPONENTS, COMPONENT_SLICES
from preprocess.store import CacheError, open_cache, write_cache

FORMAT1 = Path(__file__).parent / "data" / "cache_format1"


def tiny_corpus(n=6, seed=7):
    """The samples tests/data/cache_format1 was written from (by sign2text's format 1 writer:
    write_cache(..., format=zarr|hdf5, shard_size=4))."""
    rng = np.random.default_rng(seed)
    keypoints = []
    for i in range(n):
        k = np.full((int(rng.integers(2, 6)), 543, 3), np.nan, np.float32)
        for part in ("pose", "left_hand", "right_hand"):
            sl = COMPONENT_SLICES[part]
            k[:, sl] = rng.normal(size=(len(k), sl.stop - sl.start, 3))
        k[0, COMPONENT_SLICES["face"]] = rng.normal(size=(468, 3))
        k[1:, COMPONENT_SLICES["left_hand"]] = np.nan if i % 2 else k[1:, COMPONENT_SLICES["left_hand"]]
        keypoints.append(k)
    rows = [{"id": f"v{i}", "text": f"sentence {i % 3}", "split": ["train", "val", "test"][i % 3],
             "signer": f"p{i % 2}", "label": f"sentence {i % 3}", "fps": 25.0} for i in range(n)]
    text = {"input_ids": rng.integers(0, 30522, size=(n, 5)).astype(np.int32),
            "lengths": rng.integers(2, 5, size=n).astype(np.int32),
            "embeddings": rng.normal(size=(n, 8)).astype(np.float32), "tokenizer": "default", "text_model": "default"}
    return rows, keypoints, text


def assert_holds(cache, keypoints, text):
    kp = cache.load_keypoints(COMPONENTS)
    for i, k in enumerate(keypoints):
        a, b = kp.offsets[i], kp.offsets[i + 1]
        for c in COMPONENTS:
            np.testing.assert_array_equal(kp.frames[c][a:b], k[:, COMPONENT_SLICES[c]].astype(np.float16))
        np.testing.assert_array_equal(cache.sample(i), k.astype(np.float16).astype(np.float32))
        frames, present = cache.keypoint_reader(("pose", "right_hand"), budget_bytes=1 << 20).read(i)
        np.testing.assert_array_equal(frames["right_hand"], kp.frames["right_hand"][a:b])
        np.testing.assert_array_equal(present, kp.present[a:b])
    t = cache.text()
    np.testing.assert_array_equal(t.input_ids, text["input_ids"])
    np.testing.assert_array_equal(t.embeddings, text["embeddings"])


def flip_byte(path: Path, keep_mtime: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:  # same size, same mtime: only the ctime (which utime cannot set) tells
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_format1_cache_still_reads_the_same_arrays_with_a_note(tmp_path, fmt, capsys):
    path = shutil.copytree(FORMAT1 / fmt, tmp_path / fmt)
    cache = open_cache(path)
    assert cache.meta["format_version"] == 1
    err = capsys.readouterr().err
    assert "format 1" in err and "make features" in err
    _, keypoints, text = tiny_corpus()
    assert_holds(cache, keypoints, text)
    # and its CRC32s still guard it
    shard = cache.meta["shards"][1]
    victim = max(shard["files"], key=lambda rel: shard["files"][rel][0])
    flip_byte(path / victim)
    with pytest.raises(CacheError, match=shard["path"]):
        open_cache(path).load_keypoints(COMPONENTS)


def test_a_cache_of_an_unknown_format_asks_for_a_rebuild(tmp_path):
    rows, keypoints, text = tiny_corpus()
    path = write_cache(tmp_path / "c", rows, keypoints, text)
    index = store.read_json_checked(path / store.KEYPOINT_INDEX, "index")
    store.write_json_atomic(path / store.KEYPOINT_INDEX, index | {"format_version": 99})
    with pytest.raises(CacheError, match=r"cache format 99 .*rebuild it with `make features`"):
        open_cache(path)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_arrays_are_stored_raw_where_the_marker_says_and_open_with_zarr_and_h5py(tmp_path, fmt):
    rows, keypoints, text = tiny_corpus()
    path = write_cache(tmp_path / fmt, rows, keypoints, text, format=fmt, shard_size=4)
    cache = open_cache(path)
    assert cache.meta["format_version"] == store.FORMAT_VERSION == 2
    assert_holds(cache, keypoints, text)
    for j, shard in enumerate(cache.meta["shards"]):
        data = path / "keypoints" / shard["path"]
        arrays = cache.read_shard(j, [*COMPONENTS, "present", "offsets"])
        for name, spec in shard["arrays"].items():
            raw = (path / spec["file"]).read_bytes()[spec["offset"]:spec["offset"] + arrays[name].nbytes]
            assert raw == arrays[name].tobytes(), name
        if fmt == "zarr":
            import zarr
            group = zarr.open_group(str(data), mode="r")
        else:
            import h5py
            group = h5py.File(data, "r")
        for name, arr in arrays.items():
            np.testing.assert_array_equal(group[name][...], arr)


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_bytes_are_checked_once_per_process_until_their_file_changes(tmp_path, monkeypatch, keep_mtime):
    rows, keypoints, text = tiny_corpus()
    path = write_cache(tmp_path / "c", rows, keypoints, text, shard_size=4)
    crcs = []
    monkeypatch.setattr(store, "_crc32", lambda data, crc=0: crcs.append(len(data)) or zlib.crc32(data, crc))
    open_cache(path).load_keypoints(COMPONENTS)
    checked = sum(crcs)
    frames = sum(len(k) for k in keypoints)
    assert checked >= frames * 543 * 3 * 2  # every keypoint byte
    crcs.clear()
    open_cache(path).load_keypoints(COMPONENTS)  # a second load in this process: nothing changed
    assert sum(crcs) == 0
    store.forget_verified()
    open_cache(path).load_keypoints(COMPONENTS)
    assert sum(crcs) == checked
    shard = open_cache(path).meta["shards"][1]
    flip_byte(path / shard["arrays"]["pose"]["file"], keep_mtime)  # written since: checked again
    with pytest.raises(CacheError, match=f"{shard['path']}.*checksum mismatch"):
        open_cache(path).load_keypoints(("pose",))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_damage_is_found_by_partial_reads_too(tmp_path, fmt):
    """Reading a part of an array (a sample, a streamed block) checks the whole array first."""
    rows, keypoints, text = tiny_corpus()
    path = write_cache(tmp_path / fmt, rows, keypoints, text, format=fmt, shard_size=4)
    cache = open_cache(path)
    shard = cache.meta["shards"][1]
    spec = shard["arrays"]["right_hand"]
    target = path / spec["file"]
    data = bytearray(target.read_bytes())
    data[spec["offset"] + 5] ^= 0x01  # in the first sample of the shard (sample 4)
    target.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=shard["path"]):
        cache.keypoint_reader(("right_hand",)).read(5)
    with pytest.raises(CacheError, match=shard["path"]):
        cache.sample(5)
    cache.sample(0)  # another shard is fine


def test_a_missing_array_file_is_named(tmp_path):
    rows, keypoints, text = tiny_corpus()
    path = write_cache(tmp_path / "c", rows, keypoints, text, shard_size=4)
    cache = open_cache(path)
    spec = cache.meta["shards"][0]["arrays"]["pose"]
    (path / spec["file"]).unlink()
    with pytest.raises(CacheError, match=f"{spec['file']} is missing"):
        cache.load_keypoints(("pose",))
    with pytest.raises(CacheError, match="missing"):
        open_cache(path)


def test_the_index_and_markers_carry_a_checksum_of_their_text(tmp_path):
    rows, keypoints, text = tiny_corpus()
    path = write_cache(tmp_path / "c", rows, keypoints, text)
    raw = (path / store.KEYPOINT_INDEX).read_text()
    assert raw.startswith('{"sha256": "') and json.loads(raw)["n_samples"] == len(rows)
    edited = raw.replace('"fps": 25.0', '"fps": 26.0', 1)  # valid JSON, other content
    assert edited != raw
    (path / store.KEYPOINT_INDEX).write_text(edited)
    with pytest.raises(CacheError, match="checksum mismatch"):
        open_cache(path)


def test_features_reuses_a_sealed_cache_of_an_older_format(tmp_path):
    """Same inputs, cache sealed by a sign2text that wrote format 1: `make features` reuses that
    folder instead of extracting every video again (its fingerprint carries the old version)."""
    from preprocess.features import _versions, build_cache, keypoint_fingerprint, load_settings
    from preprocess.manifest import read_manifest
    from tests.helpers import write_npy_corpus

    manifest, _ = write_npy_corpus(tmp_path / "data", 6)
    first = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False)
    kp = dataclasses.asdict(load_settings().keypoints)
    versions = _versions("mediapipe", "pose-format", "numpy", "opencv-contrib-python", "av")
    old_name = f"{manifest.stem}-{keypoint_fingerprint(read_manifest(manifest), kp, versions, 1)[:12]}"
    assert old_name != first.path.name
    first.path.rename(tmp_path / "cache" / old_name)  # as if an older sign2text had sealed it there
    again = build_cache(manifest, tmp_path / "cache", jobs=1, progress=False)
    assert again.reused_keypoints and again.path.name == old_name

"""The cache format itself: round trips, format parity, damage detection."""
import json

import numpy as np
import pytest

from preprocess.layout import COMPONENTS, COMPONENT_SLICES
from preprocess.store import CacheError, open_cache, write_cache


def _corpus(n=40, seed=0):
    rng = np.random.default_rng(seed)
    keypoints = []
    for i in range(n):
        k = rng.normal(size=(int(rng.integers(5, 40)), 543, 3)).astype(np.float32)
        k[rng.random(len(k)) < 0.3, COMPONENT_SLICES["left_hand"]] = np.nan  # undetected hand frames
        keypoints.append(k)
    rows = [{"id": f"s{i:03d}", "text": f"sentence {i % 7}", "split": ["train", "val", "test"][i % 3],
             "signer": f"p{i % 4}", "label": f"sentence {i % 7}", "fps": 25.0} for i in range(n)]
    text = {"input_ids": rng.integers(0, 30522, size=(n, 12)).astype(np.int32),
            "lengths": rng.integers(3, 12, size=n).astype(np.int32),
            "embeddings": rng.normal(size=(n, 384)).astype(np.float32), "tokenizer": "default",
            "text_model": "default"}
    return rows, keypoints, text


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_round_trip_equals_input_in_float16(tmp_path, fmt):
    rows, keypoints, text = _corpus()
    cache = open_cache(write_cache(tmp_path / fmt, rows, keypoints, text, format=fmt, shard_size=16))
    assert cache.n == len(rows) and len(cache.meta["shards"]) == 3
    kp = cache.load_keypoints(COMPONENTS)
    for i, k in enumerate(keypoints):
        a, b = kp.offsets[i], kp.offsets[i + 1]
        for c in COMPONENTS:
            np.testing.assert_array_equal(kp.frames[c][a:b], k[:, COMPONENT_SLICES[c]].astype(np.float16))
        np.testing.assert_array_equal(kp.present[a:b, 2], ~np.isnan(k[:, COMPONENT_SLICES["left_hand"]]).all((1, 2)))
    assert kp.frames["pose"].dtype == np.float16
    np.testing.assert_array_equal(cache.sample(5), keypoints[5].astype(np.float16).astype(np.float32))
    t = cache.text()
    np.testing.assert_array_equal(t.input_ids, text["input_ids"])
    np.testing.assert_array_equal(t.embeddings, text["embeddings"])
    assert list(cache.samples["split"]) == [r["split"] for r in rows]


def test_zarr_and_hdf5_give_identical_arrays(tmp_path):
    rows, keypoints, text = _corpus(seed=1)
    z = open_cache(write_cache(tmp_path / "z", rows, keypoints, text, format="zarr")).load_keypoints(COMPONENTS)
    h = open_cache(write_cache(tmp_path / "h", rows, keypoints, text, format="hdf5")).load_keypoints(COMPONENTS)
    for c in COMPONENTS:
        np.testing.assert_array_equal(z.frames[c], h.frames[c])
    np.testing.assert_array_equal(z.present, h.present)
    np.testing.assert_array_equal(z.offsets, h.offsets)


def test_component_subset_reads_only_those_components(tmp_path):
    rows, keypoints, text = _corpus(n=10)
    kp = open_cache(write_cache(tmp_path / "c", rows, keypoints, text)).load_keypoints(("pose", "right_hand"))
    assert set(kp.frames) == {"pose", "right_hand"}
    assert kp.frames["right_hand"].shape == (sum(len(k) for k in keypoints), 21, 3)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_flipped_byte_after_sealing_is_detected_and_names_the_shard(tmp_path, fmt):
    rows, keypoints, text = _corpus()
    path = write_cache(tmp_path / fmt, rows, keypoints, text, format=fmt, shard_size=16)
    index = json.loads((path / "keypoints.json").read_text())
    shard = index["shards"][1]
    victim = max(shard["files"], key=lambda rel: shard["files"][rel][0])  # the biggest file: array data
    data = bytearray((path / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / victim).write_bytes(bytes(data))
    cache = open_cache(path)  # same size: found when read
    with pytest.raises(CacheError, match=shard["path"]):
        cache.load_keypoints(COMPONENTS)


def test_missing_or_truncated_file_is_detected_on_open(tmp_path):
    rows, keypoints, text = _corpus()
    path = write_cache(tmp_path / "z", rows, keypoints, text, shard_size=16)
    index = json.loads((path / "keypoints.json").read_text())
    rel = next(iter(index["shards"][2]["files"]))
    (path / rel).write_bytes((path / rel).read_bytes()[:-3])
    with pytest.raises(CacheError, match="shard-00002"):
        open_cache(path)


def test_unsealed_folder_is_refused(tmp_path):
    rows, keypoints, text = _corpus(n=5)
    path = write_cache(tmp_path / "z", rows, keypoints, text)
    (path / "keypoints.json").unlink()
    with pytest.raises(CacheError, match="not a sealed cache"):
        open_cache(path)


@pytest.mark.parametrize("victim", ["keypoints.json", "text"])
def test_damaged_index_or_annotations_are_refused(tmp_path, victim):
    rows, keypoints, text = _corpus(n=6)
    path = write_cache(tmp_path / "z", rows, keypoints, text)
    target = path / "keypoints.json" if victim == "keypoints.json" else next(path.glob("text-*")) / "text.json"
    old, new = ('"s003"', '"s009"') if victim == "keypoints.json" else ("sentence 3", "sentence 4")
    target.write_text(target.read_text().replace(old, new, 1))  # still valid JSON, wrong content
    with pytest.raises(CacheError, match="checksum"):
        open_cache(path)


@pytest.mark.parametrize("where", ["memory://", "file://"])
def test_cache_at_a_url_round_trips_like_a_local_one(tmp_path, where):
    """Written and read through fsspec (memory:// lives in this process only; file:// is the
    fsspec route to a folder): the same files, checksums, arrays and lazy reads as a local cache."""
    rows, keypoints, text = _corpus(seed=2)
    local = open_cache(write_cache(tmp_path / "local", rows, keypoints, text, shard_size=16))
    url = f"file://{tmp_path}/url" if where == "file://" else f"memory://caches/{tmp_path.name}/url"
    remote = open_cache(write_cache(url, rows, keypoints, text, shard_size=16))
    assert str(remote.path) == url
    assert [sh["files"] for sh in remote.meta["shards"]] == [sh["files"] for sh in local.meta["shards"]]
    a, b = local.load_keypoints(COMPONENTS), remote.load_keypoints(COMPONENTS)
    for c in COMPONENTS:
        np.testing.assert_array_equal(a.frames[c], b.frames[c])
    np.testing.assert_array_equal(local.text().embeddings, remote.text().embeddings)
    frames, present = remote.keypoint_reader(("right_hand",)).read(7)
    np.testing.assert_array_equal(frames["right_hand"], a.frames["right_hand"][a.offsets[7]:a.offsets[8]])


def test_hdf5_at_a_url_is_refused_with_a_clear_error():
    rows, keypoints, text = _corpus(n=4)
    with pytest.raises(CacheError, match="HDF5 caches must be on a local"):
        write_cache("memory://caches/h5", rows, keypoints, text, format="hdf5")

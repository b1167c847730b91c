"""`s2t eval` on streamed data (issue 14): the cache's keypoints read batch by batch under a memory
budget give the same summary and predictions as the cache loaded in memory, the keypoint baseline
included. (The memory measurement itself, on a cache 4x its budget: benchmarks/bench_eval_memory.py.)"""
import json
import math
import time

import numpy as np
import pytest
import torch

import preprocess.store as store
from s2t import baselines, evaluate
from s2t.data import KeypointData, StreamingKeypointData
from s2t.train import train
from tests.helpers import make_corpus, tiny_cfg

RUN = ["canonical_hand=right", "max_steps=3", "log_every=1", "eval_every=3", "ckpt_every=3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A cache whose samples straddle the reader's blocks (stored in chunks of 50 frames) and a
    3-step run on it; some clips are canonicalised (mirrored) by the run's canonical_hand."""
    root = tmp_path_factory.mktemp("eval_streaming")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "FRAME_CHUNK", 50)
        cache = make_corpus(root / "cache")
        train(tiny_cfg(*RUN), cache, root / "run")
    return cache, root / "run"


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(store, "FRAME_CHUNK", 50)  # a 1 MB budget holds many blocks


def _close(a, b, path=""):
    """a == b, floats within 1e-5 (relative) or 1e-6 (absolute), NaN == NaN."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), \
            f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_streamed_eval_gives_the_in_memory_summary(tiny_run, tmp_path, small_blocks):
    _, run = tiny_run
    outputs = {}
    for name, extra in (("memory", []), ("streamed", ["--memory-budget-mb", "1"])):
        out = tmp_path / name
        assert evaluate.main(["--run", str(run), "--split", "val", "--rerank", "0", "--beam", "2",
                              "--out", str(out), *extra]) == 0
        outputs[name] = (json.loads((out / "summary.json").read_text()),
                         [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()])
    (memory, mem_pred), (streamed, str_pred) = outputs["memory"], outputs["streamed"]
    assert memory["keypoints"]["streamed"] is False
    assert streamed["keypoints"] == {"streamed": True, "memory_budget_mb": 1, "why": "--memory-budget-mb"}
    assert "keypoint_nn_mirror" in memory["baselines"]
    for s in (memory, streamed):
        for key in ("seconds", "keypoints"):
            s.pop(key)
    _close(memory, streamed)
    _close(mem_pred, str_pred)


def test_streamed_keypoint_baseline_matches_the_whole_gallery_search(tiny_run, small_blocks):
    cache, _ = tiny_run
    memory = KeypointData(cache, tiny_cfg(*RUN))
    streamed = StreamingKeypointData(cache, tiny_cfg(*RUN, "stream=true", "memory_budget_mb=1"))
    assert memory.mirrored.any()  # the baseline must undo the run's mirroring on both paths
    val = memory.rows("val")
    # the reference: the whole gallery in memory, searched at once
    gallery = baselines.keypoint_paths(memory, memory.rows("train"))
    mean = torch.nanmean(gallery, dim=0)
    std = torch.sqrt(torch.nanmean((gallery - mean) ** 2, dim=0)).nan_to_num(1.0).clamp(min=1e-2)
    gallery = baselines._standardise(gallery, mean, std)
    for data, kwargs in ((memory, {}), (streamed, {}), (streamed, {"memory_bytes": 2 * 5 * 2 * 4 * 4992 * 2})):
        found = baselines.keypoint_nearest_neighbours(data, "val", mirrors=(False, True), block=16, **kwargs)
        for mirror in (False, True):
            sims = [baselines._standardise(baselines.keypoint_paths(memory, val, mirror=flip), mean, std) @ gallery.T
                    for flip in ((False, True) if mirror else (False,))]
            best = torch.stack(sims).amax(0)
            np.testing.assert_allclose(found[mirror]["cosine"], best.max(1).values.numpy(), rtol=1e-5, atol=1e-6)
            # the neighbour found is a nearest one (a different row only on an exact tie)
            picked = best[torch.arange(len(val)), torch.from_numpy(np.searchsorted(memory.rows("train"),
                                                                                  found[mirror]["neighbour"]))]
            np.testing.assert_allclose(picked.numpy(), best.max(1).values.numpy(), rtol=1e-5, atol=1e-6)
    assert 0 < streamed.reader.peak_bytes <= 1 << 20


def test_eval_streams_when_the_cache_exceeds_the_budget(tiny_run, monkeypatch):
    cache, _ = tiny_run
    size = evaluate.keypoint_bytes(cache, ["pose", "left_hand", "right_hand"])
    kp = store.open_cache(cache).load_keypoints(("pose", "left_hand", "right_hand"))
    assert size == sum(a.nbytes for a in kp.frames.values()) + kp.present.nbytes
    fits, note = evaluate.data_config(tiny_cfg(f"memory_budget_mb={(size >> 20) + 1}"), cache)
    assert not fits.stream and not note["streamed"]
    monkeypatch.setattr(evaluate, "keypoint_bytes", lambda *_: (4 << 20) + 1)  # a cache of 4 MB and a byte
    small, note = evaluate.data_config(tiny_cfg("memory_budget_mb=4"), cache)
    assert small.stream and small.memory_budget_mb == 4 and note["streamed"] and "exceed" in note["why"]
    assert not evaluate.data_config(tiny_cfg("memory_budget_mb=5"), cache)[0].stream
    asked, note = evaluate.data_config(tiny_cfg("stream=true", "memory_budget_mb=7"), cache)
    assert asked.stream and note == {"streamed": True, "memory_budget_mb": 7, "why": "the run's config (stream: true)"}
    with pytest.raises(evaluate.EvaluationError, match="positive"):
        evaluate.data_config(tiny_cfg(), cache, budget_mb=0)


# -- bounded memory: every chunked path gives what the whole computation gives, bit for bit

def test_pair_similarities_in_chunks_are_the_unchunked_cosines():
    from s2t import metrics

    g = torch.Generator().manual_seed(0)
    for n, dim, max_pairs in ((40, 16, 200_000), (300, 64, 5_000)):  # every pair; a sample of pairs
        e = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
        y = torch.randint(0, 7, (n,), generator=g)
        whole = metrics.pair_similarities(e, y, max_pairs=max_pairs, seed=3, chunk=10**9)
        for chunk in (1, 7, 1000):
            parts = metrics.pair_similarities(e, y, max_pairs=max_pairs, seed=3, chunk=chunk)
            for a, b in zip(whole, parts):
                assert a.dtype == b.dtype and np.array_equal(a.view(np.int32), b.view(np.int32))


def test_normalising_in_chunks_gives_the_same_points(tiny_run):
    from s2t.frames import normalise_points

    cache, _ = tiny_run
    kp = store.open_cache(cache).load_keypoints(("pose", "left_hand", "right_hand"))
    pose = kp.frames["pose"].copy()
    pose[kp.offsets[3]:kp.offsets[4], 11:13] = np.nan  # a sample without shoulders: the fallback width
    frames = {**kp.frames, "pose": pose}
    comps = ["pose", "left_hand", "right_hand"]
    whole = normalise_points(frames, pose, kp.offsets, comps, 0.25)
    for chunk in (1, 7, 50):
        part = normalise_points(frames, pose, kp.offsets, comps, 0.25, chunk=chunk)
        assert np.array_equal(whole.view(np.int16), part.view(np.int16))


def test_whole_budget_sizes_the_lru_to_what_the_rest_leaves(tiny_run, small_blocks, monkeypatch):
    import s2t.data as data_module

    cache, _ = tiny_run
    cfg = tiny_cfg(*RUN, "stream=true", "memory_budget_mb=1")
    plain = StreamingKeypointData(cache, cfg)
    grown = {"bytes": 0}  # what the process is said to hold beyond what it held when the data were opened
    opened = data_module.anon_bytes()
    monkeypatch.setattr(data_module, "anon_bytes", lambda: opened + grown["bytes"])
    whole = StreamingKeypointData(cache, cfg, whole_budget=True)
    assert plain.reader.budget == whole.reader.budget == 1 << 20  # nothing held yet
    rows = whole.rows("val")[:8]
    grown["bytes"] = 600_000
    a = whole.batch(rows)  # the rest holds 0.6 MB: the LRU keeps the other 0.4 MB
    assert whole.held_bytes == 600_000 and whole.reader.budget == (1 << 20) - 600_000
    grown["bytes"] = 3 << 20
    floor = whole.MIN_BLOCKS * 50 * (2 * 3 * 75 + 4)
    # the sampler thread sees it without a read (every WATCH_S), and the LRU's blocks beyond its floor
    # go at once: wait for it with a generous deadline, not a fixed sleep (shared, loaded machines)
    deadline = time.monotonic() + 30
    while whole.reader.budget != floor and time.monotonic() < deadline:
        time.sleep(whole.WATCH_S)
    assert whole.reader.budget == floor and 0 < whole.reader.bytes_held <= floor
    b = whole.batch(rows)  # more than the budget: the LRU keeps its floor, and reads go on
    assert whole.reader.budget == floor and 0 < whole.reader.bytes_held <= floor
    c = plain.batch(rows)
    for x in (a, b):
        assert torch.equal(x.x, c.x) and torch.equal(x.mask, c.mask)
    whole.release()


def test_report_reads_only_the_frames_of_its_clips(tiny_run, small_blocks):
    from s2t.html_report import read_clips, stick_figure

    cache, _ = tiny_run
    c = store.open_cache(cache)
    ids = [str(x) for x in c.samples["id"][::7]]
    clips, _ = read_clips(cache, ids, budget=10**9)
    reader = c.keypoint_reader(("pose", "left_hand", "right_hand"), 1 << 20)
    for i in range(0, c.n, 7):  # the clips as the LRU reader reads them, blocks and all
        assert clips[str(c.samples["id"][i])] == stick_figure(reader.read(i)[0], c.samples["fps"][i])

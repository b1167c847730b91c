"""`make features BACKEND=dask`: a Dask cluster's workers write the same cache as local workers."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from preprocess.features import build_cache
from preprocess.layout import COMPONENTS
from preprocess.store import open_cache
from tests.helpers import ROOT, write_npy_corpus

distributed = pytest.importorskip("distributed")


def _shard_markers(cache_dir):
    """Every shard's marker minus nothing: samples, failures and the size + CRC32 of every file."""
    return {p.name: json.loads(p.read_text()) for p in sorted((cache_dir / "keypoints").glob("shard-*.json"))}


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker *processes* (as on a real cluster: nothing shared with this process
    but the file system); they take a few seconds to start, once for the module."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c:
        yield c


def test_dask_cluster_builds_the_same_cache_as_local_workers(tmp_path, cluster):
    manifest, _ = write_npy_corpus(tmp_path / "data", 10)
    local = build_cache(manifest, tmp_path / "local", shard_size=3, jobs=1, progress=False)
    client = distributed.Client(cluster)
    client.get_task_stream()  # starts the scheduler's record of which worker ran which task
    start = time.time()
    dask = build_cache(manifest, tmp_path / "dask", shard_size=3, progress=False,
                       backend="dask", scheduler=cluster.scheduler_address)
    assert dask.path.name == local.path.name  # same fingerprint, so the same folder name
    a, b = open_cache(local.path), open_cache(dask.path)
    assert a.meta["fingerprint"] == b.meta["fingerprint"]
    assert a.meta["samples"] == b.meta["samples"] and a.meta["shards"] == b.meta["shards"]
    # byte-identical shard files (sizes and CRC32s in the markers), and identical arrays
    assert _shard_markers(local.path) == _shard_markers(dask.path)
    ka, kb = a.load_keypoints(COMPONENTS), b.load_keypoints(COMPONENTS)
    for c in COMPONENTS:
        np.testing.assert_array_equal(ka.frames[c], kb.frames[c])
    np.testing.assert_array_equal(ka.present, kb.present)
    np.testing.assert_array_equal(ka.offsets, kb.offsets)
    np.testing.assert_array_equal(a.text().input_ids, b.text().input_ids)
    # the 4 shards were extracted by 4 tasks on the cluster's worker processes, not in this process
    tasks = [t for t in client.get_task_stream(start=start) if "extract_shard" in str(t["key"])]
    workers = set(client.scheduler_info()["workers"])
    client.close()
    assert len(tasks) == 4 and {t["worker"] for t in tasks} <= workers and len(workers) == 2


def test_dask_workers_write_a_cache_at_a_url_the_trainer_reads(tmp_path, cluster):
    """--out file://...: the worker processes write their shards through fsspec, the driver the
    index; the cache equals a local one and the trainer's data loads from the URL."""
    from s2t.data import KeypointData
    from tests.helpers import tiny_cfg

    manifest, _ = write_npy_corpus(tmp_path / "data", 8)
    local = build_cache(manifest, tmp_path / "local", shard_size=3, jobs=1, progress=False)
    url = build_cache(manifest, f"file://{tmp_path}/remote", shard_size=3, progress=False,
                      backend="dask", scheduler=cluster.scheduler_address)
    assert str(url.path) == f"file://{tmp_path}/remote/{local.path.name}"
    assert _shard_markers(local.path) == _shard_markers(tmp_path / "remote" / local.path.name)
    a = KeypointData(local.path, tiny_cfg("samples_per_label=1"))
    b = KeypointData(str(url.path), tiny_cfg("samples_per_label=1"))
    assert b.cache_dir == str(url.path)
    torch.testing.assert_close(a.points, b.points, rtol=0, atol=0, equal_nan=True)  # NaN: undetected hands
    assert torch.equal(a.tokens, b.tokens)


def test_cli_runs_on_a_scheduler_and_resumes_there(tmp_path, cluster):
    manifest, _ = write_npy_corpus(tmp_path / "data", 6)
    cmd = [sys.executable, "-m", "preprocess", "features", "--manifest", str(manifest), "--out",
           str(tmp_path / "cache"), "--shard-size", "2", "--quiet", "--backend", "dask",
           "--scheduler", cluster.scheduler_address]
    first = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    assert "6 samples cached" in first.stdout
    cache_dir = next((tmp_path / "cache").iterdir())
    # a run that stopped after one shard: its marker and the index go, the next run redoes the rest only
    (cache_dir / "keypoints.json").unlink()
    kept = cache_dir / "keypoints" / "shard-00000.json"
    stamp = kept.stat().st_mtime_ns
    for i in (1, 2):
        (cache_dir / "keypoints" / f"shard-{i:05d}.json").unlink()
    again = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    assert "resuming: 1/3 shards already sealed, 2 to do" in again.stderr
    assert kept.stat().st_mtime_ns == stamp
    assert open_cache(cache_dir).n == 6


def test_scheduler_without_dask_backend_is_an_error(tmp_path):
    manifest, _ = write_npy_corpus(tmp_path / "data", 2)
    out = subprocess.run([sys.executable, "-m", "preprocess", "features", "--manifest", str(manifest),
                          "--out", str(tmp_path / "c"), "--scheduler", "tcp://127.0.0.1:1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "--scheduler needs --backend dask" in out.stderr

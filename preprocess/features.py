"""`make features`: manifest -> keypoints (MediaPipe / .pose / .npy) + tokenized text -> sealed cache.

Keypoints are the expensive part (~25 frames/s per core): they are written in shards by joblib
workers, each shard sealed atomically, so a killed run resumes with the shards it had finished.
Text (tokenizer ids + frozen sentence embeddings) is cheap and lives in its own store with its
own fingerprint, so changing the text model never re-extracts a video.

Where the workers run is joblib's business: local processes (loky, the default) or a Dask
cluster (joblib's Dask backend; `--backend dask --scheduler tcp://host:8786`). Dask workers write
sealed shards straight to the cache folder, which must be on storage they all see; the index is
written once, at the end, by this (the driver) process.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
import traceback
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from . import settings, store
from .cli import CommandError
from .manifest import read_manifest

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("loky", "dask")
DEFAULT_CONFIG = ROOT / "configs" / "features" / "default.yaml"


@dataclass
class KeypointSettings:
    format: str = "zarr"         # zarr (v3) or hdf5: same layout, same reader
    fps: float | None = None     # target frame rate; None keeps every frame of the source
    default_fps: float = 25.0    # frame rate assumed for .npy/.npz inputs that do not say (manifest `fps` wins)
    shard_size: int = 128        # samples per shard: the unit of parallel work, of resume and of atomic writes


@dataclass
class TextSettings:
    tokenizer: str = "default"   # DistilBERT-uncased WordPiece ids ("default": the vocab shipped with the
                                 # offline all-MiniLM-L6-v2); "train": learn a vocabulary from the train split
    train_tokenizer: dict = field(default_factory=dict)  # `tokenizer: train` only: what differs from
                                 # preprocess.text.TRAIN_DEFAULTS (model, vocab_size, lowercase, ...)
    text_model: str = "default"  # frozen sentence encoder for the CLIP loss; "default" = all-MiniLM-L6-v2
    max_length: int = 48         # tokens per sentence including [CLS]/[SEP]; longer sentences are truncated
    batch_size: int = 128        # sentence-encoder batch


@dataclass
class FeatureSettings:
    """`make features` settings: these defaults, then the --config YAML, then command-line flags.
    Every value is part of a fingerprint: change one and only the affected store is rebuilt."""
    keypoints: KeypointSettings = field(default_factory=KeypointSettings)
    text: TextSettings = field(default_factory=TextSettings)


def load_settings(path: Path = DEFAULT_CONFIG, **overrides) -> FeatureSettings:
    """Feature settings from YAML, with non-None keyword overrides for keys of either section."""
    sections = {name: set(typing.get_type_hints(cls)) for name, cls in
                (("keypoints", KeypointSettings), ("text", TextSettings))}
    try:
        cfg = settings.load(FeatureSettings, [path])
        for key, value in overrides.items():
            if value is None:
                continue
            section = next((name for name, keys in sections.items() if key in keys), None)
            if section is None:
                raise CommandError(f"unknown feature setting {key!r}; known: "
                                   f"{sorted(sections['keypoints']) + sorted(sections['text'])}")
            if isinstance(value, dict):  # a nested setting (train_tokenizer): the keys given replace theirs
                value = {**getattr(getattr(cfg, section), key), **value}
            settings.merge(cfg, {section: {key: value}})
    except settings.ConfigError as e:
        raise CommandError(f"feature settings {path}: {e}") from None
    if cfg.keypoints.format not in store.FORMATS:
        raise CommandError(f"format must be one of {store.FORMATS}, not {cfg.keypoints.format!r}")
    return cfg


def _versions(*packages) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def keypoint_fingerprint(rows, kp_settings: dict, versions: dict, format_version: int = store.FORMAT_VERSION) -> str:
    """Changes when an input file, its id, an extraction setting, an extractor version or the
    cache format changes."""
    files = []
    for r in rows:
        st = r.path.stat()
        files.append([r.id, str(r.path), st.st_size, st.st_mtime_ns, r.fps, r.start, r.end])
    return _hash({"format_version": format_version, "files": files,
                  "settings": kp_settings, "versions": versions})


# ----------------------------------------------------------------------------- keypoint shards

@contextmanager
def shard_lock(cache_dir: Path, index: int, blocking: bool = True):
    """Exclusive lock on one shard. Workers of a killed run can outlive their parent (loky keeps
    running queued tasks), so a new run must never write, or clean up, a shard they still hold.

    flock works on local disks and on shared file systems that support it (NFS, Lustre mounted
    with -o flock). Where the file system refuses it, the lock is skipped: shards then rely on
    write-to-temp-name + rename + marker sealing alone, which keeps readers from ever seeing a half
    shard but no longer stops a zombie worker of a killed run from racing a new one on the same shard."""
    path = Path(cache_dir) / "keypoints" / f"shard-{index:05d}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with store.file_lock(path, blocking) as held:
        yield held


@contextmanager
def _no_lock():
    yield True


def _lock(cache_dir, index: int, blocking: bool = True):
    """shard_lock for a local (or mounted) cache. A cache at a URL has no flock (object stores
    have no locks): its shards rely on the marker written last alone, as a cache on a file system
    without flock does (see shard_lock)."""
    return _no_lock() if store.is_url(cache_dir) else shard_lock(cache_dir, index, blocking)


def extract_shard(cache_dir: str, index: int, fmt: str, rows: list, target_fps, default_fps: float) -> dict:
    """Worker: extract the rows of one shard and seal it. Bad inputs become failures, never crashes."""
    with _lock(store.location(cache_dir), index):
        marker = store.read_shard_marker(store.location(cache_dir), index)
        if marker is not None:  # sealed meanwhile by a worker of an earlier, killed run
            return {"shard": index, "n": len(rows), "failures": len(marker["failures"]), "t_extract": 0.0,
                    "t_write": 0.0, "frames": sum(s["n_frames"] for s in marker["samples"])}
        return _extract_shard(cache_dir, index, fmt, rows, target_fps, default_fps)


def _extract_shard(cache_dir: str, index: int, fmt: str, rows: list, target_fps, default_fps: float) -> dict:
    from .keypoint_sources import load_keypoints  # imported in the worker: mediapipe loads lazily there

    samples, keypoints, failures = [], [], []
    t0 = time.perf_counter()
    for r in rows:
        try:
            arr, fps = load_keypoints(r.path, target_fps=target_fps, start=r.start, end=r.end,
                                      default_fps=r.fps or default_fps)
            if len(arr) == 0:
                raise ValueError("no frames")
            samples.append({"id": r.id, "row": r.row, "fps": fps})
            keypoints.append(arr)
        except Exception as e:  # one bad file must not cost the other hours of extraction
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            failures.append({"id": r.id, "path": str(r.path), "row": r.row, "reason": reason,
                             "where": traceback.format_exc(limit=1).strip().splitlines()[-1]})
    t1 = time.perf_counter()
    marker = store.write_keypoint_shard(store.location(cache_dir), index, fmt, samples, keypoints, failures)
    # extraction vs store time, so the benchmark can show what the cache costs
    return {"shard": index, "n": len(rows), "failures": len(failures), "t_extract": t1 - t0,
            "t_write": time.perf_counter() - t1, "frames": sum(s["n_frames"] for s in marker["samples"])}


def _clean_unfinished(cache_dir: Path) -> None:
    """Remove what a killed run left half-written (temp files, shard data without a marker),
    except where a surviving worker of that run still holds the shard's lock."""
    kp = cache_dir / "keypoints"
    for p in cache_dir.glob("*.tmp*"):
        if not p.name.startswith("text-"):  # (a text store's temporaries may be a live writer's)
            store.remove_path(p)
    store.clean_text_temps(cache_dir)
    for p in kp.glob("shard-*"):
        if p.suffix in (".json", ".lock") and ".tmp-" not in p.name:
            continue
        index = int(p.name[len("shard-"):].split(".")[0])
        with _lock(cache_dir, index, blocking=False) as mine:
            if mine and (".tmp-" in p.name or store.read_shard_marker(cache_dir, index) is None):
                store.remove_path(p)


def default_jobs() -> int:
    """--jobs when not given: one worker per core this process may run on. Each worker keeps one
    core busy (mediapipe_extract's thread settings), so fewer workers leave cores idle and more
    only share them. Measured on the 2-core machine (benchmarks/bench_features.py, which prints
    the fastest --jobs; BENCHMARKS.md "Features"), all while other sessions' jobs kept it busy
    (load average 4-8): 2 workers 13.8 frames/s vs 1 worker 12.6, 12.1 vs 11.5, and 10.6 vs 13.1
    in a third run with the load at its highest; an idle-machine run decides."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def extraction_backend(backend: str = "loky", scheduler: str | None = None, jobs: int | None = None):
    """joblib's backend for the shard workers, as a context; yields the n_jobs to give Parallel.

    loky: `jobs` local processes. dask: the workers of the Dask cluster whose scheduler address is
    `scheduler` (tcp://host:8786), or without one a LocalCluster of `jobs` single-threaded worker
    processes on this machine. The Dask workers must see the cache folder at the same path."""
    from joblib import parallel_config

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "loky":
        if scheduler:
            raise ValueError("--scheduler is for --backend dask")
        with parallel_config(backend="loky"):
            yield jobs or default_jobs()
        return
    from distributed import Client, LocalCluster

    # one thread per worker: a shard is CPU-bound Python + TFLite, threads would share one GIL
    cluster = None if scheduler else LocalCluster(n_workers=jobs or default_jobs(), threads_per_worker=1,
                                                  processes=True, dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client, parallel_config(backend="dask", client=client):
            yield -1  # joblib's Dask backend runs on every worker thread of the cluster
    finally:
        if cluster is not None:
            cluster.close()


def build_keypoints(rows, cache_dir: Path, kp: dict, fingerprint: str, versions: dict, jobs: int | None,
                    progress: bool = True, backend: str = "loky", scheduler: str | None = None) -> dict:
    from joblib import Parallel, delayed
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    _clean_unfinished(cache_dir)
    size = kp["shard_size"]
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
    todo = [i for i in range(len(chunks)) if store.read_shard_marker(cache_dir, i) is None]
    done = len(chunks) - len(todo)
    if done:
        print(f"resuming: {done}/{len(chunks)} shards already sealed, {len(todo)} to do", file=sys.stderr)
    t0 = time.perf_counter()
    frames, timings = 0, []
    with tqdm(total=sum(len(chunks[i]) for i in todo), unit="sample", desc="keypoints",
              disable=not progress) as bar, extraction_backend(backend, scheduler, jobs) as n_jobs:
        # one shard per task (batch_size=1): shards are already coarse, and a lost worker costs one
        results = Parallel(n_jobs=n_jobs, batch_size=1, return_as="generator_unordered")(
            delayed(extract_shard)(str(cache_dir), i, kp["format"], chunks[i], kp["fps"], kp["default_fps"])
            for i in todo)
        for res in results:
            frames += res["frames"]
            timings.append(res)
            bar.update(res["n"])
            bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - t0):.0f}", failed=res["failures"])
    meta = {"name": cache_dir.name, "fingerprint": fingerprint, "format": kp["format"],
            "settings": kp, "versions": versions, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    index = store.seal_keypoints(cache_dir, len(chunks), meta)
    index["timings"] = {"wall": time.perf_counter() - t0, "extract": sum(t["t_extract"] for t in timings),
                        "write": sum(t["t_write"] for t in timings), "frames": frames}
    return index


# ----------------------------------------------------------------------------- text

def build_text(rows, cache_dir: Path, tx: dict, fmt: str, progress: bool = True) -> tuple[Path, bool]:
    """Tokenize and embed the sentences of the cached samples; reuse a store with the same fingerprint.
    With `tokenizer: train` the vocabulary is first learnt from the training sentences and saved in
    the store (store.TOKENIZER_FOLDER); its settings and those sentences are in the fingerprint."""
    from .text import (TRAIN, SentenceEncoder, load_tokenizer, tokenize, tokenizer_id, train_tokenizer,
                       vocab_hash, weights_hash)

    index = store.read_json_checked(cache_dir / store.KEYPOINT_INDEX, "the keypoint index")
    by_id = {r.id: r for r in rows}
    cached = [by_id[s["id"]] for s in index["samples"]]
    annotations = {"id": [r.id for r in cached], "text": [r.text for r in cached],
                   "split": [r.split for r in cached], "signer": [r.signer for r in cached],
                   "label": [r.label for r in cached]}
    trained = tx["tokenizer"] == TRAIN
    if trained:  # identified by what it is learnt from: known without training it
        settings, sentences, source = _tokenizer_training(tx, annotations)
        identity = {"tokenizer": TRAIN, "train_tokenizer": settings, "train_sentences": _hash(sentences),
                    "trainer": _versions("tokenizers")}
    else:
        with _model_loading("tokenizer", tx["tokenizer"]):
            tokenizer = load_tokenizer(tx["tokenizer"])
        identity = {"vocab": vocab_hash(tokenizer), "tokenizer": tokenizer_id(tx["tokenizer"])}
    with _model_loading("text model", tx["text_model"]):
        weights = weights_hash(tx["text_model"])
    fingerprint = _hash({"format_version": store.FORMAT_VERSION, "annotations": annotations, **identity,
                         "max_length": tx["max_length"], "text_model": tokenizer_id(tx["text_model"]),
                         "weights": weights})
    path = store.text_store_dir(cache_dir, fingerprint)
    if (path / store.TEXT_INDEX).exists():
        _make_default_text(cache_dir, path)
        return path, True
    store.clean_text_temps(cache_dir)  # left by a killed text stage
    extra_files = None
    if trained:
        print(f"training a {settings['model']} tokenizer (vocabulary {settings['vocab_size']}, "
              f"lowercase {str(settings['lowercase']).lower()}, strip_accents "
              f"{str(settings['strip_accents']).lower()}) on the {len(sentences)} sentences of {source}",
              file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="s2t-tokenizer-") as folder:
            train_tokenizer(sentences, folder, **settings)
            tokenizer = load_tokenizer(folder)
            extra_files = {f"{store.TOKENIZER_FOLDER}/{f.name}": f.read_bytes()
                           for f in sorted(Path(folder).iterdir()) if f.is_file()}
    input_ids, lengths = tokenize(tokenizer, annotations["text"], tx["max_length"])
    # the corpus repeats sentences many times: embed each distinct sentence once
    unique, inverse = np.unique(np.array(annotations["text"], dtype=object), return_inverse=True)
    with _model_loading("text model", tx["text_model"]):
        encoder = SentenceEncoder(tx["text_model"])
    embeddings = encoder.embed(list(unique), batch_size=tx["batch_size"], progress=progress)[inverse]
    # "tokenizer"/"text_model" stay loadable names (load_tokenizer/SentenceEncoder take them);
    # the *_id fields are the stable identities that went into the fingerprint
    def loadable(name):  # a local folder is stored absolute, so the run loads it from any working dir
        return str(Path(name).resolve()) if name != "default" and Path(name).is_dir() else name

    meta = {"tokenizer": loadable(tx["tokenizer"]), "text_model": loadable(tx["text_model"]),
            "tokenizer_id": tokenizer_id(tx["tokenizer"]), "text_model_id": tokenizer_id(tx["text_model"]),
            "max_length": tx["max_length"], "vocab_hash": vocab_hash(tokenizer),
            "weights_hash": weights_hash(tx["text_model"]), "n_distinct_texts": len(unique),
            "versions": _versions("transformers", "tokenizers", "torch")}
    if trained:  # the reader resolves the folder against where the store is when it is read
        meta.update({"tokenizer": TRAIN, "tokenizer_id": TRAIN, "tokenizer_folder": store.TOKENIZER_FOLDER,
                     "train_tokenizer": {**settings, "n_sentences": len(sentences), "sentences_from": source}})
    return store.write_text_store(cache_dir, fingerprint, fmt, annotations, input_ids, lengths,
                                  embeddings, meta, extra_files=extra_files), False


def _tokenizer_training(tx: dict, annotations: dict) -> tuple[dict, list[str], str]:
    """(train_tokenizer settings, the sentences to learn from, where they come from): the cached
    samples of the train split; all cached samples (said on stderr) where none is in it."""
    from .text import train_settings

    try:
        settings = train_settings(tx.get("train_tokenizer"))
    except ValueError as e:
        raise CommandError(f"text.train_tokenizer: {e} (see {DEFAULT_CONFIG})") from e
    sentences = [t for t, split in zip(annotations["text"], annotations["split"]) if split == "train"]
    if sentences:
        return settings, sentences, "the train split"
    print("note: no cached sample is in the train split: the tokenizer learns from all samples' sentences",
          file=sys.stderr)
    return settings, list(annotations["text"]), "all samples (no train split)"


@contextmanager
def _model_loading(what: str, name: str):
    """A tokenizer or text model that cannot be loaded is a bad setting, said in one line."""
    try:
        yield
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CommandError(f"cannot load the {what} {name!r} ({first}); give a Hugging Face id or a local "
                           f"folder holding its files (--{what.replace(' ', '-')}), "
                           "or leave it at 'default'") from e


def _make_default_text(cache_dir: Path, path: Path) -> None:
    """The text store asked for last becomes the cache's default (the newest text.json, see
    store.Cache). Touched only when another store is newer: reusing a cache needs no write, so a
    finished cache works from read-only storage."""
    if store.is_url(path):  # objects cannot be touched: at a URL, pass the text store by name
        return
    sealed = sorted(p for p in cache_dir.glob("text-*") if ".tmp-" not in p.name and (p / store.TEXT_INDEX).exists())
    newest = max(sealed, key=lambda p: (p / store.TEXT_INDEX).stat().st_mtime_ns)
    if newest == path:
        return
    try:
        os.utime(path / store.TEXT_INDEX)
    except OSError as e:
        print(f"warning: cannot make {path.name} the default text store of {cache_dir} ({e.strerror}); "
              f"train with text_store={path.name}", file=sys.stderr)


# ----------------------------------------------------------------------------- the whole stage

@dataclass
class BuildResult:
    path: Path
    reused_keypoints: bool
    reused_text: bool
    n_samples: int
    failures: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # keypoint stage: wall, extract and write seconds, frames


def build_cache(manifest, out_root="cache", *, preset=None, config=DEFAULT_CONFIG, jobs: int | None = None,
                progress: bool = True, backend: str = "loky", scheduler: str | None = None,
                **overrides) -> BuildResult:
    """Build (or reuse, or finish) the cache for a manifest. Returns where it is and what was reused.
    backend/scheduler say where the keypoint workers run (see extraction_backend); they are not part
    of the fingerprint: every backend writes the same cache."""
    cfg = load_settings(config, **overrides)
    kp, tx = dataclasses.asdict(cfg.keypoints), dataclasses.asdict(cfg.text)  # plain dicts: fingerprinted
    rows = read_manifest(manifest, preset=preset)
    versions = _versions("mediapipe", "pose-format", "numpy", "opencv-contrib-python", "av")
    fingerprint = keypoint_fingerprint(rows, kp, versions)
    cache_dir = store.location(out_root) / f"{Path(manifest).stem}-{fingerprint[:12]}"
    for old in (v for v in store.READABLE_VERSIONS if v != store.FORMAT_VERSION):
        # the same inputs sealed in an older format that still reads: reuse it rather than run
        # MediaPipe over every video again (Cache notes that deleting it rebuilds it faster to load)
        older = cache_dir.with_name(f"{Path(manifest).stem}-{keypoint_fingerprint(rows, kp, versions, old)[:12]}")
        if not (cache_dir / store.KEYPOINT_INDEX).exists() and (older / store.KEYPOINT_INDEX).exists():
            cache_dir = older
    reused_kp = (cache_dir / store.KEYPOINT_INDEX).exists()
    timings = {}
    if not reused_kp:
        timings = build_keypoints(rows, cache_dir, kp, fingerprint, versions, jobs, progress,
                                  backend=backend, scheduler=scheduler)["timings"]
    _, reused_text = build_text(rows, cache_dir, tx, kp["format"], progress)
    cache = store.open_cache(cache_dir)
    return BuildResult(cache_dir, reused_kp, reused_text, cache.n, cache.failures, timings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m preprocess features",
        description="Extract keypoints (MediaPipe Holistic for videos; .pose and .npy/.npz read as they are) "
                    "and tokenize the sentences into a sealed cache folder CACHE/<manifest>-<fingerprint>/. "
                    "Running it again on the same inputs reuses the cache; an interrupted run resumes.")
    p.add_argument("--manifest", required=True, help="CSV/TSV/JSONL with id, path, text [, split, signer, label, fps]")
    p.add_argument("--out", default="cache",
                   help="folder that holds caches (default: cache/); or an fsspec URL (file://, s3://, ...; zarr only)")
    p.add_argument("--preset", choices=["how2sign", "phoenix"], help="read a public dataset's own manifest layout")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="feature settings YAML (default: %(default)s)")
    p.add_argument("--format", choices=store.FORMATS, help="store format (overrides the config)")
    p.add_argument("--fps", type=float, help="target frame rate (frames are subsampled by stride)")
    p.add_argument("--shard-size", type=int, dest="shard_size", help="samples per shard")
    p.add_argument("--tokenizer", help="HF id or folder of the tokenizer (default: offline DistilBERT-uncased vocab); "
                                       "'train': learn one from the train split's sentences (settings: "
                                       "text.train_tokenizer in --config)")
    p.add_argument("--text-model", dest="text_model", help="HF id or folder of the sentence encoder")
    p.add_argument("--max-length", type=int, dest="max_length", help="tokens per sentence")
    p.add_argument("--jobs", type=int, default=None,
                   help="parallel workers (default: one per usable core, the fastest measured); with --backend dask and no --scheduler, "
                        "the number of local Dask worker processes")
    p.add_argument("--backend", choices=BACKENDS, default="loky",
                   help="where keypoint workers run: loky = local processes (default), dask = a Dask cluster "
                        "(joblib's Dask backend); workers write shards straight to --out, which they must see")
    p.add_argument("--scheduler", help="Dask scheduler address for --backend dask, e.g. tcp://host:8786 "
                                       "(default: start a LocalCluster of --jobs worker processes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    if a.scheduler and a.backend != "dask":
        p.error("--scheduler needs --backend dask")
    res = build_cache(a.manifest, a.out, preset=a.preset, config=a.config, jobs=a.jobs, progress=not a.quiet,
                      backend=a.backend, scheduler=a.scheduler,
                      format=a.format, fps=a.fps, shard_size=a.shard_size, tokenizer=a.tokenizer,
                      text_model=a.text_model, max_length=a.max_length)
    if res.reused_keypoints and res.reused_text:
        print(f"reused the cache {res.path} (same inputs and settings): nothing to do")
    else:
        print(f"cache ready: {res.path}  (keypoints {'reused' if res.reused_keypoints else 'extracted'}, "
              f"text {'reused' if res.reused_text else 'encoded'})")
    print(f"{res.n_samples} samples cached, {len(res.failures)} failed")
    for f in res.failures[:10]:
        print(f"  failed: {f['id']} ({f['path']}): {f['reason']}")
    if len(res.failures) > 10:
        print(f"  ... and {len(res.failures) - 10} more, see {res.path / store.FAILURES}")
    return 0

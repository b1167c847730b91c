"""The cache format: writer and reader side by side, so the contract cannot drift.

A cache is one folder, CACHE/<name>-<keypoint fingerprint>/:

    keypoints.json            index, written last: sealing it makes the keypoint store visible
    keypoints/shard-00000.zarr    one Zarr v3 group (or shard-00000.h5) per few hundred samples
    keypoints/shard-00000.json    the shard's commit marker: sample table, failures, file checksums
    failures.jsonl            every sample that could not be cached, with the reason
    text-<fingerprint>/       one sealed text store per text setting (tokenizer, model, max length)
        text.json             index + checksums (its presence seals the store)
        text.zarr | text.h5   input_ids (n, L) int32, lengths (n,), embeddings (n, D) float32
        tokenizer/            with `tokenizer: train`: the vocabulary trained for these ids (a
                              transformers folder; the reader gives its path where the cache is now)

Keypoints are stored per MediaPipe component (pose, face, left_hand, right_hand), frames of all
samples of a shard concatenated (ragged) with an offsets array, float16 with NaN for missing,
plus a per-frame presence mask (F, 4). Per-component arrays let the trainer read pose + hands
without touching the 468 face points.

Crash safety: a shard is written under a temporary name and renamed, then its JSON marker is
written the same way; a shard without a marker does not exist. The index is written only when
every shard is sealed. Damage after sealing is caught by CRC32 checksums of every file,
checked (by size) when a cache is opened and (by content) when an array is read.

Where: a local path, or any fsspec URL (file://, s3://, gs://, memory://...; Zarr only), handled
through universal_pathlib's UPath, which has pathlib's API. Object stores have no atomic rename:
at a URL, shard data and text stores are written straight under their final names, and what
makes them visible is the same as locally, the marker or index written last in one piece (a
single PUT). HDF5 stores are local only.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
import threading
import uuid
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from upath import UPath

from .layout import COMPONENT_SIZES, COMPONENTS, COMPONENT_SLICES

FORMAT_VERSION = 1
FORMATS = ("zarr", "hdf5")
FRAME_CHUNK = 8192  # frames per chunk: big enough for fast sequential reads, small enough for memory
KEYPOINT_INDEX = "keypoints.json"
TEXT_INDEX = "text.json"
TOKENIZER_FOLDER = "tokenizer"  # a tokenizer trained into a text store (`tokenizer: train`)
FAILURES = "failures.jsonl"


class CacheError(RuntimeError):
    """A cache that is missing, unsealed, of another version, or damaged."""


def location(where) -> Path | UPath:
    """A cache folder or a file in one: a local path (str or Path) as a Path, an fsspec URL
    (file://, s3://, memory://, ...) as a UPath."""
    if isinstance(where, (Path, UPath)):
        return where
    return UPath(str(where)) if "://" in str(where) else Path(where)


def is_url(path) -> bool:
    """True for a cache at a URL: no atomic rename, no fsync, no flock; marker sealing only."""
    return not isinstance(path, Path)  # (UPath of a plain local path is a Path too)


def _tmp_name(path):
    return path.with_name(path.name + f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


# ----------------------------------------------------------------------------- file helpers

def crc32_file(path: Path, chunk: int = 1 << 22) -> int:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def _file_checksums(root: Path, base: Path) -> dict[str, list[int]]:
    """{relative path: [size, crc32]} of every file under root (a folder or one file)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(base).as_posix(): [p.stat().st_size, crc32_file(p)] for p in files}


def _body_checksum(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON under a temporary name, fsync, rename. Dicts get a sha256 of their body
    (`checksum`), so a damaged index or marker is refused instead of silently trusted."""
    if isinstance(obj, dict):
        obj = {**obj, "checksum": _body_checksum(obj)}
    if is_url(path):  # one PUT: an object appears whole or not at all
        path.write_text(json.dumps(obj, indent=1))
        return
    tmp = _tmp_name(path)
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json_checked(path: Path, what: str) -> dict:
    """A JSON file written by write_json_atomic, with its checksum verified."""
    try:
        obj = json.loads(location(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: {what} is damaged (not valid JSON: {e})") from e
    stored = obj.pop("checksum", None)
    if stored != _body_checksum(obj):
        raise CacheError(f"{path}: {what} is damaged (checksum mismatch)")
    return obj


def _remove(path: Path) -> None:
    """Remove a file or folder; one that vanished meanwhile (another process cleaned it) is fine."""
    try:
        if is_url(path):
            if path.exists():
                path.fs.rm(path.path, recursive=True)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def file_lock(path: Path, blocking: bool = True):
    """Exclusive flock on the file `path` (created if missing); yields whether it is held.

    flock works on local disks and on shared file systems that support it (NFS, Lustre mounted
    with -o flock). Where the file system refuses it, the lock is skipped (yields True, warns once):
    the writers then rely on write-to-temp-name + rename + marker sealing alone."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError as e:  # ENOLCK / EOPNOTSUPP: a shared file system without flock
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            _warn_no_flock(str(Path(path).parent), e.strerror)
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=None)
def _warn_no_flock(folder: str, error: str) -> None:  # once per folder and process
    print(f"warning: {folder} does not support flock ({error}); shards and text stores are protected "
          "by their commit markers only: do not start a second run while workers of a killed one live on",
          file=sys.stderr)


# ----------------------------------------------------------------------------- array back-ends

def _zarr_store(path, read_only: bool = False):
    """A local folder as is; a URL through Zarr's own fsspec store."""
    if not is_url(path):
        return str(path)
    from zarr.storage import FsspecStore

    options = dict(path.storage_options)
    if path.protocol in ("file", "local"):
        options.setdefault("auto_mkdir", True)  # object stores need no folders; a file system does
    return FsspecStore.from_url(str(path), storage_options=options, read_only=read_only)


def _local_hdf5(path) -> None:
    if is_url(path):
        raise CacheError(f"{path}: HDF5 caches must be on a local (or mounted shared) file system; "
                         "use --format zarr for a cache at a URL")


def _write_arrays(path: Path, fmt: str, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Write named arrays into a new Zarr v3 group or HDF5 file at `path` (which must not exist)."""
    if fmt == "zarr":
        import zarr
        from zarr.codecs import BloscCodec

        group = zarr.open_group(_zarr_store(path), mode="w-", zarr_format=3)
        for name, arr in arrays.items():
            chunks = (min(FRAME_CHUNK, max(1, arr.shape[0])),) + arr.shape[1:]
            # lz4 via blosc: decompresses at GB/s, so loading a cache is bound by the disk, not the codec
            group.create_array(name, data=arr, chunks=chunks,
                               compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
        if attrs:
            group.attrs.update(attrs)
    elif fmt == "hdf5":
        import h5py

        _local_hdf5(path)
        with h5py.File(path, "w-") as f:
            for name, arr in arrays.items():
                chunks = (min(FRAME_CHUNK, max(1, arr.shape[0])),) + arr.shape[1:] if arr.size else None
                f.create_dataset(name, data=arr, chunks=chunks, compression="lzf" if arr.size else None,
                                 shuffle=bool(arr.size))
            for k, v in (attrs or {}).items():
                f.attrs[k] = json.dumps(v)
    else:
        raise ValueError(f"unknown cache format {fmt!r}; choose one of {FORMATS}")


def _read_arrays(path: Path, fmt: str, names) -> dict[str, np.ndarray]:
    if fmt == "zarr":
        import zarr

        group = zarr.open_group(_zarr_store(path, read_only=True), mode="r")
        return {n: group[n][...] for n in names}
    import h5py

    _local_hdf5(path)
    with h5py.File(path, "r") as f:
        return {n: f[n][...] for n in names}


def _read_frame_range(path: Path, fmt: str, names, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows start:stop of the named arrays: only the storage chunks that hold them are read."""
    if fmt == "zarr":
        import zarr

        group = zarr.open_group(_zarr_store(path, read_only=True), mode="r")
        return {n: group[n][start:stop] for n in names}
    import h5py

    _local_hdf5(path)
    with h5py.File(path, "r") as f:
        return {n: f[n][start:stop] for n in names}


def _array_files(shard_path: Path, fmt: str, name: str, base: Path, checksums: dict) -> list[str]:
    """The checksummed files that hold array `name` of a shard (HDF5: the one file)."""
    if fmt == "hdf5":
        return [shard_path.relative_to(base).as_posix()]
    prefix = (shard_path / name).relative_to(base).as_posix() + "/"
    files = [p for p in checksums if p.startswith(prefix)]
    if not files:
        raise CacheError(f"{base}: shard {shard_path.name} is damaged: array {name!r} has no files")
    return files


# ----------------------------------------------------------------------------- keypoint shards

def shard_name(index: int, fmt: str) -> str:
    return f"shard-{index:05d}." + ("zarr" if fmt == "zarr" else "h5")


def shard_marker(cache_dir: Path, index: int) -> Path:
    return location(cache_dir) / "keypoints" / f"shard-{index:05d}.json"


def write_keypoint_shard(cache_dir: Path, index: int, fmt: str, samples: list[dict],
                         keypoints: list[np.ndarray], failures: list[dict]) -> dict:
    """Write one shard atomically and return its marker. samples[i] = {"id", "row", "fps"},
    keypoints[i] = (T, 543, 3) array with NaN for missing points; failures = [{"id", "path", "reason"}]."""
    cache_dir = location(cache_dir)
    (cache_dir / "keypoints").mkdir(parents=True, exist_ok=True)
    final = cache_dir / "keypoints" / shard_name(index, fmt)
    if shard_marker(cache_dir, index).exists():
        raise CacheError(f"{final}: shard {index} is already sealed; refusing to overwrite it")
    # at a URL there is no atomic rename: write in place, the marker alone makes the shard exist
    tmp = final if is_url(cache_dir) else _tmp_name(final)
    _remove(final)  # data without a marker is an unfinished earlier attempt (callers hold the shard lock)

    lengths = np.array([len(k) for k in keypoints], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    frames = np.concatenate(keypoints, axis=0) if keypoints else np.zeros((0, 543, 3), np.float32)
    arrays = {}
    present = np.zeros((len(frames), len(COMPONENTS)), dtype=bool)
    for c, name in enumerate(COMPONENTS):
        part = frames[:, COMPONENT_SLICES[name], :3].astype(np.float16)
        arrays[name] = part
        present[:, c] = ~np.isnan(part).all(axis=(1, 2))
    arrays["present"] = present
    arrays["offsets"] = offsets
    _write_arrays(tmp, fmt, arrays)
    if tmp != final:
        os.replace(tmp, final)

    marker = {
        "format_version": FORMAT_VERSION, "shard": index, "format": fmt, "path": final.name,
        "samples": [{"id": s["id"], "row": int(s["row"]), "fps": float(s["fps"]), "n_frames": int(n)}
                    for s, n in zip(samples, lengths)],
        "failures": failures,
        "files": _file_checksums(final, cache_dir),
    }
    write_json_atomic(shard_marker(cache_dir, index), marker)
    return marker


def read_shard_marker(cache_dir: Path, index: int) -> dict | None:
    """The marker of a sealed shard, or None if the shard was never finished."""
    path = shard_marker(cache_dir, index)
    if not path.exists():
        return None
    return read_json_checked(path, f"marker of shard {index} (delete it to redo the shard)")


def seal_keypoints(cache_dir: Path, n_shards: int, meta: dict) -> dict:
    """Write the index once every shard is sealed; returns it. meta: fingerprint, settings, versions."""
    cache_dir = location(cache_dir)
    markers = [read_shard_marker(cache_dir, i) for i in range(n_shards)]
    missing = [i for i, m in enumerate(markers) if m is None]
    if missing:
        raise CacheError(f"{cache_dir}: cannot seal, shards {missing[:10]} are not finished")
    samples = [s | {"shard": m["shard"]} for m in markers for s in m["samples"]]
    failures = [f for m in markers for f in m["failures"]]
    lines = "".join(json.dumps(x) + "\n" for x in failures)
    if is_url(cache_dir):
        (cache_dir / FAILURES).write_text(lines)
    else:
        with open(cache_dir / (FAILURES + ".tmp"), "w") as f:
            f.write(lines)
        os.replace(cache_dir / (FAILURES + ".tmp"), cache_dir / FAILURES)
    index = {
        "format_version": FORMAT_VERSION, **meta,
        "n_samples": len(samples), "n_failures": len(failures),
        "n_frames": int(sum(s["n_frames"] for s in samples)),
        "samples": samples, "failures": failures,
        "shards": [{"shard": m["shard"], "path": m["path"], "format": m["format"], "files": m["files"],
                    "n_samples": len(m["samples"])} for m in markers],
    }
    write_json_atomic(cache_dir / KEYPOINT_INDEX, index)
    return index


# ----------------------------------------------------------------------------- text stores

def text_store_dir(cache_dir: Path, fingerprint: str) -> Path:
    return location(cache_dir) / f"text-{fingerprint[:12]}"


def _text_lock(store_dir: Path) -> Path:
    """The lock file of a text store (hidden: not a `text-*` entry of the cache folder)."""
    return store_dir.with_name(f".{store_dir.name}.lock")


def clean_text_temps(cache_dir: Path) -> None:
    """Remove the temporary folders of text stores whose writer is gone (killed mid-write): a
    store's temporaries are removed only under its lock, so a live writer's are never touched."""
    cache_dir = location(cache_dir)
    if is_url(cache_dir):
        return  # written in place at a URL: no temporaries
    for tmp in cache_dir.glob("text-*.tmp-*"):
        with file_lock(_text_lock(cache_dir / tmp.name.split(".tmp-")[0]), blocking=False) as free:
            if free:
                _remove(tmp)


def write_text_store(cache_dir: Path, fingerprint: str, fmt: str, annotations: dict[str, list],
                     input_ids: np.ndarray, lengths: np.ndarray, embeddings: np.ndarray, meta: dict,
                     extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a sealed text store aligned with the keypoint samples (row i = sample i).
    annotations: per-sample columns id, text, split, signer, label. extra_files: {path relative
    to the store: content} written into it before it is sealed, checksummed like the arrays (a
    trained tokenizer: `tokenizer/tokenizer.json`, ...).

    Safe with concurrent writers of one cache (two users, a cluster): writers of the same store take
    turns under its lock, and a writer that finds the store sealed keeps it (a fingerprint names
    the content: the other writer wrote the same) and returns it."""
    final = text_store_dir(cache_dir, fingerprint)
    if is_url(final):  # at a URL: written in place, text.json (written last) seals it; no locks there
        _write_text_files(final, fingerprint, fmt, annotations, input_ids, lengths, embeddings, meta, extra_files)
        return final
    with file_lock(_text_lock(final)):
        if (final / TEXT_INDEX).exists():
            return final
        for stale in final.parent.glob(final.name + ".tmp-*"):  # a killed writer's (we hold the lock)
            _remove(stale)
        tmp = _tmp_name(final)
        try:
            _write_text_files(tmp, fingerprint, fmt, annotations, input_ids, lengths, embeddings, meta,
                              extra_files)
            if not (final / TEXT_INDEX).exists():  # (where flock is missing, another writer may have won)
                _remove(final)  # an unsealed folder (no text.json) is not a store
                try:
                    os.replace(tmp, final)
                except OSError:  # rename does not replace a full folder: a writer sealed it meanwhile
                    if not (final / TEXT_INDEX).exists():
                        raise
        finally:
            _remove(tmp)  # gone after the rename; a failed write leaves no temporary behind
    return final


def _write_text_files(folder: Path, fingerprint: str, fmt: str, annotations: dict[str, list],
                      input_ids: np.ndarray, lengths: np.ndarray, embeddings: np.ndarray, meta: dict,
                      extra_files: dict[str, bytes] | None = None) -> None:
    _remove(folder)
    folder.mkdir(parents=True)
    data = folder / ("text.zarr" if fmt == "zarr" else "text.h5")
    _write_arrays(data, fmt, {"input_ids": np.asarray(input_ids, np.int32),
                              "lengths": np.asarray(lengths, np.int32),
                              "embeddings": np.asarray(embeddings, np.float32)})
    files = _file_checksums(data, folder)
    for rel, content in sorted((extra_files or {}).items()):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
        files.update(_file_checksums(folder / rel, folder))
    index = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "format": fmt, **meta,
             "n_samples": int(len(input_ids)), "annotations": annotations, "files": files}
    write_json_atomic(folder / TEXT_INDEX, index)


# ----------------------------------------------------------------------------- reader

@dataclass
class KeypointArrays:
    frames: dict[str, np.ndarray]  # component -> (F_total, P, 3) float16, NaN missing
    present: np.ndarray            # (F_total, 4) bool, order of layout.COMPONENTS
    offsets: np.ndarray            # (n + 1,) int64: sample i is rows offsets[i]:offsets[i + 1]


@dataclass
class TextArrays:
    input_ids: np.ndarray   # (n, L) int32, [CLS] ... [SEP] padded with 0
    lengths: np.ndarray     # (n,) int32
    embeddings: np.ndarray  # (n, D) float32, L2-normalised frozen sentence embeddings
    tokenizer: str          # a name load_tokenizer takes (a trained one: its folder in the store, absolute)
    text_model: str
    meta: dict = field(default_factory=dict)


class Cache:
    """A sealed cache opened for reading. Use open_cache()."""

    def __init__(self, path: Path, text: str | None = None):
        self.path = location(path)
        index_path = self.path / KEYPOINT_INDEX
        if not index_path.exists():
            raise CacheError(f"{self.path}: not a sealed cache (no {KEYPOINT_INDEX}); "
                             "run `make features` to build or finish it")
        self.meta = read_json_checked(index_path, "the keypoint index")
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{self.path}: cache format {self.meta.get('format_version')} "
                             f"but this sign2text reads format {FORMAT_VERSION}; rebuild it")
        self._check_sizes(self.meta["shards"], self.path)
        self._verified: set[str] = set()
        self.n = self.meta["n_samples"]
        self.failures = self.meta["failures"]
        self.text_names = sorted(p.name for p in self.path.glob("text-*")
                                 if ".tmp-" not in p.name and (p / TEXT_INDEX).exists())
        self._text_name = self._choose_text(text)
        self.samples = self._sample_table()

    # -- integrity
    def _check_sizes(self, shards, base: Path) -> None:
        for shard in shards:
            for rel, (size, _) in shard["files"].items():
                p = base / rel
                if not p.exists() or p.stat().st_size != size:
                    raise CacheError(f"{self.path}: shard {shard['path']} is damaged: "
                                     f"{rel} is {'missing' if not p.exists() else 'of the wrong size'}; "
                                     "delete the cache folder and run `make features` again")

    def _verify(self, rels: list[str], checksums: dict, base: Path, what: str) -> None:
        for rel in rels:
            if rel in self._verified:
                continue
            if crc32_file(base / rel) != checksums[rel][1]:
                raise CacheError(f"{self.path}: {what} is damaged: checksum mismatch in {rel}; "
                                 "delete the cache folder and run `make features` again")
            self._verified.add(rel)

    # -- samples and text
    def _choose_text(self, text: str | None) -> str | None:
        if text is not None:
            name = text if text.startswith("text-") else f"text-{text[:12]}"
            if name not in self.text_names:
                raise CacheError(f"{self.path}: no text store {text!r}; have {self.text_names}")
            return name
        if not self.text_names:
            return None
        # several text settings: the most recently sealed one is the default
        # (at a URL whose store keeps no modification times, pass text= to choose)
        stamp = (lambda st: st.st_mtime) if is_url(self.path) else (lambda st: st.st_mtime_ns)
        return max(self.text_names, key=lambda n: stamp((self.path / n / TEXT_INDEX).stat()))

    def _sample_table(self) -> dict[str, np.ndarray]:
        rows = self.meta["samples"]
        table = {"id": np.array([s["id"] for s in rows], dtype=object),
                 "n_frames": np.array([s["n_frames"] for s in rows], dtype=np.int64),
                 "fps": np.array([s["fps"] for s in rows], dtype=np.float32)}
        if self._text_name is not None:
            ann = self._text_index(self._text_name)["annotations"]
            if list(ann["id"]) != list(table["id"]):
                raise CacheError(f"{self.path / self._text_name}: text store is not aligned with the keypoints")
            for key in ("text", "split", "signer", "label"):
                table[key] = np.array(ann[key], dtype=object)
        return table

    def _text_index(self, name: str) -> dict:
        return read_json_checked(self.path / name / TEXT_INDEX, f"text store {name}")

    def text(self, name: str | None = None) -> TextArrays:
        name = self._text_name if name is None else (name if name.startswith("text-") else f"text-{name[:12]}")
        if name is None:
            raise CacheError(f"{self.path}: has no text store; run `make features` with a manifest that has text")
        index = self._text_index(name)
        base = self.path / name
        for rel, (size, crc) in index["files"].items():
            if not (base / rel).exists() or (base / rel).stat().st_size != size:
                raise CacheError(f"{self.path}: text store {name} is damaged: {rel} missing or resized")
        self._verify([f"{name}/{rel}" for rel in index["files"]],
                     {f"{name}/{k}": v for k, v in index["files"].items()}, self.path, f"text store {name}")
        data = base / ("text.zarr" if index["format"] == "zarr" else "text.h5")
        arrays = _read_arrays(data, index["format"], ["input_ids", "lengths", "embeddings"])
        tokenizer = index["tokenizer"]
        if index.get("tokenizer_folder"):  # trained into the store: found where the cache is now
            folder = base / index["tokenizer_folder"]
            tokenizer = str(folder) if is_url(folder) else str(folder.resolve())
        return TextArrays(arrays["input_ids"], arrays["lengths"], arrays["embeddings"],
                          tokenizer, index["text_model"], meta=index)

    # -- keypoints
    def load_keypoints(self, components=("pose", "left_hand", "right_hand")) -> KeypointArrays:
        """All samples' frames of the given components, concatenated in sample order."""
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; choose from {COMPONENTS}")
        lengths = self.samples["n_frames"]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(offsets[-1])
        frames = {c: None for c in components}
        present = np.empty((total, len(COMPONENTS)), dtype=bool)
        names = list(components) + ["present", "offsets"]

        def read(shard):
            path = self.path / "keypoints" / shard["path"]
            for name in names:
                self._verify(_array_files(path, shard["format"], name, self.path, shard["files"]),
                             shard["files"], self.path, f"shard {shard['path']}")
            return _read_arrays(path, shard["format"], names)

        at = 0
        # decompression and CRC release the GIL: reading shards on threads uses every core
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for arrays in pool.map(read, self.meta["shards"]):
                n = len(arrays["present"])
                for c in components:
                    if frames[c] is None:  # allocate once, then fill: no concatenate copies
                        frames[c] = np.empty((total,) + arrays[c].shape[1:], dtype=np.float16)
                    frames[c][at:at + n] = arrays[c]
                present[at:at + n] = arrays["present"]
                at += n
        if at != total:
            raise CacheError(f"{self.path}: index says {total} frames but shards hold {at}")
        return KeypointArrays(frames, present, offsets)

    def keypoint_reader(self, components=("pose", "left_hand", "right_hand"),
                        budget_bytes: int = 1 << 30) -> "KeypointReader":
        """Lazy per-sample access to the keypoints, holding at most budget_bytes of decoded data."""
        return KeypointReader(self, components, budget_bytes)

    def _verified_shard_path(self, shard: dict, names) -> Path:
        path = self.path / "keypoints" / shard["path"]
        for name in names:
            self._verify(_array_files(path, shard["format"], name, self.path, shard["files"]),
                         shard["files"], self.path, f"shard {shard['path']}")
        return path

    def sample(self, i: int, components=COMPONENTS) -> np.ndarray:
        """One sample as a (T, 543, 3) float32 array in the full layout (slow path: inspection, tests)."""
        s = self.meta["samples"][i]
        shard = next(sh for sh in self.meta["shards"] if sh["shard"] == s["shard"])
        path = self.path / "keypoints" / shard["path"]
        names = list(components) + ["offsets"]
        for name in names:
            self._verify(_array_files(path, shard["format"], name, self.path, shard["files"]),
                         shard["files"], self.path, f"shard {shard['path']}")
        arrays = _read_arrays(path, shard["format"], names)
        local = [x["id"] for x in self.meta["samples"] if x["shard"] == s["shard"]].index(s["id"])
        a, b = arrays["offsets"][local], arrays["offsets"][local + 1]
        out = np.full((b - a, 543, 3), np.nan, dtype=np.float32)
        for c in components:
            out[:, COMPONENT_SLICES[c]] = arrays[c][a:b]
        return out


class KeypointReader:
    """One sample's frames at a time, for caches larger than memory (training with `stream: true`).

    A shard's frames are read in blocks of FRAME_CHUNK rows, the Zarr/HDF5 chunk size, so a block
    is exactly the chunks the store must decode anyway; decoded blocks are kept in an LRU whose
    bytes never exceed `budget_bytes` (the oldest blocks are dropped first). Each array's files are
    CRC-checked the first time its shard is touched. Thread-safe: a prefetch thread and the main
    thread may read at once. `bytes_held`, `peak_bytes` and `blocks_read` are its own accounting.
    """

    def __init__(self, cache: Cache, components, budget_bytes: int):
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; choose from {COMPONENTS}")
        self.cache, self.names = cache, list(components) + ["present"]
        self.shards = cache.meta["shards"]
        position = {sh["shard"]: j for j, sh in enumerate(self.shards)}
        self.shard_of = np.array([position[s["shard"]] for s in cache.meta["samples"]], dtype=np.int64)
        self.lengths = np.asarray(cache.samples["n_frames"], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        # samples are stored shard after shard: a sample's row in its shard = global row - shard's first row
        first = np.zeros(len(self.shards), dtype=np.int64)
        present_shards, first_sample = np.unique(self.shard_of, return_index=True)
        first[present_shards] = offsets[first_sample]
        self.start = offsets[:-1] - first[self.shard_of]
        self.shard_frames = np.bincount(self.shard_of, weights=self.lengths, minlength=len(self.shards)).astype(np.int64)
        frame_bytes = sum(2 * 3 * COMPONENT_SIZES[c] for c in components) + len(COMPONENTS)
        block_bytes = min(FRAME_CHUNK, int(self.shard_frames.max(initial=0))) * frame_bytes
        if block_bytes > budget_bytes:
            raise ValueError(f"memory budget {budget_bytes / 2**20:.1f} MB is smaller than one decoded block "
                             f"({block_bytes / 2**20:.1f} MB); raise it")
        self.budget = budget_bytes
        self._blocks: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes_held = self.peak_bytes = self.blocks_read = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def read(self, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Sample i: ({component: (T, P, 3) float16}, present (T, 4) bool)."""
        j, a = int(self.shard_of[i]), int(self.start[i])
        b = a + int(self.lengths[i])
        parts = []
        for k in range(a // FRAME_CHUNK, (b - 1) // FRAME_CHUNK + 1):
            block = self._block(j, k)
            lo = max(a, k * FRAME_CHUNK) - k * FRAME_CHUNK
            hi = min(b, (k + 1) * FRAME_CHUNK) - k * FRAME_CHUNK
            parts.append({n: arr[lo:hi] for n, arr in block.items()})
        out = {n: parts[0][n].copy() if len(parts) == 1 else np.concatenate([p[n] for p in parts])
               for n in self.names}  # copies: the caller's arrays outlive the block's eviction
        present = out.pop("present")
        return out, present

    def _block(self, j: int, k: int) -> dict[str, np.ndarray]:
        with self._lock:
            key = (j, k)
            if key in self._blocks:
                self._blocks.move_to_end(key)
                return self._blocks[key]
            block = self._read_block(j, k, self.names)
            size = sum(a.nbytes for a in block.values())
            while self._blocks and self.bytes_held + size > self.budget:
                _, old = self._blocks.popitem(last=False)
                self.bytes_held -= sum(a.nbytes for a in old.values())
            self._blocks[key] = block
            self.bytes_held += size
            self.peak_bytes = max(self.peak_bytes, self.bytes_held)
            self.blocks_read += 1
            return block

    def _read_block(self, j: int, k: int, names) -> dict[str, np.ndarray]:
        shard = self.shards[j]
        path = self.cache._verified_shard_path(shard, names)
        stop = min(int(self.shard_frames[j]), (k + 1) * FRAME_CHUNK)
        return _read_frame_range(path, shard["format"], names, k * FRAME_CHUNK, stop)

    def scan(self, names):
        """Every frame of the cache in storage order, block by block, bypassing the LRU (one pass
        for statistics): yields {name: rows} in sample order."""
        for j in range(len(self.shards)):
            for k in range(-(-int(self.shard_frames[j]) // FRAME_CHUNK)):
                with self._lock:
                    block = self._read_block(j, k, names)
                yield block


def open_cache(path, text: str | None = None) -> Cache:
    """Open a sealed cache folder (a path or an fsspec URL). text: which text store (name or fingerprint); default the newest."""
    return Cache(location(path), text=text)


# ----------------------------------------------------------------------------- one-call writer

def write_cache(out_dir, rows: list[dict], keypoints: list[np.ndarray], text: dict | None = None,
                format: str = "zarr", shard_size: int = 256, fingerprint: str = "direct") -> Path:
    """Write a sealed cache straight from arrays (tests, synthetic data): same format as `make features`.
    rows[i] = {"id", "text", "split", "signer", "label", "fps"}; text = {"input_ids", "lengths",
    "embeddings", "tokenizer", "text_model"} aligned with rows."""
    out_dir = location(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(rows) // shard_size))
    for s in range(n_shards):
        lo, hi = s * shard_size, min(len(rows), (s + 1) * shard_size)
        write_keypoint_shard(out_dir, s, format, [{"id": r["id"], "row": i, "fps": r.get("fps", 25.0)}
                                                  for i, r in enumerate(rows[lo:hi], lo)], keypoints[lo:hi], [])
    seal_keypoints(out_dir, n_shards, {"name": out_dir.name, "fingerprint": fingerprint, "format": format,
                                       "settings": {}, "versions": {}})
    if text is not None:
        ann = {k: [str(r.get(k, "")) for r in rows] for k in ("id", "text", "split", "signer", "label")}
        write_text_store(out_dir, fingerprint, format, ann, text["input_ids"], text["lengths"],
                         text["embeddings"], {"tokenizer": text["tokenizer"], "text_model": text["text_model"]})
    return out_dir

"""The cache format: writer and reader side by side, so the contract cannot drift.

A cache is one folder, CACHE/<name>-<keypoint fingerprint>/:

    keypoints.json            index, written last: sealing it makes the keypoint store visible
    keypoints/shard-00000.zarr    one Zarr v3 group (or shard-00000.h5) per few hundred samples
    keypoints/shard-00000.json    the shard's commit marker: sample table, failures, checksums
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

Layout (format 2): every array is stored uncompressed in one piece - a
Zarr v3 array whose single chunk is the whole array (bytes codec only), or a contiguous HDF5
dataset - so its bytes on disk are exactly its bytes in memory. Markers and indexes record, per
array, the file, byte offset, shape, dtype and CRC32 (`arrays`), and the reader reads those bytes
straight into the caller's preallocated array, then checks the CRC32 on the bytes it already holds
(ISA-L's CRC32 runs at memory speed), on as many threads as there are cores. Zarr and h5py open
the same files as usual. Format 1 caches (blosc/lzf chunks of FRAME_CHUNK frames, CRC32 per file)
still read, through Zarr/h5py, at their old speed; `make features` writes format 2.

Crash safety: a shard is written under a temporary name and renamed, then its JSON marker is
written the same way; a shard without a marker does not exist. The index is written only when
every shard is sealed. Damage after sealing is caught by CRC32 checksums: file sizes are checked
when a cache is opened, and the bytes of an array when it is read. A process checks the same bytes
once: what it verified is remembered with the file's size, mtime, ctime and inode, and a file
rewritten since (any write changes them; ctime cannot be set back) is checked again
(`forget_verified()` forgets everything).

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
import math
import os
import shutil
import sys
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from upath import UPath

from .layout import COMPONENT_SIZES, COMPONENTS, COMPONENT_SLICES

try:  # ISA-L's CRC32: the same checksum as zlib's (format 1 caches keep theirs), ~3x faster
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # a platform without isal wheels: the same values, at zlib's speed
    from zlib import crc32 as _crc32

FORMAT_VERSION = 2  # written; 1 still reads (see the module docstring)
READABLE_VERSIONS = (1, 2)
FORMATS = ("zarr", "hdf5")
FRAME_CHUNK = 8192  # frames per block a KeypointReader reads (and format 1's storage chunk)
KEYPOINT_INDEX = "keypoints.json"
TEXT_INDEX = "text.json"
TOKENIZER_FOLDER = "tokenizer"  # a tokenizer trained into a text store (`tokenizer: train`)
FAILURES = "failures.jsonl"
_BLOCK = 1 << 22  # bytes per read when a file is checksummed piecewise
_FUSED = 1 << 20  # bytes read, then checksummed, at a time when an array is read and checked at once


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


def reader_threads() -> int:
    """Threads for reading a cache: one per core this process may use (file reads release the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- file helpers

def _open_read(path):
    """Unbuffered for a local file (reads go straight into the caller's memory); fsspec's file at a URL."""
    return path.open("rb") if is_url(path) else open(path, "rb", buffering=0)


def _read_exactly(f, view: memoryview, what: str) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise CacheError(f"{what} ends early (truncated)")
        got += n


def crc32_file(path: Path, offset: int = 0, nbytes: int | None = None) -> int:
    """CRC32 of a file, or of nbytes from offset, read in blocks into one reused buffer."""
    view = memoryview(bytearray(_BLOCK))
    crc = 0
    with _open_read(path) as f:
        if offset:
            f.seek(offset)
        left = nbytes
        while left is None or left > 0:
            n = f.readinto(view if left is None or left >= _BLOCK else view[:left])
            if not n:
                if left is None:
                    break
                raise CacheError(f"{path} ends early (truncated)")
            crc = _crc32(view[:n], crc)
            if left is not None:
                left -= n
    return crc


def _file_checksums(root: Path, base: Path) -> dict[str, list[int]]:
    """{relative path: [size, crc32]} of every file under root (a folder or one file)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(base).as_posix(): [p.stat().st_size, crc32_file(p)] for p in files}


def _body_checksum(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name, fsync, rename (at a URL: one PUT, an object appears whole or not at all)."""
    if is_url(path):
        path.write_text(text)
        return
    tmp = _tmp_name(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON atomically. Dicts get a sha256 of their body (`checksum`), so a damaged file is
    refused by read_json_checked instead of silently trusted."""
    if isinstance(obj, dict):
        obj = {**obj, "checksum": _body_checksum(obj)}
    _write_text_atomic(path, json.dumps(obj, indent=1))


_TEXT_SUM = '{"sha256": "'  # the store's own JSON files: the first key is the sha256 of the text after it


def _write_store_json(path: Path, obj: dict) -> None:
    """A marker or index (format 2): like write_json_atomic, but the checksum is of the text itself,
    so a reader checks it without serialising the object again (the index of a big cache is MBs)."""
    text = json.dumps(obj, indent=1)
    if not obj or not text.startswith("{\n"):
        raise ValueError("store JSON files are non-empty objects")
    _write_text_atomic(path, f'{_TEXT_SUM}{_sha256(text)}",{text[1:]}')


def read_json_checked(path: Path, what: str) -> dict:
    """A JSON file written by write_json_atomic or by the store (_write_store_json), checksum verified."""
    try:
        text = location(path).read_text()
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: {what} is damaged (not valid JSON: {e})") from e
    if text.startswith(_TEXT_SUM) and isinstance(obj, dict):
        at = len(_TEXT_SUM) + 64
        ok = obj.pop("sha256", None) == text[len(_TEXT_SUM):at] and text[at:at + 2] == '",' \
            and _sha256("{" + text[at + 2:]) == text[len(_TEXT_SUM):at]
    else:
        ok = isinstance(obj, dict) and obj.pop("checksum", None) == _body_checksum(obj)
    if not ok:
        raise CacheError(f"{path}: {what} is damaged (checksum mismatch)")
    return obj


def remove_path(path: Path) -> None:
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


# ----------------------------------------------------------------------------- verification

# what this process has checked: (file, offset, nbytes, crc32) -> the file's identity then
_verified: dict[tuple, tuple] = {}
_verified_lock = threading.Lock()


def forget_verified() -> None:
    """Forget which bytes this process has checked: the next reads checksum everything again."""
    with _verified_lock:
        _verified.clear()


def _identity(path) -> tuple | None:
    """What changes when a file is written to or replaced: locally size, mtime, ctime (which utime
    cannot set back), inode and device; at a URL the size and the store's modification stamp or
    ETag (None where the store keeps neither: then nothing is remembered)."""
    if is_url(path):
        info = path.fs.info(path.path)
        stamp = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag",
                                        "created") if info.get(k) is not None), None)
        return None if stamp is None else ("url", info.get("size"), str(stamp))
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class _Check:
    """The CRC32 check of nbytes at offset of one file, done at most once per version of the file."""

    def __init__(self, path, offset: int, nbytes: int, crc: int, damaged: str):
        self.path, self.offset, self.nbytes, self.crc, self.damaged = path, offset, nbytes, crc, damaged
        self.key = (str(path), offset, nbytes, crc)
        self.identity = _identity(path)  # taken before the bytes are read

    @property
    def done(self) -> bool:
        return self.identity is not None and _verified.get(self.key) == self.identity

    def against(self, crc: int) -> None:
        if crc != self.crc:
            raise CacheError(self.damaged)
        if self.identity is not None:
            with _verified_lock:
                _verified[self.key] = self.identity

    def run(self) -> None:
        """Check by reading the bytes (piecewise), unless this version of the file was checked."""
        if not self.done:
            self.against(crc32_file(self.path, self.offset, self.nbytes))


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


def _bytes_of(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (no copy)."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def _write_arrays(path: Path, fmt: str, arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    """Write named arrays into a new Zarr v3 group or HDF5 file at `path` (which must not exist),
    each uncompressed in one piece. Returns {name: {"file": relative to path ("" for the HDF5 file
    itself), "offset", "shape", "dtype", "crc32"}}, checked against what landed on disk."""
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    specs = {name: {"file": "", "offset": 0, "shape": list(a.shape), "dtype": a.dtype.str,
                    "crc32": _crc32(_bytes_of(a)) if a.size else 0} for name, a in arrays.items()}
    if fmt == "zarr":
        import zarr

        group = zarr.open_group(_zarr_store(path), mode="w-", zarr_format=3)
        for name, a in arrays.items():
            # one chunk = the whole array, bytes codec only: the chunk file is the array's memory;
            # written even when it equals the fill value, so that every array has its file
            z = group.create_array(name, shape=a.shape, dtype=a.dtype, chunks=tuple(max(1, n) for n in a.shape),
                                   compressors=None, filters=None, config={"write_empty_chunks": True})
            if a.size:
                z[...] = a
                specs[name]["file"] = f"{name}/{z.metadata.encode_chunk_key((0,) * a.ndim)}"
    elif fmt == "hdf5":
        import h5py

        _local_hdf5(path)
        with h5py.File(path, "w-") as f:
            for name, a in arrays.items():  # contiguous (no chunks, no filters): the bytes as in memory
                f.create_dataset(name, data=a)
            for name, a in arrays.items():
                if a.size:
                    specs[name]["offset"] = int(f[name].id.get_offset())
    else:
        raise ValueError(f"unknown cache format {fmt!r}; choose one of {FORMATS}")
    for name, spec in specs.items():  # what a reader will read is what was meant (a change of layout fails here)
        if arrays[name].size:
            file = path / spec["file"] if spec["file"] else path
            if crc32_file(file, spec["offset"], arrays[name].nbytes) != spec["crc32"]:
                raise CacheError(f"{file}: array {name!r} is not stored as raw bytes at the recorded place")
    return specs


def _decode(path: Path, fmt: str, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Format 1: array `name` (or its rows start:stop) decoded by Zarr / h5py."""
    sel = slice(None) if rows is None else slice(*rows)
    if fmt == "zarr":
        import zarr

        return zarr.open_group(_zarr_store(path, read_only=True), mode="r")[name][sel]
    import h5py

    _local_hdf5(path)
    with h5py.File(path, "r") as f:
        return f[name][sel]


class _Stored:
    """The arrays of one shard or text store as the reader sees them: read whole or by rows,
    into a given array or a new one, every byte checked against its CRC32 once per process.

    Format 2 (`arrays` given): each array is a byte range of one file, read with one readinto
    straight into the destination, whose bytes are then checksummed while still in the CPU cache
    for the larger part. Format 1: the array's files are checksummed whole, then Zarr / h5py
    decode it."""

    def __init__(self, cache_path, base, data: str, fmt: str, files: dict, arrays: dict | None, what: str):
        self.cache_path, self.base, self.data, self.fmt = cache_path, base, data, fmt
        self.files, self.arrays, self.what = files, arrays, what

    def _damaged(self, rel: str) -> str:
        return (f"{self.cache_path}: {self.what} is damaged: checksum mismatch in {rel}; "
                "delete the cache folder and run `make features` again")

    def _disagrees(self, name: str, stored, expected) -> CacheError:
        return CacheError(f"{self.cache_path}: {self.what} does not hold what its index says (array {name!r} "
                          f"is {stored}, expected {expected}); delete the cache folder and run `make features` again")

    def _check(self, rel: str, offset: int, nbytes: int, crc: int) -> _Check:
        try:
            return _Check(self.base / rel, offset, nbytes, crc, self._damaged(rel))
        except FileNotFoundError:
            raise CacheError(f"{self.cache_path}: {self.what} is damaged: {rel} is missing; "
                             "delete the cache folder and run `make features` again") from None

    def verify_files(self, rels=None) -> None:
        """Whole files (format 1 arrays, a text store's tokenizer files)."""
        for rel in self.files if rels is None else rels:
            size, crc = self.files[rel]
            self._check(rel, 0, size, crc).run()

    def read(self, name: str, rows: tuple[int, int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
        if self.arrays is None:
            self.verify_files(self._legacy_files(name))
            arr = _decode(self.base / self.data, self.fmt, name, rows)
            if out is None:
                return arr
            if arr.shape != out.shape:
                raise self._disagrees(name, arr.shape, out.shape)
            out[...] = arr
            return out
        spec = self.arrays[name]
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        start, stop = (0, shape[0]) if rows is None else rows
        if out is None:
            out = np.empty((stop - start,) + shape[1:], dtype)
        elif out.shape != (stop - start,) + shape[1:] or out.dtype != dtype:
            raise self._disagrees(name, (stop - start,) + shape[1:], out.shape)
        elif not out.flags.c_contiguous:  # (the bytes are read into its memory)
            raise ValueError("out must be C-contiguous")
        if not out.size:
            return out
        rel = spec["file"]  # (relative to the base folder, like the keys of `files`)
        row_bytes = dtype.itemsize * math.prod(shape[1:])
        check = self._check(rel, spec["offset"], shape[0] * row_bytes, spec["crc32"])
        whole = (start, stop) == (0, shape[0])
        if not whole:
            check.run()  # part of an array: the whole of it is checked once, then any part is read
        view, crc = _bytes_of(out), None if check.done or not whole else 0
        with _open_read(self.base / rel) as f:
            f.seek(spec["offset"] + start * row_bytes)
            if crc is None:  # checked already (or a part, checked above): one read
                _read_exactly(f, view, f"{self.cache_path}: {self.what}: {rel}")
            else:  # piece by piece, each checksummed while it is still in the CPU cache
                for at in range(0, len(view), _FUSED):
                    piece = view[at:at + _FUSED]
                    _read_exactly(f, piece, f"{self.cache_path}: {self.what}: {rel}")
                    crc = _crc32(piece, crc)
        if crc is not None:
            check.against(crc)
        return out

    def _legacy_files(self, name: str) -> list[str]:
        """Format 1: the checksummed files that hold array `name` (HDF5: the one file)."""
        if self.fmt == "hdf5":
            return [self.data]
        prefix = f"{self.data}/{name}/"
        files = [p for p in self.files if p.startswith(prefix)]
        if not files:
            raise CacheError(f"{self.cache_path}: {self.what} is damaged: array {name!r} has no files")
        return files


# ----------------------------------------------------------------------------- keypoint shards

def shard_name(index: int, fmt: str) -> str:
    return f"shard-{index:05d}." + ("zarr" if fmt == "zarr" else "h5")


def shard_marker(cache_dir: Path, index: int) -> Path:
    return location(cache_dir) / "keypoints" / f"shard-{index:05d}.json"


def _placed(specs: dict[str, dict], data_rel: str) -> dict[str, dict]:
    """Array specs with their files relative to the store's base folder instead of the data path."""
    return {n: {**s, "file": f"{data_rel}/{s['file']}" if s["file"] else data_rel} for n, s in specs.items()}


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
    remove_path(final)  # data without a marker is an unfinished earlier attempt (callers hold the shard lock)

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
    specs = _write_arrays(tmp, fmt, arrays)
    if tmp != final:
        os.replace(tmp, final)

    marker = {
        "format_version": FORMAT_VERSION, "shard": index, "format": fmt, "path": final.name,
        "samples": [{"id": s["id"], "row": int(s["row"]), "fps": float(s["fps"]), "n_frames": int(n)}
                    for s, n in zip(samples, lengths)],
        "failures": failures,
        "files": _file_checksums(final, cache_dir),
        "arrays": _placed(specs, final.relative_to(cache_dir).as_posix()),
    }
    _write_store_json(shard_marker(cache_dir, index), marker)
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
        # (a format 1 marker, from a build resumed across versions, has no "arrays": read the old way)
        "shards": [{"shard": m["shard"], "path": m["path"], "format": m["format"], "files": m["files"],
                    "n_samples": len(m["samples"]), **({"arrays": m["arrays"]} if "arrays" in m else {})}
                   for m in markers],
    }
    _write_store_json(cache_dir / KEYPOINT_INDEX, index)
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
                remove_path(tmp)


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
            remove_path(stale)
        tmp = _tmp_name(final)
        try:
            _write_text_files(tmp, fingerprint, fmt, annotations, input_ids, lengths, embeddings, meta,
                              extra_files)
            if not (final / TEXT_INDEX).exists():  # (where flock is missing, another writer may have won)
                remove_path(final)  # an unsealed folder (no text.json) is not a store
                try:
                    os.replace(tmp, final)
                except OSError:  # rename does not replace a full folder: a writer sealed it meanwhile
                    if not (final / TEXT_INDEX).exists():
                        raise
        finally:
            remove_path(tmp)  # gone after the rename; a failed write leaves no temporary behind
    return final


def _write_text_files(folder: Path, fingerprint: str, fmt: str, annotations: dict[str, list],
                      input_ids: np.ndarray, lengths: np.ndarray, embeddings: np.ndarray, meta: dict,
                      extra_files: dict[str, bytes] | None = None) -> None:
    remove_path(folder)
    folder.mkdir(parents=True)
    data = folder / ("text.zarr" if fmt == "zarr" else "text.h5")
    specs = _write_arrays(data, fmt, {"input_ids": np.asarray(input_ids, np.int32),
                                      "lengths": np.asarray(lengths, np.int32),
                                      "embeddings": np.asarray(embeddings, np.float32)})
    files = _file_checksums(data, folder)
    for rel, content in sorted((extra_files or {}).items()):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
        files.update(_file_checksums(folder / rel, folder))
    index = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "format": fmt, **meta,
             "n_samples": int(len(input_ids)), "annotations": annotations, "files": files,
             "arrays": _placed(specs, data.name)}
    _write_store_json(folder / TEXT_INDEX, index)


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


@functools.lru_cache(maxsize=None)
def _note_old_format(path: str, version) -> None:  # once per cache and process
    print(f"note: {path} is cache format {version}: it reads, at that format's speed (compressed "
          f"chunks); `make features` reuses it; delete the folder and run it again to rebuild it in "
          f"format {FORMAT_VERSION}, which loads several times faster", file=sys.stderr)


class Cache:
    """A sealed cache opened for reading. Use open_cache()."""

    def __init__(self, path: Path, text: str | None = None):
        self.path = location(path)
        index_path = self.path / KEYPOINT_INDEX
        if not index_path.exists():
            raise CacheError(f"{self.path}: not a sealed cache (no {KEYPOINT_INDEX}); "
                             "run `make features` to build or finish it")
        self.meta = read_json_checked(index_path, "the keypoint index")
        version = self.meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise CacheError(f"{self.path}: cache format {version} but this sign2text reads formats "
                             f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild it with `make features` "
                             "(or the sign2text version that wrote it)")
        if version != FORMAT_VERSION:
            _note_old_format(str(self.path), version)
        self._check_sizes(self.meta["shards"], self.path)
        self.n = self.meta["n_samples"]
        self.failures = self.meta["failures"]
        self.text_names = sorted(p.name for p in self.path.glob("text-*")
                                 if ".tmp-" not in p.name and (p / TEXT_INDEX).exists())
        self._text_name = self._choose_text(text)
        self.samples = self._sample_table()
        self._layout_shards()

    # -- integrity and layout
    def _check_sizes(self, shards, base: Path) -> None:
        for shard in shards:
            for rel, (size, _) in shard["files"].items():
                try:
                    wrong = (base / rel).stat().st_size != size and "of the wrong size"
                except FileNotFoundError:
                    wrong = "missing"
                if wrong:
                    raise CacheError(f"{self.path}: shard {shard['path']} is damaged: {rel} is {wrong}; "
                                     "delete the cache folder and run `make features` again")

    def _layout_shards(self) -> None:
        """Where each shard's samples and frames start: samples are stored shard after shard."""
        shards = self.meta["shards"]
        position = {sh["shard"]: j for j, sh in enumerate(shards)}
        self.shard_of = np.array([position[s["shard"]] for s in self.meta["samples"]], dtype=np.int64)
        if (np.diff(self.shard_of) < 0).any():
            raise CacheError(f"{self.path}: the index lists samples out of shard order; rebuild the cache")
        lengths = np.asarray(self.samples["n_frames"], dtype=np.int64)
        self.shard_frames = np.bincount(self.shard_of, weights=lengths, minlength=len(shards)).astype(np.int64)
        self.shard_first_frame = np.concatenate([[0], np.cumsum(self.shard_frames)])[:-1]
        counts = np.bincount(self.shard_of, minlength=len(shards))
        self.shard_first_sample = np.concatenate([[0], np.cumsum(counts)])[:-1]
        self._shards = [_Stored(self.path, self.path, f"keypoints/{sh['path']}", sh["format"], sh["files"],
                                sh.get("arrays"), f"shard {sh['path']}") for sh in shards]

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

    @property
    def default_text(self) -> str | None:
        """The name of the text store text() reads when given none."""
        return self._text_name

    def _sample_table(self) -> dict[str, np.ndarray]:
        rows = self.meta["samples"]
        table = {"id": np.array([s["id"] for s in rows], dtype=object),
                 "n_frames": np.array([s["n_frames"] for s in rows], dtype=np.int64),
                 "fps": np.array([s["fps"] for s in rows], dtype=np.float32)}
        if self._text_name is not None:
            ann = self.text_index(self._text_name)["annotations"]
            if list(ann["id"]) != list(table["id"]):
                raise CacheError(f"{self.path / self._text_name}: text store is not aligned with the keypoints")
            for key in ("text", "split", "signer", "label"):
                table[key] = np.array(ann[key], dtype=object)
        return table

    def text_index(self, name: str) -> dict:
        """The checked index (text.json) of text store `name`."""
        return read_json_checked(self.path / name / TEXT_INDEX, f"text store {name}")

    def text(self, name: str | None = None) -> TextArrays:
        name = self._text_name if name is None else (name if name.startswith("text-") else f"text-{name[:12]}")
        if name is None:
            raise CacheError(f"{self.path}: has no text store; run `make features` with a manifest that has text")
        index = self.text_index(name)
        base = self.path / name
        for rel, (size, crc) in index["files"].items():
            if not (base / rel).exists() or (base / rel).stat().st_size != size:
                raise CacheError(f"{self.path}: text store {name} is damaged: {rel} missing or resized")
        stored = _Stored(self.path, base, "text.zarr" if index["format"] == "zarr" else "text.h5", index["format"],
                         index["files"], index.get("arrays"), f"text store {name}")
        stored.verify_files()  # small, and the tokenizer files are read by others: all of it
        arrays = {n: stored.read(n) for n in ("input_ids", "lengths", "embeddings")}
        tokenizer = index["tokenizer"]
        if index.get("tokenizer_folder"):  # trained into the store: found where the cache is now
            folder = base / index["tokenizer_folder"]
            tokenizer = str(folder) if is_url(folder) else str(folder.resolve())
        return TextArrays(arrays["input_ids"], arrays["lengths"], arrays["embeddings"],
                          tokenizer, index["text_model"], meta=index)

    # -- keypoints
    def load_keypoints(self, components=("pose", "left_hand", "right_hand")) -> KeypointArrays:
        """All samples' frames of the given components, concatenated in sample order: each shard's
        arrays are read straight into their rows of the result, on one thread per core."""
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; choose from {COMPONENTS}")
        lengths = self.samples["n_frames"]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(offsets[-1])
        # one allocation holds every result (views of it): fewer, larger page-fault runs than one per array
        widths = [total * COMPONENT_SIZES[c] * 3 * 2 for c in components] + [total * len(COMPONENTS)]
        memory, ends = np.empty(sum(widths), np.uint8), np.cumsum(widths)
        frames = {c: memory[end - w:end].view(np.float16).reshape(total, COMPONENT_SIZES[c], 3)
                  for c, w, end in zip(components, widths, ends)}
        present = memory[ends[-1] - widths[-1]:].view(bool).reshape(total, len(COMPONENTS))
        counts = np.bincount(self.shard_of, minlength=len(self._shards))

        def read(task):
            j, name = task
            a, n = int(self.shard_first_frame[j]), int(self.shard_frames[j])
            if name == "offsets":  # the shard's own sample table must agree with the index
                lo, hi = int(self.shard_first_sample[j]), int(self.shard_first_sample[j]) + int(counts[j])
                stored = self._shards[j].read("offsets")
                if len(stored) != hi - lo + 1 or not np.array_equal(np.diff(stored), lengths[lo:hi]):
                    raise CacheError(f"{self.path}: shard {self.meta['shards'][j]['path']} does not hold the "
                                     "frames its index says; delete the cache folder and run `make features` again")
                return
            self._shards[j].read(name, out=(frames[name] if name in frames else present)[a:a + n])

        names = list(components) + ["present", "offsets"]
        tasks = [(j, name) for j in range(len(self._shards)) for name in names]
        # file reads release the GIL: one thread per core keeps every core busy
        with ThreadPoolExecutor(max_workers=min(reader_threads(), len(tasks) or 1)) as pool:
            for _ in pool.map(read, tasks):
                pass
        return KeypointArrays(frames, present, offsets)

    def keypoint_reader(self, components=("pose", "left_hand", "right_hand"),
                        budget_bytes: int = 1 << 30) -> "KeypointReader":
        """Lazy per-sample access to the keypoints, holding at most budget_bytes of decoded data."""
        return KeypointReader(self, components, budget_bytes)

    def read_shard(self, j: int, names, rows: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Arrays `names` of the j-th shard (position in meta["shards"]), all rows or start:stop, checked."""
        return {n: self._shards[j].read(n, rows) for n in names}

    def sample(self, i: int, components=COMPONENTS) -> np.ndarray:
        """One sample as a (T, 543, 3) float32 array in the full layout (slow path: inspection, tests)."""
        j = int(self.shard_of[i])
        offsets = self._shards[j].read("offsets")
        local = i - int(self.shard_first_sample[j])
        a, b = int(offsets[local]), int(offsets[local + 1])
        out = np.full((b - a, 543, 3), np.nan, dtype=np.float32)
        for c in components:
            out[:, COMPONENT_SLICES[c]] = self._shards[j].read(c, (a, b))
        return out


class KeypointReader:
    """One sample's frames at a time, for caches larger than memory (training with `stream: true`).

    A shard's frames are read in blocks of FRAME_CHUNK rows (format 2: a byte range of each array,
    read straight from its file; format 1: the Zarr/HDF5 chunks that hold them, decoded); blocks
    are kept in an LRU whose bytes never exceed `budget_bytes` (the oldest blocks are dropped
    first). Each array is CRC-checked whole the first time its shard is touched (piecewise, within
    a few MB of memory). Thread-safe: a prefetch thread and the main thread may read at once.
    `bytes_held`, `peak_bytes` and `blocks_read` are its own accounting.
    """

    def __init__(self, cache: Cache, components, budget_bytes: int):
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; choose from {COMPONENTS}")
        self.cache, self.names = cache, list(components) + ["present"]
        self.shard_of = cache.shard_of
        self.lengths = np.asarray(cache.samples["n_frames"], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        # a sample's row in its shard = global row - shard's first row
        self.start = offsets[:-1] - cache.shard_first_frame[self.shard_of]
        self.shard_frames = cache.shard_frames
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
            self._evict_to(self.budget - size)
            self._blocks[key] = block
            self.bytes_held += size
            self.peak_bytes = max(self.peak_bytes, self.bytes_held)
            self.blocks_read += 1
            return block

    def resize(self, budget_bytes: int) -> None:
        """Set the LRU's budget; blocks beyond it go now (oldest first), not at the next read.
        Evaluation lowers it while it runs, as its other memory grows (s2t/data.py)."""
        with self._lock:
            self.budget = budget_bytes
            self._evict_to(budget_bytes)

    def _evict_to(self, limit: int) -> None:
        """Drop the oldest blocks until at most `limit` bytes are held (caller holds the lock)."""
        while self._blocks and self.bytes_held > limit:
            _, old = self._blocks.popitem(last=False)
            self.bytes_held -= sum(a.nbytes for a in old.values())

    def _read_block(self, j: int, k: int, names) -> dict[str, np.ndarray]:
        stop = min(int(self.shard_frames[j]), (k + 1) * FRAME_CHUNK)
        return self.cache.read_shard(j, names, (k * FRAME_CHUNK, stop))

    def scan(self, names):
        """Every frame of the cache in storage order, block by block, bypassing the LRU (one pass
        for statistics): yields {name: rows} in sample order."""
        for j in range(len(self.shard_frames)):
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

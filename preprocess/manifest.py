"""Read and validate a manifest: which samples exist, where their keypoint source is, what they say.

Formats: CSV, TSV, JSONL (by extension, or `sep=`), plus presets for How2Sign and PHOENIX-2014-T.
Everything is validated up front; ManifestError lists every problem with its row number.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"dev": "val"}  # PHOENIX and many corpora call the validation split "dev"
REQUIRED = ("id", "path", "text")
MAX_LISTED = 20


class ManifestError(ValueError):
    """The manifest has problems; `problems` holds one line per problem (row numbers included)."""

    def __init__(self, path, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED]
        more = len(self.problems) - len(shown)
        lines = ([f"manifest {self.path}: {len(self.problems)} problem(s); fix them and run again"]
                 + [f"  {p}" for p in shown])
        if more:
            lines.append(f"  and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ManifestRow:
    id: str
    path: Path
    text: str
    split: str = "train"
    signer: str = ""
    label: str = ""
    row: int = 0
    start: float | None = None  # seconds into the video (presets); None = from the beginning
    end: float | None = None  # seconds; None = to the end
    fps: float | None = None  # frame rate of a keypoint file (.npy carries none); None = the configured default


def normalise_text(s: str) -> str:
    """Lowercase, collapse whitespace, strip trailing punctuation: the default SupCon label."""
    s = " ".join(s.lower().split())
    while s and (unicodedata.category(s[-1]).startswith("P") or s[-1].isspace()):
        s = s[:-1]
    return s


@dataclass(frozen=True)
class _Preset:
    sep: str
    columns: dict  # our field -> the preset's column name


PRESETS = {
    "how2sign": _Preset("\t", {"id": "SENTENCE_NAME", "path": "VIDEO_NAME", "start": "START",
                               "end": "END", "text": "SENTENCE"}),
    "phoenix": _Preset("|", {"id": "name", "path": "video", "start": "start", "end": "end",
                             "signer": "speaker", "text": "translation"}),
}
_SEP_BY_EXT = {".csv": ",", ".tsv": "\t"}


def read_manifest(path, preset: str | None = None, *, sep: str | None = None,
                  root=None) -> list[ManifestRow]:
    """Parse and validate a manifest; raise ManifestError listing every problem found.

    preset: None (columns id, path, text [, split, signer, label, start, end]), "how2sign" or "phoenix".
    sep: field separator overriding the extension/preset default (not for .jsonl).
    root: folder that relative paths are resolved against (default: the manifest's folder).
    """
    path = Path(path)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown manifest preset {preset!r}; choose one of {sorted(PRESETS)}")
    if not path.is_file():
        raise ManifestError(path, ["file not found"])
    root = Path(root).resolve() if root is not None else path.resolve().parent
    text = _read_utf8(path)

    problems: list[str] = []
    if preset is None and sep is None and path.suffix.lower() == ".jsonl":
        header, records = _jsonl_records(text, problems)
    else:
        sep = sep or (PRESETS[preset].sep if preset else _SEP_BY_EXT.get(path.suffix.lower()))
        if sep is None:
            raise ManifestError(path, [f"cannot tell the format of {path.suffix or 'an extensionless file'}: "
                                       "use .csv, .tsv, .jsonl or pass sep="])
        # The presets' corpora never quote fields, and their sentences contain stray quote characters.
        header, records = _delimited_records(text, sep, csv.QUOTE_NONE if preset else csv.QUOTE_MINIMAL, problems)
    if not header:
        raise ManifestError(path, problems or ["empty file: no header and no rows"])

    optional = ("split", "signer", "label", "start", "end", "fps")
    columns = dict(PRESETS[preset].columns) if preset else {f: f for f in (*REQUIRED, *optional)}
    if preset == "how2sign" and {"START_REALIGNED", "END_REALIGNED"} <= set(header):
        # the re-aligned How2Sign release names its clip bounds START_REALIGNED / END_REALIGNED
        columns.update(start="START_REALIGNED", end="END_REALIGNED")
    required = [columns[f] for f in REQUIRED] + ([columns["start"], columns["end"]] if preset == "how2sign" else [])
    missing_cols = [c for c in required if c not in header]
    if missing_cols:
        problems.append(f"missing required column(s) {', '.join(map(repr, missing_cols))}; found {header}")
        raise ManifestError(path, problems)
    if not records and not problems:
        raise ManifestError(path, ["no rows after the header"])

    split_from_name = _split_from_filename(path) if preset else None
    rows: list[ManifestRow] = []
    first_row_of: dict[str, int] = {}
    for line, rec in records:
        id_ = str(rec.get(columns["id"]) or "").strip()
        if id_ and id_ in first_row_of:
            problems.append(f"row {line}: duplicate id {id_!r} (first at row {first_row_of[id_]})")
        first_row_of.setdefault(id_, line)
        row = _parse_row(rec, line, columns, preset, root, split_from_name, problems)
        if row is not None:
            rows.append(row)
    if problems:
        raise ManifestError(path, sorted(problems, key=_row_number))
    return rows


def _row_number(problem: str) -> int:
    m = re.match(r"row (\d+):", problem)
    return int(m.group(1)) if m else 0


def _parse_row(rec, line, columns, preset, root, split_from_name, problems) -> ManifestRow | None:
    def get(field):
        col = columns.get(field)
        value = rec.get(col) if col else None
        return "" if value is None else str(value).strip()

    before = len(problems)
    id_, raw_path, text = get("id"), get("path"), get("text")
    if not id_:
        problems.append(f"row {line}: empty id")
    if not text:
        problems.append(f"row {line}: empty text")
    file = _resolve_path(raw_path, preset, root, line, problems)

    split = get("split").lower() or split_from_name or "train"
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        problems.append(f"row {line}: unknown split {get('split')!r}; expected one of {', '.join(SPLITS)}")

    start, end = _seconds(get("start"), line, "start", problems), _seconds(get("end"), line, "end", problems)
    if start is not None and end is not None and end <= start:
        problems.append(f"row {line}: end {end} is not after start {start}")
    fps = None
    if get("fps"):
        try:
            fps = float(get("fps"))
        except ValueError:
            fps = -1.0
        if not fps > 0:
            problems.append(f"row {line}: fps {get('fps')!r} is not a positive number")
    if len(problems) > before:
        return None
    return ManifestRow(id=id_, path=file, text=text, split=split, signer=get("signer"),
                       label=get("label") or normalise_text(text), row=line, start=start, end=end, fps=fps)


def _resolve_path(raw: str, preset, root: Path, line: int, problems) -> Path | None:
    if not raw:
        problems.append(f"row {line}: empty path")
        return None
    if preset == "how2sign" and not Path(raw).suffix:
        raw += ".mp4"  # How2Sign's VIDEO_NAME omits the extension
    try:
        file = (root / raw).resolve()
    except (RuntimeError, OSError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        problems.append(f"row {line}: path {raw!r} cannot be resolved ({e}): fix or remove the symbolic link")
        return None
    if glob.has_magic(raw):
        # PHOENIX lists frames as ".../1/*.png": the sample is the folder of frame images.
        if not glob.glob(str(root / raw)):
            problems.append(f"row {line}: no files match {raw!r} (under {root})")
            return None
        return file.parent
    if not file.exists():
        problems.append(f"row {line}: path does not exist: {file}")
        return None
    return file


def _seconds(value: str, line: int, name: str, problems) -> float | None:
    """Seconds as a float; empty or negative (PHOENIX writes -1) means 'not given'."""
    if not value:
        return None
    try:
        t = float(value)
    except ValueError:
        problems.append(f"row {line}: {name} {value!r} is not a number of seconds")
        return None
    return t if t >= 0 else None


def _split_from_filename(path: Path) -> str | None:
    """How2Sign (how2sign_realigned_val.csv) and PHOENIX (PHOENIX-2014-T.dev.corpus.csv) name the split."""
    tokens = set(re.split(r"[^a-z]+", path.name.lower()))
    found = [s for s in ("train", "val", "dev", "test") if s in tokens]
    return SPLIT_ALIASES.get(found[0], found[0]) if len(found) == 1 else None


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # tolerate a BOM (Excel writes one)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ManifestError(path, [f"not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                                   f"(line {line}); re-save the file as UTF-8"]) from None


def _delimited_records(text: str, sep: str, quoting: int, problems: list[str]):
    """(header, [(line where the record starts, {column: value})]) for the non-blank records."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    header, records, line = None, [], 1
    for fields in reader:
        if any(f.strip() for f in fields):
            if header is None:
                header = [f.strip() for f in fields]
            elif len(fields) != len(header):
                problems.append(f"row {line}: {len(fields)} fields but the header has {len(header)} "
                                f"(separator {sep!r})")
            else:
                records.append((line, dict(zip(header, fields))))
        line = reader.line_num + 1
    return header or [], records


def _jsonl_records(text: str, problems: list[str]):
    """(all keys seen, [(line, object)]) for the non-blank lines."""
    records = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(f"row {line}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(rec, dict):
            problems.append(f"row {line}: expected a JSON object, got {type(rec).__name__}")
            continue
        records.append((line, rec))
    return sorted(set().union(*(r.keys() for _, r in records))), records

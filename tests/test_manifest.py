"""Manifest parsing and up-front validation."""
import json
from pathlib import Path

import pytest

from preprocess.manifest import ManifestError, ManifestRow, normalise_text, read_manifest


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def errors_of(path, **kw) -> str:
    with pytest.raises(ManifestError) as err:
        read_manifest(path, **kw)
    return str(err.value)


def test_normalise_text():
    assert normalise_text("  Where does it   HURT?! ") == "where does it hurt"
    assert normalise_text("Hello, world.\n") == "hello, world"
    assert normalise_text("Tschüss…") == "tschüss"
    assert normalise_text("...") == ""


def test_csv_defaults_and_paths(tmp_path):
    touch(tmp_path, "videos/a.mp4", "b.pose")
    (tmp_path / "m.csv").write_text(
        "id,path,text,split,signer,label\n"
        "a,videos/a.mp4,Where does it hurt?,val,s1,\n"
        'b,b.pose,"Hello, doctor.",,,greeting\n', encoding="utf-8")
    a, b = read_manifest(tmp_path / "m.csv")
    assert a == ManifestRow(id="a", path=(tmp_path / "videos/a.mp4").resolve(), text="Where does it hurt?",
                            split="val", signer="s1", label="where does it hurt", row=2)
    assert (b.text, b.split, b.signer, b.label, b.row) == ("Hello, doctor.", "train", "", "greeting", 3)
    assert b.path.is_absolute() and a.start is None and a.end is None


def test_tsv_jsonl_and_sep_override(tmp_path):
    touch(tmp_path, "x.npy", "y.npy")
    (tmp_path / "m.tsv").write_text("id\tpath\ttext\tstart\nx\tx.npy\tone, two\t1.5\n", encoding="utf-8")
    (row,) = read_manifest(tmp_path / "m.tsv")
    assert (row.text, row.start, row.end) == ("one, two", 1.5, None)
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "x", "path": "x.npy", "text": "hi"}) + "\n\n"
        + json.dumps({"id": 7, "path": "y.npy", "text": "yo", "split": "test"}) + "\n", encoding="utf-8")
    rows = read_manifest(tmp_path / "m.jsonl")
    assert [(r.id, r.split, r.row) for r in rows] == [("x", "train", 1), ("7", "test", 3)]
    (tmp_path / "m.txt").write_text("id;path;text\nx;x.npy;hi\n", encoding="utf-8")
    assert read_manifest(tmp_path / "m.txt", sep=";")[0].path == (tmp_path / "x.npy").resolve()
    assert "pass sep=" in errors_of(tmp_path / "m.txt")


def test_missing_column_is_named(tmp_path):
    (tmp_path / "m.csv").write_text("id,path,sentence\na,a.mp4,hi\n", encoding="utf-8")
    assert "missing required column(s) 'text'" in errors_of(tmp_path / "m.csv")


def test_every_problem_listed_with_rows(tmp_path):
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4")
    (tmp_path / "m.csv").write_text(
        "id,path,text,split\n"
        "a,a.mp4,hello,train\n"       # row 2: fine
        "a,b.mp4,hello again,val\n"   # row 3: duplicate of row 2
        "c,c.mp4,   ,test\n"          # row 4: empty text
        "d,missing.mp4,hi,train\n"    # row 5: path does not exist
        "e,a.mp4,hi,holdout\n"        # row 6: unknown split
        "f,a.mp4,hi\n",               # row 7: too few fields
        encoding="utf-8")
    msg = errors_of(tmp_path / "m.csv")
    assert "5 problem(s)" in msg
    assert "row 3: duplicate id 'a' (first at row 2)" in msg
    assert "row 4: empty text" in msg
    assert f"row 5: path does not exist: {(tmp_path / 'missing.mp4').resolve()}" in msg
    assert "row 6: unknown split 'holdout'" in msg
    assert "row 7: 3 fields but the header has 4" in msg
    assert [line.split(":")[0] for line in msg.splitlines()[1:]] == [f"  row {i}" for i in (3, 4, 5, 6, 7)]


def test_problem_list_is_capped(tmp_path):
    lines = ["id,path,text"] + [f"s{i},nope{i}.mp4,hi" for i in range(30)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    msg = errors_of(tmp_path / "m.csv")
    assert "30 problem(s)" in msg and "row 21:" in msg and "row 22:" not in msg
    assert msg.rstrip().endswith("and 10 more")


def test_not_utf8_reports_byte_offset(tmp_path):
    (tmp_path / "m.csv").write_bytes("id,path,text\na,a.mp4,caf".encode() + b"\xe9\n")
    msg = errors_of(tmp_path / "m.csv")
    assert "not UTF-8: byte 0xe9 at byte offset 24 (line 2)" in msg


def test_bad_jsonl_lines(tmp_path):
    touch(tmp_path, "a.mp4")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "a.mp4", "text": "hi"}\n{oops\n[1, 2]\n',
                                      encoding="utf-8")
    msg = errors_of(tmp_path / "m.jsonl")
    assert "row 2: invalid JSON" in msg and "row 3: expected a JSON object, got list" in msg


def test_how2sign_preset(tmp_path):
    touch(tmp_path, "raw_videos/-fZc293MpJk-1-rgb_front.mp4")
    # How2Sign ships tab-separated files named .csv; sentences carry stray quote characters.
    (tmp_path / "how2sign_realigned_val.csv").write_text(
        "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSTART\tEND\tSENTENCE\n"
        '-fZc293MpJk\traw_videos/-fZc293MpJk-1-rgb_front\t-fZc293MpJk_0-1\t-fZc293MpJk_0-1-rgb_front'
        '\t0.0\t1.5\t1.25\t3.5\t"Hi!" I\'m here.\n', encoding="utf-8")
    (row,) = read_manifest(tmp_path / "how2sign_realigned_val.csv", preset="how2sign")
    assert row.id == "-fZc293MpJk_0-1-rgb_front"
    assert row.path == (tmp_path / "raw_videos/-fZc293MpJk-1-rgb_front.mp4").resolve()
    assert (row.start, row.end, row.split) == (0.0, 1.5, "val")  # the re-aligned bounds win over START/END
    assert row.text == '"Hi!" I\'m here.' and row.label == '"hi!" i\'m here'


def test_how2sign_preset_checks_times_and_columns(tmp_path):
    touch(tmp_path, "v.mp4")
    (tmp_path / "h.tsv").write_text("SENTENCE_NAME\tVIDEO_NAME\tSTART\tEND\tSENTENCE\n"
                                    "s1\tv.mp4\t2.0\t1.0\thi\ns2\tv.mp4\tabc\t1.0\tho\n", encoding="utf-8")
    msg = errors_of(tmp_path / "h.tsv", preset="how2sign")
    assert "row 2: end 1.0 is not after start 2.0" in msg and "row 3: start 'abc' is not a number" in msg
    (tmp_path / "h2.tsv").write_text("SENTENCE_NAME\tVIDEO_NAME\tSENTENCE\ns1\tv.mp4\thi\n", encoding="utf-8")
    assert "missing required column(s) 'START', 'END'" in errors_of(tmp_path / "h2.tsv", preset="how2sign")


def test_phoenix_preset_frame_folders(tmp_path):
    touch(tmp_path, "features/dev/01April_2010_Thursday_heute-6698/1/images0001.png",
          "features/dev/01April_2010_Thursday_heute-6698/1/images0002.png")
    (tmp_path / "PHOENIX-2014-T.dev.corpus.csv").write_text(
        "name|video|start|end|speaker|orth|translation\n"
        "01April_2010_Thursday_heute-6698|features/dev/01April_2010_Thursday_heute-6698/1/*.png|-1|-1|"
        "Signer04|WETTER MORGEN|und nun die wettervorhersage für morgen\n"
        "02April_2010_Friday_tagesschau-1|features/dev/nothing/1/*.png|-1|-1|Signer01|X|y\n",
        encoding="utf-8")
    msg = errors_of(tmp_path / "PHOENIX-2014-T.dev.corpus.csv", preset="phoenix")
    assert "row 3: no files match 'features/dev/nothing/1/*.png'" in msg and "row 2" not in msg
    lines = (tmp_path / "PHOENIX-2014-T.dev.corpus.csv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "PHOENIX-2014-T.dev.corpus.csv").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    (row,) = read_manifest(tmp_path / "PHOENIX-2014-T.dev.corpus.csv", preset="phoenix")
    assert row.id == "01April_2010_Thursday_heute-6698" and row.signer == "Signer04"
    assert row.path == (tmp_path / "features/dev/01April_2010_Thursday_heute-6698/1").resolve()
    assert row.text == "und nun die wettervorhersage für morgen"
    assert (row.split, row.start, row.end) == ("val", None, None)


def test_unknown_preset_and_empty_file(tmp_path):
    (tmp_path / "m.csv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown manifest preset 'csl'"):
        read_manifest(tmp_path / "m.csv", preset="csl")
    assert "empty file" in errors_of(tmp_path / "m.csv")
    (tmp_path / "h.csv").write_text("id,path,text\n", encoding="utf-8")
    assert "no rows after the header" in errors_of(tmp_path / "h.csv")
    assert "file not found" in errors_of(tmp_path / "absent.csv")

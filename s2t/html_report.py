"""RUN/eval/SPLIT/report.html: one self-contained page to browse an evaluation.

Written by `python -m s2t eval` after summary.json, summary.md, predictions.jsonl and the PNG plots
(`write_html_report`); `python -m s2t.html_report RUN/eval/SPLIT` writes it again from those files.
The page needs no server and no network (it works from a file:// URL): the plots are inlined as
base64 data URIs, the data as JSON, the script and the style sheet inline. It holds

- the summary (summary.md rendered: verdict, table of systems, groups, examples),
- the plots,
- the worst clips by per-sample WER,
- a clip viewer: an animated stick figure of the clip's keypoints (pose shoulders/arms/hips and
  the two 21-point hands, read from the cache, subsampled in time and rounded) beside its
  reference, hypothesis and top-5 retrieved sentences,
- every sample of predictions.jsonl in a table that sorts (click a header) and filters
  (words match any cell; `wer>0.5`, `signer=s05`, `rank_v2t>=2` test one column).

Keypoints are embedded for the worst clips and an evenly spaced sample of the others, within a
byte budget (default 3 MB), so the page stays a few MB whatever the split's size; the table holds
every sample.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from . import report

WORST = 10             # clips listed as the worst (by per-sample WER)
MAX_CLIPS = 40         # clips whose keypoints are embedded (the worst first)
MAX_FRAMES = 60        # frames kept per clip (evenly strided)
KEYPOINT_BUDGET = 3_000_000  # bytes of keypoint JSON at most (the worst clips always fit first)

# Points drawn, as (component, index inside it); the stick figure's point i is POINTS[i].
POSE_POINTS = (0, 11, 12, 13, 14, 15, 16, 23, 24)  # nose, shoulders, elbows, wrists, hips
POINTS = ([("pose", i) for i in POSE_POINTS] + [("left_hand", i) for i in range(21)]
          + [("right_hand", i) for i in range(21)])
# MediaPipe's hand connections: the wrist to each finger's 4 joints, and across the palm
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10),
              (10, 11), (11, 12), (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17),
              (17, 18), (18, 19), (19, 20))
_P = {j: k for k, j in enumerate(POSE_POINTS)}
_LH, _RH = len(POSE_POINTS), len(POSE_POINTS) + 21
EDGES = ([(_P[a], _P[b], "pose") for a, b in ((11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
                                               (11, 23), (12, 24), (23, 24))]
         + [(_P[15], _LH, "pose"), (_P[16], _RH, "pose")]  # pose wrist to hand wrist
         + [(_LH + a, _LH + b, "left") for a, b in HAND_EDGES]
         + [(_RH + a, _RH + b, "right") for a, b in HAND_EDGES])
# points that set the figure's frame (hips are often below the picture: drawn, not framed)
FRAMED = [k for k, (c, i) in enumerate(POINTS) if not (c == "pose" and i in (23, 24))]

PLOT_ORDER = ("similarity_clip.png", "similarity_supcon.png", "retrieval_ranks.png",
              "training_curves.png", "examples.png")
DROPPED = ("reference_normalised", "wer_normalised", "greedy_swapped")  # in predictions.jsonl, not on the page


# ----------------------------------------------------------------------------- data

def worst_clips(records: list[dict], n: int = WORST) -> list[int]:
    """Positions of the n records with the highest WER (ties: worse retrieval rank, then higher
    CE first); records without a WER come last."""
    def key(i):
        r = records[i]
        return (-_or(r.get("wer"), -math.inf), -_or(r.get("rank_v2t"), 0), -_or(r.get("ce"), -math.inf), i)
    return sorted(range(len(records)), key=key)[:n]


def clips_to_embed(records: list[dict], worst: list[int], max_clips: int = MAX_CLIPS) -> list[int]:
    """The worst clips, then an evenly spaced sample of the others, max_clips in all."""
    chosen = list(worst[:max_clips])
    others = [i for i in range(len(records)) if i not in set(chosen)]
    k = max(0, min(max_clips - len(chosen), len(others)))
    if k:
        chosen += [others[j] for j in np.unique(np.linspace(0, len(others) - 1, k).round().astype(int))]
    return chosen


def stick_figure(points: dict[str, np.ndarray], fps: float, max_frames: int = MAX_FRAMES) -> dict:
    """One clip for the page: {fps, box, frames}. points: {component: (T, P, >=2)} in image-
    normalised x, y. Frames are strided to at most max_frames; each frame is a flat list
    x0, y0, x1, y1, ... of POINTS in thousandths of the image (null where not detected); box is
    the (x, y, w, h) frame of the drawn points, in the same units."""
    T = len(next(iter(points.values())))
    stride = max(1, math.ceil(T / max_frames))
    xy = np.stack([np.asarray(points[c][::stride, i, :2], dtype=np.float64) for c, i in POINTS], axis=1)
    xy = np.round(xy * 1000)
    framed = xy[:, FRAMED].reshape(-1, 2)
    framed = framed[np.isfinite(framed).all(1)]
    if len(framed):
        lo, hi = framed.min(0), framed.max(0)
        pad = 0.08 * max(hi - lo) + 10
        box = [int(lo[0] - pad), int(lo[1] - pad), int(hi[0] - lo[0] + 2 * pad), int(hi[1] - lo[1] + 2 * pad)]
    else:
        box = [0, 0, 1000, 1000]
    frames = [[None if not math.isfinite(v) else int(v) for v in row] for row in xy.reshape(len(xy), -1).tolist()]
    return {"fps": round(float(fps) / stride, 3) if fps and fps > 0 else 10.0, "box": box, "frames": frames}


def read_clips(cache_dir, ids: list[str], budget: int = KEYPOINT_BUDGET, keep: int = 0) -> tuple[dict, str]:
    """{id: stick_figure} for the clips `ids` (in that order) read from the cache, stopping once
    `budget` bytes of JSON are used (the first `keep` are taken whatever the budget), and a note
    for the page. A cache that cannot be read gives no clips and says why."""
    if not cache_dir:
        return {}, "no cache recorded in the summary: no keypoints to draw"
    try:
        from preprocess.store import open_cache

        cache = open_cache(cache_dir)
        row = {str(s): i for i, s in enumerate(cache.samples["id"])}
        fps = np.asarray(cache.samples.get("fps", np.full(len(row), 25.0)), dtype=float)
        names = ("pose", "left_hand", "right_hand")
        where = cache.keypoint_reader(names, budget_bytes=256 << 20)  # its index only: it reads no block
        clips, used = {}, 0
        for k, clip_id in enumerate(ids):
            if clip_id not in row:
                continue
            i = row[clip_id]
            # only this clip's frames (~70 kB for 150 frames), not the reader's block of 8,192 frames
            a = int(where.start[i])
            points = cache.read_shard(int(where.shard_of[i]), names, (a, a + int(where.lengths[i])))
            figure = stick_figure(points, fps[i])
            size = len(json.dumps(figure, separators=(",", ":")))
            if k >= keep and used + size > budget:
                break
            clips[clip_id], used = figure, used + size
    except Exception as e:  # a moved or damaged cache must not cost the rest of the report
        return {}, f"keypoints could not be read from the cache {cache_dir}: {type(e).__name__}: {e}"
    return clips, (f"keypoints of {len(clips)} of the split's clips are embedded (the worst by WER and an "
                   f"evenly spaced sample of the others), from {cache_dir}")


def table_columns(records: list[dict]) -> list[dict]:
    """Columns of the per-sample table: (key, label, type) for those the records have."""
    cols = [("id", "id", "str")]
    if any(str(r.get("split") or "") != str(records[0].get("split") or "") for r in records):
        cols.append(("split", "split", "str"))
    if any(r.get("signer") not in (None, "") for r in records):
        cols.append(("signer", "signer", "str"))
    if any(r.get("label") not in (None, "", r.get("reference")) for r in records):
        cols.append(("label", "label", "str"))
    cols += [("n_frames", "frames", "int"), ("wer", "WER", "num"), ("rank_v2t", "rank v→t", "int"),
             ("true_cosine", "cos(true)", "num"), ("ce", "CE", "num"), ("reference", "reference", "str"),
             ("greedy", "greedy", "str"), ("beam", "beam", "str"),
             ("retrieved_training", "nearest training sentence", "str")]
    seen, out = set(), []
    for key, label, kind in cols:
        if key not in seen and any(key in r for r in records):
            seen.add(key)
            out.append({"key": key, "label": label, "type": kind})
    return out


def page_records(records: list[dict]) -> list[dict]:
    """The records as the page embeds them: fewer keys, floats to 4 decimals."""
    def small(v):
        if isinstance(v, float):
            return round(v, 4) if math.isfinite(v) else None
        if isinstance(v, list):
            return [small(x) for x in v]
        if isinstance(v, dict):
            return {k: small(x) for k, x in v.items()}
        return v
    return [{k: small(v) for k, v in r.items() if k not in DROPPED} for r in records]


# ----------------------------------------------------------------------------- markdown -> HTML

def markdown_html(md: str) -> str:
    """The markdown subset report.summary_markdown writes (headings, paragraphs, pipe tables, bullet
    lists, **bold**, *italic*, `code`) as HTML. Everything is escaped."""
    out, para, lines = [], [], md.splitlines()

    def flush():
        if para:
            text = " ".join(para)
            cls = ' class="verdict"' if text.startswith(("**Collapsed.**", "**Not collapsed.**")) else ""
            out.append(f"<p{cls}>{_inline(text)}</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")), 4)
            out.append(f"<h{level + 1}>{_inline(line[level:].strip())}</h{level + 1}>")
        elif line.startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i].rstrip())
                i += 1
            out.append(_table_html(block))
            continue
        elif line.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return "\n".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _table_html(block: list[str]) -> str:
    head, rows = _cells(block[0]), [_cells(b) for b in block[1:] if not re.fullmatch(r"\|[\s:|-]*", b)]
    right = [c.endswith(":") for c in _cells(block[1])] if len(block) > 1 else []
    def td(tag, text, j):
        cls = ' class="num"' if j < len(right) and right[j] else ""
        return f"<{tag}{cls}>{_inline(text)}</{tag}>"
    body = "".join("<tr>" + "".join(td("td", c, j) for j, c in enumerate(r)) + "</tr>" for r in rows)
    return ('<div class="scroll"><table class="md"><thead><tr>' + "".join(td("th", c, j) for j, c in enumerate(head))
            + f"</tr></thead><tbody>{body}</tbody></table></div>")


def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for p in parts:
        if len(p) >= 2 and p.startswith("`") and p.endswith("`"):
            out.append(f"<code>{html.escape(p[1:-1])}</code>")
        else:
            p = html.escape(p, quote=False)
            p = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", p)
            p = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", p)
            out.append(p)
    return "".join(out)


# ----------------------------------------------------------------------------- the page

def write_html_report(out_dir, summary: dict, predictions: list[dict], examples: list[dict] | None = None,
                      cache=None, *, plots: list[Path] | None = None, worst: int = WORST,
                      max_clips: int = MAX_CLIPS, keypoint_budget: int = KEYPOINT_BUDGET) -> Path:
    """Write out_dir/report.html (see the module's doc) and return its path. `plots` (default: the
    PNGs in out_dir) are inlined; keypoints are read from `cache` (default summary["cache"])."""
    out_dir = Path(out_dir)
    cache = cache if cache is not None else summary.get("cache")
    worst_idx = worst_clips(predictions, worst)
    chosen = clips_to_embed(predictions, worst_idx, max_clips)
    clips, clip_note = read_clips(cache, [predictions[i]["id"] for i in chosen], keypoint_budget,
                                  keep=len(worst_idx)) if predictions else ({}, "no predictions")
    data = {
        "columns": table_columns(predictions),
        "records": page_records(predictions),
        "worst": worst_idx,
        "clip_order": [predictions[i]["id"] for i in chosen if predictions[i]["id"] in clips],
        "n_worst": sum(predictions[i]["id"] in clips for i in worst_idx),
        "clips": clips,
        "clip_note": clip_note,
        "edges": [list(e) for e in EDGES],
        "head": [_P[0], _P[11], _P[12]],
    }
    title = f"sign2text evaluation — {summary.get('run', '')} — split {summary.get('split', '')}"
    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
        for p in _plots(out_dir, plots))
    body = PAGE.format(
        title=html.escape(title),
        summary=markdown_html(report.summary_markdown(summary, examples)),
        plots=figures or "<p>No plots were written.</p>",
        worst=len(worst_idx),
        data=_script_json(data),
        style=STYLE,
        script=SCRIPT,
    )
    path = out_dir / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(path)
    return path


def _plots(out_dir: Path, plots=None) -> list[Path]:
    pngs = sorted(out_dir.glob("*.png")) if plots is None else [Path(p) for p in plots]
    order = {name: k for k, name in enumerate(PLOT_ORDER)}
    return sorted(pngs, key=lambda p: (order.get(p.name, len(order)), p.name))


def _script_json(data) -> str:
    """JSON safe inside <script type="application/json"> (no '</script>', no HTML comment opener)."""
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            .replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _or(v, default):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else default


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{title}</h1>
<nav><a href="#summary">summary</a> · <a href="#plots">plots</a> · <a href="#worst">worst clips</a> ·
<a href="#viewer">clip viewer</a> · <a href="#samples-section">all samples</a></nav></header>
<section id="summary">{summary}</section>
<section id="plots"><h2>Plots</h2><div class="plots">{plots}</div></section>
<section id="worst"><h2>The {worst} worst clips (per-sample WER)</h2>
<p class="note">Click a row to show the clip below.</p>
<div class="scroll"><table id="worst-table" class="data"><thead></thead><tbody></tbody></table></div></section>
<section id="viewer"><h2>Clip viewer</h2>
<p class="note" id="clip-note"></p>
<div class="controls"><label>clip <select id="clip-select"></select></label>
<button type="button" id="play">pause</button>
<input type="range" id="frame" min="0" max="0" value="0"> <span id="frame-label"></span></div>
<div class="viewer"><div id="figure"><svg id="stick" xmlns="http://www.w3.org/2000/svg" width="360" height="360"
 viewBox="0 0 1000 1000" role="img" aria-label="stick figure of the clip's keypoints"></svg>
<div class="legend"><span class="k pose"></span>pose <span class="k left"></span>left hand
<span class="k right"></span>right hand (the signer's)</div>
<p id="no-keypoints" hidden>This clip's keypoints are not embedded in the page (only the worst clips
and a sample of others are, to keep it small).</p></div>
<div id="details"></div></div></section>
<section id="samples-section"><h2>All samples</h2>
<div class="controls"><input id="filter" type="search" size="50"
 placeholder="filter: words, or column tests like wer>0.5 signer=s05 rank_v2t>=2">
<span id="count"></span></div>
<p class="note">Click a header to sort; click a row to show the clip in the viewer.</p>
<div class="scroll tall"><table id="samples" class="data"><thead></thead><tbody></tbody></table></div></section>
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;padding:0 16px 40px;color:#1d2329}
header{border-bottom:1px solid #ccd;margin-bottom:8px}
header h1{font-size:20px;margin:14px 0 4px}
nav{margin-bottom:8px}
a{color:#1f5fa8}
h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #e3e6ea}
h3{font-size:16px}
p.verdict{background:#f4f7fb;border-left:4px solid #1f5fa8;padding:8px 12px}
code{background:#f1f2f4;padding:0 3px;border-radius:3px;font-size:12px}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #dde1e6;padding:3px 7px;vertical-align:top}
th{background:#f4f5f7;text-align:left;position:sticky;top:0}
table.md td:first-child{white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow:auto;max-width:100%}
.tall{max-height:70vh}
table.data tbody tr{cursor:pointer}
table.data tbody tr:hover{background:#eef4fc}
table.data th{cursor:pointer;user-select:none;white-space:nowrap}
th.asc::after{content:" \\25B2"}
th.desc::after{content:" \\25BC"}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plots figure{margin:0}
.plots img{max-width:640px;width:100%;border:1px solid #e3e6ea}
figcaption{font-size:12px;color:#667}
.note{color:#667;font-size:13px}
.controls{margin:6px 0;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.viewer{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}
#stick{background:#fbfbfc;border:1px solid #dde1e6}
#stick line{stroke-width:2.5px;stroke-linecap:round;vector-effect:non-scaling-stroke}
#stick .pose{stroke:#505862}
#stick .left{stroke:#1f6fd1;stroke-width:1.8px}
#stick .right{stroke:#e0671b;stroke-width:1.8px}
#stick circle{fill:none;stroke:#505862;stroke-width:2.5px;vector-effect:non-scaling-stroke}
.legend{font-size:12px;color:#556}
.k{display:inline-block;width:14px;height:3px;margin:0 3px 3px 8px;vertical-align:middle}
.k.pose{background:#505862}
.k.left{background:#1f6fd1}
.k.right{background:#e0671b}
#details{flex:1;min-width:320px}
#details dt{font-weight:600;margin-top:6px}
#details dd{margin:0 0 0 0}
#details ol li.true{font-weight:600;color:#17702f}
tr.selected{background:#fff4d6 !important}
"""

SCRIPT = r"""
(function () {
"use strict";
const D = JSON.parse(document.getElementById("report-data").textContent);
const R = D.records, COLS = D.columns, colOf = {};
COLS.forEach(function (c) { colOf[c.key] = c; });
const row = new Map(R.map(function (r, i) { return [r.id, i]; }));
const NUMERIC = { num: 1, int: 1 };

function fmt(v, type) {
  if (v === null || v === undefined) return "";
  if (type === "num") return Number(v).toFixed(3);
  return String(v);
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function bodyRow(r, cols) {
  const tr = el("tr");
  tr.dataset.id = r.id;
  cols.forEach(function (c) { tr.appendChild(el("td", fmt(r[c.key], c.type), NUMERIC[c.type] ? "num" : "")); });
  return tr;
}
function header(table, cols) {
  const tr = el("tr");
  cols.forEach(function (c) {
    const th = el("th", c.label, NUMERIC[c.type] ? "num" : "");
    th.dataset.key = c.key;
    tr.appendChild(th);
  });
  table.tHead.replaceChildren(tr);
}
function onRowClick(table) {
  table.tBodies[0].addEventListener("click", function (ev) {
    const tr = ev.target.closest("tr");
    if (tr && tr.dataset.id) { show(tr.dataset.id, true); }
  });
}

// ---- the per-sample table: sort and filter
const samples = document.getElementById("samples");
const haystack = R.map(function (r) {
  return COLS.map(function (c) { return fmt(r[c.key], c.type); }).join(" \u0001 ").toLowerCase();
});
let sortKey = null, sortDir = 1, view = R.map(function (_, i) { return i; });
header(samples, COLS);

function compare(a, b, type) {
  const na = a === null || a === undefined, nb = b === null || b === undefined;
  if (na || nb) return na === nb ? 0 : (na ? 1 : -1);  // missing values last, either way
  if (NUMERIC[type]) return sortDir * (a - b);
  return sortDir * String(a).localeCompare(String(b));
}
function predicate(query) {
  const tests = [];
  query.trim().split(/\s+/).filter(Boolean).forEach(function (tok) {
    const m = tok.match(/^([A-Za-z_0-9]+)(<=|>=|!=|=|<|>)(.*)$/);
    if (m && colOf[m[1]]) {
      const c = colOf[m[1]], op = m[2], want = m[3], num = Number(want);
      const numeric = NUMERIC[c.type] && want !== "" && !isNaN(num);
      tests.push(function (i) {
        const v = R[i][c.key];
        if (numeric) {
          if (v === null || v === undefined) return false;
          return op === "<" ? v < num : op === ">" ? v > num : op === "<=" ? v <= num :
                 op === ">=" ? v >= num : op === "=" ? v === num : v !== num;
        }
        const s = fmt(v, c.type).toLowerCase(), w = want.toLowerCase();
        return op === "=" ? s === w : op === "!=" ? s !== w : op === "<" ? s < w : op === ">" ? s > w :
               op === "<=" ? s <= w : s >= w;
      });
    } else {
      const t = tok.toLowerCase();
      tests.push(function (i) { return haystack[i].indexOf(t) >= 0; });
    }
  });
  return function (i) { return tests.every(function (f) { return f(i); }); };
}
function render() {
  const keep = predicate(document.getElementById("filter").value);
  view = R.map(function (_, i) { return i; }).filter(keep);
  if (sortKey) {
    const type = colOf[sortKey].type;
    view.sort(function (a, b) { return compare(R[a][sortKey], R[b][sortKey], type) || a - b; });
  }
  const frag = document.createDocumentFragment();
  view.forEach(function (i) { frag.appendChild(bodyRow(R[i], COLS)); });
  samples.tBodies[0].replaceChildren(frag);
  document.getElementById("count").textContent = "showing " + view.length + " of " + R.length + " samples";
  Array.prototype.forEach.call(samples.tHead.rows[0].cells, function (th) {
    th.classList.toggle("asc", th.dataset.key === sortKey && sortDir === 1);
    th.classList.toggle("desc", th.dataset.key === sortKey && sortDir === -1);
  });
  markSelected();
}
samples.tHead.addEventListener("click", function (ev) {
  const th = ev.target.closest("th");
  if (!th) return;
  if (sortKey === th.dataset.key) {
    sortDir = -sortDir;
  } else {  // numbers: largest first; text: A to Z
    sortKey = th.dataset.key;
    sortDir = NUMERIC[colOf[sortKey].type] ? -1 : 1;
  }
  render();
});
document.getElementById("filter").addEventListener("input", render);
onRowClick(samples);

// ---- the worst clips
const worstTable = document.getElementById("worst-table");
const WORST_KEYS = ["id", "signer", "wer", "rank_v2t", "reference", "greedy"];
const WCOLS = COLS.filter(function (c) { return WORST_KEYS.indexOf(c.key) >= 0; });
header(worstTable, WCOLS);
D.worst.forEach(function (i) { worstTable.tBodies[0].appendChild(bodyRow(R[i], WCOLS)); });
onRowClick(worstTable);

// ---- the clip viewer: an animated stick figure and what the model made of the clip
const NS = "http://www.w3.org/2000/svg";
const svg = document.getElementById("stick");
const lines = D.edges.map(function (e) {
  const l = document.createElementNS(NS, "line");
  l.setAttribute("class", e[2]);
  svg.appendChild(l);
  return l;
});
const headCircle = document.createElementNS(NS, "circle");
svg.appendChild(headCircle);
const select = document.getElementById("clip-select"), slider = document.getElementById("frame");
const playButton = document.getElementById("play");
let clip = null, frame = 0, timer = null, current = null;

document.getElementById("clip-note").textContent = D.clip_note;
[["worst by WER", D.clip_order.slice(0, D.n_worst)], ["others", D.clip_order.slice(D.n_worst)]].forEach(function (g) {
  if (!g[1].length) return;
  const og = document.createElement("optgroup");
  og.label = g[0];
  g[1].forEach(function (id) {
    const r = R[row.get(id)], o = el("option", id + "  (WER " + fmt(r.wer, "num") + ")");
    o.value = id;
    og.appendChild(o);
  });
  select.appendChild(og);
});
select.addEventListener("change", function () { show(select.value, false); });

function setLine(l, f, a, b) {
  const xa = f[2 * a], ya = f[2 * a + 1], xb = f[2 * b], yb = f[2 * b + 1];
  if (xa === null || ya === null || xb === null || yb === null) { l.setAttribute("visibility", "hidden"); return; }
  l.setAttribute("x1", xa); l.setAttribute("y1", ya); l.setAttribute("x2", xb); l.setAttribute("y2", yb);
  l.setAttribute("visibility", "visible");
}
function draw() {
  const f = clip.frames[frame];
  D.edges.forEach(function (e, k) { setLine(lines[k], f, e[0], e[1]); });
  const n = D.head[0], a = D.head[1], b = D.head[2];
  if (f[2 * n] === null || f[2 * a] === null || f[2 * b] === null) {
    headCircle.setAttribute("visibility", "hidden");
  } else {
    const w = Math.hypot(f[2 * a] - f[2 * b], f[2 * a + 1] - f[2 * b + 1]);
    headCircle.setAttribute("cx", f[2 * n]); headCircle.setAttribute("cy", f[2 * n + 1]);
    headCircle.setAttribute("r", Math.max(5, 0.3 * w)); headCircle.setAttribute("visibility", "visible");
  }
  slider.value = frame;
  document.getElementById("frame-label").textContent = "frame " + (frame + 1) + " / " + clip.frames.length +
    " (" + clip.fps + " frames/s shown)";
}
function stop() { if (timer !== null) { clearInterval(timer); timer = null; } playButton.textContent = "play"; }
function play() {
  stop();
  if (!clip || clip.frames.length < 2) return;
  timer = setInterval(function () { frame = (frame + 1) % clip.frames.length; draw(); }, 1000 / Math.max(clip.fps, 1));
  playButton.textContent = "pause";
}
playButton.addEventListener("click", function () { if (timer === null) play(); else stop(); });
slider.addEventListener("input", function () { stop(); frame = Number(slider.value); draw(); });

function markSelected() {
  document.querySelectorAll("tr.selected").forEach(function (tr) { tr.classList.remove("selected"); });
  if (current === null) return;
  document.querySelectorAll("table.data tbody tr").forEach(function (tr) {
    if (tr.dataset.id === current) tr.classList.add("selected");
  });
}
function details(r) {
  const box = document.getElementById("details"), dl = el("dl");
  function item(term, value) {
    if (value === undefined || value === null) return;
    dl.appendChild(el("dt", term));
    dl.appendChild(el("dd", value));
  }
  item("clip", r.id + (r.signer ? "  (signer " + r.signer + ")" : ""));
  item("reference", r.reference);
  const wer = r.wer === null || r.wer === undefined ? "" : "   — WER " + fmt(r.wer, "num");
  item("hypothesis (greedy)", r.greedy + wer);
  if (r.beam !== undefined) item("hypothesis (beam)", r.beam);
  item("nearest training sentence (CLIP space)", r.retrieved_training === undefined ? undefined :
       r.retrieved_training + "   (cosine " + fmt(r.retrieved_training_cosine, "num") + ")");
  item("rank of the true sentence, video→text", r.rank_v2t === undefined ? undefined :
       r.rank_v2t + "   (cosine " + fmt(r.true_cosine, "num") + ")");
  box.replaceChildren(dl);
  if (r.top5) {
    box.appendChild(el("dt", "top-5 retrieved sentences of the split"));
    const ol = el("ol");
    r.top5.forEach(function (t) {
      ol.appendChild(el("li", t.text + "   (" + fmt(t.cosine, "num") + ")" + (t.text === r.reference ? "  ✓" : ""),
                        t.text === r.reference ? "true" : ""));
    });
    box.appendChild(ol);
  }
}
function show(id, scroll) {
  const i = row.get(id);
  if (i === undefined) return;
  current = id;
  details(R[i]);
  clip = D.clips[id] || null;
  stop();
  document.getElementById("no-keypoints").hidden = clip !== null;
  svg.style.display = clip ? "" : "none";
  if (clip) {
    select.value = id;
    svg.setAttribute("viewBox", clip.box.join(" "));
    frame = 0;
    slider.max = clip.frames.length - 1;
    draw();
    play();
  }
  markSelected();
  if (scroll) document.getElementById("viewer").scrollIntoView();
}

render();
if (D.clip_order.length) show(D.clip_order[0], false);
else if (R.length) show(R[D.worst.length ? D.worst[0] : 0].id, false);
})();
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s2t.html_report",
                                 description="write report.html again from an evaluation folder "
                                             "(summary.json, predictions.jsonl, *.png)")
    ap.add_argument("folder", type=Path, help="RUN/eval/SPLIT, as written by `python -m s2t eval`")
    ap.add_argument("--cache", help="read keypoints from this cache (default: the summary's)")
    ap.add_argument("--worst", type=int, default=WORST)
    ap.add_argument("--max-clips", type=int, default=MAX_CLIPS)
    a = ap.parse_args(argv)
    summary = json.loads((a.folder / "summary.json").read_text())
    predictions_file = a.folder / "predictions.jsonl"
    predictions = ([json.loads(line) for line in predictions_file.read_text().splitlines() if line.strip()]
                   if predictions_file.is_file() else [])
    path = write_html_report(a.folder, summary, predictions, summary.get("examples"), cache=a.cache,
                             worst=a.worst, max_clips=a.max_clips)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

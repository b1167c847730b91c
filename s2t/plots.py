"""PNG plots for a run's report: similarity histograms, training curves, retrieval ranks, examples.

Every function writes one file and returns its path; matplotlib runs headless (Agg).
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def similarity_histogram(pos: np.ndarray, neg: np.ndarray, path, title: str = "") -> Path:
    """Overlaid densities of same-sentence and different-sentence cosines: collapse shows as two
    histograms piled up together near 1; a healthy space shows them apart."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(-1, 1, 101)
    for values, name, colour in ((neg, "different sentence (NegSim)", "tab:red"),
                                 (pos, "same sentence (PosSim)", "tab:green")):
        values = np.asarray(values)
        if values.size:
            ax.hist(values, bins=bins, density=True, alpha=0.55, color=colour,
                    label=f"{name}: mean {values.mean():.3f}")
            ax.axvline(values.mean(), color=colour, lw=1.2, ls="--")
    if not np.asarray(pos).size:
        ax.plot([], [], " ", label="no two videos of the same sentence in this split")
    ax.set_xlabel("cosine similarity of two videos' embeddings")
    ax.set_ylabel("density")
    ax.set_title(title or "pair similarities")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def read_jsonl(path) -> list[dict]:
    """The records of a metrics.jsonl (blank and unparsable trailing lines are skipped: a run may
    be writing the file right now)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict)]


SKIP_FIELDS = {"epoch", "time", "elapsed", "wall_time", "n_samples", "bad_steps"}


def _numeric_series(records: list[dict], x_key: str) -> dict[str, dict[str, tuple[list, list]]]:
    """{quantity: {split: (steps, values)}} for every numeric field, in first-seen order; nested
    dicts flatten to 'a/b'; records without a 'split' field count as 'train'."""
    series: dict[str, dict[str, tuple[list, list]]] = {}
    for r in records:
        if x_key not in r:
            continue
        split = r["split"] if isinstance(r.get("split"), str) else "train"
        for key, value in _flatten(r).items():
            if key == x_key or key in SKIP_FIELDS:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                xs, ys = series.setdefault(key, {}).setdefault(split, ([], []))
                xs.append(r[x_key])
                ys.append(value)
    return series


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def training_curves(metrics_jsonl, path, x_key: str = "step") -> Path | None:
    """One small panel per logged quantity (loss parts, lr, validation metrics) against the step,
    train and val of the same quantity in the same panel.

    The trainer's record layout is not assumed beyond a step field (and an optional 'split'):
    whatever numeric fields it logs are drawn. None when the file has nothing to plot.
    """
    series = _numeric_series(read_jsonl(metrics_jsonl), x_key)
    if not series:
        return None
    names = list(series)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for split, (xs, ys) in series[name].items():
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, lw=1, label=split)
        only = next(iter(series[name])) if len(series[name]) == 1 else None
        ax.set_title(name if only in (None, "train") else f"{name} ({only})", fontsize=9)
        ax.tick_params(labelsize=7)
        if len(series[name]) > 1:
            ax.legend(fontsize=7)
        if name == "neg_sim":  # the collapse line the verdict uses
            ax.axhline(0.8, color="tab:red", lw=0.8, ls=":")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.supxlabel(x_key)
    fig.tight_layout()
    return _save(fig, path)


def rank_histogram(ranks_v2t, ranks_t2v, gallery_size: int, path, n_videos: int | None = None,
                   clip_at: int = 30) -> Path:
    """Where the right answer lands, both directions.

    Top: how many queries have their first correct item at rank 1, 2, ... (ranks above `clip_at`
    share the last bar). Bottom: Recall@k for every k against what random scores would give.
    """
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    panels = ((0, ranks_v2t, f"video→text ({gallery_size} distinct sentences)", gallery_size),
              (1, ranks_t2v, f"text→video ({n_videos or 'all'} videos)", n_videos))
    for col, ranks, title, size in panels:
        ranks = np.asarray(ranks)
        top, bottom = axes[0, col], axes[1, col]
        if not ranks.size:
            continue
        clipped = np.minimum(ranks, clip_at + 1)
        counts = np.bincount(clipped, minlength=clip_at + 2)[1:]
        top.bar(np.arange(1, clip_at + 2), counts, color="tab:blue", width=0.85)
        top.set_xticks([1, 5, 10, 20, clip_at + 1], ["1", "5", "10", "20", f">{clip_at}"],
                       fontsize=8)
        top.set_title(f"{title}\nRet@1 {np.mean(ranks <= 1):.1%}  Ret@5 {np.mean(ranks <= 5):.1%}"
                      f"  Ret@10 {np.mean(ranks <= 10):.1%}  median rank {np.median(ranks):.0f}",
                      fontsize=9)
        top.set_xlabel("rank of the first correct item")
        top.set_ylabel("queries")
        ks = np.arange(1, int(max(ranks.max(), size or 1)) + 1)
        bottom.plot(ks, np.searchsorted(np.sort(ranks), ks, side="right") / ranks.size,
                    label="model")
        if col == 0 and size:  # one right sentence among `size`: chance Recall@k = k / size
            bottom.plot(ks, np.minimum(ks / size, 1), color="grey", ls=":", label="chance")
        bottom.set_xscale("log")
        bottom.set_ylim(0, 1.02)
        bottom.set_xlabel("k")
        bottom.set_ylabel("Recall@k")
        bottom.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def examples_figure(examples: list[dict], path, width: int = 40) -> Path:
    """A table of example translations: reference | model output | the output from another sample's
    video | nearest training sentence (columns that no example has are left out)."""
    columns = [("reference", "reference"), ("hypothesis", "model"),
               ("swapped", "model, another sample's video"), ("retrieved", "nearest training sentence")]
    columns = [c for c in columns if any(e.get(c[0]) for e in examples)] or columns[:2]
    cells = [["\n".join(textwrap.wrap(str(e.get(k, "")), width)) or "(empty)" for k, _ in columns]
             for e in examples]
    lines = [max(c.count("\n") + 1 for c in row) for row in cells] or [1]
    fig, ax = plt.subplots(figsize=(3.4 * len(columns), 0.6 + 0.22 * sum(lines) + 0.15 * len(lines)))
    ax.axis("off")
    if cells:
        table = ax.table(cellText=cells, colLabels=[t for _, t in columns], loc="upper center",
                         cellLoc="left", colLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        total = sum(lines) + 1
        for (r, _), cell in table.get_celld().items():
            cell.set_height((lines[r - 1] if r else 1) / total * 0.95)
            if r and examples[r - 1].get("hypothesis") == examples[r - 1].get("reference"):
                cell.set_facecolor("#e3f4e3")  # exact match
    ax.set_title("example translations", fontsize=10)
    return _save(fig, path)

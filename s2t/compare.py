"""`python -m s2t compare RUN [RUN ...] [--split test] [--out FILE]`: runs side by side.

Reads each run's eval/<split>/summary.json (written by `s2t eval`) and prints one markdown table,
one column per run, with the collapse verdict of each run underneath. Runs whose config.yaml and
cache differ only in `seed` form a group: a second table gives each metric's mean ± sd (n) over
the group's seeds (sd with n - 1; a group of one run shows its value and n = 1).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import yaml

from . import report

# Top-level summary keys worth comparing across runs, with the baselines after them.
ROWS = report.EMBEDDING_ROWS + report.GENERATION_ROWS + [
    ("visual_dependence_wer", "visual dependence: WER rise when video swapped", "{:+.3f}"),
    ("visual_dependence_bleu4", "visual dependence: BLEU-4 drop when video swapped", "{:+.2f}"),
    ("visual_dependence_changed", "visual dependence: outputs that change when video swapped", "{:.1%}"),
    ("visual_dependence_ret1_v2t", "visual dependence: Ret@1 drop when video swapped", "{:+.1%}"),
    ("wer_beam", "WER (beam)", "{:.3f}"),
    ("bleu4_beam", "BLEU-4 (beam)", "{:.2f}"),
    ("wer_rerank", "WER (reranked with training sentences)", "{:.3f}"),
    ("bleu4_rerank", "BLEU-4 (reranked)", "{:.2f}"),
    ("retrieved_rate_rerank", "reranked: answers that are training sentences", "{:.1%}"),
    ("baseline_most_frequent_wer", "baseline WER: most frequent sentence", "{:.3f}"),
    ("baseline_retrieval_wer", "baseline WER: nearest training sentence", "{:.3f}"),
    ("baseline_retrieval_bleu4", "baseline BLEU-4: nearest training sentence", "{:.2f}"),
    ("n_samples", "samples", "{:.0f}"),
    ("gallery_size", "distinct sentences (gallery)", "{:.0f}"),
]


def summary_path(run: Path, split: str) -> Path:
    return Path(run) / "eval" / split / "summary.json"


def load_summaries(runs, split: str) -> dict[str, dict]:
    """{run name: flat summary}; a run without an evaluation is an error that says what to run."""
    out = {}
    for run in runs:
        path = summary_path(run, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `python -m s2t eval --run {run} --split {split}` first")
        data = json.loads(path.read_text())
        flat = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
        for name, metrics in (data.get("baselines") or {}).items():
            flat.update({f"baseline_{name}_{k}": v for k, v in metrics.items()})
        for k, v in (data.get("beam") or {}).items():
            flat[f"{k}_beam"] = v
        name = Path(run).name
        out[name if name not in out else str(run)] = {**flat, "_verdict": report.verdict(data)}
    return out


def seed_groups(runs) -> dict[str, list[Path]]:
    """{group name: runs} for runs whose config (without `seed`) and cache are the same, in the
    order given. A run without a config.yaml is a group of its own."""
    groups: dict[str, list[Path]] = {}
    seen = set()
    for run in map(Path, runs):
        if run.resolve() in seen:  # the same run twice is not a second seed
            continue
        seen.add(run.resolve())
        config, info = run / "config.yaml", run / "run.json"
        if config.is_file():
            cfg = yaml.safe_load(config.read_text()) or {}
            cfg.pop("seed", None)
            cache = json.loads(info.read_text()).get("cache") if info.is_file() else None
            key = json.dumps([cfg, cache], sort_keys=True)
        else:
            key = str(run)
        groups.setdefault(key, []).append(run)
    return {_group_name(members): members for members in groups.values()}


def _group_name(runs: list[Path]) -> str:
    names = [r.name for r in runs]
    if len(names) == 1:
        return names[0]
    stem = os.path.commonprefix(names).rstrip("-_.")
    stem = stem[:-4].rstrip("-_.") if stem.lower().endswith("seed") else stem
    return f"{stem or names[0]} ({len(names)} seeds)"


def aggregate(summaries: list[dict], keys) -> dict[str, tuple[float, float, int]]:
    """{key: (mean, sd, n)} over the runs that have a finite value of it (sd NaN when n < 2)."""
    out = {}
    for key in keys:
        values = [s[key] for s in summaries if report._num(s.get(key))]
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            out[key] = (statistics.fmean(values), sd, len(values))
    return out


def seeds_markdown(groups: dict[str, list[Path]], summaries_by_run: dict[Path, dict]) -> str:
    """One column per group of seeds: mean ± sd (n) of each metric."""
    cols = {name: aggregate([summaries_by_run[r] for r in runs], [k for k, _, _ in ROWS])
            for name, runs in groups.items()}
    rows = [r for r in ROWS if any(r[0] in c for c in cols.values())]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for key, label, fmt in rows:
        cells = []
        for agg in cols.values():
            if key not in agg:
                cells.append("")
                continue
            mean, sd, n = agg[key]
            spread = f" ± {_format_sd(fmt, sd)}" if math.isfinite(sd) else ""
            cells.append(f"{fmt.format(mean)}{spread} ({n})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    members = "\n".join(f"- **{name}**: " + ", ".join(str(r) for r in runs) for name, runs in groups.items())
    return "\n".join(lines) + "\n\n" + members


def _format_sd(fmt: str, sd: float) -> str:
    """The sd in the metric's own format, without a forced sign."""
    return fmt.replace("+", "").format(sd)


def compare_markdown(summaries: dict[str, dict], split: str, seeds: str | None = None) -> str:
    table = report.markdown_table(summaries, ROWS)
    verdicts = "\n".join(f"- **{name}**: {s['_verdict']}" for name, s in summaries.items())
    md = f"# Runs compared on split `{split}`\n\n{table}\n\n## Verdicts\n\n{verdicts}\n"
    if seeds:
        md += f"\n## Over seeds: mean ± sd (n runs)\n\nRuns whose config differs only in `seed`.\n\n{seeds}\n"
    return md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s2t compare", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each evaluated with `s2t eval`)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    try:
        summaries = load_summaries(args.runs, args.split)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    groups = seed_groups(args.runs)
    by_run = dict(zip(args.runs, summaries.values()))
    seeds = seeds_markdown(groups, by_run) if any(len(r) > 1 for r in groups.values()) else None
    md = compare_markdown(summaries, args.split, seeds)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md)
    return 0

"""`python -m s2t compare RUN [RUN ...] [--split test] [--out FILE]`: runs side by side.

Reads each run's eval/<split>/summary.json (written by `s2t eval`) and prints one markdown table,
one column per run, with the collapse verdict of each run underneath.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import report

# Top-level summary keys worth comparing across runs, with the baselines after them.
ROWS = report.EMBEDDING_ROWS + report.GENERATION_ROWS + [
    ("visual_dependence_wer", "visual dependence: WER rise when video swapped", "{:+.3f}"),
    ("visual_dependence_bleu4", "visual dependence: BLEU-4 drop when video swapped", "{:+.2f}"),
    ("visual_dependence_changed", "visual dependence: outputs that change when video swapped", "{:.1%}"),
    ("visual_dependence_ret1_v2t", "visual dependence: Ret@1 drop when video swapped", "{:+.1%}"),
    ("wer_beam", "WER (beam)", "{:.3f}"),
    ("bleu4_beam", "BLEU-4 (beam)", "{:.2f}"),
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


def compare_markdown(summaries: dict[str, dict], split: str) -> str:
    table = report.markdown_table(summaries, ROWS)
    verdicts = "\n".join(f"- **{name}**: {s['_verdict']}" for name, s in summaries.items())
    return f"# Runs compared on split `{split}`\n\n{table}\n\n## Verdicts\n\n{verdicts}\n"


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
    md = compare_markdown(summaries, args.split)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md)
    return 0

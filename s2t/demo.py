"""`make demo` / `make ablation`: the collapse and its fix, side by side, on the built-in corpus.

    python -m s2t.demo [--scale tiny|small|full|hard] [--ablation] [--fresh] [--seeds N]

1. generate the synthetic corpus (preprocess.synthetic) unless it is there,
2. build (or reuse) its cache through the real `make features` path,
3. train seed_baseline and recommended, each with its own recipe but the model shrunk to CPU size
   (configs/train/cpu_scale.yaml) and the same budget of training samples (configs/demo/<scale>.yaml),
4. evaluate both on the held-out signer and print one table.
--ablation adds one run per change of the recommended recipe undone alone (configs/demo/ablation.yaml).
--seeds N (N > 1) trains every configuration N times, runs <name>-seed0 .. <name>-seed<N-1> with
seed=k, and the tables give each metric's mean ± sd (n) over them (`s2t.compare.aggregate`).
Each stage is the real command line (`python -m s2t train`, `python -m s2t eval`), run as a subprocess.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import compare
from preprocess import settings

from .config import load_config

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("seed_baseline", "recommended")
CPU_SCALE = ROOT / "configs" / "train" / "cpu_scale.yaml"
COLUMNS = [  # (summary key, header, format)
    ("pos_sim", "PosSim", "{:.3f}"), ("neg_sim", "NegSim", "{:.3f}"), ("gap", "gap", "{:.3f}"),
    ("ret1_v2t", "Ret@1 v→t", "{:.3f}"), ("ret1_t2v", "Ret@1 t→v", "{:.3f}"), ("wer", "WER", "{:.3f}"),
    ("bleu4", "BLEU-4", "{:.1f}"), ("visual_dependence_wer", "vis.dep. (ΔWER)", "{:+.3f}"),
    ("wer_rerank", "WER reranked", "{:.3f}"), ("bleu4_rerank", "BLEU-4 reranked", "{:.1f}"),
]


GROUP_COLUMNS = [("ret1_v2t", "Ret@1 v→t", "{:.3f}"), ("keypoint_nn_ret1", "keypoint NN Ret@1", "{:.3f}"),
                 ("neg_sim", "NegSim", "{:.3f}"), ("wer", "WER", "{:.3f}"),
                 ("retrieval_wer", "retrieval WER", "{:.3f}"), ("wer_rerank", "WER reranked", "{:.3f}"),
                 ("visual_dependence_wer", "vis.dep. (ΔWER)", "{:+.3f}")]


def _run(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


@dataclass
class DemoScale:
    """configs/demo/<scale>.yaml: one corpus scale of the demo and how it is trained and scored."""
    corpus_scale: str = "full"   # preprocess.synthetic SCALES
    train: dict = field(default_factory=dict)  # training settings (TrainConfig keys) for every run
    beam: int = 0                # eval --beam (0: greedy only)
    by: str | None = None        # eval --by: metrics per group (e.g. signer)
    batch_cap: int = 0           # at most this batch size (a corpus with fewer samples than a batch)


def load_scale(scale: str) -> DemoScale:
    demo = settings.load(DemoScale, [ROOT / "configs" / "demo" / f"{scale}.yaml"])
    load_config(None, settings.as_overrides(demo.train))  # its training settings are checked now
    return demo


def train_and_eval(name: str, preset: str, overrides: list[str], cache: Path, runs: Path, demo: DemoScale,
                   fresh: bool) -> tuple[dict, dict]:
    """Train one configuration with the demo's sample budget and evaluate it on the test signer."""
    run = runs / name
    summary = run / "eval" / "test" / "summary.json"
    own = ROOT / "configs" / "train" / f"cpu_scale_{preset}.yaml"  # what one preset needs at CPU size
    config = [ROOT / "configs" / "train" / f"{preset}.yaml", CPU_SCALE, *([own] if own.exists() else [])]
    wanted = settings.as_overrides(demo.train) + overrides  # the scale's budget, in samples (config.SampleBudget)
    if demo.batch_cap and load_config(config, wanted).batch_size > demo.batch_cap:
        wanted.append(f"batch_size={demo.batch_cap}")  # tiny corpus: fewer samples than a batch
    stamp = run / "demo_args.json"
    # a finished run is reused only if its presets still say the same (an edited preset retrains)
    args = {"config": [str(c) for c in config],
            "config_sha256": [hashlib.sha256(c.read_bytes()).hexdigest() for c in config],
            "overrides": wanted, "cache": str(cache)}
    same = stamp.exists() and json.loads(stamp.read_text()) == args
    timing = {}
    if summary.exists() and same and not fresh:
        print(f"[{name}] reusing the finished run {run}")
        return json.loads(summary.read_text()), timing
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    stamp.write_text(json.dumps(args))
    py = sys.executable
    timing["train_s"] = _run([py, "-m", "s2t", "train", "--cache", str(cache), "--config", str(config[0]),
                              *[a for c in config[1:] for a in ("--config-overlay", str(c))], "--run", str(run), *wanted])
    timing["eval_s"] = _run([py, "-m", "s2t", "eval", "--run", str(run), "--split", "test",
                             *(["--beam", str(demo.beam)] if demo.beam else []),
                             *(["--by", demo.by] if demo.by else [])])
    (run / "demo_timing.json").write_text(json.dumps(timing))
    return json.loads(summary.read_text()), timing


def table(rows: dict[str, dict], reference: str | None = None, columns=None) -> str:
    columns = columns or COLUMNS
    head = "| run | " + " | ".join(h for _, h, _ in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for name, s in rows.items():
        cells = []
        for key, _, fmt in columns:
            v = s.get(key)
            if key == "gap" and v is None and s.get("pos_sim") is not None:
                v = s["pos_sim"] - s["neg_sim"]
            cell = "–" if v is None else fmt.format(v)
            if reference and name != reference and v is not None and rows[reference].get(key) is not None:
                cell += f" ({v - rows[reference][key]:+.3f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_rows(results: dict[str, dict], column: str) -> dict[str, dict]:
    """One table row per run and group (e.g. test signer), from each summary's `by` section, with
    the training-free keypoint baseline and the nearest-training-sentence WER beside them."""
    rows = {}
    for name, s in results.items():
        for value, g in s.get("by", {}).get(column, {}).items():
            base = g.get("baselines", {})
            rows[f"{name} / {column} {value}"] = {
                **g, "keypoint_nn_ret1": base.get("keypoint_nn", {}).get("ret1_v2t"),
                "retrieval_wer": base.get("retrieval", {}).get("wer")}
    return rows


def seed_runs(name: str, seeds: int) -> list[tuple[str, list[str]]]:
    """The runs of one configuration as (run name, extra overrides): the configuration itself with
    its own seed when seeds <= 1, else name-seed0 .. name-seed<seeds-1> with seed=k."""
    return [(name, [])] if seeds <= 1 else [(f"{name}-seed{k}", [f"seed={k}"]) for k in range(seeds)]


def _with_gap(s: dict) -> dict:
    if s.get("gap") is None and s.get("pos_sim") is not None and s.get("neg_sim") is not None:
        return {**s, "gap": s["pos_sim"] - s["neg_sim"]}
    return s


def over_seeds(groups: dict[str, list[dict]], columns=None) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{configuration: {key: (mean, sd, n)}} over its seeds' summaries (`compare.aggregate`: sd with
    n - 1, NaN for one run; a run without a finite value of a key is left out of that key's n)."""
    keys = [k for k, _, _ in (columns or COLUMNS)]
    return {name: compare.aggregate([_with_gap(s) for s in runs], keys) for name, runs in groups.items()}


def seed_table(groups: dict[str, list[dict]], reference: str | None = None, columns=None) -> str:
    """One row per configuration, each cell mean ± sd (n) over its seeds; with a reference
    configuration, the difference of the means in brackets."""
    columns = columns or COLUMNS
    agg = over_seeds(groups, columns)
    lines = ["| run | " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, a in agg.items():
        cells = []
        for key, _, fmt in columns:
            if key not in a:
                cells.append("–")
                continue
            mean, sd, n = a[key]
            spread = f" ± {fmt.replace('+', '').format(sd)}" if math.isfinite(sd) else ""  # sd unsigned
            cell = f"{fmt.format(mean)}{spread} ({n})"
            if reference and name != reference and key in agg.get(reference, {}):
                cell += f" ({mean - agg[reference][key][0]:+.3f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_group_rows(groups: dict[str, list[dict]], column: str) -> dict[str, list[dict]]:
    """`group_rows` over seeds: {"<configuration> / <column> <value>": that group's row of each seed}."""
    rows: dict[str, list[dict]] = {}
    for name, runs in groups.items():
        for s in runs:
            for key, row in group_rows({name: s}, column).items():
                rows.setdefault(key, []).append(row)
    return rows


def compare_json(over: dict) -> dict:
    """over_seeds as JSON: [mean, sd, n] lists, null for an undefined sd."""
    if "over_seeds" not in over:
        return over
    return {**over, "over_seeds": {c: {k: [m, sd if math.isfinite(sd) else None, n] for k, (m, sd, n) in a.items()}
                                   for c, a in over["over_seeds"].items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s2t.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="full", choices=["tiny", "small", "full", "hard", "signers", "open"],
                   help="corpus size and training budget (configs/demo/<scale>.yaml); full <= 20 min here; "
                        "hard: a harder corpus (fewer clips per sentence, more signer spread), same budget; "
                        "signers: unseen people, one of them left-handed (results per test signer); "
                        "open: test sentences never seen in training")
    p.add_argument("--ablation", action="store_true", help="also undo each recommended change alone")
    p.add_argument("--fresh", action="store_true", help="retrain even where a finished run exists")
    p.add_argument("--data", help="corpus folder (default data/demo/<scale>)")
    p.add_argument("--cache", default=str(ROOT / "cache"), help="cache root (default cache/)")
    p.add_argument("--runs", help="runs folder (default runs/demo-<scale>)")
    p.add_argument("--jobs", type=int, default=None, help="feature extraction workers")
    p.add_argument("--seeds", type=int, default=1,
                   help="train every configuration with this many seeds (runs <name>-seed0.., seed=k); "
                        "the tables give mean ± sd (n) over them (default 1: one run, the config's seed)")
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error("--seeds must be at least 1")
    demo = load_scale(a.scale)
    data = Path(a.data or ROOT / "data" / "demo" / a.scale)
    runs = Path(a.runs or ROOT / "runs" / f"demo-{a.scale}")
    t_start = time.perf_counter()

    manifest = data / "manifest.csv"
    if not manifest.exists():
        from preprocess.synthetic import generate_corpus
        generate_corpus(data, scale=demo.corpus_scale, seed=0)
    from preprocess.features import build_cache
    res = build_cache(manifest, a.cache, jobs=a.jobs)
    print(f"cache: {res.path} ({res.n_samples} samples; {'reused' if res.reused_keypoints else 'built'})")

    timings = {}

    def run_seeds(config: str, run_name: str, preset: str, overrides: list[str]) -> dict[str, dict]:
        """{run name: summary} of one configuration's seeds (one run when --seeds 1)."""
        summaries = {}
        for name, extra in seed_runs(run_name, a.seeds):
            summaries[name], timings[name if a.seeds > 1 else config] = train_and_eval(
                name, preset, overrides + extra, res.path, runs, demo, a.fresh)
        return summaries

    def tables(groups: dict[str, dict[str, dict]], reference: str | None = None) -> tuple[str, str | None]:
        """The table of the configurations (mean ± sd (n) over seeds when there are several, then
        each run) and, when the scale names a column, its per-group table."""
        if a.seeds == 1:
            flat = {c: next(iter(r.values())) for c, r in groups.items()}
            by = table(group_rows(flat, demo.by), columns=GROUP_COLUMNS) if demo.by else None
            return table(flat, reference=reference), by
        lists = {c: list(r.values()) for c, r in groups.items()}
        main_table = (seed_table(lists, reference=reference) + "\n\nEach run:\n\n"
                      + table({n: s for r in groups.values() for n, s in r.items()}))
        by = seed_table(seed_group_rows(lists, demo.by), columns=GROUP_COLUMNS) if demo.by else None
        return main_table, by

    seeds_of = {preset: run_seeds(preset, preset, preset, []) for preset in PRESETS}
    results = {n: s for r in seeds_of.values() for n, s in r.items()}
    main_table, by_table = tables(seeds_of)
    out = ["## Demo: seed baseline vs recommended", "",
           f"Held-out signer (test split), corpus scale `{a.scale}`, command `make demo DEMO_SCALE={a.scale}"
           + (f" SEEDS={a.seeds}`. Each configuration trained with seeds 0..{a.seeds - 1}: mean ± sd (n runs), "
              "sd with n − 1." if a.seeds > 1 else "`."), "", main_table]
    if by_table:
        out += ["", f"Per {demo.by} (keypoint NN: training-free nearest neighbour on keypoint paths; "
                    "retrieval WER: answering the nearest training sentence in the run's CLIP space):", "",
                by_table]
    over = {"seeds": a.seeds}
    if a.seeds > 1:
        over["over_seeds"] = over_seeds({c: list(r.values()) for c, r in seeds_of.items()})
    if a.ablation:
        scale_ablation = ROOT / "configs" / "demo" / f"ablation_{a.scale}.yaml"  # e.g. the signers' own
        variants = yaml.safe_load((scale_ablation if scale_ablation.exists() else
                                   ROOT / "configs" / "demo" / "ablation.yaml").read_text())
        abl = {"recommended": seeds_of["recommended"]}
        for name, overrides in variants.items():
            abl[name] = run_seeds(name, f"ablation-{name}", "recommended", overrides)
        abl_table, abl_by = tables(abl, reference="recommended")
        out += ["", "## Ablation: recommended with one change undone (delta vs recommended)", "", abl_table]
        if abl_by:
            out += ["", f"Ablation per {demo.by}:", "", abl_by]
        if a.seeds > 1:
            over["over_seeds"].update(over_seeds({c: list(r.values()) for c, r in abl.items()}))
    total = time.perf_counter() - t_start
    out += ["", f"Total wall time: {total / 60:.1f} min. Reports: " +
            ", ".join(str(runs / n / "eval" / "test" / "summary.md") for n in results)]
    text = "\n".join(out)
    print("\n" + text)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / ("ablation.md" if a.ablation else "demo.md")).write_text(text + "\n")
    (runs / ("ablation.json" if a.ablation else "demo.json")).write_text(
        json.dumps({"scale": a.scale, "results": results, "timings": timings, "total_s": total,
                    **compare_json(over)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

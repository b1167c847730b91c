"""`make demo SEEDS=N`: every configuration trained N times (seed=k), tables of mean ± sd (n).

Cheap: the aggregation and the tables on made-up summaries, and `s2t.demo.main` with training and
evaluation replaced by a stand-in that records what it was asked to run (the real end-to-end
demo is tests/test_demo.py; with seeds it would take minutes).
"""
import json
import statistics

import pytest

from s2t import demo
from s2t.config import load_config


def fake_summary(ret1: float, wer: float, by: dict | None = None) -> dict:
    return {"pos_sim": 0.9, "neg_sim": 0.1 + ret1 / 10, "ret1_v2t": ret1, "ret1_t2v": ret1, "wer": wer, "bleu4": 50.0,
            "visual_dependence_wer": 0.5, **({"by": by} if by else {})}


def test_seed_table_is_mean_sd_n_of_each_metric():
    groups = {"seed_baseline": [fake_summary(0.1, 0.9), fake_summary(0.2, 0.7), fake_summary(0.3, 0.8)],
              "recommended": [fake_summary(0.9, 0.1)]}
    agg = demo.over_seeds(groups)
    mean, sd, n = agg["seed_baseline"]["ret1_v2t"]
    assert (mean, sd, n) == (pytest.approx(0.2), pytest.approx(statistics.stdev([0.1, 0.2, 0.3])), 3)
    # the gap is derived where a summary lacks it, as the one-run table does
    assert agg["seed_baseline"]["gap"][0] == pytest.approx(0.9 - statistics.fmean([0.11, 0.12, 0.13]))
    text = demo.seed_table(groups, reference="recommended")
    row = next(line for line in text.splitlines() if line.startswith("| seed_baseline |"))
    assert "0.200 ± 0.100 (3)" in row and "0.800 ± 0.100 (3)" in row  # Ret@1 v→t, WER
    assert "(-0.700)" in row  # difference of the means from the reference configuration
    rec = next(line for line in text.splitlines() if line.startswith("| recommended |"))
    assert "0.900 (1)" in rec and "±" not in rec  # one run: no sd
    # a metric a run lacks is left out of that metric's n
    groups["recommended"].append({"ret1_v2t": 0.7})
    assert demo.over_seeds(groups)["recommended"]["ret1_v2t"][2] == 2
    assert demo.over_seeds(groups)["recommended"]["wer"][2] == 1


def test_group_rows_are_aggregated_per_configuration_and_group():
    by = lambda a, b: {"signer": {"s04": {**fake_summary(a, 0.1), "n_samples": 10},  # noqa: E731
                                  "s05": {**fake_summary(b, 0.3), "n_samples": 10}}}
    groups = {"recommended": [fake_summary(0.9, 0.2, by(0.9, 0.5)), fake_summary(0.8, 0.2, by(0.7, 0.6))]}
    rows = demo.seed_group_rows(groups, "signer")
    assert set(rows) == {"recommended / signer s04", "recommended / signer s05"}
    text = demo.seed_table(rows, columns=demo.GROUP_COLUMNS)
    assert "| recommended / signer s05 | 0.550 ± 0.071 (2) |" in text


def test_seed_runs_are_named_and_seeded():
    assert demo.seed_runs("recommended", 1) == [("recommended", [])]
    assert demo.seed_runs("ablation-x", 3) == [(f"ablation-x-seed{k}", [f"seed={k}"]) for k in range(3)]
    assert load_config(["configs/train/recommended.yaml", "configs/train/cpu_scale.yaml"], ["seed=2"]).seed == 2


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """demo.main with a made-up corpus, cache and training: records (run, preset, overrides)."""
    calls = []

    def train_and_eval(name, preset, overrides, cache, runs, cfg, fresh):
        seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
        calls.append((name, preset, overrides))
        base = 0.9 if preset == "recommended" else 0.1
        return fake_summary(base + 0.01 * seed, 0.5 - 0.1 * seed), {"train_s": 1.0}

    class Built:
        path, n_samples, reused_keypoints = tmp_path / "cache", 1, True

    monkeypatch.setattr(demo, "train_and_eval", train_and_eval)
    monkeypatch.setattr("preprocess.features.build_cache", lambda *a, **k: Built())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.csv").write_text("id,path,text\n")
    return calls, ["--scale", "tiny", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]


def test_demo_runs_every_configuration_with_each_seed(stand_in, tmp_path, capsys):
    calls, args = stand_in
    assert demo.main(args + ["--seeds", "3"]) == 0
    assert [(n, p) for n, p, _ in calls] == [(f"{p}-seed{k}", p) for p in demo.PRESETS for k in range(3)]
    assert all(o == [f"seed={n[-1]}"] for n, _, o in calls)
    out = capsys.readouterr().out
    rec = next(line for line in out.splitlines() if line.startswith("| recommended |"))
    assert "0.910 ± 0.010 (3)" in rec and "0.400 ± 0.100 (3)" in rec  # Ret@1 v→t over seeds 0,1,2; WER
    assert "| recommended-seed2 |" in out  # and each run
    saved = json.loads((tmp_path / "runs" / "demo.json").read_text())
    assert saved["seeds"] == 3 and len(saved["results"]) == 6
    assert saved["over_seeds"]["recommended"]["ret1_v2t"] == [pytest.approx(0.91), pytest.approx(0.01), 3]


def test_one_seed_keeps_the_plain_run_names_and_table(stand_in, tmp_path, capsys):
    calls, args = stand_in
    assert demo.main(args) == 0
    assert calls == [(p, p, []) for p in demo.PRESETS]
    out = capsys.readouterr().out
    assert "| recommended | 0.900 | 0.190 | 0.710 | 0.900 |" in out and "±" not in out  # PosSim NegSim gap Ret@1
    assert set(json.loads((tmp_path / "runs" / "demo.json").read_text())["results"]) == set(demo.PRESETS)


def test_ablation_runs_each_variant_with_each_seed(stand_in, capsys):
    calls, args = stand_in
    assert demo.main(args + ["--seeds", "2", "--ablation"]) == 0
    names = [n for n, _, _ in calls]
    assert "ablation-no_clip_loss-seed1" in names and "recommended-seed1" in names
    assert names.count("recommended-seed0") == 1  # the recommended runs are shared with the demo table
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| no_clip_loss |"))
    assert "0.905 ± 0.007 (2) (+0.000)" in row  # Ret@1 v→t over seeds 0, 1, and its delta from recommended

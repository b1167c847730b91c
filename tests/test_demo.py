"""`make demo DEMO_SCALE=tiny` end to end: corpus -> features -> train both presets -> eval -> table."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_demo_runs_end_to_end_and_recommended_retrieves_above_chance(tmp_path):
    cmd = [sys.executable, "-m", "s2t.demo", "--scale", "tiny", "--data", str(tmp_path / "data"),
           "--runs", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| recommended |" in out.stdout and "| seed_baseline |" in out.stdout
    for preset in ("seed_baseline", "recommended"):
        folder = tmp_path / "runs" / preset / "eval" / "test"
        for name in ("summary.json", "summary.md", "similarity_clip.png", "training_curves.png"):
            assert (folder / name).stat().st_size > 0, f"{preset}: {name} missing"
    summary = json.loads((tmp_path / "runs" / "recommended" / "eval" / "test" / "summary.json").read_text())
    chance = 1.0 / summary["gallery_size"]
    assert summary["ret1_v2t"] > 2 * chance, summary["ret1_v2t"]
    demo = json.loads((tmp_path / "runs" / "demo.json").read_text())
    assert set(demo["results"]) == {"seed_baseline", "recommended"}


def test_every_ablation_variant_is_a_valid_config():
    """Each `make ablation` variant loads on top of the recipe (a bare `none` in an override is
    YAML's null: this would have failed before the run reached that variant)."""
    import yaml

    from s2t.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    for ablation in sorted((root / "demo").glob("ablation*.yaml")):
        for name, overrides in yaml.safe_load(ablation.read_text()).items():
            load_config([root / "train" / "recommended.yaml", root / "train" / "cpu_scale.yaml"], overrides)

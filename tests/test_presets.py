"""One source of defaults: TrainConfig is the recipe, presets list only what they change."""
from pathlib import Path

import pytest
import yaml

from preprocess import settings
from s2t.config import ABSENT_IN_OLD_RUNS, ConfigError, TrainConfig, config_from_dict, load_config

TRAIN = Path(__file__).resolve().parents[1] / "configs" / "train"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "loss_weights":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_recommended_is_the_default():
    assert not yaml.safe_load((TRAIN / "recommended.yaml").read_text())
    assert load_config(TRAIN / "recommended.yaml").to_dict() == TrainConfig().to_dict()


def test_every_preset_lists_only_what_it_changes():
    """A key a preset sets to the value it already has (the default, or the preset's base for an
    overlay) is a second source of that value, which drifts: none may exist."""
    defaults = _flat(TrainConfig().to_dict())
    bases = {"cpu_scale": ["recommended.yaml"], "cpu_scale_seed_baseline": ["seed_baseline.yaml", "cpu_scale.yaml"]}
    for path in sorted(TRAIN.glob("*.yaml")):
        listed = _flat(yaml.safe_load(path.read_text()) or {})
        base = _flat(load_config([TRAIN / b for b in bases.get(path.stem, [])]).to_dict()) \
            if path.stem in bases else defaults
        effective = _flat(load_config([*(TRAIN / b for b in bases.get(path.stem, [])), path]).to_dict())
        same = [k for k in listed if k != "loss_weights" and base[k] == effective[k]]
        if "loss_weights" in listed and base["loss_weights"] == effective["loss_weights"]:
            same.append("loss_weights")
        assert not same, f"{path.name} repeats the value it already has for {same}"


def test_a_saved_config_without_a_later_setting_keeps_it_off():
    """An old run's config.yaml lacks the settings added after it: rebuilt, it must behave as
    it trained (no mirroring it never saw), not take today's defaults."""
    saved = TrainConfig().to_dict()
    for key in ABSENT_IN_OLD_RUNS:
        if key != "augment":
            saved.pop(key)
    for key in ABSENT_IN_OLD_RUNS["augment"]:
        saved["augment"].pop(key)
    cfg = config_from_dict(saved)
    assert cfg.canonical_hand == "none" and not cfg.decoder_reads_embedding and cfg.token_dropout == 0
    assert cfg.augment.yaw_deg == 0 and cfg.queue_keys == "projected"
    # and a saved config that has them keeps what it says
    assert config_from_dict(TrainConfig().to_dict()).to_dict() == TrainConfig().to_dict()


def test_a_sample_budget_sets_the_steps_for_the_batch_size():
    cfg = load_config(TRAIN / "tiny_cpu.yaml", ["samples.train=6400", "samples.eval_every=3200",
                                                 "samples.warmup=640", "batch_size=64", "accumulation_steps=2"])
    assert (cfg.max_steps, cfg.eval_every, cfg.ckpt_every, cfg.warmup_steps) == (50, 25, 25, 5)
    assert cfg.queue_start == 150  # not in the budget: the preset's step setting stays
    with pytest.raises(ConfigError, match="samples.train: expected an integer"):
        load_config(None, ["samples.train=1e5"])


def test_every_demo_scale_is_typed_and_its_training_settings_load():
    from s2t.demo import DemoScale, load_scale

    for path in sorted((TRAIN.parent / "demo").glob("*.yaml")):
        if path.stem.startswith("ablation"):
            continue
        demo = load_scale(path.stem)
        assert isinstance(demo, DemoScale) and demo.train["samples"]["train"] > 0
    with pytest.raises(ConfigError, match="unknown config key 'train_samples'"):
        settings.load(DemoScale, [], [{"train_samples": 80000}])


def test_overrides_round_trip_through_their_text_form():
    updates = {"samples": {"train": 80000}, "lr": 2e-3, "components": ["pose", "left_hand"],
               "text_store": "tokens-x", "augment": {"yaw_deg": 0.0}, "val_signers": []}
    merged = {}
    for text in settings.as_overrides(updates):
        key, value = next(iter(settings.parse_override(text).items()))
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    assert merged == updates
    updates["canonical_hand"] = "none"  # (the text form reads a bare none as YAML's null: the same setting)
    assert load_config(None, settings.as_overrides(updates)).to_dict() == load_config(None, [updates]).to_dict()


def test_feature_settings_are_typed_and_the_shipped_file_repeats_no_default(tmp_path):
    from preprocess.cli import CommandError
    from preprocess.features import DEFAULT_CONFIG, FeatureSettings, load_settings

    assert load_settings() == FeatureSettings()  # the defaults live in the dataclass only
    assert yaml.safe_load(DEFAULT_CONFIG.read_text()) == {"keypoints": {}, "text": {}}
    bad = tmp_path / "features.yaml"
    bad.write_text("keypoints: {fps: fast}\n")
    with pytest.raises(CommandError, match=r"features.yaml: keypoints.fps: expected a number, got 'fast'"):
        load_settings(bad)
    bad.write_text("text: {tokeniser: train}\n")
    with pytest.raises(CommandError, match=r"unknown config key 'text.tokeniser'; valid keys: text.tokenizer"):
        load_settings(bad)
    assert load_settings(fps=12.5, tokenizer="train").keypoints.fps == 12.5

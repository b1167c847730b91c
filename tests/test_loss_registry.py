"""Adding a loss is the loss (an Objective registered in s2t.losses) plus one config entry
(`loss_weights.<name>`): the trainer computes it, weighs it into the total and logs it by name."""
import json

import pytest
import torch

import s2t.losses as losses_mod
from s2t.config import ConfigError
from s2t.data import KeypointData
from s2t.losses import Losses, Objective, register_loss
from s2t.train import train
from tests.helpers import tiny_cfg


class L2Penalty(Objective):
    """A toy loss: mean squared pooled encoder output (what the CLIP head reads)."""
    name, reads = "l2", ()

    def __call__(self, out, batch, queued, gather=True):
        return out["pooled"].float().pow(2).mean()


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for this test: what it registers is gone afterwards."""
    monkeypatch.setattr(losses_mod, "LOSSES", dict(losses_mod.LOSSES))
    return losses_mod


def test_a_loss_added_through_the_registry_and_one_config_entry_trains(corpus, tmp_path, registry):  # noqa: F811
    with pytest.raises(ConfigError, match="unknown config key 'loss_weights.l2'; valid keys: loss_weights.supcon"):
        tiny_cfg("loss_weights.l2=0.5")  # not registered yet
    register_loss(L2Penalty)
    assert tiny_cfg().loss_weights.l2 == 0.0  # registered but not weighted: off
    cfg = tiny_cfg("max_steps=4", "eval_every=4", "ckpt_every=100", "loss_weights.l2=0.5")
    train(cfg, corpus, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [e for e in lines if e["split"] == "train"]
    assert len(trained) == 4 and [e for e in lines if e["split"] == "val" and "l2" in e]
    for e in trained:
        assert e["l2"] > 0
        # the logged total is the weighted sum of the logged terms, the toy loss included
        assert e["loss"] == pytest.approx(e["supcon"] + e["clip"] + 2.0 * e["ce"] + 0.5 * e["l2"], rel=1e-5)
    assert "l2: 0.5" in (tmp_path / "run" / "config.yaml").read_text()  # the run says what it trained


def test_what_the_active_losses_read_decides_the_forward_and_ddp(corpus, registry):  # noqa: F811
    register_loss(L2Penalty)
    data = KeypointData(corpus, tiny_cfg())
    every = Losses(tiny_cfg("loss_weights.l2=1.0"), data.vocab, "cpu")
    assert every.active == ["supcon", "clip", "ce", "l2"] and every.uses_whole_model
    assert every.heads() == ("supcon", "clip") and every.needs_text and every.needs_decoder
    no_ce = Losses(tiny_cfg("loss_weights.ce=0.0", "loss_weights.l2=1.0"), data.vocab, "cpu")
    assert not no_ce.uses_whole_model and not no_ce.needs_decoder  # four losses, yet the decoder is unused
    no_clip = Losses(tiny_cfg("loss_weights.clip=0.0"), data.vocab, "cpu")
    assert no_clip.heads() == ("supcon",) and not no_clip.needs_text and not no_clip.uses_whole_model
    assert no_clip.active_queues() == ["supcon"]
    assert list(no_clip.queues) == ["supcon", "clip_video", "clip_text"]  # checkpoints keep every queue
    batch = data.batch(data.rows("train")[:8])
    with torch.no_grad():
        out = {"pooled": torch.ones(8, 4)}
        total, parts = Losses(tiny_cfg("loss_weights.supcon=0.0", "loss_weights.clip=0.0", "loss_weights.ce=0.0",
                                       "loss_weights.l2=3.0", "decoder_layers=1"), data.vocab, "cpu")(out, batch)
    assert list(parts) == ["l2"] and float(total) == pytest.approx(3.0)


def test_loss_weights_load_as_before():
    from s2t.config import config_from_dict, load_config
    cfg = load_config("configs/train/recommended.yaml", ["loss_weights.clip=0.0"])
    assert dict(cfg.loss_weights) == {"supcon": 1.0, "clip": 0.0, "ce": 6.0}
    assert cfg.to_dict()["loss_weights"] == {"supcon": 1.0, "clip": 0.0, "ce": 6.0}
    assert type(cfg.to_dict()["loss_weights"]) is dict  # YAML-safe, as older runs' config.yaml
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="loss_weights must be >= 0 and not all 0"):
        load_config(None, ["loss_weights={supcon: 0, clip: 0, ce: 0}"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(None, ["loss_weights=1.0"])

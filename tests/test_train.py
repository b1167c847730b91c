"""Config, data pipeline, and real (tiny) training runs on a generated cache."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import s2t.losses as losses_mod  # the supcon Objective builds its SupConLoss from there
from preprocess.layout import COMPONENT_SLICES
from preprocess.store import open_cache
from s2t.checkpoint import CheckpointError, load_checkpoint, load_run
from s2t.config import ConfigError, load_config
from s2t.data import KeypointData
from s2t.frames import normalise_keypoints
from s2t.sampler import PKBatchSampler
from s2t.train import TrainingError, main, train
from s2t.vocab import build_vocab, encode_texts
from tests.helpers import SENTENCES, TINY, losses_by_step, synthetic_sample, tiny_cfg


# --------------------------------------------------------------------------------------- config

def test_presets_load_and_say_what_they_are():
    rec = load_config("configs/train/recommended.yaml")
    seed = load_config("configs/train/seed_baseline.yaml")
    assert (rec.embed_dim, rec.temperature, rec.batch_size, rec.dropout) == (512, 0.05, 128, 0.2)
    assert (rec.loss_weights.supcon, rec.loss_weights.clip, rec.loss_weights.ce) == (1.0, 1.0, 6.0)
    assert not rec.shared_head and rec.queue_size > 0 and 4 <= rec.encoder_layers <= 6
    assert (seed.batch_size, seed.embed_dim, seed.temperature, seed.loss_weights.clip) == (16, 256, 0.07, 0.0)
    assert seed.shared_head and seed.queue_size == 0
    # the CPU overlay shrinks the model and keeps each recipe
    for preset in (rec, seed):
        name = "recommended" if preset is rec else "seed_baseline"
        small = load_config([f"configs/train/{name}.yaml", "configs/train/cpu_scale.yaml"])
        assert small.embed_dim == 128 and small.encoder_layers == 2
        assert (small.batch_size, small.temperature, small.shared_head, small.queue_size, small.loss_weights) == \
               (preset.batch_size, preset.temperature, preset.shared_head, preset.queue_size, preset.loss_weights)


def test_overrides_are_type_checked_and_unknown_keys_name_the_valid_ones():
    cfg = load_config("configs/train/tiny_cpu.yaml", ["batch_size=64", "loss_weights.clip=0.5", "lr=1e-4",
                                                     "augment.enabled=false", "components=[pose,right_hand]"])
    assert (cfg.batch_size, cfg.loss_weights.clip, cfg.lr, cfg.augment.enabled) == (64, 0.5, 1e-4, False)
    assert cfg.components == ["pose", "right_hand"]
    with pytest.raises(ConfigError, match="unknown config key 'batch'.*batch_size"):
        load_config("configs/train/tiny_cpu.yaml", ["batch=3"])
    with pytest.raises(ConfigError, match="loss_weights.supcon, loss_weights.clip"):
        load_config(None, ["loss_weights.clipp=1"])
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        load_config(None, ["batch_size=1.5"])
    with pytest.raises(ConfigError, match="multiple of samples_per_label"):
        load_config(None, ["batch_size=30", "samples_per_label=4"])
    with pytest.raises(ConfigError, match="components"):
        load_config(None, ["components=[pose,feet]"])


# --------------------------------------------------------------------------------------- data

def test_sampler_gives_p_by_k_batches_and_restores_its_state():
    labels = np.repeat(np.arange(10), [7, 3, 5, 9, 4, 4, 1, 6, 8, 5])
    lengths = np.random.default_rng(0).integers(10, 100, len(labels))
    s = PKBatchSampler(labels, lengths, batch_size=12, k=4, seed=3)
    seen = [next(s) for _ in range(5)]
    for b in seen:
        assert len(b) == 12
        _, counts = np.unique(labels[b], return_counts=True)
        assert all(c % 4 == 0 for c in counts)  # whole units of K
    state = s.state_dict()
    ahead = [next(s) for _ in range(20)]  # crosses epoch boundaries (an epoch is ~4 batches)
    s2 = PKBatchSampler(labels, lengths, batch_size=12, k=4, seed=99)
    s2.load_state_dict(json.loads(json.dumps(state)))  # the state survives JSON (checkpoint metadata)
    assert all(np.array_equal(a, b) for a, b in zip(ahead, [next(s2) for _ in range(20)]))


def test_bucketing_pads_less_than_random_batches():
    rng = np.random.default_rng(0)
    labels, lengths = rng.integers(0, 200, 4000), rng.integers(20, 300, 4000)

    def efficiency(batches):
        b = np.array(batches)
        return lengths[b].sum() / (lengths[b].max(1) * b.shape[1]).sum()

    bucketed = PKBatchSampler(labels, lengths, 64, 1, bucket_batches=50, seed=0)
    random_ = PKBatchSampler(labels, lengths, 64, 1, bucket_batches=1, seed=0)  # window of 1 batch
    eff_b = efficiency([next(bucketed) for _ in range(50)])
    eff_r = efficiency([next(random_) for _ in range(50)])
    assert eff_b > 0.9 > eff_r


def test_one_sample_features_equal_the_evaluation_batch(corpus):
    cfg = tiny_cfg("max_frames=20")  # the corpus has 16-35 frames: some get subsampled
    data = KeypointData(corpus, cfg)
    cache = open_cache(corpus)
    for batch in data.iterate("val", 7):
        for b, i in enumerate(batch.index.tolist()):
            x = normalise_keypoints(cache.sample(i), cfg.components, cfg.max_frames)
            n = int(batch.mask[b].sum())
            assert n == min(20, cache.samples["n_frames"][i]) == len(x)
            np.testing.assert_array_equal(x, batch.x[b, :n].numpy())
    assert data.feature_dim == x.shape[1] == 3 * 75 + 3 * 42 + 3


def test_normalisation_is_shoulder_relative_and_survives_missing_shoulders():
    rng = np.random.default_rng(1)
    kp = synthetic_sample(2, rng, 6)
    moved = kp.copy()
    moved[..., :2] = moved[..., :2] * 1.7 + 0.2  # same signing, other framing
    moved[..., 2] *= 1.7                         # (MediaPipe's z is on the scale of x)
    a = normalise_keypoints(kp, ["pose", "left_hand", "right_hand"])
    b = normalise_keypoints(moved, ["pose", "left_hand", "right_hand"])
    np.testing.assert_allclose(a[:, :-3], b[:, :-3], atol=2e-2)  # float16 storage rounding
    kp[:5, COMPONENT_SLICES["pose"]] = np.nan  # shoulders lost for a few frames
    kp[:, COMPONENT_SLICES["left_hand"]] = np.nan  # and a hand never seen
    x = normalise_keypoints(kp, ["pose", "left_hand", "right_hand"])
    assert np.isfinite(x).all()
    assert (x[:, -3:-1] == [[0, 0]] * 5 + [[1, 0]] * (len(x) - 5)).all()  # presence flags: pose, left hand
    nobody = np.full_like(kp, np.nan)
    nobody[:, COMPONENT_SLICES["right_hand"]] = kp[:, COMPONENT_SLICES["right_hand"]]
    assert np.isfinite(normalise_keypoints(nobody, ["pose", "right_hand"])).all()


def test_augmented_batches_are_valid_and_differ(corpus):
    data = KeypointData(corpus, tiny_cfg("augment.frame_drop=0.3", "augment.hand_drop=0.5"))
    rows = data.rows("train")[:24]

    def gens():
        return torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    a, b = data.batch(rows, *gens()), data.batch(rows, *gens())
    torch.testing.assert_close(a.x, b.x)  # same generators, same batch
    plain = data.batch(rows)
    assert not torch.equal(a.mask, plain.mask) or not torch.equal(a.x, plain.x[:, : a.x.shape[1]])
    assert torch.isfinite(a.x).all() and a.mask[:, 0].all()
    hand_flags = a.x[..., -2:]  # presence of left/right hand
    assert ((hand_flags == 0) | (hand_flags == 1)).all()
    # a dropped hand is all zeros, never shifted by the affine
    dropped = a.x[..., -1] == 0
    rh = slice(3 * (33 + 21), 3 * (33 + 42))
    assert (a.x[..., rh][dropped] == 0).all()


def test_hand_rotation_is_the_batched_matmul_bit_for_bit():
    from s2t.augment import _rotation_matrices, rotate

    g = torch.Generator().manual_seed(0)
    rel = torch.randn(16, 9, 21, 3, generator=g)
    rel[torch.rand(16, 9, 21, generator=g) < 0.1] = float("nan")
    rel[:, :, 0] = 0  # the wrist: products of zero (and -0.0 sums) too
    rot = _rotation_matrices(torch.nn.functional.normalize(torch.randn(16, 3, generator=g), dim=1),
                             torch.rand(16, generator=g) - 0.5)
    want, got = rel @ rot.transpose(1, 2)[:, None], rotate(rel, rot)
    assert torch.equal(want.view(torch.int32), got.view(torch.int32))  # NaN where NaN, -0.0 where -0.0
    planar = rel.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)  # another memory layout, same values
    assert torch.equal(want.view(torch.int32), rotate(planar, rot).contiguous().view(torch.int32))


@pytest.mark.parametrize("people", [False, True])
def test_planar_batches_are_the_plain_layouts_batches(corpus, people):
    """KeypointData.batch augments planar float32 points (s2t.frames.planar_points); the same
    functions on points in their stored (B, T, P, 3) layout give the same batch, bit for bit."""
    from s2t.augment import affine, arm_groups, dropout, personal_style
    from s2t.frames import frame_features

    on = [] if people else ["augment.time_warp=0", "augment.path_offset=0", "augment.hand_rotate_deg=0",
                            "augment.finger_noise=0", "augment.yaw_deg=0"]
    data = KeypointData(corpus, tiny_cfg("canonical_hand=right", "augment.hand_drop=0.3",
                                         "augment.time_warp=0.3", "augment.path_offset=0.05",
                                         "augment.hand_rotate_deg=20", "augment.finger_noise=0.03",
                                         "augment.yaw_deg=20", *on))
    rows = data.rows("train")[:24]
    g1, dg1 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    got = data.batch(rows, g1, dg1)
    g, dg = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    table, present, first = data._frames_of(rows)
    flat, mask = data.frame_index(rows, g, first)
    points = table[flat].float()
    points = affine(points, data.cfg.augment, dg)
    points = personal_style(points, data.cfg.augment, arm_groups(tuple(data.components)), dg)
    x = frame_features(points, present[flat], data.components)
    mask = dropout(x, mask, data.cfg.augment, data.components, dg)
    assert torch.equal(got.x.view(torch.int32), x.view(torch.int32)) and torch.equal(got.mask, mask)
    assert torch.equal(g.get_state(), g1.get_state()) and torch.equal(dg.get_state(), dg1.get_state())  # same draws


# --------------------------------------------------------------------------------------- training

def test_training_learns_the_corpus(corpus, tmp_path):
    cfg = tiny_cfg("max_steps=60", "eval_every=30", "ckpt_every=60")
    val = train(cfg, corpus, tmp_path / "run")
    steps, vals = losses_by_step(tmp_path / "run")
    first = np.mean([steps[s]["loss"] for s in range(1, 6)])
    last = np.mean([steps[s]["loss"] for s in range(56, 61)])
    assert last < 0.7 * first
    assert {"supcon", "clip", "ce", "lr", "samples_per_s"} <= set(steps[60])
    assert len(vals) == 2 and vals[-1] == {**vals[-1], **{k: val[k] for k in ("ret1_v2t", "neg_sim")}}
    assert val["ret1_v2t"] >= 0.6  # chance: 1/6
    assert val["pos_sim"] > val["neg_sim"] + 0.3
    # the run folder rebuilds the model: it retrieves and translates
    model, cfg2, info = load_run(tmp_path / "run")
    assert cfg2 == cfg and info["step"] == 60
    data = KeypointData(corpus, cfg2, vocab=info["vocab"])
    # inputs are standardised with the train split's feature statistics, saved with the weights
    frames = torch.cat([b.x[b.mask] for b in data.iterate("train", 50)])
    torch.testing.assert_close(model.encoder.in_mean, frames.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.encoder.in_std, frames.std(0, correction=0).clamp(min=1e-2),
                               rtol=1e-3, atol=1e-5)
    batch = next(data.iterate("val", 24))
    with torch.no_grad():
        memory = model.encode(batch.x, batch.mask)
        hyps = info["vocab"].decode(model.generate(memory, batch.mask, max_len=12))
    assert len(hyps) == 24 and all(isinstance(h, str) for h in hyps)


def test_resume_repeats_the_uninterrupted_run(corpus, tmp_path):
    common = ["max_steps=10", "ckpt_every=100", "eval_every=100", "accumulation_steps=2"]
    train(tiny_cfg(*common), corpus, tmp_path / "straight")
    assert main(["--cache", str(corpus), "--config", "configs/train/tiny_cpu.yaml", "--run", str(tmp_path / "cut"),
                 "--stop-after", "4", *TINY, *common]) == 0
    assert main(["--cache", str(corpus), "--run", str(tmp_path / "cut"), "--resume"]) == 0
    straight, _ = losses_by_step(tmp_path / "straight")
    cut, _ = losses_by_step(tmp_path / "cut")
    assert sorted(cut) == sorted(straight) == list(range(1, 11))
    for step in range(1, 11):
        for key in ("loss", "supcon", "clip", "ce", "grad_norm"):
            assert cut[step][key] == pytest.approx(straight[step][key], rel=1e-6, abs=1e-6), (step, key)


def test_batches_made_ahead_train_exactly_as_batches_made_in_the_loop(corpus, tmp_path):
    # every draw from the augmentation generators (geometry, other people, dropout, token dropout)
    # happens on the feed's thread when batches are made ahead: the run must not change at all
    common = ["max_steps=6", "ckpt_every=100", "eval_every=100", "token_dropout=0.2",
              "augment.hand_rotate_deg=10", "augment.path_offset=0.02", "augment.time_warp=0.2"]
    train(tiny_cfg(*common, "prefetch_batches=0"), corpus, tmp_path / "loop")
    train(tiny_cfg(*common, "prefetch_batches=2"), corpus, tmp_path / "ahead")
    loop, _ = losses_by_step(tmp_path / "loop")
    ahead, _ = losses_by_step(tmp_path / "ahead")
    assert sorted(loop) == sorted(ahead) == list(range(1, 7))
    for step in range(1, 7):
        for key in ("loss", "supcon", "clip", "ce", "grad_norm"):
            assert ahead[step][key] == loop[step][key], (step, key)


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(corpus, tmp_path):
    train(tiny_cfg("max_steps=1", "eval_every=100"), corpus, tmp_path / "run")
    with pytest.raises(TrainingError, match="--resume"):
        train(tiny_cfg("max_steps=1"), corpus, tmp_path / "run")
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_cfg("max_steps=1"), corpus, tmp_path / "empty", resume=True)


def test_damaged_checkpoints_are_refused_by_name(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg("max_steps=2", "eval_every=100"), corpus, run)
    last = run / "last.safetensors"
    data = bytearray(last.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    data[len(data) // 2] ^= 0xFF  # one byte inside the tensor data
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="flipped.safetensors.*checksum"):
        load_checkpoint(flipped)
    truncated = run / "truncated.safetensors"
    truncated.write_bytes(last.read_bytes()[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated.safetensors.*not a readable checkpoint"):
        load_run(run, checkpoint="truncated.safetensors")
    last.write_bytes(bytes(data))  # damage the checkpoint a resume would read
    assert main(["--cache", str(corpus), "--run", str(run), "--resume"]) == 1


def test_checkpoints_load_without_unpickling(corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_cfg("max_steps=2", "eval_every=100"), corpus, run)

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, _, info = load_run(run)
    assert info["step"] == 2
    train(tiny_cfg("max_steps=3", "eval_every=100"), corpus, run, resume=True)  # full training state too


def test_nan_steps_are_skipped_counted_and_stop_the_run(corpus, tmp_path, monkeypatch):
    class NaNOnSomeSteps(losses_mod.SupConLoss):
        calls = 0

        def forward(self, *args, **kwargs):
            NaNOnSomeSteps.calls += 1
            loss = super().forward(*args, **kwargs)
            return loss * float("nan") if NaNOnSomeSteps.calls in (3, 5) else loss

    monkeypatch.setattr(losses_mod, "SupConLoss", NaNOnSomeSteps)
    train(tiny_cfg("max_steps=8", "eval_every=100"), corpus, tmp_path / "run")
    steps, _ = losses_by_step(tmp_path / "run")
    assert steps[8]["bad_steps"] == 2 and steps[3]["loss"] is None and np.isfinite(steps[4]["loss"])
    model, _, _ = load_run(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())  # a NaN step never reached the weights

    NaNOnSomeSteps.calls = 0
    monkeypatch.setattr(NaNOnSomeSteps, "forward", lambda self, *a, **k: torch.tensor(float("nan")))
    with pytest.raises(TrainingError, match="NaN/inf loss"):
        train(tiny_cfg("max_steps=8", "max_bad_steps=2", "eval_every=100"), corpus, tmp_path / "run2")


def test_vocabularies_compact_full_and_word(corpus):
    cache = open_cache(corpus)
    tx, texts = cache.text(), np.asarray(cache.samples["text"]).astype(str)
    train_rows = np.flatnonzero(np.asarray(cache.samples["split"]) == "train")[:16]  # sentences 0 and 1 only
    cfg = tiny_cfg()
    compact = build_vocab(cfg, tx, texts, train_rows)
    seen = set(np.unique(tx.input_ids[train_rows]).tolist())
    assert set(compact.token_ids.tolist()) == seen | {0, 100, 101, 102}
    ids = encode_texts(compact, tx, texts, cfg.max_text_len)
    real = compact.token_ids[ids]
    np.testing.assert_array_equal(real[train_rows], tx.input_ids[train_rows])  # round trip
    other = np.flatnonzero(texts == SENTENCES[3])[0]  # words never seen in training -> [UNK]
    assert (ids[other] == compact.unk).sum() > 0 and ids[other][0] == compact.bos
    assert compact.decode([real[train_rows[0]][1:tx.lengths[train_rows[0]] - 1].tolist()]) == [SENTENCES[0]]
    full = build_vocab(tiny_cfg("compact_vocab=false"), tx, texts, train_rows)
    assert full.size == 30522 and (full.token_ids[encode_texts(full, tx, texts, 40)] == tx.input_ids).all()
    words = build_vocab(tiny_cfg("tokenizer=word"), tx, texts, train_rows)
    wid = encode_texts(words, tx, texts, 40)
    assert words.decode([wid[train_rows[0]][1:8].tolist()]) == [SENTENCES[0]]


def test_seed_setup_trains_with_a_word_vocabulary_and_one_shared_head(corpus, tmp_path):
    cfg = load_config(["configs/train/seed_baseline.yaml", "configs/train/cpu_scale.yaml"],
                      ["embed_dim=32", "proj_dim=32", "heads=2", "max_steps=3", "eval_every=3", "log_every=1"])
    val = train(cfg, corpus, tmp_path / "seed")
    steps, _ = losses_by_step(tmp_path / "seed")
    assert "clip" not in steps[3] and {"supcon", "ce"} <= set(steps[3])
    model, _, info = load_run(tmp_path / "seed")
    assert list(model.heads) == ["shared"] and info["vocab"].kind == "word"
    assert val["head"] == "supcon" and np.isfinite(val["neg_sim"])
    batch = next(KeypointData(corpus, cfg, vocab=info["vocab"]).iterate("val", 4))
    with torch.no_grad():
        out = info["vocab"].decode(model.generate(model.encode(batch.x, batch.mask), batch.mask, max_len=5))
    assert all(set(s.split()) <= set(info["vocab"].words) for s in out)


def test_killed_run_resumes_to_the_same_losses(corpus, tmp_path):
    """SIGKILL a real training process mid-run, resume it, and get the uninterrupted losses."""
    common = [*TINY, "max_steps=30", "ckpt_every=2", "eval_every=100"]
    train(tiny_cfg(*common[len(TINY):]), corpus, tmp_path / "straight")
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "s2t", "train", "--cache", str(corpus), "--config", "configs/train/tiny_cpu.yaml",
           "--run", str(run), *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, "the training process ended too early"
        try:  # poll without sleeping: wake as soon as the process ends
            proc.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = len(metrics.read_text().splitlines())
    assert logged < 30, "killed too late to test anything"
    assert main(["--cache", str(corpus), "--run", str(run), "--resume"]) == 0
    straight, _ = losses_by_step(tmp_path / "straight")
    resumed, _ = losses_by_step(run)
    assert sorted(resumed) == list(range(1, 31))
    for step in range(1, 31):
        assert resumed[step]["loss"] == pytest.approx(straight[step]["loss"], rel=1e-6, abs=1e-6), step


def test_a_bare_none_in_yaml_means_the_setting_none():
    """`canonical_hand: none` in a YAML file (or `canonical_hand=none` on the command line) is YAML's
    null; for a string setting it means the value "none", not an error."""
    assert load_config(None, ["canonical_hand=none"]).canonical_hand == "none"
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["precision=none"])  # a setting without a "none" value still says what is wrong

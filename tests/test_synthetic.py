"""The synthetic corpus: deterministic, shaped like MediaPipe output, split by signer, learnable text."""
import csv
import json
import time

import numpy as np
import pytest

from preprocess import synthetic
from preprocess.layout import COMPONENT_SLICES
from preprocess.render import render_samples


def _read(corpus):
    with open(corpus / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, {r["id"]: np.load(corpus / r["path"]) for r in rows}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """tiny corpus twice with seed 0 (once through the CLI, with 2 jobs) and once with seed 1."""
    root = tmp_path_factory.mktemp("synthetic")
    start = time.perf_counter()
    synthetic.generate_corpus(root / "a", "tiny", seed=0, jobs=1, progress=False)
    seconds = time.perf_counter() - start
    assert synthetic.main(["--out", str(root / "b"), "--scale", "tiny", "--seed", "0", "--jobs", "2"]) == 0
    synthetic.generate_corpus(root / "c", "tiny", seed=1, progress=False)
    return {"a": root / "a", "b": root / "b", "c": root / "c", "seconds": seconds}


def test_same_seed_same_bytes_other_seed_differs(corpora):
    a, b, c = (corpora[k] for k in "abc")
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    assert (a / "corpus.json").read_bytes() == (b / "corpus.json").read_bytes()
    files = sorted(p.name for p in (a / "keypoints").glob("*.npy"))
    tiny = synthetic.SCALES["tiny"]
    n_train_signers = tiny["signers"] - tiny["val_signers"] - tiny["test_signers"]
    per_sentence = n_train_signers * tiny["train_reps"] + (tiny["val_signers"] + tiny["test_signers"]) * tiny["eval_reps"]
    assert len(files) == tiny["sentences"] * per_sentence
    assert all((a / "keypoints" / f).read_bytes() == (b / "keypoints" / f).read_bytes() for f in files)
    _, arrays_a = _read(a)
    _, arrays_c = _read(c)
    same = [k for k in arrays_a if k in arrays_c and arrays_a[k].shape == arrays_c[k].shape
            and np.array_equal(arrays_a[k], arrays_c[k], equal_nan=True)]
    assert not same
    assert json.loads((a / "corpus.json").read_text())["lexicon"] != \
        json.loads((c / "corpus.json").read_text())["lexicon"]


def test_arrays_look_like_mediapipe_output(corpora):
    rows, arrays = _read(corpora["a"])
    assert {r["fps"] for r in rows} == {str(synthetic.FPS)}
    hand_missing_runs = 0
    for a in arrays.values():
        assert a.dtype == np.float16 and a.ndim == 3 and a.shape[1:] == (543, 3)
        assert 30 <= len(a) <= 200
        pose = a[:, COMPONENT_SLICES["pose"]]
        assert not np.isnan(pose).any()
        # shoulders inside the frame, the left one (signer's left) on the image right
        assert (pose[:, [11, 12], :2] > 0).all() and (pose[:, [11, 12], :2] < 1).all()
        assert (pose[:, 11, 0] > pose[:, 12, 0]).all()
        for hand in ("left_hand", "right_hand"):
            missing = np.isnan(a[:, COMPONENT_SLICES[hand]]).all(axis=(1, 2))
            # a hand is missing as a whole, never point by point
            assert np.array_equal(missing, np.isnan(a[:, COMPONENT_SLICES[hand]]).any(axis=(1, 2)))
            starts = np.flatnonzero(np.diff(missing.astype(int)) == 1)
            hand_missing_runs += sum(missing[s + 1:s + 3].all() for s in starts)  # runs of >= 2
    assert hand_missing_runs >= len(arrays) // 4
    hand_present = np.mean(np.concatenate([~np.isnan(a[:, 501:, 0]) for a in arrays.values()]))
    assert hand_present > 0.6  # missing hands are the exception, as in real extractions


def test_splits_by_signer_and_every_test_sentence_is_in_train(corpora):
    rows, _ = _read(corpora["a"])
    signers = {s: {r["split"] for r in rows if r["signer"] == s} for s in {r["signer"] for r in rows}}
    assert all(len(splits) == 1 for splits in signers.values())  # a signer lives in one split
    by_split = {sp: {r["signer"] for r in rows if r["split"] == sp} for sp in ("train", "val", "test")}
    assert by_split["test"] and by_split["val"] and len(by_split["train"]) >= 3
    assert not by_split["test"] & by_split["train"] and not by_split["val"] & by_split["train"]
    train_texts = {r["text"] for r in rows if r["split"] == "train"}
    assert {r["text"] for r in rows if r["split"] != "train"} <= train_texts


def test_sentences_and_words_are_tokenizable():
    from preprocess.text import load_tokenizer

    sentences = synthetic.grammar_sentences()
    assert len(sentences) >= 300
    assert all(4 <= len(s.split()) <= 12 for s in sentences)
    tok = load_tokenizer("default")
    ids = tok(synthetic.grammar_vocabulary(), add_special_tokens=False)["input_ids"]
    assert not [w for w, i in zip(synthetic.grammar_vocabulary(), ids) if tok.unk_token_id in i]


def test_near_duplicates_are_common():
    for name in ("small", "full"):
        p = synthetic.SCALES[name]
        chosen = synthetic.select_sentences(p["sentences"], p["max_words"], seed=0)
        assert len(set(chosen)) == p["sentences"]
        assert synthetic.near_duplicate_fraction(chosen) > 0.5
    assert synthetic.near_duplicate_fraction(["where is the pain", "please sit down here"]) == 0.0


def test_hand_model_keeps_bone_lengths_for_any_handshape():
    rng = np.random.default_rng(0)
    u, w = synthetic.orthonormal_frame(rng.normal(size=(50, 3)), rng.normal(size=(50, 3)))
    bones = [(5, 6), (6, 7), (7, 8), (9, 10), (2, 3)]
    lengths = [synthetic._BONES[0, 0], synthetic._BONES[0, 1], synthetic._BONES[0, 2],
               synthetic._BONES[1, 0], synthetic._THUMB_BONES[1]]
    for right in (True, False):
        pts = synthetic.hand_points(rng.normal(size=(50, 3)), u, w, rng.uniform(size=(50, 6)), right)
        for (i, j), length in zip(bones, lengths):
            np.testing.assert_allclose(np.linalg.norm(pts[:, j] - pts[:, i], axis=1), length, rtol=1e-6)
    # a right and a left hand with mirrored frames are mirror images
    mirror = np.array([-1.0, 1.0, 1.0])
    flat = np.tile(synthetic.HANDSHAPES["l"], (50, 1))
    right = synthetic.hand_points(np.zeros((50, 3)), u, w, flat, True)
    left = synthetic.hand_points(np.zeros((50, 3)), u * mirror, w * mirror, flat, False)
    np.testing.assert_allclose(left, right * mirror, atol=1e-9)


def test_arm_ik_respects_segment_lengths_and_reach():
    rng = np.random.default_rng(1)
    shoulder = np.zeros((200, 3))
    target = rng.normal(size=(200, 3)) * 0.4
    elbow, wrist = synthetic.arm_ik(shoulder, target, 0.29, 0.25, np.array((-0.4, -1.0, -0.35)))
    np.testing.assert_allclose(np.linalg.norm(elbow - shoulder, axis=1), 0.29, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(wrist - elbow, axis=1), 0.25, rtol=1e-6)
    reachable = np.linalg.norm(target, axis=1) < 0.53
    np.testing.assert_allclose(wrist[reachable], target[reachable], atol=1e-9)


def test_signers_and_repetitions_differ(corpora):
    rows, arrays = _read(corpora["a"])
    shoulder_width = {}
    for r in rows:
        a = arrays[r["id"]].astype(np.float32)
        shoulder_width.setdefault(r["signer"], []).append(np.linalg.norm(a[:, 11, :2] - a[:, 12, :2], axis=1).mean())
    widths = np.array([np.mean(v) for v in shoulder_width.values()])
    assert widths.max() / widths.min() > 1.1  # body size and camera differ per signer
    text = rows[0]["text"]
    same_text = [arrays[r["id"]] for r in rows if r["text"] == text]
    assert len({len(a) for a in same_text}) > 1  # tempo differs between people


def test_tiny_generation_is_fast(corpora):
    assert corpora["seconds"] < 20


def test_render_writes_an_animated_gif(corpora, tmp_path):
    rows, _ = _read(corpora["a"])
    out = render_samples([corpora["a"] / r["path"] for r in rows[:2]], tmp_path / "s.gif", fps=15,
                         titles=[r["text"] for r in rows[:2]], stride=6, still_path=tmp_path / "s.png")
    data = out.read_bytes()
    assert data[:6] == b"GIF89a" and data.count(b"\x21\xf9\x04") > 3  # several frames
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_held_out_signer_repeats_sentences_so_possim_is_defined(corpora):
    rows, _ = _read(corpora["a"])
    test = [r["text"] for r in rows if r["split"] == "test"]
    assert len(test) == len(set(test)) * synthetic.SCALES["tiny"]["eval_reps"]


def test_difficulty_widens_signer_spread_and_keeps_the_default_corpus():
    from preprocess.synthetic import SCALES, corpus_plan, make_signers

    base, hard = make_signers(8, 0), make_signers(8, 0, difficulty=2.0)
    assert make_signers(8, 0, difficulty=1.0) == base  # the default corpus does not move
    for key in ("speed", "amplitude", "yaw", "smooth"):
        spread = lambda signers: np.ptp([s[key] for s in signers])  # noqa: E731
        assert spread(hard) > 1.5 * spread(base), key
    # both rounded to 1e-4
    assert all(h["noise"] == pytest.approx(2 * b["noise"], abs=2e-4) for h, b in zip(hard, base))
    assert all(h["body"] == b["body"] and h["cx"] == b["cx"] for h, b in zip(hard, base))  # same bodies
    plan = corpus_plan("hard")
    assert SCALES["hard"]["train_reps"] == 1 and len(plan["sentences"]) == SCALES["hard"]["sentences"]
    assert len({s for s in plan["sentences"]}) == len(plan["sentences"])

"""Unseen signers: the `signers` corpus scale, handedness canonicalisation, signer-disjoint
validation, the augmentation that imitates other people, and the keypoint baseline."""
import numpy as np
import pytest
import torch

from preprocess import synthetic
from preprocess.layout import COMPONENT_SLICES, POSE_INDEX
from s2t.augment import arm_groups, yaw
from s2t.baselines import keypoint_nearest_neighbour
from s2t.config import ConfigError
from s2t.data import KeypointData
from s2t.frames import POSE_MIRROR, dominant_left, mirror_permutation, normalise_keypoints
from tests.helpers import tiny_cfg

COMPONENTS = ["pose", "left_hand", "right_hand"]


def mirror_clip(kp: np.ndarray) -> np.ndarray:
    """What a camera sees of the same signing done by the mirror-image person: x -> 1 - x in the
    image, and every left landmark becomes the right one (written independently of s2t.frames)."""
    out = kp.copy()
    out[..., 0] = 1 - out[..., 0]
    pose = out[:, COMPONENT_SLICES["pose"]]
    for name, i in POSE_INDEX.items():  # swap the named pairs by name, the rest by MediaPipe's order
        if name.startswith("left_"):
            j = POSE_INDEX["right_" + name[5:]]
            pose[:, [i, j]] = pose[:, [j, i]]
    for i, j in [(1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (17, 18), (19, 20), (21, 22), (25, 26),
                 (27, 28), (29, 30), (31, 32)]:
        pose[:, [i, j]] = pose[:, [j, i]]
    out[:, COMPONENT_SLICES["pose"]] = pose
    left, right = out[:, COMPONENT_SLICES["left_hand"]].copy(), out[:, COMPONENT_SLICES["right_hand"]].copy()
    out[:, COMPONENT_SLICES["left_hand"]], out[:, COMPONENT_SLICES["right_hand"]] = right, left
    return out


@pytest.fixture(scope="module")
def signer_clips():
    """One sentence signed by a right-handed and a left-handed signer of the `signers` scale."""
    plan = synthetic.corpus_plan("signers")
    by_hand = {s["handed"]: s for s in plan["signers"]}
    words = plan["sentences"][0].split()
    def clip(s, r):
        return synthetic.sign_sentence(words, plan["lexicon"], s, np.random.default_rng(r))
    return {"right": clip(by_hand["right"], 1), "left": clip(by_hand["left"], 1)}


def test_pose_mirror_swaps_arms_and_is_an_involution():
    assert (POSE_MIRROR[POSE_MIRROR] == np.arange(33)).all()
    for i in range(13, 23):  # elbows, wrists, pinky/index/thumb knuckles: odd = left, even = right
        assert POSE_MIRROR[i] == (i + 1 if i % 2 else i - 1)
    perm = mirror_permutation(COMPONENTS)
    assert (perm[33:54] == np.arange(54, 75)).all() and (perm[54:75] == np.arange(33, 54)).all()
    with pytest.raises(ValueError, match="both hands"):
        mirror_permutation(["pose", "right_hand"])


def test_canonicalised_mirror_equals_the_clip(signer_clips):
    for kp in signer_clips.values():
        a = normalise_keypoints(kp, COMPONENTS, canonical_hand="right")
        b = normalise_keypoints(mirror_clip(kp), COMPONENTS, canonical_hand="right")
        np.testing.assert_allclose(a, b, rtol=4e-3, atol=4e-3)  # float16 rounding of x vs 1 - x
        # without canonicalisation the two differ: the check above is not vacuous
        assert np.abs(normalise_keypoints(kp, COMPONENTS) - normalise_keypoints(mirror_clip(kp), COMPONENTS)).max() > 0.5


def test_dominant_hand_is_found(signer_clips):
    right, left = signer_clips["right"], signer_clips["left"]
    pose = np.concatenate([right, left, mirror_clip(right)])[:, COMPONENT_SLICES["pose"]]
    offsets = np.cumsum([0, len(right), len(left), len(right)])
    assert dominant_left(pose, offsets).tolist() == [False, True, True]


def test_signers_corpus_splits_handedness_and_determinism():
    p = synthetic.SCALES["signers"]
    plan = synthetic.corpus_plan("signers")
    split = {s["id"]: s["split"] for s in plan["signers"]}
    hand = {s["id"]: s["handed"] for s in plan["signers"]}
    train = [s for s in split if split[s] == "train"]
    test = [s for s in split if split[s] == "test"]
    assert len(train) == 3 and len(test) == 2 and list(split.values()).count("val") == 1
    assert all(hand[s] == "right" for s in train)  # no left-handed signer in training
    assert sorted(hand[s] for s in test) == ["left", "right"]
    assert len(plan["samples"]) == p["sentences"] * (3 * p["train_reps"] + 3 * p["eval_reps"])
    again = synthetic.corpus_plan("signers")
    assert again["signers"] == plan["signers"] and again["sentences"] == plan["sentences"]
    # the older scales do not move (their signers carry no `variation`; left-handed is signer 2)
    assert synthetic.make_signers(8, 0) == synthetic.corpus_plan("full")["signers"][:0] + \
        [{k: v for k, v in s.items() if k != "split"} for s in synthetic.corpus_plan("full")["signers"]]


def test_every_signer_makes_each_sign_their_own_way():
    """The same word: two repetitions of one signer are closer than two signers (measured)."""
    plan = synthetic.corpus_plan("signers")
    lexicon, (a, b) = plan["lexicon"], plan["signers"][:2]
    flat = {k: v for k, v in a.items() if k != "variation"}  # the same person without variation

    def path(signer, word, seed):
        kp = synthetic.sign_sentence([word], lexicon, signer, np.random.default_rng(seed))
        x = normalise_keypoints(kp, COMPONENTS)[:, 3 * 33:3 * 75]  # both hands, shoulder-normalised
        idx = np.linspace(0, len(x) - 1, 24).round().astype(int)
        return np.nan_to_num(x[idx])

    words = sorted(lexicon)[:20]
    same = np.mean([np.abs(path(a, w, 1) - path(a, w, 2)).mean() for w in words])
    other = np.mean([np.abs(path(a, w, 1) - path(b, w, 1)).mean() for w in words])
    personal = np.mean([np.abs(path(a, w, 1) - path(flat, w, 1)).mean() for w in words])
    assert other > 1.3 * same
    assert personal > 0.5 * same  # `variation` itself moves the sign (not only body and framing)


def test_val_signers_hold_out_whole_people(corpus):  # noqa: F811
    data = KeypointData(corpus, tiny_cfg())
    assert data.seen_val_signers() == ["p0", "p1", "p2"]  # the fixture's val split: seen people
    held = KeypointData(corpus, tiny_cfg("val_signers=[p2]"))
    assert set(held.signers[held.rows("train")]) == {"p0", "p1"}
    assert "p2" in set(held.signers[held.rows("val")])
    assert held.seen_val_signers() == ["p0", "p1"]  # the cache's own val rows of p0/p1 stay val
    with pytest.raises(ValueError, match="not signers"):
        KeypointData(corpus, tiny_cfg("val_signers=[nobody]"))
    with pytest.raises(ConfigError, match="both hands"):
        tiny_cfg("canonical_hand=right", "components=[pose, right_hand]")


def test_people_augmentation_moves_hands_and_keeps_the_wrist(corpus):  # noqa: F811
    on = ["augment.rotate_deg=0", "augment.scale=0", "augment.shift=0", "augment.speed=0", "augment.crop=0",
          "augment.frame_drop=0", "augment.hand_drop=0"]
    plain = KeypointData(corpus, tiny_cfg(*on))
    people = KeypointData(corpus, tiny_cfg(*on, "augment.hand_rotate_deg=30", "augment.finger_noise=0.05"))
    rows = plain.rows("train")[:8]
    def gens():
        return (torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    a, b = plain.batch(rows, *gens()), people.batch(rows, *gens())
    right = slice(3 * 54, 3 * 75)  # absolute right-hand points
    wrist = slice(3 * 54, 3 * 55)
    torch.testing.assert_close(a.x[..., wrist], b.x[..., wrist])
    assert (a.x[..., right] - b.x[..., right]).abs().mean() > 0.01
    warped = KeypointData(corpus, tiny_cfg(*on, "augment.time_warp=0.4"))
    c = warped.batch(rows, *gens())
    assert c.x.shape == a.x.shape and not torch.equal(c.x, a.x)  # same frames count, other frames


def test_keypoint_baseline_retrieves_above_chance(corpus):  # noqa: F811
    data = KeypointData(corpus, tiny_cfg())
    nn = keypoint_nearest_neighbour(data, "val")
    correct = data.text_id[nn["neighbour"]] == data.text_id[nn["rows"]]
    assert len(nn["rows"]) == len(data.rows("val"))
    assert float(correct.float().mean()) > 2 / 6  # 6 sentences: chance is 1/6


def test_demo_reports_every_test_signer():
    from s2t.demo import GROUP_COLUMNS, group_rows, table
    summary = {"by": {"signer": {
        "s04": {"ret1_v2t": 0.9, "wer": 0.1, "baselines": {"keypoint_nn": {"ret1_v2t": 0.7}, "retrieval": {"wer": 0.05}}},
        "s05": {"ret1_v2t": 0.8, "wer": 0.2, "baselines": {"keypoint_nn": {"ret1_v2t": 0.1}, "retrieval": {"wer": 0.09}}}}}}
    rows = group_rows({"recommended": summary}, "signer")
    assert list(rows) == ["recommended / signer s04", "recommended / signer s05"]
    md = table(rows, columns=GROUP_COLUMNS)
    assert "| recommended / signer s05 | 0.800 | 0.100 | – | 0.200 | 0.090 | – |" in md


def test_yaw_turns_the_body_rigidly(corpus):  # noqa: F811
    off = ["augment.rotate_deg=0", "augment.scale=0", "augment.shift=0", "augment.speed=0", "augment.crop=0",
           "augment.frame_drop=0", "augment.hand_drop=0"]
    data = KeypointData(corpus, tiny_cfg(*off, "augment.yaw_deg=40"))
    rows = data.rows("train")[:8]
    table, _, first = data._frames_of(rows)
    flat, _ = data.frame_index(rows)
    before = table[flat].float()
    groups = arm_groups(tuple(data.components))
    after = yaw(before.clone(), groups, np.radians(40), torch.Generator().manual_seed(0))
    xz = lambda p, i: p[:, :, i][..., [0, 2]]  # noqa: E731
    # shoulders (11, 12): their distance in the x-z plane and their height are kept
    span = lambda p: (xz(p, 11) - xz(p, 12)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(span(after), span(before), atol=1e-4, rtol=1e-4, equal_nan=True)
    torch.testing.assert_close(after[..., 1], before[..., 1], equal_nan=True)
    # each hand moves rigidly: distances from its wrist unchanged, and the hands did move
    right = slice(54, 75)
    dist = lambda p: (p[:, :, right] - p[:, :, right][:, :, :1]).norm(dim=-1)  # noqa: E731
    ok = ~torch.isnan(dist(before))
    torch.testing.assert_close(dist(after)[ok], dist(before)[ok], atol=1e-4, rtol=1e-4)
    assert (after[:, :, right, 0] - before[:, :, right, 0]).nan_to_num().abs().mean() > 1e-3
    assert groups["hand_wrists"] == [15, 16]

"""Metrics against known answers: hand-built embeddings, hand-computed values, the libraries."""
import math

import jiwer
import numpy as np
import pytest
import sacrebleu
import torch

from s2t import metrics as M
from s2t import report


def unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


# Four sentences (labels 0..3) with one-hot text embeddings; five videos built so that the rank of
# the right sentence is known: v0 = e0 (1st); v1 closer to e2 than to e1 (2nd); v2 closest to e0,
# then e3, then its own e2 (3rd); v3 = e3 (1st); v4 (label 0) = e1: its own e0 ties with e2, e3 at
# 0 and e1 scores 1 -> pessimistic rank 4.
E = torch.eye(4)
VIDEOS = torch.stack([
    E[0],
    unit([0, 0.6, 0.8, 0])[0],
    unit([0.7, 0, 0.1, 0.69])[0],
    E[3],
    E[1],
])
LABELS = [0, 1, 2, 3, 0]
TEXTS = E[LABELS]


def test_retrieval_ranks_known_answers():
    r = M.retrieval_ranks(VIDEOS, TEXTS, LABELS)
    assert r["gallery_size"] == 4 and r["n_videos"] == 5
    assert r["v2t"].tolist() == [1, 2, 3, 1, 4]
    # text queries e0..e3 over the five videos:
    # e0 -> v0 (1st); e1 -> v4 (label 0) scores 1 > v1's 0.6 (2nd);
    # e2 -> v1 (label 1) 0.8 > v2's 0.1/|.| (2nd); e3 -> v3 = e3 (1st)
    assert r["t2v"].tolist() == [1, 2, 2, 1]
    m = M.embedding_metrics(VIDEOS, TEXTS, LABELS)
    assert m["ret1_v2t"] == pytest.approx(2 / 5)
    assert m["ret5_v2t"] == pytest.approx(1.0)
    assert m["ret1_t2v"] == pytest.approx(2 / 4)
    assert m["gallery_size"] == 4 and m["n_samples"] == 5


def test_retrieval_string_labels_and_numpy_match_ints():
    names = np.array(["zebra", "apple", "mango", "kiwi", "zebra"])  # different sort order than ints
    by_name = M.retrieval_ranks(VIDEOS.numpy(), TEXTS.numpy(), names)
    by_int = M.retrieval_ranks(VIDEOS, TEXTS, LABELS)
    assert by_name["v2t"].tolist() == by_int["v2t"].tolist()
    assert sorted(by_name["t2v"].tolist()) == sorted(by_int["t2v"].tolist())


def test_retrieval_gallery_deduplicates_by_text_key():
    # one label, two different sentences: deduplicating by sentence gives a gallery of 2
    v, t = unit([1, 0], [0, 1]), unit([1, 0], [0, 1])
    r = M.retrieval_ranks(v, t, ["g", "g"], text_keys=["a", "b"])
    assert r["gallery_size"] == 2
    assert r["v2t"].tolist() == [1, 1]


def test_collapsed_embeddings_do_not_retrieve():
    v = torch.ones(6, 3) / math.sqrt(3)
    m = M.embedding_metrics(v, v, [0, 0, 1, 1, 2, 2])
    assert m["pos_sim"] == pytest.approx(1) and m["neg_sim"] == pytest.approx(1)
    assert m["ret1_v2t"] == 0 and m["ret1_t2v"] == 0  # ties count against the model
    assert m["rankme"] == pytest.approx(1, abs=1e-3)
    assert any("collapse" in w for w in report.diagnose(m))


def test_pos_neg_similarity_by_hand():
    # a=(1,0), b=(.6,.8) share a label, c=(0,1) does not: pos = a.b = .6; neg = mean(a.c, b.c) = .4
    e = unit([1, 0], [0.6, 0.8], [0, 1])
    pos, neg = M.pos_neg_similarity(e, ["x", "x", "y"])
    assert pos == pytest.approx(0.6) and neg == pytest.approx(0.4)


def test_pos_neg_similarity_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    y = torch.randint(0, 6, (40,), generator=g)
    sim = e @ e.T
    same = y[:, None] == y[None, :]
    off = ~torch.eye(40, dtype=torch.bool)
    pos, neg = M.pos_neg_similarity(e, y)
    assert pos == pytest.approx(float(sim[same & off].mean()), abs=1e-5)
    assert neg == pytest.approx(float(sim[~same].mean()), abs=1e-5)
    # the histogram sampler sees the same pairs when it can take them all
    p, n = M.pair_similarities(e, y)
    assert p.mean() == pytest.approx(pos, abs=1e-5) and n.mean() == pytest.approx(neg, abs=1e-5)
    assert len(p) == int((same & off).sum()) and len(n) == int((~same).sum())


def test_pos_sim_is_nan_without_positive_pairs():
    pos, neg = M.pos_neg_similarity(unit([1, 0], [0, 1]), [0, 1])
    assert math.isnan(pos) and neg == pytest.approx(0)


def test_alignment_and_uniformity_by_hand():
    v = unit([1, 0], [0, 1])
    t = unit([0, 1], [0, 1])
    assert M.alignment(v, t) == pytest.approx((2 + 0) / 2)  # |v0 - t0|^2 = 2, |v1 - t1|^2 = 0
    # three points on a circle: squared distances 2, 2, 4 (each pair twice in i != j)
    e = unit([1, 0], [0, 1], [-1, 0])
    expected = math.log((2 * math.exp(-2 * 2) + math.exp(-2 * 4)) / 3)
    assert M.uniformity(e) == pytest.approx(expected, rel=1e-5)
    # the block loop gives the same answer as one block
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(50, 4, generator=g), dim=1)
    d2 = torch.cdist(x, x).pow(2)
    ref = torch.log(torch.exp(-2 * d2[~torch.eye(50, dtype=torch.bool)]).mean())
    old, M.BLOCK = M.BLOCK, 7
    try:
        assert M.uniformity(x) == pytest.approx(float(ref), abs=1e-5)
        r_small = M.retrieval_ranks(x, x, torch.arange(50) % 5)
    finally:
        M.BLOCK = old
    r_big = M.retrieval_ranks(x, x, torch.arange(50) % 5)
    assert r_small["v2t"].tolist() == r_big["v2t"].tolist()


def test_rankme_orthonormal_and_rank_one():
    assert M.rankme(torch.eye(8)[:5]) == pytest.approx(5, rel=1e-4)
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(16, generator=g)
    assert M.rankme(torch.randn(30, 1, generator=g) * direction) == pytest.approx(1, abs=1e-3)


HYPS = ["the patient has a headache", "take two pills", "", "where does it hurt today"]
REFS = ["the patient has a bad headache", "take two pills", "do you smoke", "where does it hurt"]


def test_generation_metrics_equal_the_libraries():
    m = M.generation_metrics(HYPS, REFS, train_sentences=["take two pills", "where does it hurt"])
    assert m["wer"] == pytest.approx(jiwer.wer(REFS, HYPS))
    assert m["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    # corpus WER by hand: 1 deletion + 0 + 3 deletions + 1 insertion over 6+3+3+4 = 16 words
    assert m["wer"] == pytest.approx(5 / 16)
    assert m["exact_match"] == pytest.approx(1 / 4)
    assert m["train_copy_rate"] == pytest.approx(1 / 4)
    assert M.generation_metrics(REFS, REFS)["bleu4"] == pytest.approx(100)
    with pytest.raises(ValueError):
        M.generation_metrics(HYPS[:2], REFS)


def test_derangement_pairs_different_labels():
    labels = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    perm = M.derangement(labels, seed=3)
    assert sorted(perm.tolist()) == list(range(10))
    y = M.label_ids(labels)
    assert (perm != torch.arange(10)).all() and (y[perm] != y).all()
    assert torch.equal(perm, M.derangement(labels, seed=3))  # fixed
    one = M.derangement(["a"] * 4)
    assert (one != torch.arange(4)).all()


def test_video_retrieval_excludes_the_query_itself():
    # a0 = (1, 0) and a1 = (.8, .6) share a label; b0 = (.9, -.436) and c0 = (0, 1) are alone.
    # a0: b0 (.9) scores above a1 (.8) -> rank 2; a1: a0 (.8) is its best -> rank 1.
    # b0 and c0 have no other video of their label: not queries. (Counting the query itself as a
    # match would give every video rank 1.)
    v = unit([1, 0], [0.8, 0.6], [0.9, -0.436], [0, 1])
    labels = ["a", "a", "b", "c"]
    ranks = M.video_retrieval_ranks(v, labels)
    assert ranks[:2].tolist() == [2, 1]
    assert ranks[2:].tolist() == [5, 5]  # no correct item: N + 1
    m = M.video_metrics(v, labels)
    assert m["n_v2v_queries"] == 2
    assert m["ret1_v2v"] == pytest.approx(0.5) and m["ret5_v2v"] == pytest.approx(1.0)
    assert m["pos_sim"] == pytest.approx(0.8)
    assert not any(k.endswith(("_v2t", "_t2v")) or k == "alignment" for k in m)
    assert math.isnan(M.video_metrics(v, ["a", "b", "c", "d"])["ret1_v2v"])  # no pairs at all


def test_a_decoder_that_reads_the_video_without_gain_is_not_called_blind():
    # outputs change with the video, but every one of them is equally wrong
    warnings = report.diagnose({"visual_dependence_wer": 0.0, "visual_dependence_changed": 0.9})
    assert warnings and "depends on the video" in warnings[0] and "ignores" not in warnings[0]


def test_verdict_on_the_users_collapsed_model_and_on_a_healthy_one():
    # the numbers of the diagnosed failure (docs/ARCHITECTURE.md, §1): PosSim 0.96, NegSim 0.906, Ret@1 5%, WER ~1
    collapsed = {"pos_sim": 0.96, "neg_sim": 0.906, "gap": 0.054, "ret1_v2t": 0.05, "gallery_size": 300,
                 "wer": 1.0, "train_copy_rate": 0.98, "visual_dependence_wer": 0.01,
                 "visual_dependence_changed": 0.02}
    text = report.verdict(collapsed)
    assert text.startswith("**Collapsed.**")
    for words in ("NegSim 0.906 > 0.8", "0.054 < 0.1", "ignores the video", "recites the training set"):
        assert words in text, words
    healthy = {"pos_sim": 0.7, "neg_sim": 0.1, "gap": 0.6, "ret1_v2t": 0.6, "gallery_size": 300,
               "wer": 0.3, "train_copy_rate": 0.5, "visual_dependence_wer": 0.6}
    assert report.diagnose(healthy) == []
    assert report.verdict(healthy).startswith("**Not collapsed.**")


def test_training_warns_by_the_same_rule_as_the_evaluation():
    # training's validation dict: no gap key, plus keys diagnose does not know
    val = {"loss": 3.2, "pos_sim": 0.96, "neg_sim": 0.906, "ret1_v2t": 0.05, "head": "clip"}
    warnings = report.validation_warnings(val)
    assert warnings == report.diagnose({**val, "gap": 0.96 - 0.906})
    assert len(warnings) == 2 and "NegSim 0.906 > 0.8" in warnings[0] and "< 0.1" in warnings[1]
    # visual dependence from the teacher-forced CE alone (training does not decode)
    healthy = {"pos_sim": 0.7, "neg_sim": 0.1}
    blind = report.validation_warnings({**healthy, "visual_dependence_ce": 0.01})
    assert len(blind) == 1 and "ignores the video" in blind[0]
    assert report.validation_warnings({**healthy, "visual_dependence_ce": 0.8}) == []
    # with a WER it is diagnose's rule, unchanged
    both = {**healthy, "visual_dependence_wer": 0.01, "visual_dependence_ce": 0.8}
    assert report.validation_warnings(both) == report.diagnose(both)
    assert "depends on the video" in report.validation_warnings(both)[0]

"""Results a reader can trust: raw-reference scores, best-on-validation checkpoints that survive
--resume. Training runs reuse test_train's tiny corpus and model (seconds on a 2-core CPU)."""
import json

import jiwer
import numpy as np
import pytest
import sacrebleu
import torch

from preprocess.text import load_tokenizer
from s2t.checkpoint import LAST, load_checkpoint
from s2t.evaluate import reference_texts, uncased
from s2t.metrics import generation_metrics, sacrebleu_signatures
from s2t.train import BEST, TrainingError, main, resolve_best_metric, train
from s2t.vocab import Vocab
from tests.helpers import TINY, losses_by_step, make_corpus, tiny_cfg

GERMAN = ["Schön, dass Sie heute da sind.", "Haben Sie Schmerzen in der Brust?",
          "Die Ärztin kommt gleich.", "Nehmen Sie zwei Tabletten täglich."]


def test_raw_reference_scores_are_sacrebleus_and_differ_from_the_normalised():
    """A perfect uncased model writes the tokenizer's form of each sentence ("schon, dass sie...").
    Against the normalised references it is perfect; against the raw ones, lower-cased as
    sacreBLEU's option does, the lost umlauts count, and the numbers are sacreBLEU's and jiwer's."""
    vocab = Vocab("wordpiece", np.arange(30522), pad=0, bos=101, eos=102, unk=100, tokenizer="default")
    assert uncased(vocab)
    hyps = reference_texts(vocab, GERMAN)  # what the model can produce at best
    assert hyps[0].startswith("schon, dass sie")
    normalised = generation_metrics(hyps, reference_texts(vocab, GERMAN))
    raw = generation_metrics(hyps, GERMAN, lowercase=True)
    assert normalised["wer"] == 0 and normalised["bleu4"] == pytest.approx(100)
    assert raw["wer"] == pytest.approx(jiwer.wer([g.lower() for g in GERMAN], hyps))
    assert raw["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [GERMAN], lowercase=True).score)
    assert raw["chrf"] == pytest.approx(sacrebleu.CHRF(lowercase=True).corpus_score(hyps, [GERMAN]).score)
    assert raw["wer"] > 0 and raw["bleu4"] < 100 and raw["chrf"] < 100
    # case alone is forgiven (lowercase option), accents are not
    assert generation_metrics([g.lower() for g in GERMAN], GERMAN, lowercase=True)["wer"] == 0
    assert generation_metrics([g.lower() for g in GERMAN], GERMAN)["wer"] > 0
    assert "case:lc" in sacrebleu_signatures(True)["bleu4"]
    assert "case:mixed" in sacrebleu_signatures(False)["bleu4"]


def test_a_cased_tokenizer_is_not_lower_cased():
    tok = load_tokenizer("default")
    assert tok.decode(tok("Sign", add_special_tokens=False)["input_ids"]) == "sign"  # the default is uncased
    words = Vocab("word", np.arange(5), pad=0, bos=2, eos=3, unk=1,
                  words=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    assert uncased(words)  # the word vocabulary lower-cases too


def test_best_metric_follows_the_losses_and_refuses_what_cannot_be_computed():
    assert resolve_best_metric(tiny_cfg()) == ("ret1_v2t", True)
    assert resolve_best_metric(tiny_cfg("loss_weights.clip=0")) == ("ce", False)
    assert resolve_best_metric(tiny_cfg("best_metric=neg_sim")) == ("neg_sim", False)
    with pytest.raises(TrainingError, match="needs the CLIP loss"):
        resolve_best_metric(tiny_cfg("loss_weights.clip=0", "best_metric=ret1_v2t"))
    with pytest.raises(TrainingError, match="not a validation metric"):
        resolve_best_metric(tiny_cfg("best_metric=bleu"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "cache", train_per_label=8, val_per_label=4)


# pos_sim (higher is better) peaks before the last step on this corpus: best and last differ
COMMON = ["max_steps=12", "eval_every=3", "ckpt_every=100", "keep_checkpoints=1", "best_metric=pos_sim"]


def val_lines(run):
    return losses_by_step(run)[1]


def test_best_checkpoint_is_the_best_validation_step(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(*COMMON), corpus, run)
    vals = val_lines(run)
    assert [v["step"] for v in vals] == [3, 6, 9, 12]
    best_step = max(vals, key=lambda v: (v["pos_sim"], -v["step"]))["step"]  # ties: the earliest
    tensors, meta = load_checkpoint(run / BEST)
    assert meta["step"] == best_step and meta["best"] == {
        "metric": "pos_sim", "value": pytest.approx(next(v["pos_sim"] for v in vals if v["step"] == best_step)),
        "step": best_step}
    assert [v["is_best"] for v in vals] == [v["step"] in _improving(vals, "pos_sim") for v in vals]
    assert json.loads((run / "run.json").read_text())["best"] == meta["best"]
    # the file holds that step's weights (not the last ones, unless the last step was the best)
    last, _ = load_checkpoint(run / LAST)
    same = all(torch.equal(tensors[k], last[k]) for k in tensors if k.startswith("model."))
    assert same == (best_step == 12)


def _improving(vals, key):
    best, steps = float("-inf"), set()
    for v in vals:
        if v[key] > best:
            best = v[key]
            steps.add(v["step"])
    return steps


def test_best_checkpoint_survives_resume_exactly(corpus, tmp_path):
    """Cut after step 7 (best so far from steps 3 and 6 lives in the checkpoint's metadata), resume:
    the same validation values, the same best step and value, the same best weights."""
    train(tiny_cfg(*COMMON), corpus, tmp_path / "straight")
    cut = tmp_path / "cut"
    assert main(["--cache", str(corpus), "--config", "configs/train/tiny_cpu.yaml", "--run", str(cut),
                 "--stop-after", "7", *TINY, *COMMON]) == 0
    assert load_checkpoint(cut / LAST)[1]["best"]["step"] in (3, 6)
    assert main(["--cache", str(corpus), "--run", str(cut), "--resume"]) == 0
    straight, resumed = val_lines(tmp_path / "straight"), val_lines(cut)
    assert [(v["step"], v["is_best"]) for v in resumed] == [(v["step"], v["is_best"]) for v in straight]
    for a, b in zip(resumed, straight):
        assert a["pos_sim"] == pytest.approx(b["pos_sim"], rel=1e-6)
    (t1, m1), (t2, m2) = load_checkpoint(cut / BEST), load_checkpoint(tmp_path / "straight" / BEST)
    assert m1["best"]["step"] == m2["best"]["step"] and m1["best"]["value"] == pytest.approx(m2["best"]["value"])
    for k in (k for k in t1 if k.startswith("model.")):
        torch.testing.assert_close(t1[k], t2[k], rtol=1e-5, atol=1e-6)

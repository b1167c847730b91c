"""Shared fixtures. Media files are made once per session: MediaPipe runs cost seconds each."""
import pytest

from tests.helpers import TRAINING_READ, make_corpus
from tests.media import make_person_video


@pytest.fixture(scope="session")
def person_video(tmp_path_factory):
    """30 frames at 15 fps of a real person (messi5.jpg, moving gently), 640x360 mp4v."""
    return make_person_video(tmp_path_factory.mktemp("media") / "person.mp4", n_frames=30, fps=15)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """tests.helpers' tiny corpus as a cache, made once per test module that asks for it (modules
    that need another corpus define their own `corpus`)."""
    return make_corpus(tmp_path_factory.mktemp("corpus") / "cache")


# A tiny trained run and its evaluation, shared by tests/test_evaluate.py and tests/test_report_html.py
# (made once per module that asks; the s2t imports wait until then: collection stays light).

@pytest.fixture(scope="module")
def tiny_synthetic_corpus(tmp_path_factory):
    """The built-in synthetic corpus at its tiny scale: manifest.csv and keypoint files, no cache."""
    from preprocess.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    generate_corpus(root, "tiny", seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_synthetic_corpus, tmp_path_factory):
    """tiny_synthetic_corpus as a cache, trained 20 steps; what training asked the data for is in
    tests.helpers.TRAINING_READ."""
    import csv

    import numpy as np

    from preprocess.store import write_cache
    from preprocess.text import load_tokenizer, tokenize
    from s2t.config import load_config
    from s2t.data import KeypointData
    from s2t.train import train

    corpus = tiny_synthetic_corpus
    root = tmp_path_factory.mktemp("tiny_run")
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    texts = [r["text"] for r in rows]
    ids, lengths = tokenize(load_tokenizer("default"), texts, 48)
    # one fixed random unit vector per sentence stands in for the frozen sentence encoder
    sentences = sorted(set(texts))
    table = np.random.default_rng(0).standard_normal((len(sentences), 384)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    emb = table[[sentences.index(t) for t in texts]]
    cache = write_cache(root / "cache", [{**r, "label": "", "fps": float(r["fps"])} for r in rows],
                        [np.load(corpus / r["path"]) for r in rows],
                        text={"input_ids": ids, "lengths": lengths, "embeddings": emb,
                              "tokenizer": "default", "text_model": "random"})
    cfg = load_config("configs/train/tiny_cpu.yaml",
                      ["max_steps=20", "batch_size=16", "lr=3e-3", "warmup_steps=2", "queue_size=32",
                       "log_every=5", "eval_every=10", "ckpt_every=20"])
    # record which splits training asks for and which samples it assembles: test must be neither
    TRAINING_READ.update(splits=set(), batched=set())
    real_rows, real_batch = KeypointData.rows, KeypointData.batch

    def rows(self, split):
        TRAINING_READ["splits"].add(split)
        return real_rows(self, split)

    def batch(self, idx, *args, **kwargs):
        TRAINING_READ["batched"].update(self.split[np.asarray(idx)].tolist())
        return real_batch(self, idx, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KeypointData, "rows", rows)
        mp.setattr(KeypointData, "batch", batch)
        train(cfg, cache, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    """(run, summary, eval folder) of `s2t eval` on tiny_run's test split."""
    import json

    from s2t import evaluate

    # the default checkpoint (best on validation), as `translate` loads it: the translate tests
    # compare its output with this one
    assert evaluate.main(["--run", str(tiny_run), "--split", "test", "--beam", "2"]) == 0
    out = tiny_run / "eval" / "test"
    return tiny_run, json.loads((out / "summary.json").read_text()), out

"""Sentences never seen in training: the `open` corpus scale, open-set batches, and the memory
queue whose keys are re-projected through the current heads."""
import numpy as np
import torch

from preprocess import synthetic
from s2t.checkpoint import build_model
from s2t.data import KeypointData
from s2t.losses import Losses
from s2t.sampler import PKBatchSampler, samples_per_label
from tests.helpers import tiny_cfg


def test_open_corpus_holds_out_sentences_not_words():
    plan = synthetic.corpus_plan("open")
    split = plan["split_of"]
    by_split: dict[str, set] = {"train": set(), "val": set(), "test": set()}
    for sample_id, j, _, _ in plan["samples"]:
        by_split[split[sample_id]].add(j)
    p = synthetic.SCALES["open"]
    assert len(by_split["val"]) == p["val_sentences"] and len(by_split["test"]) == p["test_sentences"]
    assert not (by_split["train"] & (by_split["val"] | by_split["test"]))  # sentences never seen
    def words(js):
        return {w for j in js for w in plan["sentences"][j].split()}
    assert words(by_split["val"] | by_split["test"]) <= words(by_split["train"])  # signs all known
    train_ids = [sid for sid in split if split[sid] == "train"]
    repeated = len(train_ids) - len(by_split["train"])
    assert 0 < repeated < 0.2 * len(train_ids)  # a few sentences twice, most once
    assert synthetic.corpus_plan("open")["samples"] == plan["samples"]  # deterministic


def test_unique_labels_give_the_decoder_half_the_batch():
    unique = np.arange(1000)
    assert samples_per_label(unique, 4, 128) == 2
    sampler = PKBatchSampler(unique, np.full(1000, 50), 128, samples_per_label(unique, 4, 128), seed=0)
    for _ in range(10):
        assert len(np.unique(unique[next(sampler)])) >= 128 // 2
    repeated = np.repeat(np.arange(100), 6)  # 6 clips per sentence: K stays as configured
    assert samples_per_label(repeated, 4, 128) == 4
    assert samples_per_label(np.repeat(np.arange(100), 3), 4, 24) == 3
    assert samples_per_label(np.repeat(np.arange(100), 3), 4, 32) == 2  # 32 % 3 != 0
    assert samples_per_label(unique, 1, 128) == 1


def test_pooled_queue_keys_follow_the_current_heads(corpus):  # noqa: F811
    """Queued keys are re-projected: after a head changes, the queue's keys are exactly what the
    changed head makes of the same clips (and of the same sentences on the text side)."""
    cfg = tiny_cfg("queue_keys=pooled", "queue_size=64", "augment.enabled=false", "dropout=0.0",
                   "loss_weights.ce=0.0")
    data = KeypointData(corpus, cfg)
    info = {"vocab": data.vocab.to_json(), "in_dim": data.feature_dim, "text_dim": data.text_dim}
    model, _ = build_model(cfg, info)
    model.eval()
    losses = Losses(cfg, data.vocab, "cpu", model=model, text_dim=data.text_dim)
    batch = data.batch(data.rows("train")[:24])
    out = model(batch.x, batch.mask, None, batch.text_emb)
    losses.push(out, batch)
    with torch.no_grad():
        for p in list(model.heads["clip"].parameters()) + list(model.text_proj.parameters()):
            p.add_(0.1 * torch.randn_like(p))
        now = model(batch.x, batch.mask, None, batch.text_emb)
    video, _ = losses._queued("clip_video")
    text, _ = losses._queued("clip_text")
    torch.testing.assert_close(video, now["clip"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, now["text"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(video, out["clip"].detach(), atol=1e-3)  # the heads did move
    # the re-projected keys carry gradient into the heads (the loss shapes them, as in-batch keys)
    total, _ = losses(model(batch.x, batch.mask, None, batch.text_emb), batch, use_queue=True)
    total.backward()
    assert model.text_proj.net[0].weight.grad.abs().sum() > 0


def _tiny_model(data, cfg):
    info = {"vocab": data.vocab.to_json(), "in_dim": data.feature_dim, "text_dim": data.text_dim}
    torch.manual_seed(0)
    return build_model(cfg, info)[0]


def test_decoder_reads_the_clip_embedding_without_training_the_head(corpus):  # noqa: F811
    cfg = tiny_cfg("decoder_reads_embedding=true", "loss_weights.supcon=0.0", "loss_weights.clip=0.0",
                   "dropout=0.0")
    data = KeypointData(corpus, cfg)
    model = _tiny_model(data, cfg)
    batch = data.batch(data.rows("train")[:8])
    memory = model.encode(batch.x, batch.mask)
    mem, mask = model.decoder_memory(memory, batch.mask)
    assert mem.shape[1] == memory.shape[1] + 1 and mask[:, 0].all()
    # the slot is what the clip head says: change the video embedding, the decoder's output changes
    logits = model.decoder_logits(memory, batch.mask, batch.tokens[:, :-1])
    logits.sum().backward()
    assert model.embedding_memory.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.heads["clip"].parameters())  # detached: CE never shapes it
    assert len(model.generate(memory, batch.mask, max_len=6)) == 8


def test_token_dropout_hides_words_but_not_bos_or_padding():
    from s2t.train import drop_tokens
    tokens = torch.tensor([[2, 5, 6, 7, 8, 3, 0, 0]] * 500)
    out = drop_tokens(tokens, 0.3, unk=1, pad=0, gen=torch.Generator().manual_seed(0))
    assert (out[:, 0] == 2).all() and (out[:, 6:] == 0).all()
    hidden = (out[:, 1:6] == 1).float().mean()
    assert 0.25 < hidden < 0.35


def test_pretrained_token_embeddings_keep_word_similarity(corpus):  # noqa: F811
    from preprocess.text import word_embeddings
    cfg = tiny_cfg("token_init=pretrained")
    data = KeypointData(corpus, cfg)
    model = _tiny_model(data, cfg)
    source = torch.from_numpy(word_embeddings(data.vocab.tokenizer))
    model.init_token_embeddings(source)
    ids = model.token_ids
    keep = torch.tensor([i for i in range(len(ids)) if i != model.config.pad_id])
    cos = lambda x: torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1)  # noqa: E731
    a = cos(source[ids[keep]] - source[ids[keep]].mean(0)).flatten()
    b = cos(model.decoder.tokens.weight[keep]).flatten().detach()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9  # the geometry of the words survives the PCA
    assert model.decoder.tokens.weight[model.config.pad_id].abs().sum() == 0


def test_a_neg_sim_jump_after_the_queue_joins_is_reported():
    from s2t.train import neg_sim_jump
    cfg = tiny_cfg("queue_size=64", "queue_start=10")
    said = neg_sim_jump({"neg_sim": 0.32}, {"neg_sim": 0.90}, cfg, step=20)
    assert "0.320 to 0.900" in said and "queue joined at step 10" in said
    assert neg_sim_jump({"neg_sim": 0.32}, {"neg_sim": 0.40}, cfg, step=20) is None
    assert "queue" not in neg_sim_jump({"neg_sim": 0.1}, {"neg_sim": 0.9}, tiny_cfg("queue_size=0"), step=20)
    assert neg_sim_jump({}, {"neg_sim": 0.9}, cfg, step=20) is None  # the first validation

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from s2t.config import load_config
from s2t.losses import CaptionLoss, SupConLoss
from s2t.model import ModelConfig, SignTranslator


def tiny(shared_head=False, vocab=50, token_ids=None, seed=0):
    torch.manual_seed(seed)
    c = ModelConfig(in_dim=10, vocab_size=vocab, pad_id=0, bos_id=1, eos_id=2, text_dim=6,
                    embed_dim=32, proj_dim=16, encoder_layers=2, decoder_layers=2, heads=4, ff_mult=4,
                    dropout=0.0, shared_head=shared_head, logit_scale_init=math.log(1 / 0.07),
                    logit_scale_max=math.log(100))
    return SignTranslator(c, token_ids).eval()


def test_padding_does_not_change_the_embedding():
    m = tiny()
    x = torch.randn(1, 7, 10)
    mask = torch.ones(1, 7, dtype=torch.bool)
    padded = torch.cat([x, torch.randn(1, 5, 10) * 100], dim=1)  # garbage in the padding
    pmask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], dim=1)
    for head in ("clip", "supcon"):
        a = m.video_embedding(m.encode(x, mask), mask, head)
        b = m.video_embedding(m.encode(padded, pmask), pmask, head)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert torch.allclose(a.norm(dim=1), torch.ones(1))


def test_decoder_is_causal():
    m = tiny()
    x, mask = torch.randn(2, 6, 10), torch.ones(2, 6, dtype=torch.bool)
    mem = m.encode(x, mask)
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 11, 0]])
    changed = ids.clone()
    changed[:, 3] = 20
    a, b = m.decoder_logits(mem, mask, ids), m.decoder_logits(mem, mask, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_dedicated_heads_do_not_touch_the_decoder_input_but_the_shared_head_does():
    x, mask = torch.randn(4, 6, 10), torch.ones(4, 6, dtype=torch.bool)
    ids = torch.tensor([[1, 5, 6, 2]] * 4)
    for shared in (False, True):
        m = tiny(shared_head=shared).train()
        mem = m.encode(x, mask)
        ce = CaptionLoss(0)(m.decoder_logits(mem, mask, ids[:, :-1]), ids[:, 1:])
        head_params = list(m.heads.parameters())
        grads = torch.autograd.grad(ce, head_params, allow_unused=True)
        reaches_head = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert reaches_head == shared
        # and the contrastive loss never reaches the decoder
        sup = SupConLoss(0.1)(m.video_embedding(mem, mask, "supcon"), torch.tensor([0, 0, 1, 1]))
        dec_grads = torch.autograd.grad(sup, list(m.decoder.parameters()), allow_unused=True)
        assert all(g is None for g in dec_grads)


def test_greedy_generation_follows_the_decoder_argmax():
    m = tiny(token_ids=torch.arange(50) + 1000)
    x, mask = torch.randn(3, 8, 10), torch.ones(3, 8, dtype=torch.bool)
    mask[2, 4:] = False
    mem = m.encode(x, mask)
    out = m.generate(mem, mask, max_len=6)
    for b in range(3):
        seq = [1]
        for _ in range(6):
            logits = m.decoder_logits(mem[b:b + 1], mask[b:b + 1], torch.tensor([seq]))[0, -1]
            logits[[0, 1]] = float("-inf")  # PAD and BOS are never generated
            nxt = int(logits.argmax())
            if nxt == 2:
                break
            seq.append(nxt)
        assert out[b] == [t + 1000 for t in seq[1:]]  # real ids, no specials
    assert m.generate(mem, mask, max_len=6, beam_size=1) == out


def test_beam_search_exhaustive_equals_brute_force():
    m = tiny(vocab=5, token_ids=torch.tensor([0, 101, 102, 7, 8]), seed=3)
    x, mask = torch.randn(2, 5, 10), torch.ones(2, 5, dtype=torch.bool)
    mem = m.encode(x, mask)
    max_len = 3
    beams = m.generate(mem, mask, max_len=max_len, beam_size=27)  # >= every hypothesis
    for b in range(2):
        best, best_score = None, float("-inf")
        for n in range(1, max_len + 1):
            for seq in itertools.product([2, 3, 4], repeat=n):
                if 2 in seq[:-1] or (n < max_len and seq[-1] != 2):
                    continue  # EOS only at the end; shorter than max_len must end with EOS
                ids = torch.tensor([[1, *seq]])
                with torch.no_grad():
                    logp = F.log_softmax(m.decoder_logits(mem[b:b + 1], mask[b:b + 1], ids[:, :-1])[0], -1)
                score = sum(float(logp[i, t]) for i, t in enumerate(seq)) / n
                if score > best_score:
                    best, best_score = seq, score
        real = {3: 7, 4: 8}
        assert beams[b] == [real[t] for t in best if t != 2]


def test_parameter_groups_and_construction_from_preset():
    cfg = load_config("configs/train/tiny_cpu.yaml")
    c = ModelConfig.from_train_config(cfg, in_dim=10, vocab_size=30, pad_id=0, bos_id=1, eos_id=2, text_dim=6)
    m = SignTranslator(c)
    assert m.encoder.layers.num_layers == cfg.encoder_layers
    decay, no_decay = m.parameter_groups(1e-4)
    assert any(p is m.logit_scale for p in no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"])
    assert m.clip_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert m.clip_scale().item() == pytest.approx(100.0, rel=1e-5)  # clamped at ln 100


"""Each loss against a reference written independently here with plain loops over anchors
(float64), for values and gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from s2t.losses import CaptionLoss, ClipLoss, MemoryQueue, SupConLoss, gather_with_grad
from tests.helpers import run_two_ranks


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def ref_supcon(z, labels, t, queue_z=None, queue_labels=()):
    """Khosla et al. L_out, anchor by anchor."""
    everything = list(z) + (list(queue_z) if queue_z is not None else [])
    all_labels = list(labels) + list(queue_labels)
    per_anchor = []
    for i in range(len(z)):
        denom = sum(torch.exp(z[i] @ everything[a] / t) for a in range(len(everything)) if a != i)
        positives = [p for p in range(len(everything)) if p != i and all_labels[p] == labels[i]]
        if not positives:
            continue
        terms = [-torch.log(torch.exp(z[i] @ everything[p] / t) / denom) for p in positives]
        per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor)


def ref_clip(v, t, scale, labels, qv=None, qt=None, ql=()):
    all_v = list(v) + (list(qv) if qv is not None else [])
    all_t = list(t) + (list(qt) if qt is not None else [])
    all_labels = list(labels) + list(ql)

    def one_direction(queries, keys):
        total = 0
        for i in range(len(queries)):
            logits = torch.stack([scale * queries[i] @ k for k in keys])
            logp = logits - torch.logsumexp(logits, 0)
            positives = [j for j in range(len(keys)) if all_labels[j] == labels[i]]
            total = total + sum(-logp[j] for j in positives) / len(positives)
        return total / len(queries)

    return (one_direction(v, all_t) + one_direction(t, all_v)) / 2


@pytest.mark.parametrize("t", [0.05, 0.5])
def test_supcon_matches_reference_with_duplicates_and_lonely_anchors(t):
    labels = [0, 0, 1, 2, 2, 2, 3, 4]  # 1, 3, 4 have no positive
    z = unit(len(labels), 16, seed=1).requires_grad_()
    loss = SupConLoss(t)(z, torch.tensor(labels))
    (g,) = torch.autograd.grad(loss, z)
    z_ref = z.detach().clone().requires_grad_()
    ref = ref_supcon(z_ref, labels, t)
    (g_ref,) = torch.autograd.grad(ref, z_ref)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_supcon_no_positive_at_all_is_zero_and_finite():
    z = unit(5, 8, seed=2).requires_grad_()
    loss = SupConLoss(0.05)(z, torch.arange(5))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(z.grad).all()
    # a single sample (nothing to contrast with) is also fine
    z1 = unit(1, 8, seed=3).requires_grad_()
    SupConLoss(0.05)(z1, torch.tensor([7])).backward()
    assert torch.isfinite(z1.grad).all()


def test_supcon_with_queue_matches_reference_and_queue_gets_no_gradient():
    labels, qlabels = [0, 1, 1, 2], [0, 2, 5, 5, 3]  # anchor 0 and 3 only have positives in the queue
    z = unit(4, 8, seed=4).requires_grad_()
    qz = unit(5, 8, seed=5)
    loss = SupConLoss(0.1)(z, torch.tensor(labels), qz.float(), torch.tensor(qlabels))
    (g,) = torch.autograd.grad(loss, z)
    z_ref = z.detach().clone().requires_grad_()
    ref = ref_supcon(z_ref, labels, 0.1, qz, qlabels)
    (g_ref,) = torch.autograd.grad(ref, z_ref)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_clip_multi_positive_matches_reference():
    labels = [3, 1, 3, 3, 2, 1]  # sentence 3 three times, sentence 1 twice
    v = unit(6, 12, seed=6).requires_grad_()
    t = unit(6, 12, seed=7).requires_grad_()
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    loss = ClipLoss()(v, t, scale.exp(), torch.tensor(labels))
    grads = torch.autograd.grad(loss, (v, t, scale))
    leaves = [x.detach().clone().requires_grad_() for x in (v, t, scale)]
    ref = ref_clip(leaves[0], leaves[1], leaves[2].exp(), labels)
    ref_grads = torch.autograd.grad(ref, leaves)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-4, atol=1e-6)


def test_clip_duplicates_are_not_negatives():
    """Two copies of one sentence with identical videos and texts is the optimum of the
    multi-positive loss: loss = entropy of the targets and no gradient pushes the copies apart
    (with single-positive targets each copy would be a negative of the other)."""
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    t = v.detach().clone().requires_grad_()
    loss = ClipLoss()(v, t, torch.tensor(100.0), torch.tensor([0, 0, 1]))
    gv, gt = torch.autograd.grad(loss, (v, t))
    assert loss.item() == pytest.approx(2 / 3 * math.log(2), abs=1e-6)
    assert gv.abs().max() < 1e-6 and gt.abs().max() < 1e-6


def test_clip_with_queue_matches_reference():
    labels, qlabels = [0, 1, 2], [1, 1, 4]
    v, t = unit(3, 8, seed=8).requires_grad_(), unit(3, 8, seed=9).requires_grad_()
    qv, qt = unit(3, 8, seed=10), unit(3, 8, seed=11)
    loss = ClipLoss()(v, t, torch.tensor(10.0), torch.tensor(labels), qv, qt, torch.tensor(qlabels))
    ref = ref_clip(v, t, 10.0, labels, qv, qt, qlabels)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_contrastive_logits_are_fp32_under_autocast(dtype):
    """float32 embeddings under 16-bit autocast: the losses must equal the fp32 ones (a 16-bit
    matmul of logits / 0.05 would be off by ~1e-2, and exp(logit) overflows fp16)."""
    z = unit(8, 16, seed=12).float()
    t = unit(8, 16, seed=13).float()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    sup, clip = SupConLoss(0.05)(z, labels), ClipLoss()(z, t, torch.tensor(100.0), labels)
    with torch.autocast("cpu", dtype=dtype):
        sup16 = SupConLoss(0.05)(z, labels)
        clip16 = ClipLoss()(z, t, torch.tensor(100.0), labels)
        sup_half_inputs = SupConLoss(0.05)(z.to(dtype), labels)  # 16-bit inputs still work
    assert sup16.dtype == clip16.dtype == torch.float32
    assert sup16.item() == pytest.approx(sup.item(), rel=1e-6)
    assert clip16.item() == pytest.approx(clip.item(), rel=1e-6)
    assert torch.isfinite(sup_half_inputs)


def test_caption_loss_matches_reference_with_smoothing_and_padding():
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(2, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[3, 5, 2, 0], [4, 2, 0, 0]])  # 0 = PAD
    eps = 0.1
    loss = CaptionLoss(pad_id=0, label_smoothing=eps)(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    leaf = logits.detach().clone().requires_grad_()
    terms = []
    for b in range(2):
        for i in range(4):
            y = int(targets[b, i])
            if y == 0:
                continue
            logp = leaf[b, i] - torch.logsumexp(leaf[b, i], 0)
            terms.append((1 - eps) * -logp[y] + eps * -logp.mean())
    ref = sum(terms) / len(terms)
    (ref_grad,) = torch.autograd.grad(ref, leaf)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad, ref_grad.float().to(grad.dtype), rtol=1e-4, atol=1e-6)
    assert (grad[1, 2:] == 0).all()  # padding gets no gradient


def test_memory_queue_fifo_wraps_and_roundtrips():
    q = MemoryQueue(size=5, dim=2)
    assert q.get() == (None, None)
    q.push(torch.tensor([[1.0, 1], [2, 2], [3, 3]]), torch.tensor([1, 2, 3]))
    f, lab = q.get()
    assert lab.tolist() == [1, 2, 3] and f[:, 0].tolist() == [1, 2, 3]
    q.push(torch.tensor([[4.0, 4], [5, 5], [6, 6]]), torch.tensor([4, 5, 6]))
    f, lab = q.get()
    assert sorted(lab.tolist()) == [2, 3, 4, 5, 6]  # the oldest (1) was overwritten
    q.push(torch.arange(14.0).reshape(7, 2), torch.arange(10, 17))  # more than fits: newest 5 kept
    assert sorted(q.get()[1].tolist()) == [12, 13, 14, 15, 16]
    state = q.state_dict()
    q2 = MemoryQueue(size=5, dim=2)
    q2.load_state_dict(state)
    assert torch.equal(q2.get()[0], q.get()[0]) and (q2.ptr, q2.count) == (q.ptr, q.count)
    with pytest.raises(ValueError, match="queue_size"):
        MemoryQueue(size=4, dim=2).load_state_dict(state)


def test_memory_queue_size_zero_disables_and_push_detaches():
    q = MemoryQueue(size=0, dim=3)
    q.push(torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
    assert q.get() == (None, None)
    q = MemoryQueue(size=4, dim=3)
    x = torch.ones(2, 3, requires_grad=True)
    q.push(x * 2, torch.zeros(2, dtype=torch.long))
    assert not q.get()[0].requires_grad


def test_gather_with_grad_is_identity_without_distributed():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


def _distributed_worker(rank, world, init_file, v, t, labels, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = len(labels) // world
    mine = slice(rank * n, (rank + 1) * n)
    lv, lt = v[mine].clone().requires_grad_(), t[mine].clone().requires_grad_()
    clip = ClipLoss()(lv, lt, torch.tensor(10.0), labels[mine])
    sup = SupConLoss(0.1)(lv, labels[mine])
    (clip + sup).backward()
    q = MemoryQueue(size=2 * len(labels), dim=v.shape[1])
    q.push(lv, labels[mine])
    torch.save({"clip": clip.detach(), "sup": sup.detach(), "gv": lv.grad, "gt": lt.grad,
                "queue_labels": q.get()[1]}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_equal_one_big_batch(tmp_path):
    """Local-vs-global losses on 2 processes (gloo): the mean loss equals the single-process
    loss on the whole batch, and each rank's feature gradient is the big-batch gradient
    (x world size, since every rank's loss counts once) - negatives from the other rank included."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])  # every anchor has a positive; some across ranks
    v, t = unit(8, 6, seed=20).float(), unit(8, 6, seed=21).float()
    run_two_ranks(_distributed_worker, (2, str(tmp_path / "init"), v, t, labels, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    fv, ft = v.clone().requires_grad_(), t.clone().requires_grad_()
    clip = ClipLoss()(fv, ft, torch.tensor(10.0), labels)
    sup = SupConLoss(0.1)(fv, labels)
    (clip + sup).backward()
    assert (ranks[0]["clip"] + ranks[1]["clip"]).item() / 2 == pytest.approx(clip.item(), rel=1e-5)
    assert (ranks[0]["sup"] + ranks[1]["sup"]).item() / 2 == pytest.approx(sup.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([r["gv"] for r in ranks]), 2 * fv.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["gt"] for r in ranks]), 2 * ft.grad, rtol=1e-4, atol=1e-6)
    for r in ranks:  # every rank queued the whole global batch, in rank order
        assert r["queue_labels"].tolist() == labels.tolist()

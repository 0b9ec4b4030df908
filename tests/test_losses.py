"""Losses: every divergence against a plain float64 reference, gradients, chunking, masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill import losses

DIVS = list(losses.DIVERGENCES)
BETA, ALPHA = 0.3, 0.2


def textbook(name, p, q):
    """The divergence ``name`` of two distributions by its textbook formula (numpy or torch arrays)."""
    def kl(a, b):
        return (a * (a / b).log()).sum() if hasattr(a, "log") else np.sum(a * np.log(a / b))

    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd":
        m = BETA * p + (1 - BETA) * q
        return BETA * kl(p, m) + (1 - BETA) * kl(q, m)
    if name == "skew_kl":
        return kl(p, ALPHA * p + (1 - ALPHA) * q)
    if name == "skew_reverse_kl":
        return kl(q, (1 - ALPHA) * p + ALPHA * q)
    assert name == "tvd", name
    return 0.5 * abs(p - q).sum()


def reference(name, logits, ids, teacher_lp, temperature=1.0, vocab=None):
    """Naive float64 reference, row by row in numpy: build both (k+1)-bin distributions from their
    definitions (DESIGN.md §4), temper, then apply the textbook formula."""
    logits = np.asarray(logits, dtype=np.float64)
    total = 0.0
    for z, row_ids, row_lp in zip(logits, np.asarray(ids), np.asarray(teacher_lp, dtype=np.float64)):
        vocab_size = len(z)
        q_full = np.exp(z - z.max())
        q_full /= q_full.sum()
        keep = [(int(i), lp) for i, lp in zip(row_ids, row_lp) if 0 <= i < vocab_size]
        p = [math.exp(lp) for _, lp in keep]
        p.append(max(1.0 - sum(p), losses.TAIL_FLOOR))
        chosen = {i for i, _ in keep}
        q = [q_full[i] for i, _ in keep]
        q.append(sum(q_full[j] for j in range(vocab_size) if j not in chosen))
        p, q = np.array(p), np.array(q)
        if temperature != 1.0:
            p = p ** (1 / temperature); p /= p.sum()
            q = q ** (1 / temperature); q /= q.sum()
        total += float(textbook(name, p, q)) * temperature**2
    return total


def make_case(n=6, vocab=50, k=5, seed=0, dtype=torch.float64, oov=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g, dtype=dtype) * 2
    teacher_logits = torch.randn(n, vocab + 8, generator=g, dtype=torch.float64) * 2
    teacher_lp = torch.log_softmax(teacher_logits, -1)
    top = teacher_lp.topk(k, dim=-1)
    ids = top.indices
    if oov:  # the teacher vocabulary is padded beyond the student's: some stored ids >= vocab
        ids[0, 1] = vocab + 3
        ids[2, 0] = vocab + 7
    return logits, ids, top.values.to(dtype)


def sums_of(name, logits, ids, lp, temperature=1.0):
    return losses.kd_ce_sums(logits, torch.zeros(len(ids), dtype=torch.long), ids, lp, kd_weight=1.0,
                             divergence_name=name, temperature=temperature, beta=BETA, alpha=ALPHA)


@pytest.mark.parametrize("name", DIVS)
@pytest.mark.parametrize("oov", [False, True])
def test_matches_float64_reference(name, oov):
    logits, ids, lp = make_case(oov=oov)
    ref = reference(name, logits, ids, lp)
    # kd_ce_sums upcasts to fp32; evaluate the bins in float64 directly for the tight check.
    valid = (ids >= 0) & (ids < logits.shape[-1])
    p = losses.teacher_bins(lp, valid)
    # teacher_bins computes in fp32 by design (storage precision); rebuild in fp64 for the check
    p64 = torch.cat([lp.masked_fill(~valid, float("-inf")),
                     (1 - lp.masked_fill(~valid, float("-inf")).exp().sum(-1, keepdim=True)).clamp(min=losses.TAIL_FLOOR).log()], -1)
    q64, _ = losses.student_bins(logits, ids, valid)
    got64 = losses.divergence(name, p64, q64, beta=BETA, alpha=ALPHA).item()
    assert got64 == pytest.approx(ref, rel=1e-6, abs=1e-12)
    got32 = sums_of(name, logits.float(), ids, lp.float()).kd.item()
    assert got32 == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert p.shape == (logits.shape[0], ids.shape[1] + 1)


def test_cross_entropy_matches_reference():
    logits, _, _ = make_case()
    targets = torch.tensor([0, 5, 7, 49, 3, 1])
    got = losses.cross_entropy_sum(torch.log_softmax(logits, -1), targets)
    ref = float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
    assert got.item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("name", DIVS)
def test_gradcheck(name):
    logits, ids, lp = make_case(n=3, vocab=12, k=4, seed=1, oov=True)
    logits.requires_grad_(True)
    valid = (ids >= 0) & (ids < logits.shape[-1])
    p = torch.cat([lp.masked_fill(~valid, float("-inf")),
                   (1 - lp.masked_fill(~valid, float("-inf")).exp().sum(-1, keepdim=True)).log()], -1)

    def f(z):
        q, _ = losses.student_bins(z, ids, valid, temperature=1.5)
        return losses.divergence(name, losses._temper(p, 1.5), q, beta=BETA, alpha=ALPHA)

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", DIVS)
def test_p_equals_q_is_zero(name):
    logits, _, _ = make_case(seed=3)
    student_lp = torch.log_softmax(logits, -1)
    top = student_lp.topk(6, dim=-1)
    s = sums_of(name, logits, top.indices, top.values)
    assert abs(s.kd.item()) < 1e-6
    s = sums_of(name, logits, top.indices, top.values, temperature=2.0)
    assert abs(s.kd.item()) < 1e-6


@pytest.mark.parametrize("name", DIVS)
def test_all_masked_is_zero_without_nan(name):
    logits, ids, lp = make_case()
    logits.requires_grad_(True)
    lp = lp.clone()
    lp[1, :] = float("-inf")  # garbage in a masked row must not leak NaN
    p = losses.teacher_bins(lp.float())
    q, _ = losses.student_bins(logits.float(), ids)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    d = losses.divergence(name, p, q, mask, beta=BETA, alpha=ALPHA)
    d.backward()
    assert d.item() == 0.0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0
    ce = losses.cross_entropy_sum(torch.log_softmax(logits, -1), torch.zeros(6, dtype=torch.long), mask)
    assert ce.item() == 0.0


def test_mask_selects_rows():
    logits, ids, lp = make_case()
    p = losses.teacher_bins(lp, ids < 50)
    q, _ = losses.student_bins(logits, ids)
    mask = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    assert losses.forward_kl(p, q, mask).item() == pytest.approx(losses.forward_kl(p[mask], q[mask]).item(), rel=1e-12)


def test_temperature_meaning():
    """tau=1 is the plain divergence; tau softens both bin distributions (p^(1/tau)) and scales
    by tau^2; a huge tau flattens both to uniform so the divergence vanishes."""
    logits, ids, lp = make_case(seed=5)
    for tau in (0.5, 2.0, 4.0):
        got = sums_of("forward_kl", logits, ids, lp, temperature=tau).kd.item()
        assert got == pytest.approx(reference("forward_kl", logits, ids, lp, temperature=tau), rel=1e-4)
    plain = sums_of("forward_kl", logits, ids, lp).kd.item()
    assert sums_of("forward_kl", logits, ids, lp, temperature=1.0).kd.item() == plain
    # tau^2 * D_tau stays bounded while D_tau itself vanishes as tau grows
    d_big = sums_of("forward_kl", logits, ids, lp, temperature=1e4).kd.item() / 1e8
    assert d_big < 1e-6
    p_soft = losses.teacher_bins(lp.float(), temperature=3.0).exp()
    assert torch.allclose(p_soft.sum(-1), torch.ones(len(ids)), atol=1e-5)


def test_jsd_endpoints_and_skew_zero():
    logits, ids, lp = make_case(seed=7)
    valid = ids < logits.shape[-1]
    p = losses.teacher_bins(lp, valid)
    q, _ = losses.student_bins(logits, ids, valid)
    assert losses.jsd(p, q, beta=0.0) == losses.forward_kl(p, q)
    assert losses.jsd(p, q, beta=1.0) == losses.reverse_kl(p, q)
    assert losses.skew_kl(p, q, alpha=0.0) == losses.forward_kl(p, q)
    with pytest.raises(ValueError):
        losses.divergence("kl", p, q)


def test_oov_ids_go_to_tail():
    """A stored id >= the student vocabulary is one bin fewer: its teacher mass joins the tail."""
    logits, ids, lp = make_case(oov=True)
    valid = (ids >= 0) & (ids < logits.shape[-1])
    p = losses.teacher_bins(lp.float(), valid)
    assert torch.isinf(p[0, 1]) and torch.allclose(p.exp().sum(-1), torch.ones(6), atol=1e-5)
    q, _ = losses.student_bins(logits.float(), ids, valid)
    assert torch.allclose(q.exp().sum(-1), torch.ones(6), atol=1e-5)


class Head(torch.nn.Module):
    def __init__(self, hidden=16, vocab=97, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, h):
        return self.proj(h)


CHUNK_CASES = [(name, w, mode) for name in ("forward_kl", "jsd", "tvd") for w in (0.0, 0.5, 1.0)
               for mode in ("in_forward", "recompute")]
CHUNK_CASES += [(name, 0.5, "in_forward") for name in ("reverse_kl", "skew_kl", "skew_reverse_kl")]


@pytest.mark.parametrize("name,kd_weight,mode", CHUNK_CASES)
def test_chunked_equals_unchunked(name, kd_weight, mode):
    head = Head().proj
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 97, (37,), generator=g)
    t_lp = torch.log_softmax(torch.randn(37, 105, generator=g) * 3, -1).topk(8, dim=-1)
    kwargs = dict(kd_weight=kd_weight, divergence_name=name, temperature=1.3)
    full = losses.kd_ce_sums(head(hidden), targets, t_lp.indices, t_lp.values, **kwargs)
    grads_full = torch.autograd.grad(full.total, [hidden, head.weight])
    chunked = losses.chunked_head_loss(hidden, head, targets, t_lp.indices, t_lp.values, chunk_size=5, mode=mode, **kwargs)
    grads_chunked = torch.autograd.grad(chunked.total, [hidden, head.weight])
    for field in ("total", "kd", "ce"):
        assert getattr(full, field).item() == pytest.approx(getattr(chunked, field).item(), rel=1e-5)
    assert full.prompt_ce is None and chunked.prompt_ce is None  # no prompt loss here
    for a, b in zip(grads_full, grads_chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_black_box_ce_only():
    head = Head().proj
    hidden = torch.randn(9, 16, requires_grad=True)
    targets = torch.randint(0, 97, (9,))
    s = losses.chunked_head_loss(hidden, head, targets, None, None, kd_weight=0.0, chunk_size=4)
    ref = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    assert s.total.item() == pytest.approx(ref.item(), rel=1e-5) and s.kd.item() == 0.0


@pytest.mark.parametrize("mode", ["in_forward", "recompute"])
def test_chunked_tied_embedding_gradient_accumulates_once(mode):
    """Tied input/output embedding: one AccumulateGrad for the weight across chunks + embedding."""
    emb = torch.nn.Embedding(97, 16)
    head = torch.nn.Linear(16, 97, bias=False)
    head.weight = emb.weight
    calls = []
    emb.weight.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    ids = torch.randint(0, 97, (20,))
    hidden = torch.tanh(emb(ids))
    s = losses.chunked_head_loss(hidden, head, ids.roll(1), None, None, kd_weight=0.0, chunk_size=3, mode=mode)
    (2.0 * s.total).backward()
    assert len(calls) == 1
    ref_emb = torch.nn.Embedding(97, 16)
    ref_emb.weight.data.copy_(emb.weight.data)
    h = torch.tanh(ref_emb(ids))
    (2.0 * torch.nn.functional.cross_entropy(h @ ref_emb.weight.t(), ids.roll(1), reduction="sum")).backward()
    torch.testing.assert_close(emb.weight.grad, ref_emb.weight.grad, rtol=1e-5, atol=1e-6)


def test_chunked_through_peft_lora_head():
    """A PEFT-wrapped head (LoRA on lm_head) takes the module path; gradients reach the adapter."""
    from peft import LoraConfig, get_peft_model

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(16, 97, bias=False)

        def forward(self, h):
            return self.lm_head(h)

    model = get_peft_model(M(), LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights=False))
    head = model.base_model.model.lm_head
    hidden = torch.randn(11, 16)
    targets = torch.randint(0, 97, (11,))
    s = losses.chunked_head_loss(hidden, head, targets, None, None, kd_weight=0.0, chunk_size=4)
    s.total.backward()
    ref = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    assert s.total.item() == pytest.approx(ref.item(), rel=1e-5)
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_accumulation_micro_batches_equal_one_batch():
    """Sums then one division by the global count: 4 micro-batches == 1 big batch."""
    head = Head().proj
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 16, generator=g)
    targets = torch.randint(0, 97, (40,), generator=g)
    t_lp = torch.log_softmax(torch.randn(40, 97, generator=g), -1).topk(4, dim=-1)
    kw = dict(kd_weight=0.5)
    head.zero_grad()
    big = losses.chunked_head_loss(hidden, head, targets, t_lp.indices, t_lp.values, **kw).total / 40
    big.backward()
    g_big = head.weight.grad.clone()
    head.zero_grad()
    for idx in torch.tensor_split(torch.arange(40), [3, 17, 30]):
        s = losses.chunked_head_loss(hidden[idx], head, targets[idx], t_lp.indices[idx], t_lp.values[idx], **kw)
        (s.total / 40).backward()
    torch.testing.assert_close(head.weight.grad, g_big, rtol=1e-5, atol=1e-7)


def full_distribution_reference(name, logits, teacher_logprobs, temperature=1.0):
    """Float64 torch reference on the full distributions (k = V: no tail bin at all), differentiable."""
    p = torch.softmax(teacher_logprobs.double() / temperature, -1)
    q = torch.softmax(logits.double() / temperature, -1)
    return textbook(name, p, q) * temperature**2


@pytest.mark.parametrize("name", DIVS)
@pytest.mark.parametrize("mode", ["in_forward", "recompute"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_equal_to_vocabulary_is_finite_and_exact(name, mode, temperature):
    """k = V (a small vocabulary stored whole): the tail bin is empty on both sides and contributes
    0; values and gradients match the full-distribution divergence, on both head paths."""
    vocab, hidden_size, n = 24, 8, 5
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(n, hidden_size, generator=g, dtype=torch.float32, requires_grad=True)
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden_size, generator=g))
    teacher_lp = torch.log_softmax(torch.randn(n, vocab, generator=g, dtype=torch.float64) * 2, -1)
    top = teacher_lp.topk(vocab, dim=-1)
    targets = torch.randint(0, vocab, (n,), generator=g)
    sums = losses.chunked_head_loss(hidden, head, targets, top.indices, top.values.float(), kd_weight=1.0,
                                    divergence_name=name, temperature=temperature, beta=BETA, alpha=ALPHA,
                                    chunk_size=2, mode=mode)
    assert torch.isfinite(sums.total) and torch.isfinite(sums.kd)
    sums.total.backward()
    got_h, got_w = hidden.grad.clone(), head.weight.grad.clone()
    assert torch.isfinite(got_h).all() and torch.isfinite(got_w).all()

    h64 = hidden.detach().double().requires_grad_()
    w64 = head.weight.detach().double().requires_grad_()
    ref = full_distribution_reference(name, h64 @ w64.t(), teacher_lp.float().double(), temperature)
    ref.backward()
    assert float(sums.kd) == pytest.approx(float(ref.detach()), rel=1e-4, abs=1e-5)
    torch.testing.assert_close(got_h.double(), h64.grad, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(got_w.double(), w64.grad, rtol=1e-3, atol=1e-5)


def test_top_k_equal_to_vocabulary_in_kd_ce_sums():
    """The unchunked function too: k = V gives the full-distribution forward KL, no inf/NaN, and
    p = q gives 0."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 10, generator=g, dtype=torch.float64, requires_grad=True)
    lp = torch.log_softmax(logits.detach(), -1)
    top = lp.topk(10, dim=-1)
    for name in DIVS:
        sums = losses.kd_ce_sums(logits, torch.zeros(3, dtype=torch.long), top.indices, top.values, kd_weight=1.0,
                                 divergence_name=name, beta=BETA, alpha=ALPHA)
        assert abs(float(sums.kd)) < 1e-5, name
        (grad,) = torch.autograd.grad(sums.total, logits)
        assert torch.isfinite(grad).all(), name

"""Distillation losses: sparse top-k divergences over (k+1) bins, CE, and a memory-lean LM head.

The corpus stores, at every response position, the teacher's top-k token ids and their raw
(temperature-1) log-probs. Those k values plus a *tail bucket* holding the rest of the mass,
``r = max(1 - sum_k p_i, 0)``, form a proper (k+1)-bin distribution ``p``. The student's full
softmax is folded onto the same bins: ``q_i`` for each top-k id and ``q_tail`` = the mass of every
other id (computed as a log-sum-exp over the non-top-k logits, not as ``1 - sum``, so it stays
exact when the tail is tiny). Every divergence below is a function of those two bin vectors.

Conventions (DESIGN.md §4, §6):
- ``p`` is always the teacher, ``q`` the student; the name says the direction
  (``forward_kl`` = KL(p || q), ``reverse_kl`` = KL(q || p)).
- Functions return **sums** over positions; the trainer divides once by the global number of
  response tokens of the optimizer step.
- A bin whose teacher log-prob is ``-inf`` is absent from both distributions: that is how
  stored ids outside the student vocabulary (moved to the tail) and padded top-k slots are
  expressed. Absent bins and masked rows contribute exactly 0 and no NaN to values or gradients.
- The teacher tail is floored at ``TAIL_FLOOR`` so that reverse-direction divergences stay finite
  when the stored top-k already sums to 1 within float rounding.

KD temperature with a top-k teacher: only the top-k of the temperature-1 teacher distribution is
known, so the teacher cannot be re-softened over the full vocabulary. ``temperature=tau`` softens
both (k+1)-bin distributions the same way, ``p_tau ∝ p ** (1/tau)`` and ``q_tau ∝ q ** (1/tau)``
with the tail bucket tempered as one bin, and the divergence is multiplied by ``tau**2``
(Hinton et al.) so gradient magnitudes stay comparable across temperatures. ``tau = 1`` is the
plain divergence; ``tau -> inf`` flattens both to uniform over the bins and the divergence to 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

TAIL_FLOOR = 1e-8
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")


# ----------------------------------------------------------------------------- bins

def teacher_bins(topk_logprobs: torch.Tensor, valid: torch.Tensor | None = None, temperature: float = 1.0,
                 empty_tail: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher (k+1)-bin log-probs.

    topk_logprobs: [N, k] raw teacher log-probs of its top-k ids (any order).
    valid: [N, k] bool, False for slots that are absent (id outside the student vocabulary,
      padding); their mass moves to the tail. None = all valid.
    empty_tail: [N] bool, True where the top-k set covers the student's whole vocabulary (k = V):
      the tail bin holds no token, so it is absent (-inf) rather than floored.
    Returns [N, k+1] log-probs, last column the tail bucket; absent slots are -inf.
    """
    lp = topk_logprobs.float()
    if valid is not None:
        lp = lp.masked_fill(~valid, float("-inf"))
    # The tail is a difference of probabilities near 1: float64 keeps it accurate to ~1e-16.
    covered = torch.exp(lp.double()).sum(-1)
    tail = torch.clamp(1.0 - covered, min=TAIL_FLOOR).log().to(lp.dtype)
    if empty_tail is not None:
        tail = tail.masked_fill(empty_tail, float("-inf"))
    bins = torch.cat([lp, tail.unsqueeze(-1)], dim=-1)
    return _temper(bins, temperature)


def student_bins(
    logits: torch.Tensor, topk_ids: torch.Tensor, valid: torch.Tensor | None = None, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student (k+1)-bin log-probs on the teacher's top-k ids, plus the full log-softmax.

    logits: [N, V] student logits (use fp32). topk_ids: [N, k] int. valid: [N, k] bool (ids must
    be < V where valid). Returns (bins [N, k+1] with -inf at absent slots, logprobs [N, V]);
    the full log-softmax is returned so CE can reuse it without a second [N, V] pass.
    """
    n, vocab = logits.shape
    if valid is None:
        valid = (topk_ids >= 0) & (topk_ids < vocab)
    logprobs = torch.log_softmax(logits, dim=-1)
    # Absent slots point at an extra always -inf column, so they never mask a real id.
    ids = torch.where(valid, topk_ids.long(), torch.full_like(topk_ids, vocab, dtype=torch.long))
    top = logprobs.gather(1, ids.clamp(max=vocab - 1)).masked_fill(~valid, float("-inf"))
    # Tail = log-sum-exp over every id outside the top-k set (exact even when the tail is tiny).
    rest = F.pad(logprobs, (0, 1), value=float("-inf"))
    rest.scatter_(1, ids, float("-inf"))
    # A row whose top-k covers the whole vocabulary has an empty tail (-inf). logsumexp's backward
    # over all -inf is NaN even for a zero incoming gradient, so such rows sum finite stand-ins.
    empty = torch.isneginf(rest).all(dim=-1, keepdim=True)
    tail = torch.logsumexp(rest.masked_fill(empty, 0.0), dim=-1, keepdim=True).masked_fill(empty, float("-inf"))
    bins = torch.cat([top, tail], dim=-1)
    return _temper(bins, temperature), logprobs


def _temper(bins: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature == 1.0:
        return bins
    scaled = bins / temperature
    return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)


def _prepare(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor, mask: torch.Tensor | None):
    """Replace absent bins and masked rows by p = q = 1 (log 0): every divergence term is then 0,
    and `where` keeps NaN/inf out of the gradients of the real inputs."""
    present = torch.isfinite(p_logprobs)
    if mask is not None:
        present = present & mask.bool().unsqueeze(-1)
    zero = torch.zeros((), dtype=p_logprobs.dtype, device=p_logprobs.device)
    return torch.where(present, p_logprobs, zero), torch.where(present, q_logprobs, zero), present


def _kl_terms(a_log: torch.Tensor, b_log: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Per-row KL(a || b) from log-probs: sum_i a_i (log a_i - log b_i) over present bins."""
    return (a_log.exp() * (a_log - b_log) * present).sum(-1)


def _mix(p_log: torch.Tensor, q_log: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(weight_p * p + (1 - weight_p) * q), for 0 < weight_p < 1."""
    return torch.logaddexp(p_log + math.log(weight_p), q_log + math.log1p(-weight_p))


# ----------------------------------------------------------------------------- divergences
# Each: p_logprobs, q_logprobs [N, B] (teacher, student bins), mask [N] bool or None -> scalar sum.

def forward_kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over rows of KL(p || q) = sum_i p_i log(p_i / q_i) (mode-covering; the default)."""
    p, q, present = _prepare(p_logprobs, q_logprobs, mask)
    return _kl_terms(p, q, present).sum()


def reverse_kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over rows of KL(q || p) = sum_i q_i log(q_i / p_i) (mode-seeking)."""
    p, q, present = _prepare(p_logprobs, q_logprobs, mask)
    return _kl_terms(q, p, present).sum()


def jsd(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor, mask: torch.Tensor | None = None, beta: float = 0.5) -> torch.Tensor:
    """Generalized JSD (GKD): beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.

    The expression is identically 0 at beta in {0, 1}; like GKD we take its limits' directions
    there: beta = 0 is forward KL(p || q), beta = 1 is reverse KL(q || p).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(p_logprobs, q_logprobs, mask)
    if beta == 1.0:
        return reverse_kl(p_logprobs, q_logprobs, mask)
    p, q, present = _prepare(p_logprobs, q_logprobs, mask)
    m = _mix(p, q, beta)
    return (beta * _kl_terms(p, m, present) + (1.0 - beta) * _kl_terms(q, m, present)).sum()


def skew_kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor, mask: torch.Tensor | None = None, alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM alpha-skew KL: KL(p || alpha p + (1 - alpha) q); alpha = 0 is forward KL."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {alpha}")
    if alpha == 0.0:
        return forward_kl(p_logprobs, q_logprobs, mask)
    p, q, present = _prepare(p_logprobs, q_logprobs, mask)
    return _kl_terms(p, _mix(p, q, alpha), present).sum()


def skew_reverse_kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor, mask: torch.Tensor | None = None, alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM alpha-skew reverse KL: KL(q || (1 - alpha) p + alpha q); alpha = 0 is reverse KL."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {alpha}")
    if alpha == 0.0:
        return reverse_kl(p_logprobs, q_logprobs, mask)
    p, q, present = _prepare(p_logprobs, q_logprobs, mask)
    return _kl_terms(q, _mix(p, q, 1.0 - alpha), present).sum()


def tvd(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over rows of total variation distance 0.5 * sum_i |p_i - q_i|."""
    p, q, present = _prepare(p_logprobs, q_logprobs, mask)
    return (0.5 * (p.exp() - q.exp()).abs() * present).sum()


def divergence(
    name: str, p_logprobs: torch.Tensor, q_logprobs: torch.Tensor, mask: torch.Tensor | None = None,
    *, beta: float = 0.5, alpha: float = 0.1,
) -> torch.Tensor:
    """The divergence called ``name`` (one of DIVERGENCES), summed over rows."""
    if name == "forward_kl":
        return forward_kl(p_logprobs, q_logprobs, mask)
    if name == "reverse_kl":
        return reverse_kl(p_logprobs, q_logprobs, mask)
    if name == "jsd":
        return jsd(p_logprobs, q_logprobs, mask, beta=beta)
    if name == "skew_kl":
        return skew_kl(p_logprobs, q_logprobs, mask, alpha=alpha)
    if name == "skew_reverse_kl":
        return skew_reverse_kl(p_logprobs, q_logprobs, mask, alpha=alpha)
    if name == "tvd":
        return tvd(p_logprobs, q_logprobs, mask)
    raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}")


def cross_entropy_sum(logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over rows of -log q(target). logprobs: [N, V] student log-softmax; targets: [N] int."""
    picked = logprobs.gather(1, targets.long().clamp(0, logprobs.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    if mask is not None:
        picked = torch.where(mask.bool(), picked, torch.zeros((), dtype=picked.dtype, device=picked.device))
    return -picked.sum()


# ----------------------------------------------------------------------------- KD + CE on logits

class LossSums(NamedTuple):
    """Sums over the positions given. ``total`` carries the gradient; ``kd`` and ``ce`` are detached.
    ``prompt_ce`` (detached) is the CE summed over prompt tokens when a prompt loss is trained
    (its weighted share is already in ``total``)."""

    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    prompt_ce: torch.Tensor | None = None


def kd_ce_sums(
    logits: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    *,
    kd_weight: float,
    divergence_name: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> LossSums:
    """kd_weight * tau^2 * D(teacher bins || student bins) + (1 - kd_weight) * CE, as sums.

    logits: [N, V] student logits of response positions (upcast to fp32 here). targets: [N]
    sampled token ids. topk_ids / topk_logprobs: [N, k] teacher top-k, or None for a black-box
    corpus (then only CE is possible and kd_weight must be 0). Teacher ids < 0 or >= V are absent
    bins (their mass joins the tail).
    """
    logits = logits.float()
    zero = logits.new_zeros(())
    if topk_ids is None:
        assert kd_weight == 0.0, "a corpus without teacher log-probs supports CE only"
        logprobs = torch.log_softmax(logits, dim=-1)
        ce = cross_entropy_sum(logprobs, targets)
        return LossSums(ce, zero, ce.detach())
    valid = (topk_ids >= 0) & (topk_ids < logits.shape[-1])
    q, logprobs = student_bins(logits, topk_ids, valid, temperature)
    p = teacher_bins(topk_logprobs, valid, temperature, empty_tail=torch.isneginf(q[:, -1]))
    kd = divergence(divergence_name, p, q, beta=beta, alpha=alpha) * (temperature * temperature)
    ce = cross_entropy_sum(logprobs, targets)
    # A weight of exactly 0 must not let a (finite but unused) term touch the gradient at all.
    if kd_weight == 0.0:
        total = ce
    elif kd_weight == 1.0:
        total = kd
    else:
        total = kd_weight * kd + (1.0 - kd_weight) * ce
    return LossSums(total, kd.detach(), ce.detach())


# ----------------------------------------------------------------------------- memory-lean head

def chunk_rows(vocab_size: int, max_elements: int = 1 << 24) -> int:
    """Rows per chunk so one chunk's fp32 logits hold about ``max_elements`` values (64 MiB).

    Sizing by elements, not rows, keeps peak loss memory flat in the vocabulary size.
    """
    return max(16, max_elements // max(1, vocab_size))


def _gathered_loss(lq_top, lq_tail, lq_target, topk_logprobs, valid, *, kd_weight, divergence_name, temperature, beta, alpha):
    """The loss as a function of the few student log-probs it depends on: top-k [N, k], tail [N],
    target [N]. Small tensors: autograd through this is cheap."""
    zero = lq_target.new_zeros(())
    ce = -lq_target.sum()
    if topk_logprobs is None:
        return LossSums(ce, zero, ce.detach())
    p = teacher_bins(topk_logprobs, valid, temperature, empty_tail=torch.isneginf(lq_tail))
    q = _temper(torch.cat([lq_top.masked_fill(~valid, float("-inf")), lq_tail.unsqueeze(-1)], -1), temperature)
    kd = divergence(divergence_name, p, q, beta=beta, alpha=alpha) * (temperature * temperature)
    if kd_weight == 0.0:
        total = ce
    elif kd_weight == 1.0:
        total = kd
    else:
        total = kd_weight * kd + (1.0 - kd_weight) * ce
    return LossSums(total, kd.detach(), ce.detach())


def _chunk_loss_and_dlogits(logits, targets, topk_ids, topk_logprobs, options, need_grad):
    """Loss sums of one chunk and, if ``need_grad``, d(total)/d(logits), with two [n, V] buffers.

    The loss depends on the logits only through log q at the top-k ids, at the target, and the
    tail log q_T = log sum_{j outside top-k} q_j. With g = dL/d(those log-probs) from a small
    autograd graph and G = sum of all g:
        dL/dz_j = g_j - q_j G                      (j in top-k; + g_t at the target)
        dL/dz_j = q_j (g_T / q_T - G)              (j in the tail; + g_t at the target)
    so the full-vocabulary work is one log-softmax, one exp and one multiply, done in place.
    The tail is summed from the (positive) tail probabilities themselves: exact, no 1 - sum.
    """
    n, vocab = logits.shape
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    del logits
    if topk_ids is None:
        ids = torch.zeros((n, 0), dtype=torch.long, device=logprobs.device)
        valid = torch.zeros((n, 0), dtype=torch.bool, device=logprobs.device)
    else:
        valid = (topk_ids >= 0) & (topk_ids < vocab)
        ids = topk_ids.long().clamp(0, vocab - 1)
    lq_top = logprobs.gather(1, ids)
    lq_target = logprobs.gather(1, targets.long().clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)
    probs = logprobs.exp_()  # in place: logprobs is not needed any more
    # zero the top-k entries (amin makes duplicate/absent slots harmless): probs is now tail-only
    probs.scatter_reduce_(1, ids, torch.where(valid, 0.0, float("inf")).to(probs.dtype), reduce="amin")
    tail = probs.sum(-1)
    # no id outside the top-k (k = V): an empty tail bin, absent on both sides
    lq_tail = torch.where(tail > 0, tail.clamp(min=1e-30).log(), float("-inf"))
    leaves = [lq_top.requires_grad_(need_grad), lq_tail.requires_grad_(need_grad),
              lq_target.requires_grad_(need_grad)]
    with torch.enable_grad():
        sums = _gathered_loss(leaves[0], leaves[1], leaves[2], topk_logprobs, valid, **options)
    if not need_grad:
        return sums, None
    g_top, g_tail, g_target = torch.autograd.grad(sums.total, leaves, allow_unused=True, materialize_grads=True)
    g_top = torch.where(valid, g_top, torch.zeros((), dtype=g_top.dtype, device=g_top.device))
    g_all = g_top.sum(-1) + g_tail + g_target
    dlogits = probs.mul_((g_tail / tail.clamp(min=1e-30) - g_all).unsqueeze(-1))
    dlogits.scatter_add_(1, ids, torch.where(valid, g_top - lq_top.detach().exp() * g_all.unsqueeze(-1), 0.0))
    dlogits.scatter_add_(1, targets.long().clamp(0, vocab - 1).unsqueeze(-1), g_target.unsqueeze(-1))
    return sums, dlogits


class _HeadLossGradInForward(torch.autograd.Function):
    """LM head + loss whose gradients are computed chunk by chunk *in the forward pass*.

    Per chunk: logits -> fp32 loss and d(loss)/d(logits) (``_chunk_loss_and_dlogits``), then
    grad_hidden[chunk] = dlogits @ W and grad_W += dlogits^T @ hidden[chunk] (in place, so no
    second [V x H] buffer ever exists). Backward only scales the stored gradients by the incoming
    scalar. Nothing [N x V] outlives a chunk and nothing is recomputed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, topk_ids, topk_logprobs, options, chunk_size):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        kd = total.clone()
        ce = total.clone()
        for start in range(0, hidden.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            h = hidden[sl]
            sums, dlogits = _chunk_loss_and_dlogits(
                F.linear(h, weight), targets[sl], None if topk_ids is None else topk_ids[sl],
                None if topk_logprobs is None else topk_logprobs[sl], options, need_h or need_w,
            )
            if dlogits is not None:
                if need_h:
                    grad_h[sl] = dlogits.to(weight.dtype) @ weight
                if need_w:
                    if weight.dtype == torch.float32:
                        grad_w.addmm_(dlogits.t(), h.float())
                    else:  # bf16 GEMM (fast), accumulated in fp32
                        grad_w.add_(dlogits.to(weight.dtype).t() @ h)
                del dlogits
            total += sums.total.detach()
            kd += sums.kd
            ce += sums.ce
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(kd, ce)
        return total, kd, ce

    @staticmethod
    def backward(ctx, grad_total, grad_kd, grad_ce):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_total.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_total).to(ctx.weight_dtype)  # in place: no second V x H buffer
        return grad_h, grad_w, None, None, None, None, None


def _partitioned(weight: torch.Tensor) -> bool:
    """True for a DeepSpeed ZeRO-3 parameter (its data lives in shards until a module hook gathers it)."""
    return getattr(weight, "ds_id", None) is not None


def chunked_head_loss(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    *,
    kd_weight: float,
    divergence_name: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    chunk_size: int | None = None,
    mode: str | None = None,
) -> LossSums:
    """LM head + KD/CE over response positions only, in chunks; never [N x V] for the batch.

    hidden: [N, H] final hidden states at the N response positions (prompt positions never reach
    the head). lm_head: the model's output-embedding module (a plain nn.Linear, possibly tied to
    the input embedding, or a PEFT-wrapped / ZeRO-3-partitioned one).

    Two ways to the same numbers (``mode``; chosen automatically when None):
    - ``"in_forward"`` (plain nn.Linear, weight not partitioned): a custom autograd Function
      computes each chunk's gradients in the forward pass (see _HeadLossGradInForward). The
      weight is one input of one Function, so its AccumulateGrad runs once per backward even
      when it is also the tied input embedding (what DDP and ZeRO-2 require).
    - ``"recompute"`` (ZeRO-3 partitioned weight, PEFT-wrapped head): the head is *called as a
      module* per chunk under non-reentrant activation checkpointing, so ZeRO-3's hooks gather
      the weight in the forward and again when the chunk is recomputed in the backward. Chunk
      activations are freed after the forward and rebuilt one chunk at a time; the recompute
      runs inside the same autograd graph, so the weight's gradient is still accumulated once.
    """
    n = hidden.shape[0]
    out_features = getattr(lm_head, "out_features", None) or lm_head.weight.shape[0]
    if chunk_size is None:
        chunk_size = chunk_rows(int(out_features))
    options = dict(kd_weight=kd_weight, divergence_name=divergence_name, temperature=temperature, beta=beta, alpha=alpha)
    plain = type(lm_head) is torch.nn.Linear and lm_head.bias is None and not _partitioned(lm_head.weight)
    if mode is None:
        mode = "in_forward" if plain else "recompute"
    if mode == "in_forward":
        assert plain, "in_forward needs a bias-free, unpartitioned nn.Linear head"
        total, kd, ce = _HeadLossGradInForward.apply(hidden, lm_head.weight, targets, topk_ids, topk_logprobs, options, chunk_size)
        return LossSums(total, kd, ce)
    assert mode == "recompute", mode
    from torch.utils.checkpoint import checkpoint

    use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad

    def one_chunk(h, tgt, ids, lps):
        return kd_ce_sums(lm_head(h), tgt, ids, lps, **options)

    total = hidden.new_zeros((), dtype=torch.float32)
    kd = total.detach().clone()
    ce = total.detach().clone()
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        args = (
            hidden[sl], targets[sl],
            None if topk_ids is None else topk_ids[sl],
            None if topk_logprobs is None else topk_logprobs[sl],
        )
        if use_checkpoint:
            sums = checkpoint(one_chunk, *args, use_reentrant=False)
        else:
            sums = one_chunk(*args)
        total = total + sums.total
        kd = kd + sums.kd
        ce = ce + sums.ce
    if n == 0 and use_checkpoint:
        # Keep the graph connected so every rank runs the same backward (ZeRO hooks expect it).
        total = total + 0.0 * hidden.sum()
    return LossSums(total, kd, ce)

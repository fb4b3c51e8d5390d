"""Fused linear distillation: a divergence between a teacher head's and a student head's
distributions over a large vocabulary, without either `N x V` logits.

Same machinery as `fused_linear_cross_entropy` (see `_fused_head`): per-token log-sum-exps over
vocabulary blocks first, then the divergence and, in the backward pass, the student's gradients
recomputed tile by tile, each vocabulary block's weight gradient summed in float32 and written once.
"""

import math

from keras import ops

from losskit import _contract, backend
from losskit import domains as dom
from losskit.gradients import custom_gradient
from losskit.losses import _fused_head as fh
from losskit.losses._common import family, masked, public, register

_NAME = "fused_linear_distillation"


def _tile_terms(zs, zt, lse_s, lse_t, keep_v, *, temperature, divergence, beta):
    """Per-token partial sums over one tile of `(value, sum_j Q_j a_j)`, where `a` is the
    derivative of the divergence w.r.t. `log Q` (JSD only; 0 for KL)."""
    log_q = zs / temperature - lse_s[:, None]
    log_p = zt / temperature - lse_t[:, None]
    p, q = ops.exp(log_p), ops.exp(log_q)
    zero = ops.zeros_like(p)
    if divergence == "kl":
        # p log(p / q), 0 where p = 0 (a masked teacher column) instead of 0 * inf.
        value = ops.where(p > 0, p * (log_p - log_q), zero) * temperature**2
        return ops.sum(fh.masked(keep_v, value, 1), -1), ops.zeros_like(lse_s)
    log_m = ops.logaddexp(math.log(beta) + log_p, math.log1p(-beta) + log_q)
    kl_pm = ops.where(p > 0, p * (log_p - log_m), zero)
    a = ops.where(q > 0, (1.0 - beta) * (log_q - log_m), zero)
    value = beta * kl_pm + q * a
    return (ops.sum(fh.masked(keep_v, value, 1), -1),
            ops.sum(fh.masked(keep_v, q * a, 1), -1))


def _tile_grad(zs, zt, lse_s, lse_t, qa, g, *, temperature, divergence, beta):
    """`g * d divergence / d student logits` for one tile."""
    log_q = zs / temperature - lse_s[:, None]
    log_p = zt / temperature - lse_t[:, None]
    q = ops.exp(log_q)
    if divergence == "kl":  # d(T^2 KL(P || Q)) / dz_s = T (Q - P)
        return (q - ops.exp(log_p)) * (temperature * g)[:, None]
    log_m = ops.logaddexp(math.log(beta) + log_p, math.log1p(-beta) + log_q)
    a = ops.where(q > 0, (1.0 - beta) * (log_q - log_m), ops.zeros_like(q))
    return q * (a - qa[:, None]) * (g / temperature)[:, None]


def _distill(hs, ws, ht, wt, y, *, rows_s, rows_t, dtype, opts):
    student, teacher = fh.Head(ws, rows_s), fh.Head(wt, rows_t)
    n, vocab = ops.shape(hs)[0], student.vocab
    hidden_dim = max(student.hidden_dim, teacher.hidden_dim)
    chunk, block = fh.tiles(hs.shape[0], hidden_dim, vocab, opts["chunk_size"])
    div = dict(temperature=opts["temperature"], divergence=opts["divergence"], beta=opts["beta"])
    valid = ops.ones((n,), "bool") if y is None else ops.not_equal(y, opts["ignore_index"])

    def tile_logits(t0, v0):
        zs, w_s = fh.block_logits(fh.rows(hs, t0, chunk), student, None, v0, block, dtype)
        zt, _ = fh.block_logits(fh.rows(ht, t0, chunk), teacher, None, v0, block, dtype)
        return zs, zt, w_s

    def normaliser_step(t0, keep_t, carry):
        def vocab_step(v0, keep_v, state):
            zs, zt, _ = tile_logits(t0, v0)
            temperature = opts["temperature"]
            return (fh.OnlineLogSumExp.update(state[0], zs / temperature, keep_v),
                    fh.OnlineLogSumExp.update(state[1], zt / temperature, keep_v))

        size = ops.shape(fh.rows(hs, t0, chunk))[0]
        init = (fh.OnlineLogSumExp.init(size, dtype), fh.OnlineLogSumExp.init(size, dtype))
        s_state, t_state = fh.loop_blocks(vocab, block, vocab_step, init)
        return tuple(fh.put(buf, t0, fh.OnlineLogSumExp.result(st), chunk)
                     for buf, st in zip(carry, (s_state, t_state)))

    lse_s, lse_t = fh.loop_blocks(
        n, chunk, normaliser_step, (backend.zeros((n,), dtype), backend.zeros((n,), dtype))
    )

    def value_step(t0, keep_t, carry):
        lse_s_i, lse_t_i = fh.rows(lse_s, t0, chunk), fh.rows(lse_t, t0, chunk)

        def vocab_step(v0, keep_v, sums):
            zs, zt, _ = tile_logits(t0, v0)
            value, qa = _tile_terms(zs, zt, lse_s_i, lse_t_i, keep_v, **div)
            return sums[0] + value, sums[1] + qa

        zeros = ops.zeros_like(lse_s_i)
        value, qa = fh.loop_blocks(vocab, block, vocab_step, (zeros, ops.zeros_like(lse_s_i)))
        return fh.put(carry[0], t0, value, chunk), fh.put(carry[1], t0, qa, chunk)

    loss, qa = fh.loop_blocks(
        n, chunk, value_step, (backend.zeros((n,), dtype), backend.zeros((n,), dtype))
    )
    loss = ops.where(valid, loss, ops.zeros_like(loss))

    def grad_fn(upstream):
        g = ops.where(valid, ops.cast(upstream, dtype) * ops.ones_like(lse_s),
                      ops.zeros_like(lse_s))

        def vocab_step(v0, keep_v, carry):
            dh, dw = carry

            def token_step(t0, keep_t, acc):
                dh, gw = acc
                zs, zt, w_s = tile_logits(t0, v0)
                g_i = fh.masked(keep_t, fh.rows(g, t0, chunk), 0)  # repeated tokens add 0
                dz = _tile_grad(zs, zt, fh.rows(lse_s, t0, chunk), fh.rows(lse_t, t0, chunk),
                                fh.rows(qa, t0, chunk), g_i, **div)
                gw = gw + student.grad(dz, fh.rows(hs, t0, chunk), dtype)
                back = student.back(fh.masked(keep_v, dz, 1), w_s, dtype)
                return fh.accumulate(dh, t0, back, chunk), gw

            shape = (block, student.hidden_dim) if student.rows else (student.hidden_dim, block)
            dh, gw = fh.loop_blocks(n, chunk, token_step, (dh, ops.zeros(shape, dtype)))
            dw = backend.set_rows(dw, v0, gw, student.axis) if block < vocab else gw
            return dh, dw

        init = (backend.zeros(ops.shape(hs), dtype), backend.zeros(ops.shape(ws), ws.dtype))
        dh, dw = fh.loop_blocks(vocab, block, vocab_step, init)
        return dh, dw, None, None, None  # no gradient to the teacher

    return loss, grad_fn


@register(precision="input", domains=dict(
    temperature=dom.positive, divergence=dom.one_of("kl", "jsd"),
    beta=dom.interval(0, 1, low_closed=False, high_closed=False), ignore_index=dom.integer,
    chunk_size=dom.optional(dom.positive_integer), reduction=dom.one_of("mean", "sum", "none")))
def fused_linear_distillation(
    student_hidden,
    student_weight=None,
    teacher_hidden=None,
    teacher_weight=None,
    labels=None,
    *,
    student_kernel=None,
    teacher_kernel=None,
    temperature=1.0,
    divergence="kl",
    beta=0.5,
    ignore_index=-100,
    chunk_size=None,
    reduction="mean",
):
    """Distillation between two linear heads' distributions, without their `N x V` logits.

    With student logits `s = h_s W_s^T`, teacher logits `t = h_t W_t^T`, temperature `T`,
    teacher distribution `P = softmax(t / T)` and student distribution `Q = softmax(s / T)`:

    - `divergence="kl"`: `T^2 KL(P || Q) = T^2 sum_j P_j (log P_j - log Q_j)`, i.e.
      `distillation_kl(t, s, temperature=T)` (Hinton et al. 2015; the `T^2` keeps the gradient's
      scale independent of `T`).
    - `divergence="jsd"`: the generalized Jensen-Shannon divergence
      `beta KL(P || M) + (1 - beta) KL(Q || M)` with `M = beta P + (1 - beta) Q`, `P` the
      teacher and `Q` the student (as Liger-Kernel's fused linear JSD); `beta = 0.5` is the
      symmetric JSD, bounded by `log 2`. Not scaled by `T^2`. `0 < beta < 1`.

    No gradient flows to the teacher (hidden states or projection). Tokens whose label is
    `ignore_index` count 0 and are left out of the mean; `labels=None` counts every token. Each
    head is a `(V, H)` weight (`*_weight=`) or a Dense layer's `(H, V)` kernel (`*_kernel=`),
    exactly one per head; the two heads may have different `H`, not different `V`. Logits and
    sums are float32 for 16-bit inputs; gradients come back in the inputs' dtypes.

    Cost: the forward pass reads both heads twice (log-sum-exps, then the divergence), the
    backward pass once more, so 8 matmuls against the naive 4 (see docs/large_vocabularies.md);
    peak extra memory is one tile of logits per head plus a float32 `(N, H)` gradient buffer.

    Args:
        student_hidden: `(..., H_s)` float tensor.
        student_weight: the student's `(V, H_s)` projection; exactly one of it and `student_kernel`.
        teacher_hidden: `(..., H_t)` float tensor, same leading shape.
        teacher_weight: the teacher's `(V, H_t)` projection; exactly one of it and `teacher_kernel`.
        student_kernel: the student's `(H_s, V)` projection (a `Dense` kernel), instead.
        teacher_kernel: the teacher's `(H_t, V)` projection, instead.
        labels: optional `(...)` integer labels, only used to skip `ignore_index` tokens.
        temperature: `T > 0`.
        divergence: `"kl"` or `"jsd"`.
        beta: the JSD's mixing weight.
        ignore_index: label value of tokens that do not count.
        chunk_size: tokens per tile (default 1024; TensorFlow outside XLA: all tokens).
        reduction: `"mean"` over counted tokens, `"sum"`, or `"none"` (shape `labels.shape`).

    References:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv:2410.10989.
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", arXiv:2411.09009.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{_NAME}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if divergence not in ("kl", "jsd"):
        raise ValueError(f"{_NAME}: divergence must be 'kl' or 'jsd', got {divergence!r}")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"{_NAME}: beta must be in (0, 1) for divergence='jsd', got {beta}")
    if not temperature > 0:
        raise ValueError(f"{_NAME}: temperature must be > 0, got {temperature}")
    if teacher_hidden is None:
        raise ValueError(f"{_NAME}: teacher_hidden is required.")
    hs, student, _, labels = fh.check_head(
        _NAME, student_hidden, student_weight, student_kernel, None, labels,
        labels_required=False, prefix="student_",
    )
    ht, teacher, _, _ = fh.check_head(
        _NAME, teacher_hidden, teacher_weight, teacher_kernel, None, None,
        labels_required=False, prefix="teacher_",
    )
    invalid = _contract.invalid_labels(_NAME, labels, student.vocab, ignore_index)
    if teacher.vocab != student.vocab:
        raise ValueError(f"{_NAME}: the teacher's vocabulary ({teacher.vocab}) differs from the "
                         f"student's ({student.vocab}).")
    if tuple(ht.shape[:-1]) != tuple(hs.shape[:-1]):
        raise ValueError(f"{_NAME}: teacher_hidden {tuple(ht.shape)} and student_hidden "
                         f"{tuple(hs.shape)} differ in their leading (token) shape.")
    dtype = fh.accumulation_dtype(hs, student.matrix, ht, teacher.matrix)
    token_shape = ops.shape(hs)[:-1]
    h_s = ops.reshape(hs, (-1, student.hidden_dim))
    h_t = ops.stop_gradient(ops.reshape(ht, (-1, teacher.hidden_dim)))
    w_t = ops.stop_gradient(teacher.matrix)
    y = None if labels is None else ops.reshape(labels, (-1,))
    opts = dict(temperature=float(temperature), divergence=divergence, beta=float(beta),
                ignore_index=ignore_index, chunk_size=chunk_size)

    @custom_gradient
    def distill(h_s, w_s, h_t, w_t, y):
        return _distill(h_s, w_s, h_t, w_t, y, rows_s=student.rows, rows_t=teacher.rows,
                        dtype=dtype, opts=opts)

    losses = distill(h_s, student.matrix, h_t, w_t, y)
    if reduction == "none":
        losses = _contract.nan_where(invalid, ops.reshape(losses, token_shape))
        return losses if labels is None else masked(losses, ops.not_equal(labels, ignore_index))
    total = _contract.nan_if_any(invalid, ops.sum(losses))
    if reduction == "sum":
        return total
    if y is None:
        count = ops.cast(ops.shape(h_s)[0], dtype)
    else:
        count = ops.sum(ops.cast(ops.not_equal(y, ignore_index), dtype))
    return total / ops.maximum(count, 1.0)


FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

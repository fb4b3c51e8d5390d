"""Fused linear cross-entropy: the loss of a large-vocabulary output head without its logits.

A language-model head computes `logits = hidden @ weight.T + bias` of shape `(N, V)` and then the
cross-entropy. At N = 8192 tokens and V = 32768 the logits alone take 1 GiB in float32, and autodiff
keeps two or three such buffers alive. `fused_linear_cross_entropy` gives the same value and the
same gradients while only ever holding the logits of one block: the head's matmul is fused into
the loss and the gradient is written by hand (the techniques of Cut Cross-Entropy, Wijmans et al.
2024, and Liger-Kernel's FusedLinearCrossEntropy, Hsu et al. 2024, both PyTorch/Triton only). It
is written with `keras.ops` and a custom gradient, so it runs on every Keras backend and under
`jit`; see docs/large_vocabularies.md.
"""

from keras import ops

from losskit import backend
from losskit.gradients import custom_gradient
from losskit.losses import _fused_head as fh
from losskit.losses._common import family, public, register

_NAME = "fused_linear_cross_entropy"


def _token_loss(lse, z_y, z_sum, vocab, z_loss, label_smoothing):
    """`lse - (1 - e) z_y - (e / V) sum_j z_j + z_loss lse^2` (see the public docstring)."""
    loss = lse - (1.0 - label_smoothing) * z_y
    if label_smoothing:  # only then: z_sum is -inf where columns are masked with -inf
        loss = loss - (label_smoothing / vocab) * z_sum
    if z_loss:
        loss = loss + z_loss * ops.square(lse)
    return loss


def _dlogits(z, lse, cols, y, g, vocab, z_loss, label_smoothing):
    """`g * dloss/dz = g * (softmax(z) (1 + 2 z_loss lse) - (1 - e) onehot(y) - e / V)` for
    per-token weights `g` (0 for ignored tokens)."""
    coef = g * (1.0 + 2.0 * z_loss * lse) if z_loss else g
    hit = ops.equal(cols[None, :], y[:, None])
    dz = ops.exp(z - lse[:, None]) * coef[:, None]
    dz = dz - ops.where(hit, ((1.0 - label_smoothing) * g)[:, None], ops.zeros_like(dz))
    if label_smoothing:
        dz = dz - (label_smoothing / vocab) * g[:, None]
    return dz


def _target_stats(y, label_smoothing):
    """Accumulates `z_y` (and `sum_j z_j` when smoothing) over vocabulary blocks."""

    def fn(z, cols, keep, carry):
        if z is None:
            zeros = ops.zeros(ops.shape(y), "float32")
            return (zeros, zeros)
        z_y, z_sum = carry
        zero = ops.zeros_like(z)
        hit = ops.logical_and(ops.equal(cols[None, :], y[:, None]), keep[None, :])
        z_y = ops.cast(z_y, z.dtype) + ops.sum(ops.where(hit, z, zero), axis=-1)
        if label_smoothing:
            z_sum = ops.cast(z_sum, z.dtype) + ops.sum(ops.where(keep[None, :], z, zero), -1)
        return z_y, ops.cast(z_sum, z.dtype)

    return fn


def _per_token(h, w, b, y, *, head_rows, dtype, opts):
    """Per-token losses; the gradient recomputes the logits block by block (Cut CE): 4 matmuls,
    any upstream gradient, dW accumulated in float32 one vocabulary block at a time."""
    head = fh.Head(w, head_rows)
    vocab, block = head.vocab, fh.vocab_block(head.hidden_dim, head.vocab)
    valid = ops.not_equal(y, opts["ignore_index"])
    ls, zl = opts["label_smoothing"], opts["z_loss"]
    lse, (z_y, z_sum) = fh.log_normaliser(h, head, b, dtype, block, _target_stats(y, ls))
    loss = _token_loss(lse, z_y, z_sum, vocab, zl, ls)
    loss = ops.where(valid, loss, ops.zeros_like(loss))

    def grad_fn(upstream):
        g = ops.where(valid, ops.cast(upstream, dtype) * ops.ones_like(lse), ops.zeros_like(lse))
        dh, dw, db = fh.vocab_grads(
            h, head, b, dtype, block,
            lambda z, cols: _dlogits(z, lse, cols, y, g, vocab, zl, ls),
        )
        return dh, dw, db, None

    return loss, grad_fn


def _scalar_in_place(h, w, b, y, scale, *, head_rows, dtype, opts, chunk_size):
    """Sum of per-token losses times `scale`, with every gradient computed in the same pass while
    each token chunk's logits exist (Liger): 3 matmuls. The weight gradient is a running sum
    updated in place one vocabulary block at a time, so no `V x H` temporary exists; used where
    the inputs are already in the accumulation dtype and the backend updates in place."""
    head = fh.Head(w, head_rows)
    n, vocab, hdim = h.shape[0], head.vocab, head.hidden_dim
    chunk = fh.token_chunk(n, hdim, vocab, chunk_size)
    block = min(vocab, max(fh.vocab_block(hdim, vocab), 4 * chunk))
    ls, zl, ignore = opts["label_smoothing"], opts["z_loss"], opts["ignore_index"]
    cols = ops.arange(vocab, dtype="int32")

    def step(i, carry):
        total, dh, dw, db = carry
        start = fh.block_start(i, chunk, n)
        h_i = ops.slice(h, (start, 0), (chunk, hdim))
        y_i = ops.slice(y, (start,), (chunk,))
        valid = ops.logical_and(fh.fresh(i, start, chunk), ops.not_equal(y_i, ignore))
        z, _ = fh.block_logits(h_i, head, b, 0, vocab, dtype)
        lse = ops.logsumexp(z, axis=-1)
        zero = ops.zeros_like(z)
        z_y = ops.sum(ops.where(ops.equal(cols[None, :], y_i[:, None]), z, zero), axis=-1)
        z_sum = ops.sum(z, axis=-1) if ls else None
        loss = _token_loss(lse, z_y, z_sum, vocab, zl, ls)
        total = total + ops.sum(ops.where(valid, loss, ops.zeros_like(loss)))
        g = ops.where(valid, scale * ops.ones_like(lse), ops.zeros_like(lse))
        dz = _dlogits(z, lse, cols, y_i, g, vocab, zl, ls)
        dh = backend.add_rows(dh, start, head.back(dz, head.matrix, dtype))
        if b is not None:
            db = db + ops.sum(dz, axis=0)

        def dw_step(j, dw):
            v0 = fh.block_start(j, block, vocab)
            dz_j = ops.slice(dz, (0, v0), (chunk, block))
            dz_j = ops.where(fh.fresh(j, v0, block)[None, :], dz_j, ops.zeros_like(dz_j))
            return backend.add_rows(dw, v0, head.grad(dz_j, h_i, dtype), head.axis)

        dw = backend.sequential_fori_loop(fh.num_blocks(vocab, block), dw_step, dw)
        return total, dh, dw, db

    init = (
        ops.zeros((), dtype),
        ops.zeros_like(h),
        ops.zeros_like(w),
        () if b is None else ops.zeros_like(b),
    )
    total, dh, dw, db = backend.sequential_fori_loop(fh.num_blocks(n, chunk), step, init)

    def grad_fn(upstream):
        # The gradients are not reused: scaling them in place saves a copy of each (torch).
        grads = [backend.scale(g, upstream) for g in (dh, dw)]
        return grads[0], grads[1], None if b is None else backend.scale(db, upstream), None

    return total * scale, grad_fn


@register(precision="input")
def fused_linear_cross_entropy(
    hidden,
    weight=None,
    labels=None,
    bias=None,
    *,
    kernel=None,
    chunk_size=None,
    ignore_index=-100,
    z_loss=0.0,
    label_smoothing=0.0,
    reduction="mean",
):
    """Cross-entropy of a linear head, `CE(hidden @ weight.T + bias, labels)`, without logits.

    For each token with logits `z = h W^T + b`, `lse = logsumexp(z)`, label `y`, smoothing `e`
    and `V` classes:

        loss = -(1 - e) log softmax(z)_y - (e / V) sum_j log softmax(z)_j + z_loss * lse^2
             = lse - (1 - e) z_y - (e / V) sum_j z_j + z_loss * lse^2

    i.e. `keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)` with
    Keras's label smoothing plus PaLM's auxiliary z-loss (Chowdhery et al. 2022). Tokens labelled
    `ignore_index` contribute 0 and are left out of the mean. A `-inf` bias masks vocabulary
    columns (finite loss and gradients; a `-inf` target logit gives `+inf`).

    The `N x V` logits are never materialised, and the gradient is written by hand:

    - `reduction="mean"`/`"sum"` with float32 (or float64) inputs, on JAX and torch: tokens are
      processed in chunks and each chunk's gradients are computed while its logits exist, so
      the backward pass only scales them (Liger-Kernel): three matmuls, as many as the naive
      computation; the weight gradient is a running sum updated in place.
    - otherwise (`reduction="none"`, 16-bit inputs, TensorFlow): the forward pass computes each
      token's log-sum-exp over vocabulary blocks (online), and the backward pass recomputes the
      logits one vocabulary block at a time, all tokens at once (Cut Cross-Entropy): four matmuls,
      but every block's weight gradient is complete when computed, so it is accumulated in
      float32 and written once in the weight's dtype, and the upstream gradient may weight tokens
      freely.

    Logits, log-sum-exp, the loss sum and the weight gradient accumulate in float32 whatever the
    input dtype (float64 for float64 inputs); gradients come back in each input's dtype.

    Args:
        hidden: `(..., H)` float tensor, the last hidden states.
        weight: `(V, H)` projection (a tied embedding matrix). Exactly one of weight/kernel.
        labels: `(...)` integer class indices (`hidden.shape[:-1]`), `ignore_index` to skip.
        bias: optional `(V,)` bias.
        kernel: `(H, V)` projection (a `Dense(V)` layer's kernel), instead of `weight`.
        chunk_size: tokens per chunk on the in-place path; default: a power of two making a
            chunk's logits about half as large as `hidden` (at most 4096).
        ignore_index: label value of tokens that do not count.
        z_loss: weight of `lse^2`, which keeps the softmax normaliser near 1.
        label_smoothing: `e` in [0, 1), as in `keras.losses.CategoricalCrossentropy`.
        reduction: `"mean"` over non-ignored tokens (0 if there are none), `"sum"`, or `"none"`
            for per-token losses of shape `labels.shape` (0 for ignored tokens).

    Returns:
        A scalar, or per-token losses, in float32 (float64 for float64 inputs).

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", arXiv:2411.09009.
        Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv:2410.10989.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{_NAME}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    hidden, head, bias, labels = fh.check_head(_NAME, hidden, weight, kernel, bias, labels)
    dtype = fh.accumulation_dtype(hidden, head.matrix, bias)
    labels_shape = ops.shape(labels)
    h = ops.reshape(hidden, (-1, head.hidden_dim))
    y = ops.reshape(labels, (-1,))
    opts = dict(ignore_index=ignore_index, z_loss=z_loss, label_smoothing=label_smoothing)
    # 16-bit inputs would need a float32 copy of the weight gradient as running sum.
    same_dtype = all(t is None or t.dtype == h.dtype for t in (head.matrix, bias))
    in_place = (reduction != "none" and same_dtype and "float16" not in str(h.dtype)
                and backend.updates_in_place() and bool(h.shape[0]))
    if in_place:

        @custom_gradient
        def fused(h, w, b, y):
            # Computed here, not closed over: JAX forbids closing over values traced by a jit.
            count = ops.sum(ops.cast(ops.not_equal(y, ignore_index), dtype))
            scale = 1.0 / ops.maximum(count, 1.0) if reduction == "mean" else 1.0
            return _scalar_in_place(
                h, w, b, y, scale, head_rows=head.rows, dtype=dtype, opts=opts,
                chunk_size=chunk_size,
            )

        return fused(h, head.matrix, bias, y)

    @custom_gradient
    def per_token(h, w, b, y):
        return _per_token(h, w, b, y, head_rows=head.rows, dtype=dtype, opts=opts)

    losses = per_token(h, head.matrix, bias, y)
    if reduction == "none":
        return ops.reshape(losses, labels_shape)
    total = ops.sum(losses)
    if reduction == "sum":
        return total
    count = ops.sum(ops.cast(ops.not_equal(y, ignore_index), dtype))
    return total / ops.maximum(count, 1.0)


# No Loss class: its inputs are not (y_true, y_pred); use it in a Term or a train step.
FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

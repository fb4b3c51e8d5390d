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

import keras
from keras import ops

from losskit import _contract, backend
from losskit import domains as dom
from losskit.gradients import custom_gradient, in_plain_autodiff
from losskit.losses import _fused_head as fh
from losskit.losses._common import family, masked, public, register
from losskit.losses.classification import SMOOTHING

_NAME = "fused_linear_cross_entropy"


def _token_loss(lse, z_y, z_sum, vocab, z_loss, label_smoothing):
    """`lse - (1 - e) z_y - (e / V) sum_j z_j + z_loss lse^2` (see the public docstring)."""
    loss = lse - (1.0 - label_smoothing) * z_y
    if label_smoothing:  # only then: z_sum is -inf where columns are masked with -inf
        loss = loss - (label_smoothing / vocab) * z_sum
    if z_loss:
        loss = loss + z_loss * ops.square(lse)
    return loss


def _soft_cap(z, cap):
    """`cap * tanh(z / cap)` (Gemma-2's logit soft-capping); `z` itself when `cap` is None."""
    return z if cap is None else cap * ops.tanh(z / cap)


def _uncap(dz, z_capped, cap):
    """The gradient w.r.t. the raw logits: `dz * (1 - tanh^2(z / cap))`, from the capped ones."""
    return dz if cap is None else dz * (1.0 - ops.square(z_capped / cap))


def _dlogits(z, lse, cols, y, g, vocab, z_loss, label_smoothing, axis=1):
    """`g * dloss/dz = g * (softmax(z) (1 + 2 z_loss lse) - (1 - e) onehot(y) - e / V)` for
    per-token weights `g` (0 for ignored tokens); the vocabulary runs along `axis` of `z`."""
    def per_token(x):
        return ops.expand_dims(x, axis)

    coef = g * (1.0 + 2.0 * z_loss * lse) if z_loss else g
    hit = ops.equal(ops.expand_dims(cols, 1 - axis), per_token(y))
    dz = ops.exp(z - per_token(lse)) * per_token(coef)
    dz = dz - ops.where(hit, per_token((1.0 - label_smoothing) * g), ops.zeros_like(dz))
    if label_smoothing:
        dz = dz - (label_smoothing / vocab) * per_token(g)
    return dz


def _per_token(h, w, b, y, *, head_rows, dtype, opts, chunk_size):
    """Per-token losses; the gradient recomputes the logits tile by tile (Cut CE): 4 matmuls,
    any upstream gradient, and each vocabulary block's weight gradient summed in float32 over
    token chunks and written once. The gradient of `hidden` is a running sum over vocabulary
    blocks in float32 (`N x H`, for 16-bit hidden states an extra buffer of twice their size),
    written in `hidden`'s dtype at the end."""
    head = fh.Head(w, head_rows)
    n, vocab = ops.shape(h)[0], head.vocab
    chunk, block = fh.tiles(h.shape[0], head.hidden_dim, vocab, chunk_size)
    valid = ops.not_equal(y, opts["ignore_index"])
    ls, zl, cap = opts["label_smoothing"], opts["z_loss"], opts["logit_soft_cap"]

    def token_step(t0, keep_t, carry):
        h_i, y_i = fh.rows(h, t0, chunk), fh.rows(y, t0, chunk)

        def vocab_step(v0, keep_v, state):
            lse_state, z_y, z_sum = state
            z, _ = fh.block_logits(h_i, head, b, v0, block, dtype)
            z = _soft_cap(z, cap)
            lse_state = fh.OnlineLogSumExp.update(lse_state, z, keep_v)
            cols = v0 + ops.arange(block, dtype="int32")
            hit = ops.equal(cols[None, :], y_i[:, None])
            if keep_v is not None:
                hit = ops.logical_and(hit, keep_v[None, :])
            z_y = z_y + ops.sum(ops.where(hit, z, ops.zeros_like(z)), axis=-1)
            if ls:  # only then: -inf (masked) columns would make this sum -inf
                z_sum = z_sum + ops.sum(fh.masked(keep_v, z, 1), axis=-1)
            return lse_state, z_y, z_sum

        size = ops.shape(h_i)[0]
        zeros = ops.zeros((size,), dtype)
        init = (fh.OnlineLogSumExp.init(size, dtype), zeros, zeros)
        lse_state, z_y, z_sum = fh.loop_blocks(vocab, block, vocab_step, init)
        lse_i = fh.OnlineLogSumExp.result(lse_state)
        loss_i = _token_loss(lse_i, z_y, z_sum, vocab, zl, ls)
        return fh.put(carry[0], t0, lse_i, chunk), fh.put(carry[1], t0, loss_i, chunk)

    # Two buffers, not one twice: they are updated in place.
    buffers = (backend.zeros((n,), dtype), backend.zeros((n,), dtype))
    lse, loss = fh.loop_blocks(n, chunk, token_step, buffers)
    loss = ops.where(valid, loss, ops.zeros_like(loss))

    def grad_fn(upstream):
        g = ops.where(valid, ops.cast(upstream, dtype) * ops.ones_like(lse), ops.zeros_like(lse))

        def tile_dlogits(h_i, t0, keep_t, v0, chunk, block):
            g_i = fh.masked(keep_t, fh.rows(g, t0, chunk), 0)  # repeated tokens add 0
            z, w_j = fh.block_logits(h_i, head, b, v0, block, dtype)
            z = _soft_cap(z, cap)
            cols = v0 + ops.arange(block, dtype="int32")
            dz = _dlogits(z, fh.rows(lse, t0, chunk), cols, fh.rows(y, t0, chunk), g_i,
                          vocab, zl, ls)
            return _uncap(dz, z, cap), w_j

        def vocab_step(v0, keep_v, carry):
            dh, dw, db = carry

            def token_step(t0, keep_t, acc):
                dh, gw, gb = acc
                h_i = fh.rows(h, t0, chunk)
                dz, w_j = tile_dlogits(h_i, t0, keep_t, v0, chunk, block)
                gw = gw + head.grad(dz, h_i, dtype)
                gb = gb + ops.sum(dz, axis=0)
                # Columns an earlier block covered already added their share to dh.
                back = head.back(fh.masked(keep_v, dz, 1), w_j, dtype)
                dh = fh.accumulate(dh, t0, back, chunk)
                return dh, gw, gb

            gw = ops.zeros((block, head.hidden_dim) if head.rows else (head.hidden_dim, block),
                           dtype)
            dh, gw, gb = fh.loop_blocks(n, chunk, token_step, (dh, gw, ops.zeros((block,), dtype)))
            # Complete for this block: written once, in the weight's dtype.
            dw = backend.set_rows(dw, v0, gw, head.axis) if block < vocab else gw
            if b is not None:
                db = backend.set_rows(db, v0, gb) if block < vocab else gb
            return dh, dw, db

        init = (
            backend.zeros(ops.shape(h), dtype),
            backend.zeros(ops.shape(w), w.dtype),
            () if b is None else backend.zeros(ops.shape(b), b.dtype),
        )
        dh, dw, db = fh.loop_blocks(vocab, block, vocab_step, init)
        return ops.cast(dh, h.dtype), dw, None if b is None else db, None

    return loss, grad_fn


def _scalar_in_place(h, w, b, y, sw, scale, *, head_rows, dtype, opts, chunk_size):
    """Sum of per-token losses times their weights `sw` (None: 1) and `scale`, with every
    gradient computed in the same pass while each token chunk's logits exist (Liger): 3 matmuls.
    The weight gradient is a running sum updated in place one vocabulary block at a time, so no
    `V x H` temporary exists; used where the weight (and bias) are already in the accumulation
    dtype and the backend updates in place. 16-bit hidden states (Keras mixed precision: a
    float32 kernel) get their gradient through a float32 `N x H` buffer, cast once. A chunk's
    logits lie as the projection does, vocabulary on `head.axis`: `(V, chunk)` for a `(V, H)`
    weight, whose three products then read it row by row (2-4x faster on XLA:CPU than
    `(chunk, V)`, with no packed copy of the weight)."""
    head = fh.Head(w, head_rows)
    n, vocab, hdim = h.shape[0], head.vocab, head.hidden_dim
    chunk = fh.token_chunk(n, hdim, vocab, chunk_size)
    block = min(vocab, fh.VOCAB_BLOCK_OVERRIDE or max(fh.tiles(n, hdim, vocab)[1], 4 * chunk))
    ls, zl, ignore = opts["label_smoothing"], opts["z_loss"], opts["ignore_index"]
    cap = opts["logit_soft_cap"]
    cols = ops.arange(vocab, dtype="int32")
    vax = head.axis

    def step(i, carry):
        total, dh, dw, db = carry
        start = fh.block_start(i, chunk, n)
        h_i, y_i = backend.take(h, start, chunk), backend.take(y, start, chunk)
        valid = ops.logical_and(fh.fresh(i, start, chunk), ops.not_equal(y_i, ignore))
        weight = scale * ops.ones_like(y_i, dtype)
        if sw is not None:
            weight = weight * backend.take(sw, start, chunk)
        z = _soft_cap(head.chunk_logits(h_i, b, dtype), cap)
        lse = ops.logsumexp(z, axis=vax)
        # A gather, not a masked sum: XLA:CPU materialises the input of a reduction (one more
        # chunk of logits). Ignored labels read class 0 and are masked below.
        y_c = ops.expand_dims(ops.clip(y_i, 0, vocab - 1), vax)
        z_y = ops.squeeze(ops.take_along_axis(z, y_c, axis=vax), vax)
        z_sum = ops.sum(z, axis=vax) if ls else None
        loss = _token_loss(lse, z_y, z_sum, vocab, zl, ls)
        g = ops.where(valid, weight, ops.zeros_like(lse))
        total = total + ops.sum(ops.where(valid, loss * g, ops.zeros_like(loss)))
        dz = _uncap(_dlogits(z, lse, cols, y_i, g, vocab, zl, ls, axis=vax), z, cap)
        dh = backend.add_rows(dh, start, head.chunk_back(dz, dtype))
        if b is not None:
            db = db + ops.sum(dz, axis=1 - vax)
        if head.rows:
            dw = backend.add_matmul(dw, dz, h_i, 0, block)
        else:
            dw = backend.add_matmul(dw, ops.transpose(h_i), dz, 1, block)
        return total, dh, dw, db

    init = (
        ops.zeros((), dtype),
        backend.zeros(ops.shape(h), dtype),
        backend.zeros(ops.shape(w), w.dtype),
        () if b is None else backend.zeros(ops.shape(b), b.dtype),
    )
    total, dh, dw, db = backend.sequential_fori_loop(fh.num_blocks(n, chunk), step, init)
    if keras.backend.standardize_dtype(h.dtype) != dtype:
        dh = ops.cast(dh, h.dtype)

    def grad_fn(upstream):
        # The gradients are not reused: scaling them in place saves a copy of each (torch).
        grads = [backend.scale(g, upstream) for g in (dh, dw)]
        return grads[0], grads[1], None if b is None else backend.scale(db, upstream), None

    return total, grad_fn


@register(precision="input", domains=dict(
    chunk_size=dom.optional(dom.positive_integer), ignore_index=dom.integer,
    z_loss=dom.nonnegative, label_smoothing=SMOOTHING,
    reduction=dom.one_of("mean", "sum", "none")))
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
    logit_soft_cap=None,
    sample_weight=None,
):
    """Cross-entropy of a linear head, `CE(hidden @ weight.T + bias, labels)`, without logits.

    For each token with logits `z = h W^T + b`, `lse = logsumexp(z)`, label `y`, smoothing `e`
    and `V` classes:

        loss = -(1 - e) log softmax(z)_y - (e / V) sum_j log softmax(z)_j + z_loss * lse^2
             = lse - (1 - e) z_y - (e / V) sum_j z_j + z_loss * lse^2

    i.e. `keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)` with
    Keras's label smoothing plus PaLM's auxiliary z-loss (Chowdhery et al. 2022). With
    `logit_soft_cap=c`, every logit is first capped as Gemma-2's head does (Gemma Team 2024),

        z = c * tanh((h W^T + b) / c),

    and the loss above is that of the capped logits (a `-inf` bias then gives the finite logit
    `-c`, as it does in the naive capped head). Tokens labelled
    `ignore_index` contribute 0 and are left out of the mean. A `-inf` bias masks vocabulary
    columns (finite loss and gradients; a `-inf` target logit gives `+inf`), except with
    `label_smoothing > 0`, whose loss weights every column: then `+inf`, as Keras's smoothed
    cross-entropy on the same logits.

    The `N x V` logits are never materialised, and the gradient is written by hand:

    - `reduction="mean"`/`"sum"` with a float32 (or float64) weight and bias, on JAX, torch and
      TensorFlow under XLA (`jit_compile=True`): tokens are processed in chunks and each chunk's
      gradients are computed while its logits exist, so the backward pass only scales them
      (Liger-Kernel): three matmuls, as many as the naive computation; the weight gradient is a
      running sum updated in place in its own float32 buffer. 16-bit hidden states (Keras mixed
      precision: a float32 kernel) are allowed; their gradient goes through a float32 `N x H`
      buffer. As a `Term`, the Objective hands the function each token's weight over the
      global normaliser (`sample_weight`, `reduction="sum"`), so a Term takes this path too.
    - otherwise (`reduction="none"`, 16-bit weights, TensorFlow outside XLA): the forward pass
      computes each token's log-sum-exp over vocabulary blocks (online), and the backward pass
      recomputes the logits one vocabulary block at a time, token chunk by token chunk (Cut
      Cross-Entropy): four matmuls, but every block's weight gradient is complete when computed,
      so it is accumulated in float32 and written once in the weight's dtype, and the upstream
      gradient may weight tokens freely. The gradient of `hidden` is a float32 `N x H` running
      sum over vocabulary blocks.

    Extra memory beyond the gradients: one tile of logits (a token chunk's, or a chunk x block
    tile's) and, for 16-bit hidden states, the float32 `N x H` sum of their gradient.

    Backend fast paths (`backend.fused_linear_ce`), for `reduction="mean"`/`"sum"` only; every
    other call, and every call inside `losskit.gradients.plain_autodiff()`, takes the portable
    `keras.ops` form above (tested equal to each fast path):

    - JAX outside `jit`: the whole computation runs as one cached `jax.jit` call that returns the
      value and the gradients together (op by op, the loops copy their carried buffers).
    - torch with float32, float64 or bfloat16 inputs of one dtype: a `torch.autograd.Function`
      with Liger-Kernel's schedule written with in-place torch ops (`exp_`, `scatter_add_`,
      `mm(out=)`, `addmm_`). bfloat16 inputs there follow Liger: logits and `dlogits` are
      rounded to bfloat16 for the matmuls and the weight gradient is accumulated in bfloat16.

    Logits, log-sum-exp, the loss sum and the weight gradient accumulate in float32 whatever the
    input dtype (float64 for float64 inputs; except the torch bfloat16 fast path's weight
    gradient, above); gradients come back in each input's dtype.

    Args:
        hidden: `(..., H)` float tensor, the last hidden states.
        weight: `(V, H)` projection (a tied embedding matrix). Exactly one of weight/kernel.
        labels: `(...)` integer class indices (`hidden.shape[:-1]`), `ignore_index` to skip.
        bias: optional `(V,)` bias.
        kernel: `(H, V)` projection (a `Dense(V)` layer's kernel), instead of `weight`.
        chunk_size: tokens per chunk. Default: on the in-place path the larger of two powers
            of two (at most 4096), one making a chunk's logits about as large as `hidden`, the
            largest keeping two chunks of logits within a quarter of the gradients' bytes (few
            tokens a chunk make its products memory-bound); on the vocabulary-block path 1024
            (a TensorFlow graph of unknown batch size: all tokens at once).
        ignore_index: label value of tokens that do not count.
        z_loss: weight of `lse^2`, which keeps the softmax normaliser near 1.
        label_smoothing: `e` in [0, 1], as in `keras.losses.CategoricalCrossentropy`.
        reduction: `"mean"` over non-ignored tokens (0 if there are none), `"sum"`, or `"none"`
            for per-token losses of shape `labels.shape` (0 for ignored tokens).
        logit_soft_cap: None, or `c > 0`: the logits are `c * tanh(z / c)` (Gemma-2's
            `final_logit_soft_cap`, e.g. 30.0).
        sample_weight: optional per-token weights `w` of shape `labels.shape`: `"sum"` gives
            `sum w_i loss_i`, `"mean"` that divided by the kept tokens (Keras's rule), `"none"`
            `w_i loss_i`. No gradient flows to them. An `Objective` passes each token's weight
            divided by the global normaliser here, with `reduction="sum"`, so that a `Term`'s
            value is a scalar whose backward pass only scales (the in-place schedule).

    Returns:
        A scalar, or per-token losses, in float32 (float64 for float64 inputs).

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", arXiv:2411.09009.
        Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv:2410.10989.
        Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size",
        arXiv:2408.00118 (logit soft-capping).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{_NAME}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    logit_soft_cap = _check_soft_cap(logit_soft_cap)
    hidden, head, bias, labels = fh.check_head(_NAME, hidden, weight, kernel, bias, labels)
    # Eager: out-of-range labels raise here; traced: their tokens' losses become NaN below.
    invalid = _contract.invalid_labels(_NAME, labels, head.vocab, ignore_index)
    h = ops.reshape(hidden, (-1, head.hidden_dim))
    y = ops.reshape(labels, (-1,))
    sw = None if sample_weight is None else _flat_weights(sample_weight, labels)
    # A 16-bit weight would need a float32 copy of its gradient as running sum; 16-bit hidden
    # states (mixed precision) need only a float32 `N x H` one.
    acc = fh.accumulation_dtype(h, head.matrix, bias)
    weight_in_acc = all(t is None or keras.backend.standardize_dtype(t.dtype) == acc
                        for t in (head.matrix, bias))
    in_place = (reduction != "none" and weight_in_acc and backend.updates_in_place()
                and bool(h.shape[0]))
    # Everything that shapes the computation; hashable, so a backend may cache a compiled form.
    static = dict(rows=head.rows, reduction=reduction, chunk_size=chunk_size, in_place=in_place,
                  vocab_block=fh.VOCAB_BLOCK_OVERRIDE, ignore_index=ignore_index, z_loss=z_loss,
                  label_smoothing=label_smoothing, logit_soft_cap=logit_soft_cap)
    loss = None
    if not in_plain_autodiff():  # the check differentiates the portable forward pass
        loss = backend.fused_linear_ce(_portable, h, head.matrix, bias, y, sw, static)
    if loss is None:
        loss = _portable(h, head.matrix, bias, y, sw, **static)
    if reduction == "none":
        # The kept tokens, as sparse_categorical_crossentropy marks them: an Objective (or a
        # Keras reduction) leaves ignored tokens out of the denominator.
        loss = _contract.nan_where(invalid, ops.reshape(loss, ops.shape(labels)))
        return masked(loss, ops.not_equal(labels, ignore_index))
    return _contract.nan_if_any(invalid, loss)


def _flat_weights(sample_weight, labels):
    sw = ops.convert_to_tensor(sample_weight)
    if "float" not in keras.backend.standardize_dtype(sw.dtype):
        raise TypeError(f"{_NAME}: sample_weight must be a floating tensor, got dtype {sw.dtype}.")
    if None not in labels.shape and tuple(sw.shape) != tuple(labels.shape):
        raise ValueError(f"{_NAME}: sample_weight must have the labels' shape "
                         f"{tuple(labels.shape)} (one weight per token), got {tuple(sw.shape)}.")
    return ops.reshape(sw, (-1,))


def _check_soft_cap(cap):
    if cap is None:
        return None
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0:
        raise ValueError(f"{_NAME}: logit_soft_cap must be None or a number > 0, got {cap!r}")
    return float(cap)


def _portable(h, w, b, y, sw, *, rows, reduction, chunk_size, in_place, vocab_block, ignore_index,
              z_loss, label_smoothing, logit_soft_cap):
    """The `keras.ops` computation: the scalar loss, or flat per-token losses for "none"."""
    del vocab_block  # read from fh.VOCAB_BLOCK_OVERRIDE; in `static` to key compiled caches
    dtype = fh.accumulation_dtype(h, w, b)
    opts = dict(ignore_index=ignore_index, z_loss=z_loss, label_smoothing=label_smoothing,
                logit_soft_cap=logit_soft_cap)
    if sw is not None:
        sw = ops.cast(sw, dtype)
    if in_place:

        @custom_gradient
        def fused(h, w, b, y, sw):
            # Computed here, not closed over: JAX forbids closing over values traced by a jit.
            count = ops.sum(ops.cast(ops.not_equal(y, ignore_index), dtype))
            scale = 1.0 / ops.maximum(count, 1.0) if reduction == "mean" else 1.0
            value, grad_fn = _scalar_in_place(
                h, w, b, y, sw, scale, head_rows=rows, dtype=dtype, opts=opts,
                chunk_size=chunk_size,
            )
            return value, lambda upstream: (*grad_fn(upstream), None)  # none to the weights

        return fused(h, w, b, y, sw)

    @custom_gradient
    def per_token(h, w, b, y):
        return _per_token(h, w, b, y, head_rows=rows, dtype=dtype, opts=opts,
                          chunk_size=chunk_size)

    losses = per_token(h, w, b, y)
    if sw is not None:
        losses = losses * ops.stop_gradient(sw)
    if reduction == "none":
        return losses
    total = ops.sum(losses)
    if reduction == "sum":
        return total
    count = ops.sum(ops.cast(ops.not_equal(y, ignore_index), dtype))
    return total / ops.maximum(count, 1.0)


def _kept_positions(labels, ignore_index=-100, **_):
    """The tokens a Term of `fused_linear_cross_entropy` keeps (the mask of its per-token
    values): an Objective weights them and hands the weights back (`sample_weight`)."""
    return ops.not_equal(ops.convert_to_tensor(labels), ignore_index)


# The protocol of functions that reduce themselves in a Term (see `Term.reduces_itself`).
fused_linear_cross_entropy.kept_positions = _kept_positions

# No Loss class: its inputs are not (y_true, y_pred); use it in a Term or a train step.
FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

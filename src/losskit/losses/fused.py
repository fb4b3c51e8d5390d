"""Fused linear cross-entropy: the loss of a large-vocabulary output head without its logits.

A language-model head computes `logits = hidden @ weight.T + bias` of shape `(N, V)` and then the
cross-entropy. At N = 8192 tokens and V = 32768 the logits alone take 1 GiB in float32, and autodiff
keeps two or three such buffers alive. `fused_linear_cross_entropy` gives the same value and the
same gradients while only ever holding the logits of one chunk of tokens: the head's matmul is
fused into the loss and the gradient is written by hand (the technique of Cut Cross-Entropy,
Wijmans et al. 2024, and Liger-Kernel's FusedLinearCrossEntropy, Hsu et al. 2024, both
PyTorch/Triton only). It is written with `keras.ops` and a custom gradient, so it runs on every
Keras backend and under `jit`.
"""

import math

from keras import ops

from losskit import backend
from losskit.gradients import custom_gradient
from losskit.losses._common import family, public, register

# Liger-Kernel's rule: a chunk's logits are about as large as `hidden` itself.
_MAX_AUTO_CHUNK = 4096


def _auto_chunk_size(n, hidden_dim, vocab):
    """Tokens per chunk such that a chunk's logits (`chunk * V`) are about the size of `hidden`."""
    chunk = max(1, math.ceil(n / max(1, math.ceil(vocab / hidden_dim))))
    return min(_MAX_AUTO_CHUNK, 2 ** math.ceil(math.log2(chunk)))


def _chunk(h, y, weight, bias, *, ignore_index, z_loss, label_smoothing):
    """Per-token loss and its gradient w.r.t. the logits for one chunk of tokens.

    With `z = h W^T + b`, `lse = logsumexp(z)`, smoothing `e` and `V` classes:

        loss    = lse - (1 - e) z_y - (e / V) sum_j z_j + z_loss * lse^2
        dloss/dz = softmax(z) (1 + 2 z_loss lse) - (1 - e) onehot(y) - e / V

    Both are 0 for tokens whose label is `ignore_index`.
    """
    vocab = weight.shape[0]
    z = ops.matmul(h, ops.transpose(weight))
    if bias is not None:
        z = z + bias
    valid = ops.cast(ops.not_equal(y, ignore_index), z.dtype)
    y = ops.where(ops.not_equal(y, ignore_index), y, 0)  # any in-range index; masked below
    lse = ops.logsumexp(z, axis=-1)
    z_y = ops.squeeze(ops.take_along_axis(z, ops.expand_dims(y, -1), axis=-1), -1)
    loss = lse - (1.0 - label_smoothing) * z_y + z_loss * ops.square(lse)
    if label_smoothing:
        loss = loss - (label_smoothing / vocab) * ops.sum(z, axis=-1)
    softmax_scale = 1.0 + 2.0 * z_loss * lse if z_loss else 1.0
    dz = ops.exp(z - lse[:, None]) * (valid * softmax_scale)[:, None]
    dz = dz - ops.one_hot(y, vocab, dtype=z.dtype) * ((1.0 - label_smoothing) * valid)[:, None]
    if label_smoothing:
        dz = dz - (label_smoothing / vocab) * valid[:, None]
    return loss * valid, dz


@register(precision="input")
def fused_linear_cross_entropy(
    hidden,
    weight,
    labels,
    bias=None,
    chunk_size=None,
    ignore_index=-100,
    z_loss=0.0,
    label_smoothing=0.0,
    reduction="mean",
):
    """Cross-entropy of a linear head, `CE(hidden @ weight.T + bias, labels)`, chunk by chunk.

    For each token with logits `z = h W^T + b`, `lse = logsumexp(z)`, label `y`, smoothing `e`
    and `V = weight.shape[0]` classes:

        loss = -(1 - e) log softmax(z)_y - (e / V) sum_j log softmax(z)_j + z_loss * lse^2

    i.e. `keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)` with
    Keras's label smoothing plus PaLM's auxiliary z-loss (Chowdhery et al. 2022). Tokens labelled
    `ignore_index` contribute 0 and are left out of the mean.

    The `N x V` logits are never materialised: tokens are processed in chunks of `chunk_size`
    inside a loop, and the gradient is custom. With `reduction="mean"` or `"sum"` (one scalar,
    the usual training loss) each chunk's gradients w.r.t. `hidden`, `weight` and `bias` are
    computed in the forward pass while its logits are in cache, and the backward pass only
    scales them by the upstream scalar: three matmuls, as many as the naive computation
    (Liger-Kernel). With `reduction="none"` the per-token losses are returned and the backward
    pass recomputes each chunk's logits (Cut Cross-Entropy): four matmuls, but the upstream
    gradient may weight tokens freely. Peak extra memory is one chunk's logits (a few copies of
    `chunk_size x V`) plus gradients the size of `hidden`, `weight` and `bias`.

    Args:
        hidden: `(..., H)` float tensor, the last hidden states.
        weight: `(V, H)` output projection (the transposed kernel of a `Dense(V)` layer, or the
            tied embedding matrix).
        labels: `(...)` integer class indices, `ignore_index` for tokens to skip (padding).
        bias: optional `(V,)` bias.
        chunk_size: tokens per chunk; default: a power of two making a chunk's logits about as
            large as `hidden` (at most 4096).
        ignore_index: label value of tokens that do not count.
        z_loss: weight of `lse^2`, which keeps the softmax normaliser near 1.
        label_smoothing: `e` in [0, 1), as in `keras.losses.CategoricalCrossentropy`.
        reduction: `"mean"` over non-ignored tokens (0 if there are none), `"sum"`, or `"none"`
            for per-token losses of shape `labels.shape`.

    Returns:
        A scalar, or per-token losses for `reduction="none"`.

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", arXiv:2411.09009.
        Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv:2410.10989.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    hidden = ops.convert_to_tensor(hidden)
    weight = ops.convert_to_tensor(weight, dtype=hidden.dtype)
    labels = ops.convert_to_tensor(labels)
    if "int" not in str(labels.dtype):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels_shape = ops.shape(labels)
    vocab, hidden_dim = weight.shape
    h = ops.reshape(hidden, (-1, hidden_dim))
    y = ops.reshape(labels, (-1,))
    n = ops.shape(h)[0]
    if chunk_size is None:
        # An unknown number of tokens (TF graph, None batch) is sized as 8192 tokens.
        chunk_size = _auto_chunk_size(h.shape[0] or 8192, hidden_dim, vocab)
    # Pad to whole chunks with ignored tokens, which add 0 to the loss and the gradients.
    pad = (chunk_size - n % chunk_size) % chunk_size
    h_chunks = ops.reshape(ops.pad(h, [[0, pad], [0, 0]]), (-1, chunk_size, hidden_dim))
    y_chunks = ops.reshape(ops.pad(y, [[0, pad]], constant_values=ignore_index), (-1, chunk_size))
    options = dict(ignore_index=ignore_index, z_loss=z_loss, label_smoothing=label_smoothing)

    def take(x, i):
        return ops.take(x, i, axis=0)

    def put(buffer, i, chunk):
        return ops.slice_update(buffer, (i,) + (0,) * (len(buffer.shape) - 1), chunk[None])

    def forward(y_chunks, h_chunks, weight, *maybe_bias):
        b = maybe_bias[0] if maybe_bias else None

        def loop(body, init):
            return backend.sequential_fori_loop(ops.shape(h_chunks)[0], body, init)

        if reduction == "none":
            # Per-token values now; the gradient recomputes each chunk's logits (Cut CE).
            def value_step(i, losses):
                loss, _ = _chunk(take(h_chunks, i), take(y_chunks, i), weight, b, **options)
                return put(losses, i, loss)

            losses = loop(value_step, ops.zeros(ops.shape(y_chunks), hidden.dtype))

            def grad_fn(upstream):
                def grad_step(i, acc):
                    dh, dw, db = acc
                    h_i = take(h_chunks, i)
                    _, dz = _chunk(h_i, take(y_chunks, i), weight, b, **options)
                    dz = dz * take(upstream, i)[:, None]
                    return (
                        put(dh, i, ops.matmul(dz, weight)),
                        dw + ops.matmul(ops.transpose(dz), h_i),
                        db + ops.sum(dz, axis=0),
                    )

                zeros = tuple(ops.zeros_like(g) for g in (h_chunks, weight))
                dh, dw, db = loop(grad_step, zeros + (ops.zeros((vocab,), hidden.dtype),))
                return (None, dh, dw, db) if maybe_bias else (None, dh, dw)

            return losses, grad_fn

        # A scalar: every gradient is computed now, while each chunk's logits exist (Liger).
        if reduction == "mean":
            count = ops.sum(ops.cast(ops.not_equal(y_chunks, ignore_index), hidden.dtype))
            scale = 1.0 / ops.maximum(count, 1.0)
        else:
            scale = 1.0

        def step(i, acc):
            total, dh, dw, db = acc
            h_i = take(h_chunks, i)
            loss, dz = _chunk(h_i, take(y_chunks, i), weight, b, **options)
            dz = dz * scale
            return (
                total + ops.sum(loss),
                put(dh, i, ops.matmul(dz, weight)),
                dw + ops.matmul(ops.transpose(dz), h_i),
                db + ops.sum(dz, axis=0),
            )

        zeros = tuple(ops.zeros_like(g) for g in (h_chunks, weight))
        init = (ops.zeros((), hidden.dtype),) + zeros + (ops.zeros((vocab,), hidden.dtype),)
        total, dh, dw, db = loop(step, init)
        grads = (dh, dw, db) if maybe_bias else (dh, dw)

        def grad_fn(upstream):
            return (None, *(g * upstream for g in grads))

        return total * scale, grad_fn

    args = (y_chunks, h_chunks, weight) + (() if bias is None else (bias,))
    out = custom_gradient(forward)(*args)
    if reduction == "none":
        return ops.reshape(ops.reshape(out, (-1,))[:n], labels_shape)
    return out



# No Loss class: its inputs are not (y_true, y_pred); use it in a Term or a train step.
FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

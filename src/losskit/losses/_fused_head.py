"""Shared machinery of the fused losses: argument checks, the projection read in vocabulary
blocks, block sizes, and the two chunked passes over the vocabulary.

Not a family module (no `@register` here): `fused.py` and `fused_distillation.py` build on it.
"""

import math

import keras
from keras import ops

from losskit import backend

# Liger-Kernel's rule for token chunks: a chunk's logits are about as large as `hidden`.
_MAX_AUTO_CHUNK = 4096
# The in-place schedule keeps two chunks of logits (the logits and their gradient); issue 12's
# bound (peak <= 1.25x the gradients' bytes) leaves them a quarter of the gradients.
_LOGITS_BUFFERS, _GRADIENT_SHARE = 2, 0.25


def accumulation_dtype(*tensors):
    """float64 only when every input is float64; float32 otherwise (16-bit inputs included)."""
    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in tensors if t is not None}
    return "float64" if dtypes == {"float64"} else "float32"


def token_chunk(n, hidden_dim, vocab, chunk_size):
    """Tokens per chunk: `chunk_size`, or the larger of two powers of two (at most 4096): one
    making a chunk's logits (`chunk * V`) about the size of `hidden` (Liger-Kernel's rule), and
    the largest whose two chunks of logits stay within a quarter of the gradients' bytes
    (`(N + V) * H`). Each chunk streams the weight through two products and its gradient
    through a third, so small chunks make them memory-bound: Liger's rule alone gave 16 tokens
    at N = 2048, V = 128256, H = 512 (2.25x the naive head's time under JAX `jit`, CPU)."""
    if chunk_size is None:
        chunk = max(1, math.ceil(n / max(1, math.ceil(vocab / hidden_dim))))
        liger = 2 ** math.ceil(math.log2(chunk))
        budget = _GRADIENT_SHARE * (n + vocab) * hidden_dim / (_LOGITS_BUFFERS * vocab)
        bounded = 2 ** math.floor(math.log2(budget)) if budget >= 1 else 1
        chunk_size = min(_MAX_AUTO_CHUNK, max(liger, bounded))
    return max(1, min(int(chunk_size), n))


def tiles(n, hidden_dim, vocab, chunk_size=None):
    """`(token chunk, vocabulary block)` of the vocabulary passes. A tile's float32 logits are
    an eighth of `hidden` in float32, so the float32 gradient of `hidden` (a running sum over
    blocks) dominates the extra memory. An unknown batch (a TensorFlow graph) is taken all at once
    (chunk `None`): only whole vocabulary blocks are then updated."""
    static_n = n if isinstance(n, int) else 8192  # unknown batch (TF graph): sized as 8192
    chunk = None
    if isinstance(n, int):
        chunk = max(1, min(static_n, chunk_size or 1024))
    per_tile = static_n * hidden_dim / (8 * (chunk or static_n))
    block = VOCAB_BLOCK_OVERRIDE or 2 ** max(3, round(math.log2(max(1.0, per_tile))))
    return chunk, max(1, min(vocab, block))


# Tests set this to force several vocabulary blocks at tiny sizes.
VOCAB_BLOCK_OVERRIDE = None


def block_start(i, size, total):
    """Start of block `i` of `size`; the last block is shifted back to end at `total`, so no
    input is padded (padding would copy it). Its columns seen before are masked by `fresh`."""
    if isinstance(i, int):
        return min(i * size, total - size)
    return ops.minimum(i * size, total - size)


def fresh(i, start, size):
    """Mask of the block's positions not covered by an earlier block."""
    return ops.greater_equal(start + ops.arange(size, dtype="int32"), i * size)


def num_blocks(total, size):
    return -(-total // size)


class Head:
    """The projection as `(V, H)` rows (`weight=`) or `(H, V)` columns (`kernel=`), read in
    vocabulary blocks without a transposed copy (it would cost as much as the weight)."""

    def __init__(self, matrix, rows):
        self.matrix, self.rows = matrix, rows
        self.axis = 0 if rows else 1
        self.vocab = matrix.shape[self.axis]
        self.hidden_dim = matrix.shape[1 - self.axis]

    def block(self, start, size):
        if size == self.vocab:
            return self.matrix
        return backend.take(self.matrix, start, size, self.axis)

    def logits(self, h, block, dtype):
        return backend.matmul(h, ops.transpose(block) if self.rows else block, dtype)

    def back(self, dz, block, dtype):
        """`dz @ W_block`: the block's contribution to the gradient w.r.t. `hidden`."""
        return backend.matmul(dz, block if self.rows else ops.transpose(block), dtype)

    def chunk_logits(self, h, bias, dtype):
        """A token chunk's logits over the whole vocabulary, laid out as the projection:
        `(V, chunk)` for rows, `(chunk, V)` for a kernel (the vocabulary on `self.axis`)."""
        if self.rows:
            z = backend.matmul(self.matrix, ops.transpose(h), dtype)
        else:
            z = self.logits(h, self.matrix, dtype)
        if bias is not None:
            z = z + ops.expand_dims(ops.cast(bias, dtype), 1 - self.axis)
        return z

    def chunk_back(self, dz, dtype):
        """`dz @ W` for `dz` laid out as `chunk_logits`: the chunk's gradient of `hidden`."""
        if self.rows:
            return backend.matmul(ops.transpose(dz), self.matrix, dtype)
        return self.back(dz, self.matrix, dtype)

    def grad(self, dz, h, dtype):
        """The block's weight gradient, in the layout of the projection."""
        if self.rows:
            return backend.matmul(ops.transpose(dz), h, dtype)
        return backend.matmul(ops.transpose(h), dz, dtype)


def rows(x, start, size):
    """Rows `start:start + size` of `x`; all of `x` when `size` is None (no chunking)."""
    return x if size is None else backend.take(x, start, size)


def put(buffer, start, value, size):
    return value if size is None else backend.set_rows(buffer, start, value)


def accumulate(buffer, start, value, size):
    return buffer + value if size is None else backend.add_rows(buffer, start, value)


def loop_blocks(total, size, step, init):
    """Runs `carry = step(start, keep, carry)` over blocks of `size` of `range(total)`, one at a
    time; `keep` masks the block's positions an earlier block covered (the last block is
    shifted back so that nothing is padded). `size=None`: one block, `start=0`, `keep=None`."""
    if size is None:
        return step(0, None, init)
    if isinstance(total, int) and total == 0:  # JAX would still trace `step` on a block of nothing
        return init

    def body(i, carry):
        start = block_start(i, size, total)
        return step(start, fresh(i, start, size), carry)

    return backend.sequential_fori_loop(num_blocks(total, size), body, init)


def masked(keep, x, axis):
    """`x` with the positions `keep` rejects (along `axis` of a 2-D `x`) set to zero."""
    if keep is None:
        return x
    keep = keep[None, :] if axis == 1 else keep[:, None] if len(x.shape) == 2 else keep
    return ops.where(keep, x, ops.zeros_like(x))


def check_head(loss, hidden, weight, kernel, bias, labels, *, labels_required=True, prefix=""):
    """Converts and validates `hidden`, exactly one of `weight`/`kernel`, `bias` and `labels`;
    returns `(hidden, Head, bias, labels)`. Errors name `loss`."""
    if (weight is None) == (kernel is None):
        raise ValueError(
            f"{loss}: pass exactly one of {prefix}weight= (the (V, H) tied embedding) or "
            f"{prefix}kernel= (a Dense layer's (H, V) kernel), got "
            f"{'both' if weight is not None else 'neither'}."
        )
    hidden = ops.convert_to_tensor(hidden)
    matrix = ops.convert_to_tensor(weight if weight is not None else kernel)
    for name, t in ((f"{prefix}hidden", hidden), (f"{prefix}weight/kernel", matrix)):
        if "float" not in keras.backend.standardize_dtype(t.dtype):
            raise TypeError(f"{loss}: {name} must be a floating tensor, got dtype {t.dtype}.")
    if len(matrix.shape) != 2:
        raise ValueError(f"{loss}: {prefix}weight/kernel must be 2-D, got shape {matrix.shape}.")
    head = Head(matrix, rows=weight is not None)
    if hidden.shape[-1] != head.hidden_dim:
        layout = "(V, H) weight" if head.rows else "(H, V) kernel"
        raise ValueError(
            f"{loss}: {prefix}hidden has H = {hidden.shape[-1]} features but the {layout} has "
            f"shape {tuple(matrix.shape)} (H = {head.hidden_dim})."
        )
    if bias is not None:
        bias = ops.convert_to_tensor(bias)
        if tuple(bias.shape) != (head.vocab,):
            raise ValueError(f"{loss}: bias must have shape ({head.vocab},), got {bias.shape}.")
    if labels is None:
        if labels_required:
            raise ValueError(f"{loss}: labels are required.")
        return hidden, head, bias, None
    labels = ops.convert_to_tensor(labels)
    if "int" not in keras.backend.standardize_dtype(labels.dtype):
        raise TypeError(f"{loss}: labels must be integer class indices, got dtype {labels.dtype}.")
    if None not in hidden.shape and tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"{loss}: labels of shape {tuple(labels.shape)} do not match hidden of shape "
            f"{tuple(hidden.shape)} (labels.shape must be hidden.shape[:-1])."
        )
    return hidden, head, bias, labels


def block_logits(h, head, bias, start, size, dtype):
    w = head.block(start, size)
    z = head.logits(h, w, dtype)
    if bias is not None:
        b = bias if size == head.vocab else backend.take(bias, start, size)
        z = z + ops.cast(b, dtype)
    return z, w


class OnlineLogSumExp:
    """Per-token `logsumexp` accumulated over vocabulary blocks (as in flash attention): state
    `(max, sum of exp(z - max))`. Masked (-inf) columns are exact; a token whose logits so far
    are all -inf keeps a finite shift."""

    @staticmethod
    def init(n, dtype):
        return ops.full((n,), -math.inf, dtype), ops.zeros((n,), dtype)

    @staticmethod
    def shift(m):
        return ops.where(ops.isfinite(m), m, ops.zeros_like(m))

    @classmethod
    def update(cls, state, z, keep):
        m, s = state
        z = z if keep is None else ops.where(keep[None, :], z, -math.inf)
        m_new = ops.maximum(m, ops.max(z, axis=-1))
        shift = cls.shift(m_new)
        s = s * ops.exp(m - shift) + ops.sum(ops.exp(z - shift[:, None]), axis=-1)
        return m_new, s

    @classmethod
    def result(cls, state):
        m, s = state
        return cls.shift(m) + ops.log(s)

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


def accumulation_dtype(*tensors):
    """float64 only when every input is float64; float32 otherwise (16-bit inputs included)."""
    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in tensors if t is not None}
    return "float64" if dtypes == {"float64"} else "float32"


def token_chunk(n, hidden_dim, vocab, chunk_size):
    """Tokens per chunk: `chunk_size`, or a power of two making a chunk's logits (`chunk * V`)
    about half the size of `hidden` (at most 4096)."""
    if chunk_size is None:
        chunk = max(1, math.ceil(n / max(1, 2 * math.ceil(vocab / hidden_dim))))
        chunk_size = min(_MAX_AUTO_CHUNK, 2 ** math.ceil(math.log2(chunk)))
    return max(1, min(int(chunk_size), n))


def vocab_block(hidden_dim, vocab):
    """Vocabulary columns per block when all tokens are processed at once: `N x block` logits
    are a quarter of `hidden` in float32 (so `dh`'s float32 accumulator dominates)."""
    return max(1, min(vocab, VOCAB_BLOCK_OVERRIDE or 2 ** round(math.log2(max(1, hidden_dim / 4)))))


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
        begin = (start, 0) if self.rows else (0, start)
        shape = (size, self.hidden_dim) if self.rows else (self.hidden_dim, size)
        return ops.slice(self.matrix, begin, shape)

    def logits(self, h, block, dtype):
        return backend.matmul(h, ops.transpose(block) if self.rows else block, dtype)

    def back(self, dz, block, dtype):
        """`dz @ W_block`: the block's contribution to the gradient w.r.t. `hidden`."""
        return backend.matmul(dz, block if self.rows else ops.transpose(block), dtype)

    def grad(self, dz, h, dtype):
        """The block's weight gradient, in the layout of the projection."""
        if self.rows:
            return backend.matmul(ops.transpose(dz), h, dtype)
        return backend.matmul(ops.transpose(h), dz, dtype)


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
        z = z + ops.cast(ops.slice(bias, (start,), (size,)), dtype)
    return z, w


def log_normaliser(h, head, bias, dtype, block, column_fn=None):
    """Per-token `logsumexp` of `h W^T + b` over vocabulary blocks (online, as in flash
    attention), never holding more than `N x block` logits. `column_fn(z, cols, keep, carry)`
    may accumulate per-token statistics of each block's logits into extra carries."""
    n, vocab = ops.shape(h)[0], head.vocab
    neg_inf = ops.full((n,), -math.inf, dtype)

    def step(i, carry):
        m, s, extra = carry
        start = block_start(i, block, vocab)
        z, _ = block_logits(h, head, bias, start, block, dtype)
        keep = fresh(i, start, block)
        z_kept = ops.where(keep[None, :], z, -math.inf)
        m_new = ops.maximum(m, ops.max(z_kept, axis=-1))
        # A token whose logits so far are all -inf (masked columns) keeps a finite shift.
        shift = ops.where(ops.isfinite(m_new), m_new, ops.zeros_like(m_new))
        s = s * ops.exp(m - shift) + ops.sum(ops.exp(z_kept - shift[:, None]), axis=-1)
        if column_fn is not None:
            extra = column_fn(z, start + ops.arange(block, dtype="int32"), keep, extra)
        return m_new, s, extra

    extra0 = () if column_fn is None else column_fn(None, None, None, None)
    m, s, extra = backend.sequential_fori_loop(
        num_blocks(vocab, block), step, (neg_inf, ops.zeros((n,), dtype), extra0)
    )
    shift = ops.where(ops.isfinite(m), m, ops.zeros_like(m))
    return shift + ops.log(s), extra


def vocab_grads(h, head, bias, dtype, block, dlogits):
    """Gradients w.r.t. `h`, the projection and the bias given `dlogits(z, cols) -> dL/dz` of a
    block of logits: one pass over vocabulary blocks, all tokens at once. Each block's weight
    gradient is complete when computed, so it is written once in the projection's dtype; only
    `dh` is a running sum (float32)."""
    n, vocab = ops.shape(h)[0], head.vocab

    def step(i, carry):
        dh, dw, db = carry
        start = block_start(i, block, vocab)
        z, w = block_logits(h, head, bias, start, block, dtype)
        dz = dlogits(z, start + ops.arange(block, dtype="int32"))
        dw = backend.set_rows(dw, start, head.grad(dz, h, dtype), head.axis)
        if bias is not None:
            db = backend.set_rows(db, start, ops.sum(dz, axis=0))
        # Columns an earlier block covered already added their share to dh.
        dz = ops.where(fresh(i, start, block)[None, :], dz, ops.zeros_like(dz))
        return dh + head.back(dz, w, dtype), dw, db

    init = (
        ops.zeros((n, head.hidden_dim), dtype),
        ops.zeros(ops.shape(head.matrix), head.matrix.dtype),
        () if bias is None else ops.zeros((vocab,), bias.dtype),
    )
    dh, dw, db = backend.sequential_fori_loop(num_blocks(vocab, block), step, init)
    return dh, dw, None if bias is None else db

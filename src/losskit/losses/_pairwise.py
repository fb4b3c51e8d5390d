"""The parts the metric-learning losses are composed from, one idea each (as in
pytorch-metric-learning): pairwise similarities and distances, label masks, masked reductions,
the miners `hardest_positive_negative` and `semi_hard_negatives`, and `per_anchor`, the row-block
driver behind every loss's ``block_size``. Importable from `losskit.losses.metric_learning`.
"""

import keras
from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """``x / max(||x||, epsilon)`` along ``axis`` (finite gradient at ``x = 0``)."""
    sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq, epsilon**2))


def pairwise_similarity(a, b):
    """Dot-product similarities ``a @ b.T``: shape ``(len(a), len(b))``."""
    return ops.matmul(a, ops.transpose(b))


def pairwise_squared_distance(a, b):
    r"""Squared Euclidean distances :math:`\|a_i - b_j\|^2`, clipped at 0 (round-off).

    Uses :math:`\|a\|^2 + \|b\|^2 - 2 a \cdot b` (one matmul, no ``rows x N x D`` tensor), as
    pytorch-metric-learning and TF Addons do; its absolute error is about machine epsilon times
    :math:`\|a\|^2`, so very close points of large norm get a small spurious distance.
    """
    a2 = ops.sum(ops.square(a), axis=-1, keepdims=True)
    b2 = ops.sum(ops.square(b), axis=-1, keepdims=True)
    return ops.maximum(a2 + ops.transpose(b2) - 2.0 * pairwise_similarity(a, b), 0.0)


def safe_sqrt(x, epsilon=1e-12):
    """``sqrt(x)`` with gradient 0 (not inf/NaN) where ``x <= epsilon``."""
    positive = x > epsilon
    return ops.where(positive, ops.sqrt(ops.where(positive, x, 1.0)), 0.0)


def pairwise_distance(a, b, squared=False):
    """Euclidean (or squared Euclidean) distances between the rows of ``a`` and ``b``."""
    d2 = pairwise_squared_distance(a, b)
    return d2 if squared else safe_sqrt(d2)


def label_masks(anchor_labels, anchor_index, labels):
    """Boolean ``(positive, negative)`` masks of shape ``(len(anchor_labels), len(labels))``.

    ``positive[i, j]``: same label and ``j`` is not the anchor itself; ``negative[i, j]``:
    different label.
    """
    same = ops.expand_dims(anchor_labels, 1) == ops.expand_dims(labels, 0)
    other = ops.expand_dims(anchor_index, 1) != ops.expand_dims(
        ops.arange(ops.shape(labels)[0], dtype=anchor_index.dtype), 0
    )
    return ops.logical_and(same, other), ops.logical_not(same)


def masked_logsumexp(logits, mask, axis=-1):
    """``log sum_{mask} exp(logits)`` along ``axis``, stable; 0 where the mask is empty."""
    any_ = ops.any(mask, axis=axis)
    low = ops.min(logits, axis=axis, keepdims=True)
    peak = ops.stop_gradient(ops.max(ops.where(mask, logits, low), axis=axis, keepdims=True))
    shifted = ops.where(mask, logits - peak, -1e4)  # exp(-1e4) == 0, and its gradient is 0
    total = ops.sum(ops.where(mask, ops.exp(shifted), 0.0), axis=axis)
    lse = ops.squeeze(peak, axis) + ops.log(ops.where(any_, total, 1.0))
    return ops.where(any_, lse, 0.0)


def masked_mean(values, mask, axis=-1):
    """Mean of ``values`` over ``mask`` along ``axis``; 0 where the mask is empty."""
    mask_f = ops.cast(mask, values.dtype)
    count = ops.sum(mask_f, axis=axis)
    return ops.sum(ops.where(mask, values, 0.0), axis=axis) / ops.maximum(count, 1.0)


def hardest_positive_negative(distances, positive, negative):
    """Batch-hard miner (Hermans et al. 2017): farthest positive and closest negative per row.

    Returns ``(d_pos, d_neg, valid)``; ``valid`` is False for rows without positive or negative.
    """
    has_pos, has_neg = ops.any(positive, axis=-1), ops.any(negative, axis=-1)
    d_pos = ops.max(ops.where(positive, distances, 0.0), axis=-1)  # distances are >= 0
    far = ops.stop_gradient(ops.max(distances)) + 1.0
    d_neg = ops.min(ops.where(negative, distances, far), axis=-1)
    return d_pos, d_neg, ops.logical_and(has_pos, has_neg)


def _searchsorted_rows(sorted_rows, values):
    """Row-wise ``searchsorted(side="right")`` (counts of ``sorted_rows[i] <= values[i, j]``)."""
    return ops.vectorized_map(
        lambda rv: ops.searchsorted(rv[0], rv[1], side="right"), (sorted_rows, values)
    )


def semi_hard_negatives(distances, negative):
    """Semi-hard miner (Schroff et al. 2015, as in `tfa.losses.triplet_semihard_loss`).

    For each anchor row ``i`` and each column ``j`` taken as its positive, returns the distance
    to the closest negative **farther** than ``distances[i, j]``; if the anchor has no such
    negative, its farthest negative. Shape of ``distances``; ``O(rows x N)`` memory (row-wise
    sort + binary search, no ``N x N x N`` comparison).
    """
    n = ops.shape(distances)[-1]
    fixed = ops.stop_gradient(distances)
    keys = ops.where(negative, fixed, float("inf"))
    order = ops.argsort(keys, axis=-1)
    sorted_keys = ops.take_along_axis(keys, order, axis=-1)
    count = ops.cast(_searchsorted_rows(sorted_keys, fixed), "int32")
    n_neg = ops.sum(ops.cast(negative, "int32"), axis=-1, keepdims=True)
    outside = count < n_neg
    pick = ops.take_along_axis(order, ops.minimum(count, n - 1), axis=-1)
    d_outside = ops.take_along_axis(distances, pick, axis=-1)
    d_inside = ops.max(ops.where(negative, distances, 0.0), axis=-1, keepdims=True)
    return ops.where(outside, d_outside, d_inside)


def per_anchor(row_fn, labels, embeddings, block_size=None):
    """Applies ``row_fn(anchor_index, anchors, anchor_labels, embeddings) -> (rows,)``.

    ``row_fn`` gets the whole batch ``embeddings`` as an argument (not from a closure), so that
    gradients reach it through the rematerialised blocks. With ``block_size`` set and more than
    ``block_size`` anchors, it runs over row blocks with `keras.ops.map`, so only
    ``block_size x N`` pairwise values exist at a time; the last block is padded by repeating the
    last anchor, and the padding is dropped. Each block is wrapped in `keras.remat`
    (``jax.checkpoint`` / ``tf.recompute_grad``): the backward pass recomputes a block's pairwise
    values instead of storing them for every block, which would bring back ``N x N`` memory.
    """
    n = ops.shape(embeddings)[0]
    static_n = n if isinstance(n, int) else None
    if block_size is None or (static_n is not None and static_n <= block_size):
        return row_fn(ops.arange(n, dtype="int32"), embeddings, labels, embeddings)
    block_size = int(block_size)
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None, got {block_size}")
    n_blocks = (n + block_size - 1) // block_size
    index = ops.minimum(ops.arange(n_blocks * block_size, dtype="int32"), n - 1)
    index = ops.reshape(index, (-1, block_size))

    def block(i):
        def rows(columns):
            anchors = ops.take(columns, i, axis=0)
            return row_fn(i, anchors, ops.take(labels, i, axis=0), columns)

        return keras.remat(rows)(embeddings)

    return ops.reshape(ops.map(block, index), (-1,))[:n]

"""Matmul FLOPs of the fused head against the naive head (logits = h @ W^T, sparse CE,
autodiff), counted from the traced or dispatched computation (tests/flop_count.py): no more
than the naive head's for float32 and Keras mixed precision, called directly or as a Term of an
Objective; at most 4/3 of it (Cut CE's four matmuls) for pure 16-bit weights."""

import keras
import numpy as np
import pytest
from flop_count import matmul_flops
from keras import ops

from losskit import Objective, Term
from losskit.losses.fused import fused_linear_cross_entropy

N, H, V = 64, 16, 256  # chunks and vocabulary blocks divide them: no recomputed overlap
RNG = np.random.default_rng(0)
HIDDEN = RNG.normal(size=(N, H)).astype("float32")
KERNEL = (RNG.normal(size=(H, V)) / 4).astype("float32")
LABELS = RNG.integers(0, V, size=(N,)).astype("int32")
LABELS[::7] = -100
SAMPLE_WEIGHT = RNG.uniform(0.5, 2.0, size=(N // 8,)).astype("float32")


def naive(h, k):
    logits = ops.cast(ops.matmul(h, k), "float32")
    kept = ops.not_equal(LABELS, -100)
    ce = keras.losses.sparse_categorical_crossentropy(ops.where(kept, LABELS, 0), logits,
                                                      from_logits=True)
    return ops.sum(ops.where(kept, ce, 0.0)) / ops.sum(ops.cast(kept, "float32"))


def direct(h, k):
    return fused_linear_cross_entropy(h, labels=LABELS, kernel=k, chunk_size=16)


def as_term(h, k, inputs=None):
    # Eight sequences of eight tokens with per-sequence sample weights, as a training step.
    objective = Objective([Term(fused_linear_cross_entropy, hidden="layer.h",
                                kernel="var.head.kernel", labels="y", chunk_size=16,
                                inputs=inputs)])
    total, _ = objective(
        {}, ops.reshape(LABELS, (8, 8)), None, sample_weight=SAMPLE_WEIGHT,
        layers={"h": ops.reshape(h, (8, 8, H))}, variables={"head.kernel": k},
    )
    return total


def per_token_term(h, k):
    """A Term that fixes reduction="none": the Objective reduces its per-token values."""
    return as_term(h, k, inputs={"reduction": "none"})


def inputs(h_dtype, k_dtype):
    return [ops.cast(HIDDEN, h_dtype), ops.cast(KERNEL, k_dtype)]


@pytest.mark.parametrize("call", [direct, as_term], ids=["direct", "term"])
@pytest.mark.parametrize("dtypes", [("float32", "float32"), ("bfloat16", "float32")],
                         ids=["float32", "mixed_bfloat16"])
def test_no_more_matmul_flops_than_the_naive_head(call, dtypes, monkeypatch):
    xs = inputs(*dtypes)
    baseline = matmul_flops(naive, xs, monkeypatch)
    assert baseline == 3 * 2 * N * H * V  # logits, dh, dW: the count sees every matmul
    assert matmul_flops(call, xs, monkeypatch) <= 1.00 * baseline


def test_16bit_weights_within_cut_cross_entropy_flops(monkeypatch):
    xs = inputs("bfloat16", "bfloat16")
    baseline = matmul_flops(naive, xs, monkeypatch)
    assert baseline == 3 * 2 * N * H * V
    assert matmul_flops(direct, xs, monkeypatch) <= 1.34 * baseline


def test_term_value_and_gradients_equal_the_objectives_own_reduction():
    """The self-reducing Term (sample weights and normaliser handed to the fused loss) gives the
    value and gradients of the Objective reducing the per-token losses itself, with one matmul
    less: the per-token path recomputes the logits in its backward pass."""
    from losskit.gradients import value_and_grad

    xs = inputs("float32", "float32")
    got = value_and_grad(as_term, *xs)
    want = value_and_grad(per_token_term, *xs)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_the_count_sees_the_per_token_schedules_fourth_matmul(monkeypatch):
    xs = inputs("float32", "float32")
    assert matmul_flops(per_token_term, xs, monkeypatch) == 4 * 2 * N * H * V

"""TensorFlow's own paths of fused_linear_cross_entropy: the in-place schedule under XLA, rows
updated in place outside it, and the separate dh pass of 16-bit hidden states, each equal to the
portable computation."""

import keras
import numpy as np
import pytest
from keras import ops

from losskit import backend
from losskit.gradients import value_and_grad
from losskit.losses import _fused_head, fused
from losskit.losses.fused import fused_linear_cross_entropy

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's execution modes"
)

IGNORE = -100


def problem(n, hidden_dim, vocab, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, hidden_dim)).astype("float32")
    weight = (rng.normal(size=(vocab, hidden_dim)) / np.sqrt(hidden_dim)).astype("float32")
    bias = rng.normal(size=(vocab,)).astype("float32")
    labels = rng.integers(0, vocab, size=n).astype("int32")
    labels[::5] = IGNORE
    return hidden, weight, bias, labels


@pytest.fixture(autouse=True)
def several_blocks(monkeypatch):
    monkeypatch.setattr(_fused_head, "VOCAB_BLOCK_OVERRIDE", 8)


def run(mode, loss, inputs):
    """Value and gradients of `loss(*inputs)`: eager, or the loss in a `tf.function`."""
    import tensorflow as tf

    fn = loss if mode == "eager" else tf.function(loss, jit_compile=mode == "xla")
    value, grads = value_and_grad(fn, *inputs)
    return ops.convert_to_numpy(value), [ops.convert_to_numpy(g) for g in grads]


def portable(monkeypatch, loss, inputs):
    with monkeypatch.context() as m:
        m.setattr(backend, "updates_in_place", lambda: False)
        return run("eager", loss, inputs)


@pytest.mark.parametrize("layout", ["weight", "kernel"])
def test_xla_takes_the_in_place_schedule_and_matches_the_portable_one(monkeypatch, layout):
    hidden, weight, bias, labels = problem(37, 16, 29)
    calls = []
    in_place = fused._scalar_in_place
    monkeypatch.setattr(fused, "_scalar_in_place",
                        lambda *a, **k: calls.append(1) or in_place(*a, **k))

    def loss(h, w, b):
        head = {layout: w if layout == "weight" else ops.transpose(w)}
        return fused_linear_cross_entropy(h, labels=labels, bias=b, chunk_size=8, z_loss=1e-3,
                                          label_smoothing=0.1, **head)

    want, want_grads = portable(monkeypatch, loss, (hidden, weight, bias))
    assert not calls
    for mode in ("eager", "graph"):  # no XLA: the vocabulary-tile schedule
        run(mode, loss, (hidden, weight, bias))
        assert not calls
    got, got_grads = run("xla", loss, (hidden, weight, bias))
    assert calls, "XLA should take the in-place schedule"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_repeated_calls_leave_inputs_and_earlier_results_alone(monkeypatch, mode, reduction):
    """Rows are written in place into buffers the loss allocates: a second call with other inputs
    (same compiled function) gives its own result, and no input is modified."""
    import tensorflow as tf

    def loss(h, w, b, y):
        return fused_linear_cross_entropy(h, w, y, bias=b, chunk_size=8, reduction=reduction)

    fn = loss if mode == "eager" else tf.function(loss, jit_compile=mode == "xla")
    results = []
    for seed in (0, 1):
        hidden, weight, bias, labels = problem(21, 8, 19, seed=seed)
        copies = [x.copy() for x in (hidden, weight, bias, labels)]
        y = ops.convert_to_tensor(labels)
        inputs = [ops.convert_to_tensor(x) for x in (hidden, weight, bias)]
        got = run("eager", lambda h, w, b, y=y: fn(h, w, b, y), inputs)
        want = portable(monkeypatch, lambda h, w, b, y=y: loss(h, w, b, y), inputs)
        results.append((got, want))
        for x, c in zip((*inputs, y), copies):
            np.testing.assert_array_equal(ops.convert_to_numpy(x), c)
    for (got, want) in results:
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        for g, w in zip(got[1], want[1]):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("layout", ["weight", "kernel"])
def test_16bit_hidden_gradient_in_its_own_pass(mode, layout):
    """bfloat16 inputs: dh comes from its own pass over (smaller) token chunks; every mode gives
    the float32 gradients of the same rounded inputs, rounded to bfloat16."""
    hidden, weight, bias, labels = problem(45, 16, 29)
    inputs16 = [ops.cast(x, "bfloat16") for x in (hidden, weight, bias)]
    inputs32 = [ops.cast(x, "float32") for x in inputs16]

    def loss(h, w, b):
        head = {layout: w if layout == "weight" else ops.transpose(w)}
        return fused_linear_cross_entropy(h, labels=labels, bias=b, chunk_size=16, **head)

    got, got_grads = run(mode, loss, inputs16)
    want, want_grads = run("eager", loss, inputs32)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == inputs16[0].dtype
        np.testing.assert_allclose(g.astype("float32"), w, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("vocab", [28, 29, 32])
def test_kernel_columns_written_in_place_equal_the_weight_rows(mode, vocab):
    """Outside XLA the kernel's column blocks are written in place through a reshaped view (rows
    of gcd(V, block) elements: 4, 1 and 8 here, the last block shifted back): same gradients as
    the weight layout."""
    hidden, weight, bias, labels = problem(21, 8, vocab)

    def loss(layout):
        def fn(h, w, b):
            head = {layout: w if layout == "weight" else ops.transpose(w)}
            return fused_linear_cross_entropy(h, labels=labels, bias=b, chunk_size=8,
                                              reduction="none", **head)
        return fn

    got, got_grads = run(mode, loss("kernel"), (hidden, weight, bias))
    want, want_grads = run(mode, loss("weight"), (hidden, weight, bias))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)

"""fused_linear_cross_entropy equals the naive head + cross-entropy, in value and gradients."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit.gradients import value_and_grad
from losskit.losses.fused import fused_linear_cross_entropy

IGNORE = -100


def naive(hidden, weight, labels, bias=None, z_loss=0.0, label_smoothing=0.0, reduction="mean"):
    """The materialised computation: Keras's categorical cross-entropy on the full logits."""
    vocab = weight.shape[0]
    logits = ops.matmul(hidden, ops.transpose(weight))
    if bias is not None:
        logits = logits + bias
    labels = np.asarray(labels)
    valid = labels != IGNORE
    onehot = ops.one_hot(np.where(valid, labels, 0), vocab, dtype=logits.dtype)
    ce = keras.losses.categorical_crossentropy(
        onehot, logits, from_logits=True, label_smoothing=label_smoothing
    )
    ce = ce + z_loss * ops.square(ops.logsumexp(logits, axis=-1))
    ce = ce * valid.astype("float32")
    if reduction == "none":
        return ce
    total = ops.sum(ce)
    return total / max(valid.sum(), 1) if reduction == "mean" else total


def problem(n, hidden_dim, vocab, ignore_every=0, seed=0, leading=None):
    rng = np.random.default_rng(seed)
    shape = leading or (n,)
    hidden = rng.normal(size=(*shape, hidden_dim)).astype("float32")
    weight = (rng.normal(size=(vocab, hidden_dim)) / np.sqrt(hidden_dim)).astype("float32")
    bias = rng.normal(size=(vocab,)).astype("float32")
    labels = rng.integers(0, vocab, size=shape).astype("int32")
    if ignore_every:
        labels.reshape(-1)[::ignore_every] = IGNORE
    return hidden, weight, bias, labels


def assert_same(fused_fn, naive_fn, inputs, upstream=None):
    """Values and gradients (w.r.t. every input) agree to 1e-5 in float32."""
    if upstream is not None:  # a non-uniform upstream gradient for per-token outputs
        fused_fn = (lambda f: lambda *a: f(*a) * upstream)(fused_fn)
        naive_fn = (lambda f: lambda *a: f(*a) * upstream)(naive_fn)
    got, got_grads = value_and_grad(fused_fn, *inputs)
    want, want_grads = value_and_grad(naive_fn, *inputs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [{}, {"z_loss": 1e-2}, {"label_smoothing": 0.1}, {"z_loss": 1e-3, "label_smoothing": 0.2}],
)
def test_matches_naive_with_bias_and_ignore_index(reduction, options):
    # N = 37 and V = 29 are not multiples of the chunk of 8 tokens.
    hidden, weight, bias, labels = problem(37, 16, 29, ignore_every=5)
    upstream = np.random.default_rng(1).uniform(0.5, 1.5, 37).astype("float32")
    assert_same(
        lambda h, w, b: fused_linear_cross_entropy(
            h, w, labels, bias=b, chunk_size=8, reduction=reduction, **options
        ),
        lambda h, w, b: naive(h, w, labels, bias=b, reduction=reduction, **options),
        (hidden, weight, bias),
        upstream=upstream if reduction == "none" else None,
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("n,chunk_size", [(5, 16), (16, 16), (17, 4), (64, None)])
def test_without_bias_and_odd_chunking(reduction, n, chunk_size):
    hidden, weight, _, labels = problem(n, 8, 13, ignore_every=3)
    assert_same(
        lambda h, w: fused_linear_cross_entropy(
            h, w, labels, chunk_size=chunk_size, reduction=reduction
        ),
        lambda h, w: naive(h, w, labels, reduction=reduction),
        (hidden, weight),
    )


def test_sequence_shaped_inputs_keep_their_shape():
    hidden, weight, bias, labels = problem(0, 8, 11, ignore_every=4, leading=(3, 7))
    per_token = fused_linear_cross_entropy(hidden, weight, labels, bias=bias, reduction="none")
    assert tuple(per_token.shape) == (3, 7)
    flat = naive(hidden.reshape(21, 8), weight, labels.reshape(21), bias=bias, reduction="none")
    np.testing.assert_allclose(ops.convert_to_numpy(per_token).reshape(21), flat, atol=1e-5)


def test_all_tokens_ignored_gives_zero_loss_and_gradients():
    hidden, weight, bias, labels = problem(10, 4, 6)
    labels[:] = IGNORE
    value, grads = value_and_grad(
        lambda h, w, b: fused_linear_cross_entropy(h, w, labels, bias=b, chunk_size=4),
        hidden, weight, bias,
    )
    assert float(value) == 0.0
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_equals_eager(reduction):
    hidden, weight, bias, labels = problem(23, 8, 19, ignore_every=4)
    fn = lambda h, w, b, y: fused_linear_cross_entropy(
        h, w, y, bias=b, chunk_size=8, z_loss=1e-3, reduction=reduction
    )
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(fn, jit_compile=True)
    elif keras.backend.backend() == "jax":
        import jax

        compiled = jax.jit(fn)
    else:
        pytest.skip("no compiler for this backend")
    eager, eager_grads = value_and_grad(lambda *a: fn(*a, labels), hidden, weight, bias)
    jit, jit_grads = value_and_grad(lambda *a: compiled(*a, labels), hidden, weight, bias)
    np.testing.assert_allclose(jit, eager, rtol=1e-6, atol=1e-6)
    for g, e in zip(jit_grads, eager_grads):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_unknown_batch_size_under_tf_function():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("dynamic shapes are a TensorFlow graph feature")
    import tensorflow as tf

    hidden, weight, bias, labels = problem(21, 8, 9, ignore_every=4)
    fn = tf.function(
        lambda h, y: fused_linear_cross_entropy(h, weight, y, bias=bias, chunk_size=8),
        input_signature=[tf.TensorSpec([None, 8]), tf.TensorSpec([None], tf.int32)],
    )
    np.testing.assert_allclose(fn(hidden, labels), naive(hidden, weight, labels, bias), atol=1e-5)


def test_check_gradients_float64():
    hidden, weight, bias, labels = problem(6, 3, 5, ignore_every=4)
    report = losskit.check_gradients(
        lambda h, w, b: fused_linear_cross_entropy(
            h, w, labels, bias=b, chunk_size=4, z_loss=0.1, label_smoothing=0.1
        ),
        hidden, weight, bias,
    )
    assert report.ok, report


def test_trains_a_dense_head_below_it():
    """Gradients flow through the hand-written rule into the layer that produced `hidden`."""
    hidden, weight, bias, labels = problem(12, 6, 7, ignore_every=5)
    dense = keras.layers.Dense(6)
    dense.build((None, 6))
    kernel = dense.kernel.numpy() if hasattr(dense.kernel, "numpy") else dense.kernel
    kernel = ops.convert_to_numpy(kernel)
    assert_same(
        lambda k: fused_linear_cross_entropy(ops.matmul(hidden, k), weight, labels, chunk_size=5),
        lambda k: naive(ops.matmul(hidden, k), weight, labels),
        (kernel,),
    )


def test_rejects_float_labels_and_unknown_reduction():
    hidden, weight, _, labels = problem(4, 3, 5)
    with pytest.raises(TypeError, match="integer"):
        fused_linear_cross_entropy(hidden, weight, labels.astype("float32"))
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(hidden, weight, labels, reduction="max")


def test_registered_for_serialization():
    name = keras.saving.get_registered_name(fused_linear_cross_entropy)
    assert name == "losskit.losses>fused_linear_cross_entropy"

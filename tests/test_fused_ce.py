"""fused_linear_cross_entropy equals the naive head + cross-entropy, in value and gradients, on
every backend and execution mode, and stays within its memory bound when compiled."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import backend
from losskit.gradients import value_and_grad
from losskit.losses import _fused_head
from losskit.losses.fused import fused_linear_cross_entropy

IGNORE = -100
BACKEND = keras.backend.backend()


def naive(hidden, weight, labels, bias=None, z_loss=0.0, label_smoothing=0.0, reduction="mean",
          logit_soft_cap=None):
    """The materialised computation: Keras's cross-entropy on the full logits (soft-capped as
    Gemma-2's head: `cap * tanh(z / cap)`)."""
    logits = ops.matmul(hidden, ops.transpose(weight))
    if bias is not None:
        logits = logits + bias
    if logit_soft_cap is not None:
        logits = logit_soft_cap * ops.tanh(logits / logit_soft_cap)
    labels = ops.convert_to_numpy(labels)
    valid = labels != IGNORE
    safe = ops.convert_to_tensor(np.where(valid, labels, 0).astype("int32"))
    if label_smoothing:
        onehot = ops.one_hot(safe, weight.shape[0], dtype=logits.dtype)
        ce = keras.losses.categorical_crossentropy(
            onehot, logits, from_logits=True, label_smoothing=label_smoothing
        )
    else:
        ce = keras.losses.sparse_categorical_crossentropy(safe, logits, from_logits=True)
    ce = ce + z_loss * ops.square(ops.logsumexp(logits, axis=-1))
    ce = ops.where(ops.convert_to_tensor(valid), ce, ops.zeros_like(ce))
    if reduction == "none":
        return ce
    total = ops.sum(ce)
    return total / max(int(valid.sum()), 1) if reduction == "mean" else total


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


def assert_same(fused_fn, naive_fn, inputs, upstream=None, tol=1e-5):
    """Values and gradients (w.r.t. every input) agree to 1e-5 in float32."""
    if upstream is not None:  # a non-uniform upstream gradient for per-token outputs
        up = ops.convert_to_tensor(upstream)
        fused_fn = (lambda f: lambda *a: f(*a) * up)(fused_fn)
        naive_fn = (lambda f: lambda *a: f(*a) * up)(naive_fn)
    got, got_grads = value_and_grad(fused_fn, *inputs)
    want, want_grads = value_and_grad(naive_fn, *inputs)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.fixture(params=["native", "portable"])
def schedule(request, monkeypatch):
    """Every test runs the backend's own schedule and the portable vocabulary-block schedule
    (which TensorFlow always uses), with several vocabulary blocks even at tiny sizes."""
    if request.param == "portable":
        monkeypatch.setattr(backend, "updates_in_place", lambda: False)
    monkeypatch.setattr(_fused_head, "VOCAB_BLOCK_OVERRIDE", 8)
    return request.param


def compile_modes():
    if BACKEND == "tensorflow":
        return ["eager", "tf_function", "tf_xla"]
    if BACKEND == "jax":
        return ["eager", "jit"]
    return ["eager"]


def compiled(fn, mode):
    if mode == "eager":
        return fn
    if mode == "jit":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=mode == "tf_xla")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [{}, {"z_loss": 1e-2}, {"label_smoothing": 0.1}, {"z_loss": 1e-3, "label_smoothing": 0.2}],
)
def test_matches_naive_with_bias_and_ignore_index(reduction, options, schedule):
    # N = 37 and V = 29 are not multiples of the chunk of 8 tokens or the block of 8 columns.
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


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options", [{}, {"z_loss": 1e-2, "label_smoothing": 0.1}], ids=["plain", "zloss_smoothing"]
)
def test_logit_soft_cap_matches_the_naive_capped_head(reduction, options, schedule):
    # Logits up to ~8 against a cap of 2: deep in tanh's curved range, so a missed cap or a
    # missed 1 - tanh^2 factor is far outside the tolerance.
    hidden, weight, bias, labels = problem(37, 16, 29, ignore_every=5)
    weight = weight * 3.0
    upstream = np.random.default_rng(1).uniform(0.5, 1.5, 37).astype("float32")
    assert_same(
        lambda h, w, b: fused_linear_cross_entropy(
            h, w, labels, bias=b, chunk_size=8, reduction=reduction, logit_soft_cap=2.0,
            **options,
        ),
        lambda h, w, b: naive(h, w, labels, bias=b, reduction=reduction, logit_soft_cap=2.0,
                              **options),
        (hidden, weight, bias),
        upstream=upstream if reduction == "none" else None,
    )
    plain = fused_linear_cross_entropy(hidden, weight, labels, bias=bias, reduction=reduction)
    capped = fused_linear_cross_entropy(hidden, weight, labels, bias=bias, reduction=reduction,
                                        logit_soft_cap=2.0)
    assert not np.allclose(ops.convert_to_numpy(plain), ops.convert_to_numpy(capped))


@pytest.mark.parametrize("mode", compile_modes())
def test_logit_soft_cap_in_every_execution_mode(mode, schedule):
    hidden, weight, bias, labels = problem(23, 8, 19, ignore_every=4)
    kernel = np.ascontiguousarray(weight.T * 4.0)
    assert_same(
        compiled(lambda h, k, b: fused_linear_cross_entropy(
            h, labels=labels, kernel=k, bias=b, chunk_size=8, logit_soft_cap=1.5), mode),
        lambda h, k, b: naive(h, ops.transpose(k), labels, bias=b, logit_soft_cap=1.5),
        (hidden, kernel, bias),
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_logit_soft_cap_with_16bit_inputs(dtype, schedule):
    """bfloat16 inputs: the capped loss equals the float32 capped head on the rounded inputs."""
    hidden, weight, bias, labels = problem(40, 16, 50, ignore_every=5)
    inputs = [ops.cast(x, dtype) for x in (hidden, weight * 3.0, bias)]
    value, grads = value_and_grad(
        lambda h, w, b: fused_linear_cross_entropy(h, w, labels, bias=b, logit_soft_cap=3.0),
        *inputs,
    )
    rounded = [ops.convert_to_numpy(ops.cast(x, "float32")) for x in inputs]
    want, want_grads = value_and_grad(
        lambda h, w, b: naive(h, w, labels, bias=b, logit_soft_cap=3.0), *rounded
    )
    np.testing.assert_allclose(value, want, rtol=1e-3)
    for g, w in zip(grads, want_grads):
        assert str(g.dtype) == dtype
        np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(g, "float32")), w,
                                   atol=2e-2 if dtype == "bfloat16" else 1e-5, rtol=2e-2)


def test_logit_soft_cap_refuses_a_bad_cap():
    hidden, weight, _, labels = problem(5, 4, 7)
    for cap in (0.0, -1.0, "30", True):
        with pytest.raises(ValueError, match="logit_soft_cap must be None or a number > 0"):
            fused_linear_cross_entropy(hidden, weight, labels, logit_soft_cap=cap)


@pytest.mark.parametrize("mode", compile_modes())
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("layout", ["weight", "kernel"])
def test_every_execution_mode(mode, reduction, layout, schedule):
    hidden, weight, bias, labels = problem(23, 8, 19, ignore_every=4)
    def fused(h, w, b, y):
        head = {"weight": w} if layout == "weight" else {"kernel": ops.transpose(w)}
        return fused_linear_cross_entropy(h, labels=y, bias=b, chunk_size=8, z_loss=1e-3,
                                          reduction=reduction, **head)

    fn = compiled(fused, mode)
    y = ops.convert_to_tensor(labels)
    assert_same(
        lambda h, w, b: fn(h, w, b, y),
        lambda h, w, b: naive(h, w, labels, bias=b, z_loss=1e-3, reduction=reduction),
        (hidden, weight, bias),
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("n,chunk_size", [(5, 16), (16, 16), (17, 4), (64, None)])
def test_without_bias_and_odd_chunking(reduction, n, chunk_size, schedule):
    hidden, weight, _, labels = problem(n, 8, 13, ignore_every=3)
    assert_same(
        lambda h, w: fused_linear_cross_entropy(
            h, w, labels, chunk_size=chunk_size, reduction=reduction
        ),
        lambda h, w: naive(h, w, labels, reduction=reduction),
        (hidden, weight),
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_kernel_equals_weight(reduction, schedule):
    """A Dense layer's `(H, V)` kernel gives what its transpose as `weight=` gives."""
    hidden, weight, bias, labels = problem(21, 12, 26, ignore_every=6)
    kernel = np.ascontiguousarray(weight.T)
    by_weight, (gh_w, gw, gb_w) = value_and_grad(
        lambda h, w, b: fused_linear_cross_entropy(h, w, labels, b, reduction=reduction),
        hidden, weight, bias,
    )
    by_kernel, (gh_k, gk, gb_k) = value_and_grad(
        lambda h, k, b: fused_linear_cross_entropy(
            h, labels=labels, bias=b, kernel=k, reduction=reduction
        ),
        hidden, kernel, bias,
    )
    np.testing.assert_allclose(by_kernel, by_weight, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gk, gw.T, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gh_k, gh_w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gb_k, gb_w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_inputs_accumulate_in_float32(dtype, schedule):
    """The loss is within 2e-3 relative of the float64 computation on the same rounded inputs,
    and gradients come back in the inputs' dtype."""
    hidden, weight, bias, labels = problem(96, 64, 300, ignore_every=7)
    h16, w16, b16 = (ops.cast(x, dtype) for x in (hidden, weight, bias))
    rounded = [ops.convert_to_numpy(ops.cast(x, "float32")).astype("float64")
               for x in (h16, w16, b16)]
    h64, w64, b64 = rounded
    logits = h64 @ w64.T + b64
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    valid = labels != IGNORE
    want = (lse - logits[np.arange(96), np.where(valid, labels, 0)])[valid].mean()
    value, grads = value_and_grad(
        lambda h, w, b: fused_linear_cross_entropy(h, w, labels, bias=b), h16, w16, b16
    )
    assert abs(float(value) - want) <= 2e-3 * abs(want)
    for g in grads:
        assert str(g.dtype) == dtype
    # The gradient w.r.t. the weight sums 96 tokens in float32: close to the float64 one.
    p = np.exp(logits - lse[:, None]) * valid[:, None] / valid.sum()
    p[np.arange(96)[valid], labels[valid]] -= 1.0 / valid.sum()
    np.testing.assert_allclose(grads[1].astype("float64"), p.T @ h64, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_dense_head_under_a_mixed_precision_policy(policy, schedule):
    """Under a mixed policy a Dense head's output is 16-bit and its kernel and bias float32: the
    loss equals the float32 computation on the rounded hidden states, and each gradient comes
    back in its input's dtype."""
    hidden, weight, bias, labels = problem(40, 16, 50, ignore_every=5)
    keras.config.set_dtype_policy(policy)  # reset after each test (conftest)
    dense = keras.layers.Dense(50)
    dense.build((None, 16))
    dense.kernel.assign(np.ascontiguousarray(weight.T))
    dense.bias.assign(bias)
    dtype = dense.compute_dtype
    h16 = ops.cast(hidden, dtype)
    value, grads = value_and_grad(
        lambda h, k, b: fused_linear_cross_entropy(h, labels=labels, kernel=k, bias=b),
        h16, dense.kernel.value, dense.bias.value,
    )
    assert [str(g.dtype) for g in grads] == [dtype, "float32", "float32"]
    keras.config.set_dtype_policy("float32")
    rounded = ops.convert_to_numpy(ops.cast(h16, "float32"))
    want, want_grads = value_and_grad(lambda h, w, b: naive(h, w, labels, bias=b),
                                      rounded, weight, bias)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grads[1], want_grads[1].T, atol=1e-5)
    np.testing.assert_allclose(grads[2], want_grads[2], atol=1e-5)
    # dh is rounded to the 16-bit compute dtype on the way out.
    np.testing.assert_allclose(grads[0].astype("float32"), want_grads[0], atol=1e-2, rtol=1e-2)


def test_masked_vocabulary_columns(schedule):
    """A -inf bias masks columns: finite values and gradients equal to the naive loss on the
    unmasked columns, zero weight gradient on masked ones; a masked target gives +inf."""
    hidden, weight, bias, labels = problem(19, 8, 24, ignore_every=5)
    masked = np.zeros(24, bool)
    masked[[1, 7, 8, 9, 10, 11, 12, 13, 14, 15, 23]] = True  # all of one 8-column block
    labels[np.isin(labels, np.where(masked)[0])] = 0
    bias_inf = np.where(masked, -np.inf, bias).astype("float32")
    keep = ~masked
    value, (gh, gw, gb) = value_and_grad(
        lambda h, w, b: fused_linear_cross_entropy(h, w, labels, bias=b), hidden, weight, bias_inf
    )
    remap = np.cumsum(keep) - 1
    small_labels = np.where(labels == IGNORE, IGNORE, remap[np.maximum(labels, 0)])
    want, (wh, ww, wb) = value_and_grad(
        lambda h, w, b: naive(h, w, small_labels.astype("int32"), bias=b),
        hidden, weight[keep], bias[keep],
    )
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(gh, wh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw[keep], ww, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gw[masked], 0.0)
    np.testing.assert_array_equal(gb[masked], 0.0)
    labels[3] = 1  # a masked target
    per_token = fused_linear_cross_entropy(hidden, weight, labels, bias_inf, reduction="none")
    per_token = ops.convert_to_numpy(per_token)
    assert per_token[3] == np.inf and np.isfinite(np.delete(per_token, 3)).all()


def test_sequence_shaped_inputs_keep_their_shape():
    hidden, weight, bias, labels = problem(0, 8, 11, ignore_every=4, leading=(3, 7))
    per_token = fused_linear_cross_entropy(hidden, weight, labels, bias=bias, reduction="none")
    assert tuple(per_token.shape) == (3, 7)
    flat = naive(hidden.reshape(21, 8), weight, labels.reshape(21), bias=bias, reduction="none")
    np.testing.assert_allclose(
        ops.convert_to_numpy(per_token).reshape(21), ops.convert_to_numpy(flat), atol=1e-5
    )
    assert ops.convert_to_numpy(per_token).reshape(21)[0] == 0.0  # an ignored token


def test_all_tokens_ignored_gives_zero_loss_and_gradients(schedule):
    hidden, weight, bias, labels = problem(10, 4, 6)
    labels[:] = IGNORE
    value, grads = value_and_grad(
        lambda h, w, b: fused_linear_cross_entropy(h, w, labels, bias=b, chunk_size=4),
        hidden, weight, bias,
    )
    assert float(value) == 0.0
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


def test_unknown_batch_size_under_tf_function():
    if BACKEND != "tensorflow":
        pytest.skip("dynamic shapes are a TensorFlow graph feature")
    import tensorflow as tf

    hidden, weight, bias, labels = problem(21, 8, 9, ignore_every=4)
    fn = tf.function(
        lambda h, y: fused_linear_cross_entropy(h, weight, y, bias=bias, chunk_size=8),
        input_signature=[tf.TensorSpec([None, 8]), tf.TensorSpec([None], tf.int32)],
    )
    want = ops.convert_to_numpy(naive(hidden, weight, labels, bias))
    np.testing.assert_allclose(fn(hidden, labels), want, atol=1e-5)


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
    kernel = ops.convert_to_numpy(dense.kernel)
    assert_same(
        lambda k: fused_linear_cross_entropy(ops.matmul(hidden, k), weight, labels, chunk_size=5),
        lambda k: naive(ops.matmul(hidden, k), weight, labels),
        (kernel,),
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_temporaries_within_the_gradients_size(dtype, reduction):
    """XLA's compiled `value_and_grad` allocates no more temporary memory than the gradients it
    returns (the naive head needs ~10x that for its N x V logits)."""
    if BACKEND != "jax":
        pytest.skip("XLA's static memory analysis is read through jax.jit")
    import jax
    import jax.numpy as jnp

    n, hdim, vocab = 1024, 256, 8192
    args = (jnp.zeros((n, hdim), dtype), jnp.zeros((vocab, hdim), dtype),
            jnp.zeros((vocab,), dtype), jnp.zeros((n,), "int32"))

    def loss(h, w, b, y):
        return ops.sum(fused_linear_cross_entropy(h, w, y, bias=b, reduction=reduction))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    memory = step.lower(*args).compile().memory_analysis()
    grad_bytes = sum(a.size * a.dtype.itemsize for a in args[:3])
    assert memory.temp_size_in_bytes <= grad_bytes
    logits_bytes = n * vocab * 4
    assert memory.temp_size_in_bytes < logits_bytes / 8
    if dtype == "float32" and reduction == "mean":
        # The in-place schedule: two chunks of logits (the logits and their gradient), each
        # about as large as `hidden`; issue 12's bound, peak <= 1.25x the gradients, needs
        # the temporaries within a quarter of them.
        assert memory.temp_size_in_bytes <= 0.25 * grad_bytes


def test_in_place_schedule_holds_one_chunk_of_logits():
    """Without a bias, `dlogits` overwrites the chunk's logits and the weight-gradient blocks read
    it in place: XLA's temporaries are one chunk of logits. (With `(chunk, V)` chunks it kept a
    transposed copy of `dlogits` for the blocks: two chunks.)"""
    if BACKEND != "jax":
        pytest.skip("XLA's static memory analysis is read through jax.jit")
    import jax
    import jax.numpy as jnp

    from losskit.losses import _fused_head

    n, hdim, vocab = 1024, 256, 8192
    args = (jnp.zeros((n, hdim), "float32"), jnp.zeros((vocab, hdim), "float32"),
            jnp.zeros((n,), "int32"))
    step = jax.jit(jax.value_and_grad(
        lambda h, w, y: fused_linear_cross_entropy(h, w, y), argnums=(0, 1)))
    temp = step.lower(*args).compile().memory_analysis().temp_size_in_bytes
    chunk_logits_bytes = _fused_head.token_chunk(n, hdim, vocab, None) * vocab * 4
    assert chunk_logits_bytes <= temp < 1.5 * chunk_logits_bytes


def test_clear_errors():
    hidden, weight, bias, labels = problem(4, 3, 5)
    name = "fused_linear_cross_entropy"
    with pytest.raises(TypeError, match=f"{name}.*integer"):
        fused_linear_cross_entropy(hidden, weight, labels.astype("float32"))
    with pytest.raises(ValueError, match=f"{name}.*reduction"):
        fused_linear_cross_entropy(hidden, weight, labels, reduction="max")
    with pytest.raises(ValueError, match=f"{name}.*exactly one.*both"):
        fused_linear_cross_entropy(hidden, weight, labels, kernel=weight.T)
    with pytest.raises(ValueError, match=f"{name}.*exactly one.*neither"):
        fused_linear_cross_entropy(hidden, labels=labels)
    with pytest.raises(ValueError, match=f"{name}.*H = 3.*\\(H, V\\) kernel"):
        fused_linear_cross_entropy(hidden, labels=labels, kernel=weight)  # not transposed
    with pytest.raises(ValueError, match=f"{name}.*labels of shape"):
        fused_linear_cross_entropy(hidden, weight, labels[:3])
    with pytest.raises(ValueError, match=f"{name}.*bias"):
        fused_linear_cross_entropy(hidden, weight, labels, bias=bias[:4])
    with pytest.raises(TypeError, match=f"{name}.*floating"):
        fused_linear_cross_entropy(hidden.astype("int32"), weight, labels)
    with pytest.raises(ValueError, match=f"{name}.*labels are required"):
        fused_linear_cross_entropy(hidden, weight)


def test_registered_for_serialization():
    name = keras.saving.get_registered_name(fused_linear_cross_entropy)
    assert name == "losskit.losses>fused_linear_cross_entropy"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_is_zero_on_every_backend(reduction, chunk_size=None):
    """No tokens: the naive head's value (0, or no values) and zero weight gradients, for both
    fused losses (JAX traced its chunk loop's body on a chunk of nothing; the default chunk of
    no tokens is 1 token)."""
    from losskit.losses.fused_distillation import fused_linear_distillation

    rng = np.random.default_rng(0)
    h = np.zeros((0, 4), "float32")
    w, t = rng.normal(size=(2, 7, 4)).astype("float32")
    y = np.zeros((0,), "int32")
    want = ops.convert_to_numpy(naive(ops.convert_to_tensor(h), w, y, reduction=reduction))
    losses = {
        "ce": lambda h, w: fused_linear_cross_entropy(h, w, y, chunk_size=chunk_size,
                                                      reduction=reduction),  # fmt: skip
        "distillation": lambda h, w: fused_linear_distillation(
            h, w, h, t, y, chunk_size=chunk_size, reduction=reduction
        ),
    }
    for name, fn in losses.items():
        value, (dh, dw) = value_and_grad(fn, h, w)
        assert value.shape == want.shape, name
        np.testing.assert_array_equal(value, want, err_msg=name)
        assert dh.shape == (0, 4) and np.all(dw == 0), name

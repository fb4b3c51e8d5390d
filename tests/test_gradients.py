"""losskit.custom_gradient (portable, mixes with autodiff, compiled, fit) and check_gradients."""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import BACKEND, only_backend
from keras import ops

import losskit
from losskit.gradients import GradientCheckError, plain_autodiff, value_and_grad


@losskit.custom_gradient
def log1pexp(x):
    def grad_fn(upstream):
        return (upstream * ops.sigmoid(x),)

    return ops.softplus(x), grad_fn


@losskit.custom_gradient
def ignores_upstream(x):
    def grad_fn(upstream):
        return (ops.sigmoid(x),)  # bug: forgets the chain rule

    return ops.softplus(x), grad_fn


@losskit.custom_gradient
def wrong_sign(x):
    def grad_fn(upstream):
        return (-upstream * ops.sigmoid(x),)

    return ops.softplus(x), grad_fn


@losskit.custom_gradient
def head_nll(y, h, kernel, bias):
    """Logistic head: per-sample softplus(z) - y z with z = h @ kernel + bias, analytic gradient."""
    z = ops.squeeze(ops.matmul(h, kernel), -1) + bias[0]
    value = ops.softplus(z) - y * z

    def grad_fn(upstream):
        r = upstream * (ops.sigmoid(z) - y)
        return (
            None,
            r[:, None] * ops.reshape(kernel, (1, -1)),
            ops.matmul(ops.transpose(h), r[:, None]),
            ops.reshape(ops.sum(r), (1,)),
        )

    return value, grad_fn


def _data(n=6, d=3, seed=1):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d)).astype("float32")
    y = (rng.random(n) > 0.5).astype("float32")
    kernel = rng.normal(size=(d, 1)).astype("float32")
    bias = np.array([0.3], "float32")
    return y, h, kernel, bias


def test_custom_value_and_gradient_are_the_rule():
    x = np.linspace(-3, 3, 7).astype("float32")
    value, (g,) = value_and_grad(log1pexp, x)
    np.testing.assert_allclose(value, np.logaddexp(0, x), rtol=1e-6)
    np.testing.assert_allclose(g, 1 / (1 + np.exp(-x)), rtol=1e-6)
    # the rule really is used: a wrong rule changes the gradient, not the value
    value2, (g2,) = value_and_grad(wrong_sign, x)
    np.testing.assert_allclose(value2, value)
    np.testing.assert_allclose(g2, -g, rtol=1e-6)
    assert log1pexp.forward is not None and log1pexp.rule.__name__ == "log1pexp"


def test_plain_autodiff_bypasses_the_rule():
    x = np.linspace(-3, 3, 7).astype("float32")
    with plain_autodiff():
        _, (g,) = value_and_grad(wrong_sign, x)
    np.testing.assert_allclose(g, 1 / (1 + np.exp(-x)), rtol=1e-6)


def test_check_gradients_passes_a_correct_rule():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    report = losskit.check_gradients(log1pexp, x, raise_on_error=True)
    assert report.ok and bool(report)
    (check,) = report.inputs
    assert check.checked and check.autodiff.ok and check.finite_differences.ok
    # float64 everywhere: autodiff agrees to rounding, finite differences to ~1e-9
    assert check.autodiff.max_abs_error < 1e-12
    assert report.max_abs_error[0] < 1e-8


@pytest.mark.parametrize("bad", [ignores_upstream, wrong_sign])
def test_check_gradients_catches_a_wrong_rule(bad):
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    report = losskit.check_gradients(bad, x)
    assert not report.ok
    assert not report.inputs[0].autodiff.ok and not report.inputs[0].finite_differences.ok
    assert report.max_abs_error[0] > 0.1
    with pytest.raises(GradientCheckError, match="MISMATCH"):
        losskit.check_gradients(bad, x, raise_on_error=True)


def test_check_gradients_locates_a_single_wrong_element():
    mask = np.zeros((3, 4), "float32")
    mask[1, 2] = 1.0

    @losskit.custom_gradient
    def off_by_one_element(x):
        def grad_fn(upstream):
            return (upstream * (2 * x + ops.convert_to_tensor(mask, x.dtype)),)

        return x**2, grad_fn

    x = np.random.default_rng(2).normal(size=(3, 4)).astype("float32")
    report = losskit.check_gradients(off_by_one_element, x)
    assert not report.ok
    assert report.worst_index == [(1, 2)]
    comp = report.inputs[0].finite_differences
    # the wrong element is off by exactly upstream weight * 1, with the weight in [0.5, 1.5]
    assert 0.5 - 1e-6 <= comp.max_abs_error <= 1.5 + 1e-6
    assert "(1, 2)" in str(report)


def test_check_gradients_catches_wrong_autodiff_free_function():
    """Plain functions have no rule; finite differences alone still validate them."""

    def f(x):
        return ops.sum(ops.sin(x), axis=-1)

    x = np.random.default_rng(3).normal(size=(2, 3)).astype("float32")
    assert losskit.check_gradients(f, x).ok


def test_labels_declared_none_and_integer_inputs_are_skipped():
    y, h, kernel, bias = _data()
    report = losskit.check_gradients(head_nll, y, h, kernel, bias, raise_on_error=True)
    assert [c.checked for c in report.inputs] == [False, True, True, True]
    assert "None" in report.inputs[0].reason
    assert [c.name for c in report.inputs] == ["y", "h", "kernel", "bias"]

    def with_int_labels(y_int, h, kernel, bias):
        return head_nll(ops.cast(y_int, h.dtype), h, kernel, bias)

    report = losskit.check_gradients(with_int_labels, y.astype("int32"), h, kernel, bias)
    assert report.ok and report.inputs[0].reason == "not floating point"


def test_mixes_with_autodiff_below_the_custom_head():
    """Autodiff tanh layer below an analytic-gradient head: gradients reach the layer's weights."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 2)).astype("float32")
    w1 = rng.normal(size=(2, 3)).astype("float32")
    y, _, kernel, bias = _data(n=5)

    def model_loss(w1, kernel, bias):
        h = ops.tanh(ops.matmul(ops.convert_to_tensor(x, w1.dtype), w1))
        return head_nll(ops.convert_to_tensor(y, w1.dtype), h, kernel, bias)

    report = losskit.check_gradients(model_loss, w1, kernel, bias, raise_on_error=True)
    assert all(c.checked for c in report.inputs)
    _, grads = value_and_grad(model_loss, w1, kernel, bias)
    assert np.abs(grads[0]).max() > 1e-3  # the layer below really gets a gradient


def _compiled_grads(fn, *args):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(*a):
            with tf.GradientTape() as tape:
                tape.watch(a)
                total = tf.reduce_sum(fn(*a))
            return tape.gradient(total, a)

        return [g.numpy() for g in step(*[tf.constant(a) for a in args])]
    import jax

    grad = jax.jit(jax.grad(lambda *a: fn(*a).sum(), argnums=tuple(range(len(args)))))
    return [np.asarray(g) for g in grad(*args)]


@only_backend("tensorflow", "jax")
def test_compiled_gradient_matches_eager():
    y, h, kernel, bias = _data()

    def loss(h, kernel, bias):
        return head_nll(ops.convert_to_tensor(y), h, kernel, bias)

    _, eager = value_and_grad(loss, h, kernel, bias)
    compiled = _compiled_grads(loss, h, kernel, bias)
    for e, c in zip(eager, compiled):
        np.testing.assert_allclose(c, e, rtol=1e-5, atol=1e-6)


class HeadModel(keras.Model):
    """Dense(4) below a logistic head whose loss uses the analytic gradient."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(4, activation="tanh")
        self.head = keras.layers.Dense(1)

    def call(self, x):
        return self.head(self.hidden(x))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        h = self.hidden(x)
        per_sample = head_nll(ops.cast(y, h.dtype), h, self.head.kernel, self.head.bias)
        return ops.mean(per_sample)


def _fit(plain, steps=3):
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("float32")
    model = HeadModel()
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model(x[:1])
    before = [w.numpy() if hasattr(w, "numpy") else np.array(w) for w in model.get_weights()]
    if plain:
        with plain_autodiff():
            hist = model.fit(x, y, batch_size=32, epochs=steps, verbose=0, shuffle=False)
    else:
        hist = model.fit(x, y, batch_size=32, epochs=steps, verbose=0, shuffle=False)
    return before, model.get_weights(), hist.history["loss"]


def test_fit_with_custom_gradient_equals_autodiff_fit():
    before, custom, losses = _fit(plain=False)
    _, plain, plain_losses = _fit(plain=True)
    assert losses[-1] < losses[0]
    # every weight moved, the Dense layer below included
    for b, a in zip(before, custom):
        assert np.abs(a - b).max() > 1e-4
    for a, b in zip(custom, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-5)


def test_keras_variables_as_arguments():
    var = keras.Variable(np.array([0.5, -1.0, 2.0], "float32"))
    value, (g,) = value_and_grad(lambda v: log1pexp(v), var.value)
    np.testing.assert_allclose(g, 1 / (1 + np.exp(-np.array([0.5, -1.0, 2.0]))), rtol=1e-6)
    out = log1pexp(var)  # a Variable is read as a tensor
    np.testing.assert_allclose(ops.convert_to_numpy(out), np.logaddexp(0, [0.5, -1.0, 2.0]), 1e-6)


@only_backend("tensorflow")
def test_tf_variable_read_but_not_passed_is_a_clear_error():
    import tensorflow as tf

    hidden = tf.Variable([1.0, 2.0])

    @losskit.custom_gradient
    def sneaky(x):
        def grad_fn(upstream):
            return (upstream,)

        return x * hidden, grad_fn

    x = tf.constant([1.0, 1.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(sneaky(x))
    with pytest.raises(ValueError, match="not among its arguments"):
        tape.gradient(out, x)


def test_wrong_number_of_gradients_is_a_clear_error():
    @losskit.custom_gradient
    def two_inputs(a, b):
        def grad_fn(upstream):
            return (upstream,)

        return a * b, grad_fn

    with pytest.raises(ValueError, match="1 gradient"):
        value_and_grad(two_inputs, np.ones(2, "float32"), np.ones(2, "float32"))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_backend_smoke():
    code = textwrap.dedent(
        """
        import numpy as np, losskit
        from keras import ops
        from losskit.gradients import value_and_grad

        @losskit.custom_gradient
        def log1pexp(x):
            def grad_fn(upstream):
                return (upstream * ops.sigmoid(x),)
            return ops.softplus(x), grad_fn

        x = np.linspace(-2, 2, 5).astype("float32")
        _, (g,) = value_and_grad(log1pexp, x)
        np.testing.assert_allclose(g, 1 / (1 + np.exp(-x)), rtol=1e-5)
        assert losskit.check_gradients(log1pexp, x).ok
        print("torch ok")
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch ok" in out.stdout


def test_float32_function_is_refused_instead_of_measuring_noise():
    def float32_inside(x):
        return ops.cast(ops.softplus(x), "float32")

    with pytest.raises(ValueError, match="float32"):
        losskit.check_gradients(float32_inside, np.ones(3, "float32"))


@losskit.custom_gradient
def scaled_softplus(x, scale=1.0):
    def grad_fn(upstream):
        return (upstream * scale * ops.sigmoid(x),)  # one entry per tensor input

    return scale * ops.softplus(x), grad_fn


def test_keyword_tensors_and_constant_hyperparameters():
    x = np.linspace(-2, 2, 5).astype("float32")
    value, (g,) = value_and_grad(lambda x: scaled_softplus(x=x, scale=3.0), x)
    np.testing.assert_allclose(value, 3 * np.logaddexp(0, x), rtol=1e-6)
    np.testing.assert_allclose(g, 3 / (1 + np.exp(-x)), rtol=1e-6)
    losskit.check_gradients(lambda x: scaled_softplus(x, 2.0), x, raise_on_error=True)
    # labels routed by name, as objective terms do
    y, h, kernel, bias = _data()
    a = ops.convert_to_numpy(head_nll(y, h, kernel, bias))
    b = ops.convert_to_numpy(head_nll(bias=bias, kernel=kernel, h=h, y=y))
    np.testing.assert_allclose(a, b)


def test_non_finite_gradient_fails_the_check():
    @losskit.custom_gradient
    def nan_rule(x):
        def grad_fn(upstream):
            return (upstream * ops.log(x - x - 1.0),)  # log(-1) = nan

        return ops.softplus(x), grad_fn

    report = losskit.check_gradients(nan_rule, np.ones((2, 2), "float32"))
    assert not report.ok


def asymmetric_squared(y_true, y_pred, alpha=0.3):
    """The issue's loss: Python-float constants times a tensor with the tensor's `*`."""
    e = y_pred - y_true
    return ops.where(e > 0, alpha, 1.0 - alpha) * e**2


def test_check_gradients_python_float_constants_follow_the_input_dtype():
    # TensorFlow refused `float32 constant * float64 tensor` ("cannot compute Mul ... double");
    # the float64 checks now make Python floats float64 as well, on every backend.
    rng = np.random.default_rng(3)
    y = rng.normal(size=(4, 3)).astype("float32")
    p = (y + rng.choice([-1.0, 1.0], size=y.shape) * rng.uniform(0.2, 1.0, size=y.shape)).astype(
        "float32"
    )
    report = losskit.check_gradients(asymmetric_squared, y, p, raise_on_error=True)
    assert [c.checked for c in report.inputs] == [True, True]
    assert max(report.max_abs_error) < 1e-8
    # the training gradient itself, against the closed form 2 w e (w = alpha where e > 0)
    e = p.astype(np.float64) - y
    _, (_, g) = value_and_grad(asymmetric_squared, y, p)
    np.testing.assert_allclose(g, 2 * np.where(e > 0, 0.3, 0.7) * e, rtol=1e-5, atol=1e-6)


def test_check_gradients_leaves_floatx_unchanged_also_after_an_error():
    before = keras.config.floatx()
    seen = []

    def spy(x):
        seen.append(keras.config.floatx())
        return ops.softplus(x)

    losskit.check_gradients(spy, np.ones(2, "float32"), raise_on_error=True)
    assert "float64" in seen and keras.config.floatx() == before

    def fails(x):
        raise RuntimeError("inside the check")

    with pytest.raises(RuntimeError, match="inside the check"):
        losskit.check_gradients(fails, np.ones(2, "float32"))
    assert keras.config.floatx() == before
    with pytest.raises(ValueError, match="float32"):
        losskit.check_gradients(lambda x: ops.cast(x, "float32"), np.ones(2, "float32"))
    assert keras.config.floatx() == before


@pytest.mark.parametrize("shape", [(1,), (2, 3)])
def test_wrong_shape_gradient_names_the_function_input_and_shapes(shape):
    # TensorFlow returned the wrong shape silently, torch summed (2, 3) down to (3,) silently
    # and raised its raw "returned an invalid gradient" for (1,).
    @losskit.custom_gradient
    def bad_shape(x):
        def grad_fn(upstream):
            return (ops.ones(shape, dtype=x.dtype),)

        return ops.softplus(x), grad_fn

    x = np.ones(3, "float32")
    message = rf"'bad_shape'.*shape {re.escape(str(shape))} for input 'x' of shape \(3,\)"
    with pytest.raises(ValueError, match=message):
        value_and_grad(bad_shape, x)

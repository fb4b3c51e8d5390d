"""Gaussian/Poisson/logistic NLLs and the VAE losses: SciPy/NumPy references, gradients (the
analytic logistic gradient included), extreme-input properties."""

import functools

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops
from scipy import stats
from scipy.special import expit

import losskit
from losskit import losses as L
from losskit.gradients import plain_autodiff, value_and_grad


def _np(x):
    return ops.convert_to_numpy(x)


def _rng(seed):
    return np.random.default_rng(seed)


def _grad_ok(fn, *inputs, **kw):
    return losskit.check_gradients(fn, *inputs, raise_on_error=True, **kw)


# -------------------------------------------------------------------------- Gaussian


def _gaussian(seed, shape=(4, 3)):
    r = _rng(seed)
    y, mean = r.normal(size=shape), r.normal(size=shape)
    var = r.uniform(0.2, 2.0, size=shape)
    return y.astype("float32"), mean.astype("float32"), var.astype("float32")


def test_gaussian_nll_matches_scipy():
    y, mean, var = _gaussian(0)
    expected = -stats.norm.logpdf(y, loc=mean, scale=np.sqrt(var.astype(np.float64))).mean(-1)
    np.testing.assert_allclose(_np(L.gaussian_nll(y, mean, var, full=True)), expected, rtol=1e-5)
    # without the constant, as torch.nn.GaussianNLLLoss(full=False)
    np.testing.assert_allclose(
        _np(L.gaussian_nll(y, mean, var)), expected - 0.5 * np.log(2 * np.pi), rtol=1e-5
    )


def test_gaussian_nll_clamps_variance():
    y, mean, _ = _gaussian(1)
    zero = np.zeros_like(y)
    expected = 0.5 * (np.log(1e-3) + (y - mean).astype(np.float64) ** 2 / 1e-3).mean(-1)
    got = _np(L.gaussian_nll(y, mean, zero, eps=1e-3))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_gaussian_nll_class_takes_packed_mean_and_variance():
    y, mean, var = _gaussian(2)
    packed = np.concatenate([mean, var], -1)
    loss = L.GaussianNLL(eps=1e-4, full=True, reduction=None)
    np.testing.assert_allclose(
        _np(loss(y, packed)), _np(L.gaussian_nll(y, mean, var, eps=1e-4, full=True)), rtol=1e-6
    )
    # 1-D targets with a (N, 2) prediction are aligned
    np.testing.assert_allclose(
        _np(loss(y[:, 0], packed[:, [0, 3]])),
        _np(L.gaussian_nll(y[:, :1], mean[:, :1], var[:, :1], eps=1e-4, full=True)),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="pack 2"):
        loss(y, mean)


# -------------------------------------------------------------------------- Poisson


def test_poisson_nll_matches_keras_and_scipy():
    r = _rng(3)
    counts = r.poisson(3.0, size=(4, 3)).astype("float32")
    rate = r.uniform(0.5, 5.0, size=(4, 3)).astype("float32")
    np.testing.assert_allclose(
        _np(L.poisson_nll(counts, rate)), _np(keras.losses.poisson(counts, rate)), rtol=1e-5
    )
    log_rate = np.log(rate)
    expected = -stats.poisson.logpmf(counts, rate.astype(np.float64)).mean(-1)
    np.testing.assert_allclose(
        _np(L.poisson_nll(counts, log_rate, log_input=True, full=True)), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        _np(L.poisson_nll(counts, rate, full=True)), expected, rtol=1e-5, atol=1e-5
    )


# -------------------------------------------------------------------------- logistic


def _head(seed, n=6, d=4, kernel_shape=None, bias_shape=(1,)):
    r = _rng(seed)
    h = r.normal(size=(n, d)).astype("float32")
    y = (r.random(n) > 0.5).astype("float32")
    kernel = r.normal(size=kernel_shape or (d, 1)).astype("float32")
    bias = r.normal(size=bias_shape).astype("float32")
    return y, h, kernel, bias


def _head_reference(y, h, kernel, bias):
    z = h.astype(np.float64) @ kernel.reshape(-1) + bias.reshape(())
    return np.logaddexp(0, z) - y * z, expit(z) - y


@pytest.mark.parametrize("kernel_shape, bias_shape", [((4, 1), (1,)), ((4,), ())])
def test_logistic_nll_value_and_analytic_gradient(kernel_shape, bias_shape):
    y, h, kernel, bias = _head(4, kernel_shape=kernel_shape, bias_shape=bias_shape)
    value, r = _head_reference(y, h, kernel, bias)
    np.testing.assert_allclose(_np(L.logistic_nll(y, h, kernel, bias)), value, rtol=1e-5, atol=1e-6)
    # equals Keras's binary cross-entropy on the logits
    z = (h @ kernel.reshape(-1) + bias.reshape(())).astype("float32")
    np.testing.assert_allclose(
        value, _np(keras.losses.binary_crossentropy(y[:, None], z[:, None], True)), rtol=1e-5
    )
    _, grads = value_and_grad(L.logistic_nll, y, h, kernel, bias)
    np.testing.assert_allclose(grads[1], r[:, None] * kernel.reshape(1, -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[2], (h.T @ r).reshape(kernel_shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[3], np.reshape(r.sum(), bias_shape), rtol=1e-5, atol=1e-6)
    report = _grad_ok(L.logistic_nll, y, h, kernel, bias)
    assert not report.inputs[0].checked  # labels: grad_fn declares None
    assert all(c.checked for c in report.inputs[1:])


def test_logistic_nll_uses_its_rule_and_mixes_with_autodiff():
    """The rule (not autodiff) gives the head's gradient; autodiff carries it to a layer below."""
    y, _, kernel, bias = _head(5)
    x = _rng(5).normal(size=(6, 3)).astype("float32")
    w1 = _rng(6).normal(size=(3, 4)).astype("float32")

    def model_loss(w1, kernel, bias):
        h = ops.tanh(ops.matmul(ops.convert_to_tensor(x, w1.dtype), w1))
        return L.logistic_nll(ops.convert_to_tensor(y, w1.dtype), h, kernel, bias)

    _grad_ok(model_loss, w1, kernel, bias)
    _, custom = value_and_grad(model_loss, w1, kernel, bias)
    with plain_autodiff():
        _, plain = value_and_grad(model_loss, w1, kernel, bias)
    for a, b in zip(custom, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_logistic_nll_in_a_compiled_fit():
    """Dense(4) -> logistic head trained by fit (compiled): same weights as plain autodiff."""

    class Credit(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.hidden = keras.layers.Dense(4, activation="relu")
            self.head = keras.layers.Dense(1)

        def call(self, x):
            return self.head(self.hidden(x))

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            h = self.hidden(x)
            return ops.mean(L.logistic_nll(y, h, self.head.kernel, self.head.bias))

    x = _rng(7).normal(size=(16, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")  # integer labels: no gradient, no cast needed

    def train(plain):
        keras.utils.set_random_seed(1)
        model = Credit()
        model.compile(optimizer=keras.optimizers.SGD(0.3))
        model(x[:1])
        if plain:
            with plain_autodiff():
                model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        else:
            model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        return model.get_weights()

    for a, b in zip(train(False), train(True)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_logistic_nll_logits_class():
    y, h, kernel, bias = _head(8)
    z = (h @ kernel).astype("float32")  # (N, 1)
    value, r = _head_reference(y, h, kernel, np.zeros(1, "float32"))
    np.testing.assert_allclose(_np(L.logistic_nll_logits(y[:, None], z)), value, rtol=1e-5)
    np.testing.assert_allclose(_np(L.LogisticNLL()(y, z)), value.mean(), rtol=1e-5)
    _, (_, g) = value_and_grad(L.logistic_nll_logits, y[:, None], z)
    np.testing.assert_allclose(g, r[:, None], rtol=1e-5, atol=1e-6)
    z2 = _rng(9).normal(size=(3, 2)).astype("float32")
    y2 = (_rng(9).random((3, 2)) > 0.5).astype("float32")
    _grad_ok(L.logistic_nll_logits, y2, z2)


# -------------------------------------------------------------------------- VAE


def test_gaussian_kl_matches_closed_form_and_scipy():
    r = _rng(10)
    mu = r.normal(size=(4, 3)).astype("float32")
    log_var = r.normal(size=(4, 3)).astype("float32")
    var = np.exp(log_var.astype(np.float64))
    per_dim = 0.5 * (mu**2 + var - 1 - log_var)
    np.testing.assert_allclose(_np(L.gaussian_kl(mu, log_var)), per_dim.sum(-1), rtol=1e-5)
    # one dimension by numerical integration of q log(q/p) (independent of the closed form)
    q = stats.norm(mu[0, 0], np.sqrt(var[0, 0]))
    grid = np.linspace(q.mean() - 12 * q.std(), q.mean() + 12 * q.std(), 20001)
    integrand = q.pdf(grid) * (q.logpdf(grid) - stats.norm.logpdf(grid))
    assert per_dim[0, 0] == pytest.approx(np.trapezoid(integrand, grid), rel=1e-4)
    # free bits clamp every dimension's KL from below
    np.testing.assert_allclose(
        _np(L.gaussian_kl(mu, log_var, free_bits=0.5)), np.maximum(per_dim, 0.5).sum(-1), 1e-5
    )
    assert _np(L.gaussian_kl(np.zeros((2, 3), "float32"), np.zeros((2, 3), "float32"))).max() == 0


def test_bernoulli_nll_matches_keras_times_features():
    r = _rng(11)
    x = (r.random((3, 2, 5)) > 0.5).astype("float32")
    z = r.normal(size=(3, 2, 5)).astype("float32")
    # Keras averages over the last axis: times its 5 features, summed over the other one
    expected = 5 * _np(keras.losses.binary_crossentropy(x, z, from_logits=True)).sum(-1)
    np.testing.assert_allclose(_np(L.bernoulli_nll(x, z, from_logits=True)), expected, rtol=1e-5)
    p = expit(z.astype(np.float64)).astype("float32")
    np.testing.assert_allclose(_np(L.bernoulli_nll(x, p)), expected, rtol=1e-4)


GRADIENT_CASES = {
    "gaussian_nll": (lambda y, m, v: L.gaussian_nll(y, m, v), lambda: _gaussian(12, (3, 2))),
    "gaussian_nll_full": (
        functools.partial(L.gaussian_nll_packed, full=True),
        lambda: (_gaussian(13, (3, 2))[0], np.concatenate(_gaussian(13, (3, 2))[1:], -1)),
    ),
    "poisson": (
        L.poisson_nll,
        lambda: (_rng(14).poisson(2.0, (3, 2)).astype("float32"), _rng(15).uniform(0.5, 3, (3, 2))),
    ),
    "poisson_log": (
        functools.partial(L.poisson_nll, log_input=True, full=True),
        lambda: (_rng(16).poisson(2.0, (3, 2)).astype("float32"), _rng(17).normal(size=(3, 2))),
    ),
    "gaussian_kl": (L.gaussian_kl, lambda: (_rng(18).normal(size=(3, 2)),) * 2),
    "gaussian_kl_free_bits": (
        functools.partial(L.gaussian_kl, free_bits=0.05),
        lambda: (np.array([[0.1, 1.0], [2.0, 0.0]]), np.array([[0.1, -1.0], [0.5, 0.0]])),
    ),
    "bernoulli_probs": (
        L.bernoulli_nll,
        lambda: (_rng(19).random((3, 2)), _rng(20).uniform(0.1, 0.9, (3, 2))),
    ),
    "bernoulli_logits": (
        functools.partial(L.bernoulli_nll, from_logits=True),
        lambda: (_rng(21).random((3, 2)), _rng(22).normal(size=(3, 2))),
    ),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradient(case):
    fn, make = GRADIENT_CASES[case]
    inputs = [np.asarray(a, "float32") for a in make()]
    _grad_ok(fn, *inputs)


extreme = st.one_of(st.sampled_from([1e4, -1e4, 0.0]), st.floats(-1e4, 1e4, width=32))


@given(st.lists(extreme, min_size=6, max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_logit_inputs_up_to_1e4(zs, bits):
    z = np.array(zs, "float32").reshape(3, 2)
    y = np.array(bits, "float32").reshape(3, 2)
    kernel = np.array([[1.0], [-1.0]], "float32")
    for fn, args in (
        (L.logistic_nll, (y[:, 0], z, kernel, np.zeros(1, "float32"))),
        (L.logistic_nll_logits, (y, z)),
        (functools.partial(L.bernoulli_nll, from_logits=True), (y, z)),
    ):
        value, grads = value_and_grad(fn, *args)
        assert np.all(np.isfinite(value)) and np.all(value >= 0)
        assert all(g is None or np.all(np.isfinite(g)) for g in grads)


@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=12, max_size=12))
def test_probabilities_exactly_zero_and_one(values):
    x = np.array(values[:6], "float32").reshape(3, 2)
    p = np.array(values[6:], "float32").reshape(3, 2)
    value, grads = value_and_grad(L.bernoulli_nll, x, p)
    assert np.all(np.isfinite(value)) and np.all(value >= 0)
    assert np.all(np.isfinite(grads[1]))


@given(
    st.lists(st.floats(-30, 30, width=32), min_size=4, max_size=4),
    st.lists(st.floats(-30, 30, width=32), min_size=4, max_size=4),
)
def test_gaussian_kl_non_negative_and_finite(mu, log_var):
    mu = np.array(mu, "float32").reshape(2, 2)
    log_var = np.array(log_var, "float32").reshape(2, 2)
    value, grads = value_and_grad(L.gaussian_kl, mu, log_var)
    assert np.all(np.isfinite(value)) and np.all(value >= 0)
    assert all(np.all(np.isfinite(g)) for g in grads)

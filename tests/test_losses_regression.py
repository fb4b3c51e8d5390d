"""Regression losses: values vs Keras built-ins / NumPy references, gradients, properties."""

import functools

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

import losskit
from losskit import losses as L
from losskit.gradients import value_and_grad


def _np(x):
    return ops.convert_to_numpy(x)


def _data(seed=0, shape=(4, 3), low=0.2, high=2.0):
    """Targets and predictions whose residuals stay in +-[low, high]: away from the kinks of
    abs/pinball at 0 (and, with the default Huber delta below, from the Huber threshold)."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=shape).astype("float32")
    mag = rng.uniform(low, high, size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape)
    return y, (y - sign * mag).astype("float32")


def _residual(y, p):
    return y.astype(np.float64) - p.astype(np.float64)


def barron_reference(e, alpha, c):
    """Barron 2019 eq. (1) written directly (no expm1/log1p), with the three limits."""
    x2 = (e / c) ** 2
    if alpha == 2:
        return 0.5 * x2
    if alpha == 0:
        return np.log(0.5 * x2 + 1)
    if np.isneginf(alpha):
        return 1 - np.exp(-0.5 * x2)
    b = abs(alpha - 2)
    return b / alpha * ((x2 / b + 1) ** (alpha / 2) - 1)


REFERENCES = {
    "mse": (L.mse, {}, lambda e: e**2),
    "mae": (L.mae, {}, np.abs),
    "huber": (
        L.huber,
        {"delta": 0.7},
        lambda e: np.where(np.abs(e) <= 0.7, 0.5 * e**2, 0.7 * (np.abs(e) - 0.35)),
    ),
    "log_cosh": (L.log_cosh, {}, lambda e: np.log(np.cosh(e))),
    "pinball": (L.pinball, {"tau": 0.9}, lambda e: np.where(e >= 0, 0.9 * e, -0.1 * e)),
    "charbonnier": (L.charbonnier, {"epsilon": 0.1}, lambda e: np.sqrt(e**2 + 0.01)),
    "cauchy": (L.cauchy, {"scale": 0.5}, lambda e: 0.125 * np.log(1 + (e / 0.5) ** 2)),
    "general_robust": (
        L.general_robust,
        {"alpha": -1.5, "scale": 0.8},
        lambda e: barron_reference(e, -1.5, 0.8),
    ),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_value_against_numpy_reference(name):
    fn, params, ref = REFERENCES[name]
    y, p = _data(1)
    expected = ref(_residual(y, p)).mean(axis=-1)
    np.testing.assert_allclose(_np(fn(y, p, **params)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "fn, keras_fn",
    [
        (L.mse, keras.losses.mean_squared_error),
        (L.mae, keras.losses.mean_absolute_error),
        (functools.partial(L.huber, delta=0.7), functools.partial(keras.losses.huber, delta=0.7)),
        (L.log_cosh, keras.losses.log_cosh),
    ],
)
def test_value_against_keras_builtin(fn, keras_fn):
    y, p = _data(2)
    np.testing.assert_allclose(_np(fn(y, p)), _np(keras_fn(y, p)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_gradient(name):
    fn, params, _ = REFERENCES[name]
    y, p = _data(3, shape=(3, 2))
    losskit.check_gradients(functools.partial(fn, **params), y, p, raise_on_error=True)


@pytest.mark.parametrize("alpha", [float("-inf"), -2.0, 0.0, 0.5, 1.0, 2.0, 4.0])
def test_general_robust_against_barron_formula(alpha):
    y, p = _data(4)
    got = _np(L.general_robust(y, p, alpha=alpha, scale=1.3))
    expected = barron_reference(_residual(y, p), alpha, 1.3).mean(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_general_robust_special_cases_and_limits():
    y, p = _data(5)
    e = _residual(y, p)
    # alpha = 1 is pseudo-Huber, alpha = 2 is L2/2 (hand-derived closed forms)
    np.testing.assert_allclose(
        _np(L.general_robust(y, p, alpha=1.0)), (np.sqrt(e**2 + 1) - 1).mean(-1), rtol=1e-5
    )
    np.testing.assert_allclose(
        _np(L.general_robust(y, p, alpha=2.0)), (0.5 * e**2).mean(-1), rtol=1e-6
    )
    # the general formula converges to the special cases: the limits are wired correctly
    for alpha in (0.0, 2.0):
        near = _np(L.general_robust(y, p, alpha=alpha + 1e-5))
        np.testing.assert_allclose(near, _np(L.general_robust(y, p, alpha=alpha)), rtol=1e-3)
    far = _np(L.general_robust(y, p, alpha=-1e4))
    np.testing.assert_allclose(far, _np(L.general_robust(y, p, alpha=float("-inf"))), rtol=1e-3)


def test_pinball_is_minimised_by_the_quantile():
    rng = np.random.default_rng(6)
    samples = rng.normal(size=(400, 1)).astype("float32")
    grid = np.linspace(-2, 2, 81).astype("float32")
    risks = [
        float(np.mean(_np(L.pinball(samples, np.full_like(samples, g), tau=0.8)))) for g in grid
    ]
    best = grid[int(np.argmin(risks))]
    assert abs(best - np.quantile(samples, 0.8)) <= 0.06


def test_one_dimensional_inputs_stay_per_sample():
    y, p = _data(7, shape=(5,))
    for fn, params, ref in REFERENCES.values():
        out = _np(fn(y, p, **params))
        assert out.shape == (5,)
        np.testing.assert_allclose(out, ref(_residual(y, p)), rtol=1e-5, atol=1e-6)


def test_extra_axes_give_per_position_values_like_keras():
    y, p = _data(8, shape=(2, 3, 4))
    np.testing.assert_allclose(_np(L.mse(y, p)), (_residual(y, p) ** 2).mean(axis=-1), 1e-5)
    np.testing.assert_allclose(_np(L.mse(y, p)), _np(keras.losses.mean_squared_error(y, p)), 1e-6)


def test_per_timestep_weights_equal_keras_and_misfit_weights_raise():
    y, p = _data(3, shape=(2, 3, 1))
    w = np.array([[1.0, 0.0, 2.0], [0.5, 1.5, 1.0]], "float32")
    got = _np(L.MSE()(y, p, sample_weight=w))
    np.testing.assert_allclose(got, _np(keras.losses.MeanSquaredError()(y, p, sample_weight=w)),
                               rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match=r"loss 'Pinball': sample_weight of shape \(2, 2\)"):
        L.Pinball()(y, p, sample_weight=np.ones((2, 2), "float32"))


def test_loss_classes_reduce_like_keras():
    y, p = _data(9)
    w = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    got = _np(L.Huber(delta=0.7)(y, p, sample_weight=w))
    expected = _np(keras.losses.Huber(delta=0.7)(y, p, sample_weight=w))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


big = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@given(st.lists(big, min_size=6, max_size=6), st.lists(big, min_size=6, max_size=6))
def test_finite_and_non_negative_for_large_residuals(ys, ps):
    y = np.array(ys, "float32").reshape(2, 3)
    p = np.array(ps, "float32").reshape(2, 3)
    for fn, params, _ in REFERENCES.values():
        value, (_, grad) = value_and_grad(functools.partial(fn, **params), y, p)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), fn.__name__
        assert np.all(value >= 0), fn.__name__

"""KL / JS divergences and Hinton distillation: SciPy/NumPy references, gradients, properties."""

import functools

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax, rel_entr, softmax

import losskit
from losskit import losses as L
from losskit.gradients import value_and_grad

K = 4


def _np(x):
    return ops.convert_to_numpy(x)


def _logits(seed, n=3, k=K, scale=2.0):
    return (np.random.default_rng(seed).normal(size=(n, k)) * scale).astype("float32")


def _as(kind, z):
    z64 = z.astype(np.float64)
    out = {
        "logits": z64,
        "log_probabilities": log_softmax(z64, -1),
        "probabilities": softmax(z64, -1),
    }[kind]
    return out.astype("float32")


def test_kl_matches_scipy_and_keras():
    p, q = _as("probabilities", _logits(0)), _as("probabilities", _logits(1))
    expected = rel_entr(p.astype(np.float64), q.astype(np.float64)).sum(-1)
    np.testing.assert_allclose(_np(L.kl_divergence(p, q)), expected, rtol=1e-5)
    np.testing.assert_allclose(
        _np(L.kl_divergence(p, q)), _np(keras.losses.kl_divergence(p, q)), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["logits", "log_probabilities"])
def test_kl_input_types_agree(kind):
    zp, zq = _logits(2), _logits(3)
    expected = rel_entr(softmax(zp.astype(np.float64), -1), softmax(zq.astype(np.float64), -1))
    got = _np(L.kl_divergence(_as(kind, zp), _as(kind, zq), input_type=kind))
    np.testing.assert_allclose(got, expected.sum(-1), rtol=1e-5, atol=1e-7)


def test_kl_zero_probabilities_follow_0_log_0():
    p = np.array([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]], "float32")
    q = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]], "float32")
    expected = rel_entr(p.astype(np.float64), q.astype(np.float64)).sum(-1)  # log 2, log 2
    np.testing.assert_allclose(_np(L.kl_divergence(p, q)), expected, rtol=1e-6)


def test_js_matches_scipy():
    p, q = _as("probabilities", _logits(4)), _as("probabilities", _logits(5))
    expected = jensenshannon(p.astype(np.float64), q.astype(np.float64), axis=-1) ** 2
    np.testing.assert_allclose(_np(L.js_divergence(p, q)), expected, rtol=1e-5)
    for kind in ("logits", "log_probabilities"):
        got = _np(L.js_divergence(_as(kind, _logits(4)), _as(kind, _logits(5)), input_type=kind))
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # disjoint supports: JS is exactly log 2
    a = np.array([[1.0, 0.0, 0.0, 0.0]], "float32")
    b = np.array([[0.0, 0.0, 0.5, 0.5]], "float32")
    np.testing.assert_allclose(_np(L.js_divergence(a, b)), [np.log(2.0)], rtol=1e-6)


def test_unknown_input_type_is_refused():
    with pytest.raises(ValueError, match="input_type"):
        L.kl_divergence(np.ones((1, 2), "float32"), np.ones((1, 2), "float32"), input_type="x")


def test_distillation_matches_hinton():
    t, s = _logits(6), _logits(7)
    T = 3.0
    pt = softmax(t.astype(np.float64) / T, -1)
    ps = softmax(s.astype(np.float64) / T, -1)
    expected = T**2 * rel_entr(pt, ps).sum(-1)
    got = _np(L.distillation_kl(t, s, temperature=T))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # T = 1 is the KL between the softmaxes
    np.testing.assert_allclose(
        _np(L.distillation_kl(t, s, temperature=1.0)),
        _np(L.kl_divergence(t, s, input_type="logits")),
        rtol=1e-6,
    )
    # d/ds T^2 KL = T (softmax(s/T) - softmax(t/T)): the T^2 keeps gradients O(1) in T
    _, (_, grad) = value_and_grad(functools.partial(L.distillation_kl, temperature=T), t, s)
    np.testing.assert_allclose(grad, T * (ps - pt), atol=1e-5)


GRADIENT_CASES = [
    (L.kl_divergence, {}, "probabilities"),
    (L.kl_divergence, {"input_type": "logits"}, "logits"),
    (L.kl_divergence, {"input_type": "log_probabilities"}, "log_probabilities"),
    (L.js_divergence, {}, "probabilities"),
    (L.js_divergence, {"input_type": "logits"}, "logits"),
    (L.distillation_kl, {"temperature": 2.5}, "logits"),
]


@pytest.mark.parametrize("fn, params, kind", GRADIENT_CASES)
def test_gradient(fn, params, kind):
    p, q = _as(kind, _logits(8)), _as(kind, _logits(9))
    losskit.check_gradients(functools.partial(fn, **params), p, q, raise_on_error=True)


prob_rows = st.lists(
    st.lists(st.sampled_from([0.0, 0.0, 1.0, 0.3, 2.0, 7.0]), min_size=K, max_size=K).filter(
        lambda r: sum(r) > 0
    ),
    min_size=2,
    max_size=2,
)
logit_rows = st.lists(
    st.one_of(st.sampled_from([1e4, -1e4, 0.0]), st.floats(-1e4, 1e4, width=32)),
    min_size=2 * K,
    max_size=2 * K,
)


def _normalise(rows):
    a = np.array(rows, np.float64)
    return (a / a.sum(-1, keepdims=True)).astype("float32")


@given(prob_rows, prob_rows)
def test_probabilities_with_exact_zeros_and_ones(rows_p, rows_q):
    p, q = _normalise(rows_p), _normalise(rows_q)
    for fn in (L.kl_divergence, L.js_divergence):
        value, grads = value_and_grad(fn, p, q)
        assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads)
        assert np.all(value >= -1e-5)
    np.testing.assert_allclose(_np(L.kl_divergence(p, p)), 0.0, atol=1e-6)  # KL(p, p) = 0
    np.testing.assert_allclose(_np(L.js_divergence(p, p)), 0.0, atol=1e-6)
    js_pq, js_qp = _np(L.js_divergence(p, q)), _np(L.js_divergence(q, p))
    np.testing.assert_allclose(js_pq, js_qp, rtol=1e-6, atol=1e-7)  # symmetry
    assert np.all(js_pq <= np.log(2.0) + 1e-6)


@given(logit_rows, logit_rows)
def test_logits_up_to_1e4(zp, zq):
    zp = np.array(zp, "float32").reshape(2, K)
    zq = np.array(zq, "float32").reshape(2, K)
    for fn, params in (
        (L.kl_divergence, {"input_type": "logits"}),
        (L.js_divergence, {"input_type": "logits"}),
        (L.distillation_kl, {"temperature": 2.0}),
    ):
        f = functools.partial(fn, **params)
        value, grads = value_and_grad(f, zp, zq)
        assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads)
        assert np.all(value >= -1e-3)
        np.testing.assert_allclose(_np(f(zp, zp)), 0.0, atol=1e-3)  # D(p, p) = 0
    np.testing.assert_allclose(
        _np(L.js_divergence(zp, zq, input_type="logits")),
        _np(L.js_divergence(zq, zp, input_type="logits")),
        rtol=1e-6,
        atol=1e-6,
    )

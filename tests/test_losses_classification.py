"""Classification losses: values vs Keras built-ins / NumPy, gradients, extreme-input properties."""

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

K = 4


def _np(x):
    return ops.convert_to_numpy(x)


def _logits(seed, n=5, k=K, scale=2.0):
    return (np.random.default_rng(seed).normal(size=(n, k)) * scale).astype("float32")


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _onehot(labels, k=K):
    return np.eye(k, dtype="float32")[labels]


def _labels(seed, n=5, k=K):
    return np.random.default_rng(seed + 100).integers(0, k, size=n)


def _grad_ok(fn, *inputs, **kw):
    return losskit.check_gradients(fn, *inputs, raise_on_error=True, **kw)


# -------------------------------------------------------------------------- categorical


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_categorical_crossentropy_matches_keras(from_logits, smoothing):
    z = _logits(0)
    pred = z if from_logits else _softmax(z).astype("float32")
    y = _onehot(_labels(0))
    got = _np(
        L.categorical_crossentropy(y, pred, from_logits=from_logits, label_smoothing=smoothing)
    )
    expected = _np(
        keras.losses.categorical_crossentropy(
            y, pred, from_logits=from_logits, label_smoothing=smoothing
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_categorical_crossentropy_matches_keras(from_logits):
    z = _logits(1)
    pred = z if from_logits else _softmax(z).astype("float32")
    labels = _labels(1)
    got = _np(L.sparse_categorical_crossentropy(labels, pred, from_logits=from_logits))
    expected = _np(keras.losses.sparse_categorical_crossentropy(labels, pred, from_logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # label smoothing equals the categorical loss on smoothed one-hot targets
    smoothed = _np(
        L.sparse_categorical_crossentropy(
            labels, pred, from_logits=from_logits, label_smoothing=0.2
        )
    )
    dense = _np(
        L.categorical_crossentropy(
            _onehot(labels), pred, from_logits=from_logits, label_smoothing=0.2
        )
    )
    np.testing.assert_allclose(smoothed, dense, rtol=1e-5)


def test_sparse_ignore_index_zeroes_and_masks():
    z = _logits(2)
    labels = np.array([0, -100, 3, -100, 1])
    got = _np(L.sparse_categorical_crossentropy(labels, z, from_logits=True, ignore_index=-100))
    log_p = np.log(_softmax(z.astype(np.float64)))
    expected = np.array([-log_p[i, c] if c >= 0 else 0.0 for i, c in enumerate(labels)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    keras_ref = keras.losses.sparse_categorical_crossentropy(
        np.where(labels < 0, 0, labels), z, from_logits=True, ignore_class=None
    )
    np.testing.assert_allclose(got[labels >= 0], _np(keras_ref)[labels >= 0], rtol=1e-5)
    # the Loss class averages over the labelled samples only, as keras's ignore_class does
    mean = _np(L.SparseCategoricalCrossentropy(from_logits=True, ignore_index=-100)(labels, z))
    np.testing.assert_allclose(mean, expected[labels >= 0].mean(), rtol=1e-5)


def test_sparse_keeps_integer_labels_and_trailing_axis():
    z = _logits(3)
    labels = _labels(3).astype("int64")
    a = _np(L.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(labels, z))
    b = _np(L.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(labels[:, None], z))
    np.testing.assert_allclose(a, b)


# -------------------------------------------------------------------------- binary


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_binary_crossentropy_matches_keras(from_logits, smoothing):
    z = _logits(4, k=3)
    pred = z if from_logits else (1 / (1 + np.exp(-z))).astype("float32")
    y = (np.random.default_rng(4).random((5, 3)) > 0.5).astype("float32")
    got = _np(L.binary_crossentropy(y, pred, from_logits=from_logits, label_smoothing=smoothing))
    expected = _np(
        keras.losses.binary_crossentropy(
            y, pred, from_logits=from_logits, label_smoothing=smoothing
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_binary_crossentropy_pos_weight_matches_formula():
    z = _logits(5, k=3).astype(np.float64)
    y = (np.random.default_rng(5).random((5, 3)) > 0.5).astype("float32")
    # torch.nn.BCEWithLogitsLoss(pos_weight=3) written out
    expected = (3.0 * y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)).mean(-1)
    got = _np(L.binary_crossentropy(y, z.astype("float32"), from_logits=True, pos_weight=3.0))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# -------------------------------------------------------------------------- focal


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_binary_focal_matches_keras(from_logits, alpha):
    z = _logits(6, k=3)
    pred = z if from_logits else (1 / (1 + np.exp(-z))).astype("float32")
    y = (np.random.default_rng(6).random((5, 3)) > 0.5).astype("float32")
    got = _np(L.focal(y, pred, gamma=2.0, alpha=alpha, from_logits=from_logits))
    expected = _np(
        keras.losses.binary_focal_crossentropy(
            y,
            pred,
            apply_class_balancing=alpha is not None,
            alpha=alpha or 0.25,
            gamma=2.0,
            from_logits=from_logits,
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
def test_categorical_focal_matches_keras_and_numpy(from_logits):
    z = _logits(7)
    pred = z if from_logits else _softmax(z).astype("float32")
    y = _onehot(_labels(7))
    got = _np(L.focal(y, pred, gamma=1.5, alpha=0.25, from_logits=from_logits, mode="categorical"))
    expected = _np(
        keras.losses.categorical_focal_crossentropy(
            y, pred, alpha=0.25, gamma=1.5, from_logits=from_logits
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    p = _softmax(z.astype(np.float64))
    by_hand = -(0.25 * y * (1 - p) ** 1.5 * np.log(p)).sum(-1)
    np.testing.assert_allclose(got, by_hand, rtol=1e-4)


def test_focal_with_gamma_zero_is_cross_entropy():
    z = _logits(8, k=3)
    y = (np.random.default_rng(8).random((5, 3)) > 0.5).astype("float32")
    np.testing.assert_allclose(
        _np(L.focal(y, z, gamma=0.0, from_logits=True)),
        _np(L.binary_crossentropy(y, z, from_logits=True)),
        rtol=1e-6,
    )


def test_focal_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        L.focal(np.ones((2, 2), "float32"), np.ones((2, 2), "float32"), mode="multilabel")


# -------------------------------------------------------------------------- poly1, hinge


def test_poly1_matches_formula():
    z = _logits(9)
    y = _onehot(_labels(9))
    p = _softmax(z.astype(np.float64))
    expected = -(y * np.log(p)).sum(-1) + 2.0 * (1 - (y * p).sum(-1))
    np.testing.assert_allclose(
        _np(L.poly1(y, z, epsilon=2.0, from_logits=True)), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        _np(L.poly1(y, z, epsilon=0.0, from_logits=True)),
        _np(L.categorical_crossentropy(y, z, from_logits=True)),
        rtol=1e-6,
    )


def test_multiclass_hinge_matches_formula_and_keras():
    z = _logits(10)
    labels = _labels(10)
    y = _onehot(labels)
    wrong = np.where(y > 0, -np.inf, z).max(-1)
    expected = np.maximum(0, 0.5 + wrong - z[np.arange(5), labels])
    np.testing.assert_allclose(_np(L.multiclass_hinge(y, z, margin=0.5)), expected, rtol=1e-6)
    # Keras's categorical_hinge agrees when every wrong-class score is positive
    pos = np.abs(z) + 0.1
    np.testing.assert_allclose(
        _np(L.multiclass_hinge(y, pos)), _np(keras.losses.categorical_hinge(y, pos)), rtol=1e-6
    )


# -------------------------------------------------------------------------- sparsemax


def sparsemax_reference(z):
    """Algorithm 1 of Martins & Astudillo (2016), in NumPy."""
    out = np.zeros_like(z, dtype=np.float64)
    for i, row in enumerate(z.astype(np.float64)):
        s = np.sort(row)[::-1]
        k = np.arange(1, len(s) + 1)
        support = 1 + k * s > np.cumsum(s)
        kz = k[support][-1]
        tau = (np.cumsum(s)[kz - 1] - 1) / kz
        out[i] = np.maximum(row - tau, 0)
    return out


def sparsemax_loss_reference(y, z):
    z = z.astype(np.float64)
    sp = sparsemax_reference(z)
    values = []
    for i in range(len(z)):
        s = sp[i] > 0
        tau = (z[i][s].sum() - 1) / s.sum()
        values.append(
            -(y[i] * z[i]).sum() + 0.5 * (z[i][s] ** 2 - tau**2).sum() + 0.5 * (y[i] ** 2).sum()
        )
    return np.array(values)


def test_sparsemax_and_its_loss_match_the_paper():
    z = _logits(11, k=6)
    y = _onehot(_labels(11, k=6), k=6)
    np.testing.assert_allclose(_np(L.sparsemax(z)), sparsemax_reference(z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(L.sparsemax(z)).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        _np(L.sparsemax_loss(y, z)), sparsemax_loss_reference(y, z), rtol=1e-5, atol=1e-5
    )
    # gradient = sparsemax(z) - y (eq. 18)
    _, (_, grad) = value_and_grad(L.sparsemax_loss, y, z)
    np.testing.assert_allclose(grad, sparsemax_reference(z) - y, atol=1e-5)


def test_sparsemax_loss_zero_when_prediction_is_the_target():
    z = np.array([[10.0, 0.0, -1.0], [0.0, 5.0, 4.0], [0.0, 4.5, 4.0]], "float32")
    y = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]], "float32")
    got = _np(L.sparsemax_loss(y, z))
    # rows 0, 1: sparsemax(z) = y exactly, so the loss is 0; row 2 by hand: support {1, 2},
    # tau = (8.5 - 1) / 2 = 3.75, L = -4.5 + ((4.5^2 - tau^2) + (4^2 - tau^2)) / 2 + 1/2 = 1/16
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0625], atol=1e-6)


# -------------------------------------------------------------------------- gradients

GRADIENT_CASES = {
    "cce_probs": (L.categorical_crossentropy, {}, "probs", "onehot"),
    "cce_logits": (
        L.categorical_crossentropy,
        {"from_logits": True, "label_smoothing": 0.1},
        "logits",
        "onehot",
    ),
    "scce_logits": (
        L.sparse_categorical_crossentropy,
        {"from_logits": True, "ignore_index": 2},
        "logits",
        "sparse",
    ),
    "bce_probs": (L.binary_crossentropy, {}, "sigmoid", "binary"),
    "bce_logits": (
        L.binary_crossentropy,
        {"from_logits": True, "pos_weight": 2.0},
        "logits",
        "binary",
    ),
    "focal_binary": (L.focal, {"from_logits": True, "alpha": 0.25}, "logits", "binary"),
    "focal_cat": (L.focal, {"mode": "categorical", "from_logits": True}, "logits", "onehot"),
    "poly1": (L.poly1, {"from_logits": True, "epsilon": 1.0}, "logits", "onehot"),
    "hinge": (L.multiclass_hinge, {}, "logits", "onehot"),
    "sparsemax": (L.sparsemax_loss, {}, "logits", "onehot"),
}


def _inputs(pred_kind, label_kind, seed):
    z = _logits(seed, n=3)
    pred = {
        "logits": z,
        "probs": _softmax(z).astype("float32"),
        "sigmoid": (1 / (1 + np.exp(-z))).astype("float32"),
    }[pred_kind]
    labels = _labels(seed, n=3)
    y = {
        "onehot": _onehot(labels),
        "sparse": labels.astype("int32"),
        "binary": (np.random.default_rng(seed).random(z.shape) > 0.5).astype("float32"),
    }[label_kind]
    return y, pred


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradient(case):
    fn, params, pred_kind, label_kind = GRADIENT_CASES[case]
    y, pred = _inputs(pred_kind, label_kind, seed=12)
    # the labels' gradient is not checked: only the predictions are trained
    _grad_ok(functools.partial(fn, **params), y, pred, wrt=[1])


# -------------------------------------------------------------------------- properties

LOGIT_LOSSES = [
    (L.categorical_crossentropy, {"from_logits": True, "label_smoothing": 0.1}, "onehot"),
    (L.sparse_categorical_crossentropy, {"from_logits": True}, "sparse"),
    (L.binary_crossentropy, {"from_logits": True, "pos_weight": 2.0}, "binary"),
    (L.focal, {"from_logits": True, "alpha": 0.25}, "binary"),
    (L.focal, {"from_logits": True, "mode": "categorical"}, "onehot"),
    (L.poly1, {"from_logits": True}, "onehot"),
    (L.multiclass_hinge, {}, "onehot"),
    (L.sparsemax_loss, {}, "onehot"),
]

extreme_logits = st.lists(
    st.one_of(st.sampled_from([1e4, -1e4, 0.0]), st.floats(-1e4, 1e4, width=32)),
    min_size=2 * K,
    max_size=2 * K,
)


@given(extreme_logits, st.lists(st.integers(0, K - 1), min_size=2, max_size=2))
def test_logits_up_to_1e4_give_finite_non_negative_values_and_gradients(zs, labels):
    z = np.array(zs, "float32").reshape(2, K)
    labels = np.array(labels)
    targets = {
        "onehot": _onehot(labels),
        "sparse": labels.astype("int32"),
        "binary": _onehot(labels),
    }
    for fn, params, kind in LOGIT_LOSSES:
        value, grads = value_and_grad(functools.partial(fn, **params), targets[kind], z)
        assert np.all(np.isfinite(value)), (fn.__name__, params, value)
        assert np.all(np.isfinite(grads[1])), (fn.__name__, params)
        assert np.all(value >= -1e-3 * np.maximum(1.0, np.abs(z).max())), (fn.__name__, value)


PROB_LOSSES = [
    (L.categorical_crossentropy, {}, "onehot"),
    (L.sparse_categorical_crossentropy, {}, "sparse"),
    (L.binary_crossentropy, {}, "binary"),
    (L.focal, {}, "binary"),
    (L.focal, {"mode": "categorical"}, "onehot"),
    (L.poly1, {}, "onehot"),
]


@given(
    st.lists(st.sampled_from([0, 1, 2, 3]), min_size=2, max_size=2),
    st.lists(st.integers(0, K - 1), min_size=2, max_size=2),
)
def test_probabilities_exactly_zero_and_one_give_finite_values_and_gradients(hot, labels):
    probs = _onehot(np.array(hot))  # rows with exact 0s and a 1
    labels = np.array(labels)
    targets = {
        "onehot": _onehot(labels),
        "sparse": labels.astype("int32"),
        "binary": _onehot(labels),
    }
    for fn, params, kind in PROB_LOSSES:
        value, grads = value_and_grad(functools.partial(fn, **params), targets[kind], probs)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grads[1])), fn.__name__
        assert np.all(value >= 0), fn.__name__

"""`@losskit.loss` against Keras built-ins: values and gradients under every reduction, with sample
weights, masks and mixed precision."""

import keras
import numpy as np
import pytest
from keras import ops
from keras.src.backend import set_keras_mask

import losskit
from losskit.gradients import value_and_grad

# Re-implementations written with @losskit.loss; the Keras built-ins are the independent reference.


@losskit.loss
def mse(y_true, y_pred):
    return ops.mean(ops.square(y_pred - y_true), axis=-1)


@losskit.loss
def mae(y_true, y_pred):
    return ops.mean(ops.abs(y_pred - y_true), axis=-1)


@losskit.loss
def huber(y_true, y_pred, delta=1.0):
    err = ops.abs(y_true - y_pred)
    quad = ops.minimum(err, delta)
    return ops.mean(0.5 * quad**2 + delta * (err - quad), axis=-1)


@losskit.loss
def log_cosh(y_true, y_pred):
    x = y_pred - y_true
    return ops.mean(x + ops.softplus(-2.0 * x) - np.log(2.0), axis=-1)


@losskit.loss
def bce(y_true, y_pred, from_logits=False):
    if from_logits:
        per = ops.softplus(y_pred) - y_true * y_pred
    else:
        p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        per = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    return ops.mean(per, axis=-1)


@losskit.loss
def cce(y_true, y_pred, from_logits=False):
    if from_logits:
        log_p = ops.log_softmax(y_pred, axis=-1)
    else:
        p = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
        log_p = ops.log(ops.clip(p, 1e-7, 1.0 - 1e-7))
    return -ops.sum(y_true * log_p, axis=-1)


REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None]


def _regression_data(rng, shape=(6, 3)):
    return rng.normal(size=shape).astype("float32") * 2, rng.normal(size=shape).astype("float32")


def _probability_data(rng, shape=(6, 4)):
    labels = rng.integers(0, shape[-1], size=shape[0])
    probs = rng.dirichlet(np.ones(shape[-1]), size=shape[0]).astype("float32")
    return np.eye(shape[-1], dtype="float32")[labels], probs


def _binary_data(rng, shape=(6, 3)):
    return (rng.random(shape) > 0.5).astype("float32"), rng.uniform(0.02, 0.98, shape).astype(
        "float32"
    )


def _logit_data(rng, shape=(6, 4)):
    y, _ = _probability_data(rng, shape)
    return y, rng.normal(size=shape).astype("float32") * 3


PAIRS = [
    ("mse", lambda **kw: mse(**kw), lambda **kw: keras.losses.MeanSquaredError(**kw),
     _regression_data),
    ("mae", lambda **kw: mae(**kw), lambda **kw: keras.losses.MeanAbsoluteError(**kw),
     _regression_data),
    ("huber", lambda **kw: huber(delta=0.7, **kw), lambda **kw: keras.losses.Huber(delta=0.7, **kw),
     _regression_data),
    ("log_cosh", lambda **kw: log_cosh(**kw), lambda **kw: keras.losses.LogCosh(**kw),
     _regression_data),
    ("bce", lambda **kw: bce(**kw), lambda **kw: keras.losses.BinaryCrossentropy(**kw),
     _binary_data),
    ("bce_logits", lambda **kw: bce(from_logits=True, **kw),
     lambda **kw: keras.losses.BinaryCrossentropy(from_logits=True, **kw), _logit_data),
    ("cce", lambda **kw: cce(**kw), lambda **kw: keras.losses.CategoricalCrossentropy(**kw),
     _probability_data),
    ("cce_logits", lambda **kw: cce(from_logits=True, **kw),
     lambda **kw: keras.losses.CategoricalCrossentropy(from_logits=True, **kw), _logit_data),
]
PAIR_IDS = [p[0] for p in PAIRS]


def _value_and_grad(loss, y_true, y_pred, sample_weight=None):
    return value_and_grad(lambda p: loss(y_true, p, sample_weight=sample_weight), y_pred)


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_value_and_gradient_match_keras(pair, weighted, reduction):
    _, ours, theirs, data = pair
    rng = np.random.default_rng(1)
    y_true, y_pred = data(rng)
    sample_weight = rng.uniform(0.1, 2.0, size=len(y_true)).astype("float32") if weighted else None
    v1, (g1,) = _value_and_grad(ours(reduction=reduction), y_true, y_pred, sample_weight)
    v2, (g2,) = _value_and_grad(theirs(reduction=reduction), y_true, y_pred, sample_weight)
    assert v1.shape == v2.shape
    np.testing.assert_allclose(v1, v2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
@pytest.mark.parametrize("pair", PAIRS[:3], ids=PAIR_IDS[:3])
def test_keras_mask_matches_keras(pair, reduction):
    """Masked timesteps drop out exactly as with Keras losses (per-timestep values)."""
    _, ours, theirs, data = pair
    rng = np.random.default_rng(2)
    y_true, y_pred = data(rng, shape=(4, 5, 2))
    mask = rng.random((4, 5)) > 0.3
    results = []
    for loss in (ours(reduction=reduction), theirs(reduction=reduction)):
        pred = ops.convert_to_tensor(y_pred)
        set_keras_mask(pred, ops.convert_to_tensor(mask))
        results.append(keras.ops.convert_to_numpy(loss(y_true, pred)))
    unmasked = keras.ops.convert_to_numpy(ours(reduction=reduction)(y_true, y_pred))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    assert not np.allclose(results[0], unmasked)  # the mask really did something


def test_reduction_none_returns_per_sample_values():
    rng = np.random.default_rng(3)
    y_true, y_pred = _regression_data(rng)
    per_sample = keras.ops.convert_to_numpy(huber(delta=0.5, reduction=None)(y_true, y_pred))
    err = np.abs(y_true - y_pred)
    expected = np.where(err <= 0.5, 0.5 * err**2, 0.5 * (err - 0.25)).mean(axis=-1)
    np.testing.assert_allclose(per_sample, expected, rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_computes_in_float32(policy):
    rng = np.random.default_rng(4)
    y_true, y_pred = _regression_data(rng)
    keras.config.set_dtype_policy(policy)
    half = keras.ops.cast(y_pred, keras.config.dtype_policy().compute_dtype)
    loss = huber(delta=0.5)
    value = loss(y_true, half)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    reference = huber(delta=0.5)(y_true, keras.ops.cast(half, "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(value), reference, rtol=1e-6)

    # In a model: the layers run in half precision, the loss in float32, and training works.
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=huber(delta=0.5))
    history = model.fit(y_pred, y_true, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_decorated_class_api():
    loss = huber(delta=2.0, name="robust")
    assert isinstance(loss, keras.losses.Loss)
    assert issubclass(huber, losskit.FunctionLoss)
    assert loss.delta == 2.0 and loss.name == "robust"
    assert huber.fn(np.zeros((2, 1)), np.ones((2, 1)), delta=2.0).shape == (2,)
    assert huber().delta == 1.0
    config = loss.get_config()
    assert config["delta"] == 2.0 and config["reduction"] == "sum_over_batch_size"
    assert huber.from_config(config).get_config() == config


def test_constructor_errors_are_helpful():
    with pytest.raises(TypeError, match=r"huber\(delta=\.\.\.\)"):
        huber(np.zeros(3), np.zeros(3))  # called like a function instead of constructing
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['delt'\]"):
        huber(delt=2.0)


def test_decorating_bad_functions_fails_clearly():
    with pytest.raises(ValueError, match="lambda"):
        losskit.loss(lambda y_true, y_pred: y_pred)
    with pytest.raises(TypeError, match="two tensors"):

        @losskit.loss
        def needs_three(y_true, y_pred, weights):
            return y_pred

    with pytest.raises(TypeError, match="reserved"):

        @losskit.loss
        def clashes(y_true, y_pred, name="x"):
            return y_pred


def test_sparse_labels_keep_integer_dtype():
    seen = {}

    @losskit.loss(sparse_labels=True)
    def sparse_ce(labels, logits):
        seen["dtype"] = keras.backend.standardize_dtype(labels.dtype)
        one_hot = ops.one_hot(labels, logits.shape[-1])
        return -ops.sum(one_hot * ops.log_softmax(logits, axis=-1), axis=-1)

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=(6, 1))
    logits = rng.normal(size=(6, 4)).astype("float32")
    value = sparse_ce()(labels, logits)
    assert "int" in seen["dtype"]
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    np.testing.assert_allclose(value, reference, rtol=1e-6)
    with pytest.raises(ValueError, match=r"labels of shape \(6, 2\)"):
        sparse_ce()(rng.integers(0, 4, size=(6, 2)), logits)

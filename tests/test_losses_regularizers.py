"""activation_l2: value vs NumPy, gradient, extremes, and ActivationL2 as a saved activity
regulariser."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

import losskit
from losskit.gradients import value_and_grad
from losskit.losses import regularizers as reg


def np_(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("shape", [(4,), (4, 3), (2, 3, 5)])
def test_value_matches_numpy(shape):
    a = np.random.default_rng(0).normal(size=shape).astype("float32")
    expected = a**2 if a.ndim == 1 else (a.astype(float) ** 2).reshape(shape[0], -1).mean(-1)
    got = np_(reg.activation_l2(a))
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_hand_computed_and_scalar_refused():
    np.testing.assert_allclose(np_(reg.activation_l2(np.array([[1.0, -3.0], [0.0, 2.0]]))), [5, 2])
    with pytest.raises(ValueError, match="batch axis"):
        reg.activation_l2(np.float32(2.0))


def test_gradient():
    a = np.random.default_rng(1).normal(size=(3, 4))
    report = losskit.check_gradients(reg.activation_l2, a)
    assert report.ok, str(report)
    _, (grad,) = value_and_grad(reg.activation_l2, a.astype("float32"))
    np.testing.assert_allclose(grad, 2 * a / 4, rtol=1e-6)  # d/da mean(a^2) = 2a / D


@given(hnp.arrays(np.float32, (3, 4), elements=st.floats(-1e4, 1e4, width=32)))
def test_finite_and_nonnegative(a):
    value, (grad,) = value_and_grad(reg.activation_l2, a)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)) and np.all(value >= 0)


def test_no_loss_class_but_in_the_registry():
    assert reg.CLASSES == ()
    assert losskit.losses.ALL["activation_l2"] is reg.activation_l2
    assert keras.saving.get_registered_object("losskit.losses>activation_l2") is reg.activation_l2
    fn = reg.activation_l2
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fn)) is fn
    assert losskit.losses.FAMILIES["regularizers"] == ("activation_l2",)
    assert losskit.losses.ActivationL2 is reg.ActivationL2 and "Reference" in fn.__doc__


def test_activity_regulariser_adds_weighted_batch_mean(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(5, activity_regularizer=reg.ActivationL2(0.25), name="dense_1")
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden(inputs)))
    model(x)
    act = np_(hidden(x))
    penalty = sum(np_(v) for v in model.losses)
    expected = 0.25 * np.mean((act.astype(float) ** 2).mean(-1))
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)

    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode, no custom_objects
    regularizer = loaded.get_layer("dense_1").activity_regularizer
    assert isinstance(regularizer, reg.ActivationL2) and regularizer.weight == 0.25
    np.testing.assert_allclose(
        model.evaluate(x, y, verbose=0), loaded.evaluate(x, y, verbose=0), rtol=1e-6
    )


def test_as_an_objective_term_mse_plus_mean_squared_activations():
    """The "MSE + mean squared activations of layer 1" objective, called directly."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=(5, 1)).astype("float32")
    pred = rng.normal(size=(5, 1)).astype("float32")
    hidden = rng.normal(size=(5, 4)).astype("float32")
    objective = losskit.Objective(
        [
            losskit.Term(losskit.losses.mse, name="mse"),
            losskit.Term(reg.activation_l2, a="layer.dense_1", weight=0.1, name="act"),
        ]
    )
    total, terms = objective({}, y, pred, layers={"dense_1": hidden})
    mse = np.mean((y - pred) ** 2)
    act = np.mean(hidden.astype(float) ** 2)
    np.testing.assert_allclose(np_(terms["act"]), act, rtol=1e-5)
    np.testing.assert_allclose(np_(total), mse + 0.1 * act, rtol=1e-5)

"""Parametric losses and metrics survive `model.save` / `keras.saving.load_model` (safe mode, no
custom_objects), and training continues from the loaded model as if never interrupted."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit.metrics import regression_accuracy


@losskit.loss(package="test_saving")
def robust(y_true, y_pred, delta=1.0, scale=1.0, mode="huber"):
    err = ops.abs(y_true - y_pred) / scale
    if mode == "huber":
        quad = ops.minimum(err, delta)
        return ops.mean(0.5 * quad**2 + delta * (err - quad), axis=-1)
    return ops.mean(err, axis=-1)


@losskit.metric(package="test_saving")
def shifted_mean(y_true, y_pred, shift=0.0):
    return ops.mean(y_pred, axis=-1) + shift


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1)) + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def _compiled_model():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=robust(delta=0.3, scale=2.0, mode="huber", reduction="sum", name="my_robust"),
        metrics=[
            regression_accuracy(tolerance=0.25, relative=False, name="acc25"),
            shifted_mean(shift=-1.5),
        ],
    )
    return model


def _compiled_metrics(model):
    return {m.name: m for m in model._compile_metrics.metrics}


def test_save_load_keeps_every_parameter_and_training_continues(tmp_path):
    x, y = _data()
    model = _compiled_model()
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True, no custom_objects

    assert type(loaded.loss) is robust
    assert loaded.loss.params == {"delta": 0.3, "scale": 2.0, "mode": "huber"}
    assert (loaded.loss.name, loaded.loss.reduction) == ("my_robust", "sum")

    before = model.evaluate(x, y, return_dict=True, verbose=0)
    after = loaded.evaluate(x, y, return_dict=True, verbose=0)
    metrics = _compiled_metrics(loaded)
    assert metrics["acc25"].params == {"tolerance": 0.25, "relative": False}
    assert metrics["shifted_mean"].shift == -1.5
    for key in ("loss", "acc25", "shifted_mean"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-6)

    # Optimizer state travels too: one more epoch gives identical losses and weights.
    h1 = model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    h2 = loaded.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-6)
    for w1, w2 in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(w2, w1, rtol=1e-6, atol=1e-7)


def test_loss_default_reduction_and_dtype_survive(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss=robust(mode="l1"))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.loss.get_config() == model.loss.get_config()
    assert loaded.loss.mode == "l1" and loaded.loss.delta == 1.0


def test_unregistered_loss_fails_at_load_with_fix(tmp_path):
    """A process that never imported the loss's module cannot rebuild it; the error says why."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss=robust(delta=0.5))
    model.save(tmp_path / "m.keras")
    registry = keras.saving.get_custom_objects()
    saved = registry.pop("test_saving>robust")
    try:
        with pytest.raises(TypeError, match="robust.*register_keras_serializable.*imported"):
            keras.saving.load_model(tmp_path / "m.keras")
    finally:
        registry["test_saving>robust"] = saved


def test_lambda_parameters_are_refused_before_saving():
    with pytest.raises(ValueError, match="parameter 'mode' is a lambda"):
        robust(mode=lambda e: e)


def test_library_metric_and_loss_are_registered_under_losskit():
    assert keras.saving.get_registered_name(regression_accuracy) == "losskit>regression_accuracy"
    assert keras.saving.get_registered_name(robust) == "test_saving>robust"


def test_library_huber_keeps_delta_where_keras_huber_resets_it(tmp_path):
    """Keras 3.15's own `keras.losses.Huber` has no `delta` in its config and reloads with
    delta=1.0; losskit's keeps it."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss=losskit.losses.Huber(delta=2.5))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.loss) is losskit.losses.Huber and loaded.loss.delta == 2.5
    y, pred = np.zeros((4, 1), "float32"), np.full((4, 1), 3.0, "float32")
    np.testing.assert_allclose(loaded.loss(y, pred), 2.5 * (3.0 - 1.25), rtol=1e-6)

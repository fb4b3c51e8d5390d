"""ObjectiveModel: fit/evaluate/predict with side data, taps, per-term logs, sample and class
weights, variable sources, save/load/resume, and the non-finite guard."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import Objective, ObjectiveModel, Term
from losskit.schedules import Linear

RNG = np.random.default_rng(0)
N = 32
X = RNG.normal(size=(N, 4)).astype("float32")
TEACHER = RNG.uniform(0.05, 0.95, size=(N, 1)).astype("float32")
Y = (X[:, 0] + 0.3 * RNG.normal(size=N) > 0).astype("float32")
DATA = {"features": X, "teacher": TEACHER}


@keras.saving.register_keras_serializable(package="losskit_tests")
def kl_bernoulli(p, q):
    p = ops.clip(p, 1e-6, 1 - 1e-6)
    q = ops.clip(q, 1e-6, 1 - 1e-6)
    return ops.sum(p * ops.log(p / q) + (1 - p) * ops.log((1 - p) / (1 - q)), axis=-1)


@keras.saving.register_keras_serializable(package="losskit_tests")
def mean_square(a):
    return ops.mean(a**2, axis=-1)


def functional(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((4,), name="features")
    h = keras.layers.Dense(5, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    return keras.Model(inp, out, name="inner")


def objective(distill_weight=0.5):
    return Objective(
        [
            Term(keras.losses.binary_crossentropy, name="bce"),
            Term(kl_bernoulli, p="x.teacher", q="pred", weight=distill_weight, name="distill"),
            Term(mean_square, a="layer.hidden", weight=1e-2, name="act"),
        ]
    )


def compiled(model, lr=0.05, optimizer=keras.optimizers.SGD):
    model.compile(optimizer=optimizer(lr))
    return model


def term_reference(inner):
    """Each term's dataset mean, computed outside the model from a sub-model and NumPy."""
    pred = inner.predict(X, verbose=0)[:, 0]
    hidden = keras.Model(inner.input, inner.get_layer("hidden").output).predict(X, verbose=0)
    p = np.clip(pred, 1e-7, 1 - 1e-7)
    bce = -(Y * np.log(p) + (1 - Y) * np.log(1 - p)).mean()
    t, q = np.clip(TEACHER[:, 0], 1e-6, 1 - 1e-6), np.clip(pred, 1e-6, 1 - 1e-6)
    kl = (t * np.log(t / q) + (1 - t) * np.log((1 - t) / (1 - q))).mean()
    return {"bce": bce, "distill": kl, "act": (hidden**2).mean(axis=1).mean()}


def test_fit_evaluate_predict_with_side_data_and_taps():
    model = compiled(ObjectiveModel(functional(), objective()))
    history = model.fit(DATA, Y, batch_size=8, epochs=2, verbose=0, validation_data=(DATA, Y))
    assert {"loss", "bce", "distill", "act"} <= set(history.history)
    assert {"val_loss", "val_bce", "val_distill", "val_act"} <= set(history.history)
    for prefix in ["", "val_"]:
        h = {k: np.array(history.history[prefix + k]) for k in ["loss", "bce", "distill", "act"]}
        np.testing.assert_allclose(
            h["loss"], h["bce"] + 0.5 * h["distill"] + 1e-2 * h["act"], rtol=1e-5
        )

    logs = model.evaluate(DATA, Y, batch_size=8, verbose=0, return_dict=True)
    ref = term_reference(model.inner)
    for name in ["bce", "distill", "act"]:
        np.testing.assert_allclose(logs[name], ref[name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        logs["loss"], ref["bce"] + 0.5 * ref["distill"] + 1e-2 * ref["act"], rtol=1e-4
    )
    # Side data is not needed to predict; predictions are the inner model's, without taps.
    pred = model.predict({"features": X}, verbose=0)
    np.testing.assert_allclose(pred, model.inner.predict(X, verbose=0), rtol=1e-6)


def test_same_update_as_plain_keras_with_sample_and_class_weights():
    w = RNG.uniform(0.2, 2.0, size=N).astype("float32")
    plain = functional()
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    ours = compiled(ObjectiveModel(functional(), [Term(keras.losses.binary_crossentropy)]), 0.1)
    for model, x in [(plain, X), (ours, {"features": X})]:
        model.fit(x, Y, sample_weight=w, batch_size=8, epochs=1, shuffle=False, verbose=0)
        model.fit(x, Y, class_weight={0: 0.3, 1: 2.0}, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), ours.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain_loss = plain.evaluate(X, Y, sample_weight=w, verbose=0)
    ours_logs = ours.evaluate({"features": X}, Y, sample_weight=w, verbose=0, return_dict=True)
    np.testing.assert_allclose(ours_logs["loss"], plain_loss, rtol=1e-5)


@keras.saving.register_keras_serializable(package="losskit_tests")
def logistic_nll(h, y, kernel, bias):
    """NLL of a logistic head from its input and its own weights (the credit recipe's loss)."""
    z = ops.matmul(h, kernel)[:, 0] + bias[0]
    y = ops.cast(y, z.dtype)
    return ops.softplus(z) - y * z


def test_var_sources_are_differentiable_inside_fit():
    # BCE written from the tapped logistic input and the head's variables trains exactly like
    # Keras's BCE on the prediction, so gradients flow through "var.*" on every backend.
    plain = functional()
    plain.compile(optimizer=keras.optimizers.SGD(0.2), loss="binary_crossentropy")
    nll = Term(
        logistic_nll,
        h="layer.hidden",
        y="y",
        kernel="var.out.kernel",
        bias="var.out.bias",
        name="nll",
    )
    ours = compiled(ObjectiveModel(functional(), [nll]), 0.2)
    plain.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    ours.fit({"features": X}, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), ours.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@keras.saving.register_keras_serializable(package="losskit_tests")
def squared_norm(kernel):
    return ops.sum(kernel**2)


def test_batch_independent_scalar_term_is_added_once_per_step():
    penalty = Term(squared_norm, kernel="var.out.kernel", weight=0.1, name="l2")
    model = compiled(
        ObjectiveModel(functional(), [Term(keras.losses.binary_crossentropy), penalty])
    )
    logs = model.evaluate(DATA, Y, batch_size=8, verbose=0, return_dict=True)
    kernel = ops.convert_to_numpy(model.inner.get_layer("out").kernel)
    np.testing.assert_allclose(logs["l2"], (kernel**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(
        logs["loss"], logs["binary_crossentropy"] + 0.1 * logs["l2"], rtol=1e-5
    )


def test_tapping_a_subclassed_model_is_a_clear_error():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="layer.hidden.*functional.*Sub is subclassed"):
        ObjectiveModel(Sub(), [Term(mean_square, a="layer.hidden")])


def test_subclassed_model_without_taps_gets_its_inputs_without_side_data():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1, activation="sigmoid")

        def call(self, x):
            return self.dense(x)

    model = compiled(ObjectiveModel(Sub(), objective(0.5).terms[:2]))
    history = model.fit(DATA, Y, batch_size=16, epochs=1, verbose=0)
    assert {"bce", "distill", "loss"} <= set(history.history)
    assert model.predict({"features": X}, verbose=0).shape == (N, 1)


def test_unknown_layer_and_compile_loss_are_refused():
    with pytest.raises(ValueError, match="term 'mean_square' reads source 'layer.nope', which"):
        ObjectiveModel(functional(), [Term(mean_square, a="layer.nope")])
    model = ObjectiveModel(functional(), objective())
    with pytest.raises(ValueError, match="takes no loss"):
        model.compile(optimizer="sgd", loss="mse")


def _fit_schedule(model, epochs, initial_epoch=0):
    return model.fit(
        DATA, Y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0
    )


def test_save_load_and_resume_equals_uninterrupted_training(tmp_path):
    def build():
        return compiled(
            ObjectiveModel(functional(seed=3), objective(Linear(0.0, 1.0, steps=6))),
            lr=0.01,
            optimizer=keras.optimizers.Adam,
        )

    straight = build()
    _fit_schedule(straight, 2)

    resumed = build()
    _fit_schedule(resumed, 1)
    path = os.path.join(tmp_path, "model.keras")
    resumed.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode, no custom_objects
    assert isinstance(loaded, ObjectiveModel)
    assert [t.name for t in loaded.objective.terms] == ["bce", "distill", "act"]
    assert loaded.objective.terms[1].weight.get_config() == Linear(0.0, 1.0, 6).get_config()
    assert int(ops.convert_to_numpy(loaded.optimizer.iterations)) == 4
    history = _fit_schedule(loaded, 2, initial_epoch=1)
    # The schedule continued from step 4: the weight of the last step (7) is 1.0, not 3/6.
    assert history.history["distill_weight"][-1] == pytest.approx(1.0)
    for a, b in zip(straight.inner.get_weights(), loaded.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nan_policy_raise_names_the_term_and_the_batch_in_fit_and_evaluate():
    teacher = TEACHER.copy()
    teacher[20] = np.nan  # batch 2 (samples 16..23, Keras's batch index 2) of the first epoch
    model = compiled(ObjectiveModel(functional(), objective(), nan_policy="raise"))
    data = {"features": X, "teacher": teacher}
    with pytest.raises(
        FloatingPointError,
        match=r"term 'distill' became nan in fit, epoch 1, batch 2 \(optimizer step 2\)",
    ):
        model.fit(data, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    model = compiled(ObjectiveModel(functional(), objective(), nan_policy="raise"))
    with pytest.raises(FloatingPointError, match="term 'distill' became nan in evaluate, batch 2"):
        model.evaluate(data, Y, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="nan_policy"):
        ObjectiveModel(functional(), objective(), nan_policy="ignore")


def test_nan_policy_round_trips_and_default_does_not_raise():
    teacher = TEACHER.copy()
    teacher[20] = np.nan
    # losskit's BCE: Keras's own raises on NaN predictions under torch instead of returning NaN.
    terms = [Term(losskit.losses.binary_crossentropy, name="bce"), *objective().terms[1:]]
    model = compiled(ObjectiveModel(functional(), Objective(terms)))
    history = model.fit({"features": X, "teacher": teacher}, Y, batch_size=8, verbose=0)
    assert np.isnan(history.history["distill"][0])
    config = ObjectiveModel(functional(), objective(), nan_policy="raise").get_config()
    assert ObjectiveModel.from_config(config).nan_policy == "raise"


class RecordingTensorBoard(keras.callbacks.TensorBoard):
    """The real TensorBoard callback (real writers), recording each scalar it writes; the
    `tensorboard` package it needs for scalar summaries may not be installed."""

    written = []

    @property
    def summary(self):
        real, written = super().summary, self.written

        class Summary:
            def __getattr__(self, name):
                return getattr(real, name)

            def scalar(self, name, data, step=None, description=None):
                written.append((name, float(data)))

        return Summary()


def test_tensorboard_callback_writes_every_term(tmp_path):
    model = compiled(ObjectiveModel(functional(), objective()))
    tb = RecordingTensorBoard(log_dir=str(tmp_path), write_graph=False)
    history = model.fit(
        DATA, Y, batch_size=16, epochs=1, verbose=0, validation_data=(DATA, Y), callbacks=[tb]
    )
    written, written_val = {}, {}
    for name, value in tb.written:  # the train writer's scalars come before validation's
        (written_val if name in written else written)[name] = value
    for name in ["loss", "bce", "distill", "act"]:
        assert written[f"epoch_{name}"] == pytest.approx(history.history[name][0])
        assert written_val[f"epoch_{name}"] == pytest.approx(history.history[f"val_{name}"][0])


def test_sequential_taps_dict_outputs_and_compiled_metrics():
    seq = keras.Sequential(
        [
            keras.Input((4,), name="features"),
            keras.layers.Dense(3, name="d1"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model = ObjectiveModel(
        seq,
        [
            Term(keras.losses.binary_crossentropy, name="bce"),
            Term(mean_square, a="layer.d1", weight=0.1, name="act"),
        ],
    )
    model.compile(optimizer="sgd", metrics=["accuracy"])
    logs = model.evaluate({"features": X}, Y, verbose=0, return_dict=True)
    hidden = keras.Model(seq.inputs, seq.get_layer("d1").output).predict(X, verbose=0)
    np.testing.assert_allclose(logs["act"], (hidden**2).mean(), rtol=1e-5)
    assert "accuracy" in logs

    inp = keras.Input((4,), name="features")
    heads = {"a": keras.layers.Dense(1, name="a")(inp), "b": keras.layers.Dense(2, name="b")(inp)}
    two = ObjectiveModel(
        keras.Model(inp, heads),
        [
            Term(keras.losses.mean_squared_error, y_true="y.a", y_pred="pred.a", name="ta"),
            Term(mean_square, a="pred.b", name="tb"),
        ],
    )
    two.compile(optimizer="sgd")
    y = {"a": Y[:, None], "b": np.zeros((N, 2), "float32")}
    logs = two.evaluate({"features": X}, y, verbose=0, return_dict=True)
    out = two.predict({"features": X}, verbose=0)
    np.testing.assert_allclose(logs["ta"], ((out["a"][:, 0] - Y) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["tb"], (out["b"] ** 2).mean(), rtol=1e-5)

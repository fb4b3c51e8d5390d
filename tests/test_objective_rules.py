"""The objective's rules, each once failing on the old code: one reduction rule (ignored positions
never count), per-position values, sample weights that fit or raise, validation at construction,
float32 terms under mixed precision, the applied weight in every log, empty inputs."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import Objective, ObjectiveModel, Term
from losskit.schedules import Linear

RNG = np.random.default_rng(1)


def np_(x):
    return ops.convert_to_numpy(x)


def scalar(x):
    return float(np_(x))


def np_sparse_ce(labels, logits):
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]


# ----- one reduction rule: ignored positions never count ------------------------------------------


def test_ignore_index_reduces_the_same_as_loss_and_as_term():
    logits = RNG.normal(size=(8, 5)).astype("float32")
    labels = RNG.integers(0, 5, size=8)
    labels[::2] = -100
    kept = labels != -100
    expected = np_sparse_ce(labels[kept], logits[kept]).mean()
    loss = losskit.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_index=-100)
    as_loss = scalar(loss(labels, logits))
    term = Term(losskit.losses.sparse_categorical_crossentropy, from_logits=True,
                ignore_index=-100, name="ce")  # fmt: skip
    as_term = scalar(Objective([term])({}, labels, logits)[0])
    np.testing.assert_allclose([as_loss, as_term], [expected, expected], rtol=1e-5)


def test_per_position_values_divide_by_kept_positions():
    logits = RNG.normal(size=(3, 4, 6)).astype("float32")
    labels = RNG.integers(0, 6, size=(3, 4))
    labels[0, 2:] = -100  # padding
    labels[2, 1:] = -100
    kept = labels != -100
    expected = np_sparse_ce(labels[kept], logits[kept]).sum() / kept.sum()
    term = Term(losskit.losses.sparse_categorical_crossentropy, from_logits=True,
                ignore_index=-100, name="tokens")  # fmt: skip
    total, values = Objective([term])({}, labels, logits)
    np.testing.assert_allclose(scalar(values["tokens"]), expected, rtol=1e-5)


def test_per_timestep_weights_equal_keras_builtin():
    y = RNG.normal(size=(3, 4, 1)).astype("float32")
    p = RNG.normal(size=(3, 4, 1)).astype("float32")
    w = RNG.uniform(size=(3, 4)).astype("float32")
    keras_value = scalar(keras.losses.MeanSquaredError()(y, p, sample_weight=w))
    term = Term(keras.losses.mean_squared_error, name="mse")
    ours = scalar(Objective([term])({}, y, p, sample_weight=w)[0])
    np.testing.assert_allclose(ours, keras_value, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 2), (5,), (3, 4, 2)])
def test_sample_weight_that_does_not_fit_is_refused(shape):
    y = RNG.normal(size=(3, 4, 1)).astype("float32")
    term = Term(keras.losses.mean_squared_error, name="mse")
    with pytest.raises(ValueError, match=r"Term 'mse': sample_weight of shape .* does not fit"):
        Objective([term])({}, y, y, sample_weight=np.ones(shape, "float32"))


# ----- validation at construction -----------------------------------------------------------------


def test_unknown_keyword_is_refused_naming_term_and_keyword():
    with pytest.raises(TypeError, match="Term 'huber': unknown keyword 'delt'"):
        Term(losskit.losses.huber, delt=2.0)


@pytest.mark.parametrize("bad", ["prd", "y_pred", "layers.x", "var.head"])
def test_invalid_source_strings_are_refused_listing_valid_forms(bad):
    message = rf"y_pred={bad!r} is not a valid source; use 'y'.*inputs="
    with pytest.raises(ValueError, match=message):
        Term(losskit.losses.mse, y_pred=bad)


@keras.saving.register_keras_serializable(package="losskit_tests")
def scaled(values, weight, name):
    return values[:, 0] * weight[0, 0] * (2.0 if name == "double" else 1.0)


def test_inputs_routes_parameters_named_like_term_keywords_and_string_constants():
    term = Term(scaled, inputs={"values": "x.v", "weight": "x.W", "name": "double"},
                weight=0.5, name="scaled")  # fmt: skip
    assert term.sources == {"values": "x.v", "weight": "x.W"}
    assert term.constants == {"name": "double"}
    assert "name='double'" in repr(term)
    v = np.arange(4, dtype="float32")[:, None]
    total, values = Objective([term])({"v": v, "W": np.full((4, 1), 3.0, "float32")}, None, v)
    np.testing.assert_allclose(scalar(values["scaled"]), (v[:, 0] * 3 * 2).mean())
    np.testing.assert_allclose(scalar(total), 0.5 * (v[:, 0] * 3 * 2).mean())
    with pytest.raises(TypeError, match="inputs= must be a mapping"):
        Term(losskit.losses.logistic_nll, inputs="layer.latent")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert again.sources == term.sources and again.constants == term.constants


def test_error_inside_a_term_names_the_term():
    def broken(y_true, y_pred):
        raise ValueError("shapes do not match")

    with pytest.raises(ValueError, match="Term 'broken': shapes do not match"):
        Objective([Term(broken)])({}, np.ones((2, 1)), np.ones((2, 1)))


def test_weight_must_be_a_number_or_schedule():
    with pytest.raises(TypeError, match="Term 'mse': weight must be a number"):
        Term(losskit.losses.mse, weight="0.5")
    # A source string where the loss's own `weight` parameter was meant: the message says how.
    hint = r"did you mean inputs=\{'weight': 'var.embed.embeddings'\}"
    with pytest.raises(TypeError, match=hint):
        Term(losskit.losses.fused_linear_cross_entropy, hidden="layer.h", labels="y",
             weight="var.embed.embeddings")


# ----- models: mixed precision, logged weights, empty inputs --------------------------------------


def _model(units=1):
    inputs = keras.Input((3,), name="features")
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(units, name="out")(hidden)
    return keras.Model(inputs, outputs)


@losskit.loss(package="losskit_tests")
def dtype_probe_loss(y_true, y_pred):
    assert keras.backend.standardize_dtype(y_pred.dtype) == "float32", y_pred.dtype
    return ops.mean(ops.square(y_true - y_pred), axis=-1)


def side_gap(side, pred, hidden):
    for t in (side, pred, hidden):
        assert keras.backend.standardize_dtype(t.dtype) == "float32", t.dtype
    return ops.mean(ops.abs(side - pred), axis=-1) + 0.1 * ops.mean(ops.square(hidden), axis=-1)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_terms_compute_in_float32_under_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    inner = _model()
    objective = Objective([
        Term(dtype_probe_loss, name="probe"),
        Term(keras.losses.mean_squared_error, name="keras_mse"),
        Term(side_gap, side="x.side", pred="pred", hidden="layer.hidden", name="gap"),
    ])  # fmt: skip
    model = ObjectiveModel(inner, objective)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    x = RNG.normal(size=(16, 3)).astype("float32")
    y = RNG.normal(size=(16, 1)).astype("float32")
    side = RNG.normal(size=(16, 1)).astype("float16")
    history = model.fit({"features": x, "side": side}, y, batch_size=8, epochs=2, verbose=0)
    for name in ("loss", "probe", "keras_mse", "gap"):
        assert np.all(np.isfinite(history.history[name])), name
    # The logged terms are the float32 computation on the model's (16-bit) outputs.
    pred = np_(ops.cast(inner(x), "float32"))
    np.testing.assert_allclose(
        model.evaluate({"features": x, "side": side}, y, verbose=0, return_dict=True)["probe"],
        np.mean((y - pred) ** 2), rtol=1e-2)  # fmt: skip  (16-bit outputs differ by op order)


def test_weight_log_is_the_weight_applied_in_evaluate_and_after_loading(tmp_path):
    objective = Objective([Term(losskit.losses.mae, weight=Linear(0.0, 1.0, steps=10), name="mae")])
    model = ObjectiveModel(_model(), objective)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    x = RNG.normal(size=(8, 3)).astype("float32")
    y = RNG.normal(size=(8, 1)).astype("float32")
    history = model.fit({"features": x}, y, batch_size=2, epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["mae_weight"], [0.3])  # the 4th step's weight
    logs = model.evaluate({"features": x}, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["mae_weight"], 0.4)  # what the next step applies
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    logs = again.evaluate({"features": x}, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["mae_weight"], 0.4)


def test_empty_inputs_raise_a_clear_error():
    model = ObjectiveModel(_model(), Objective([Term(losskit.losses.mse)]))
    model.compile(optimizer="sgd")
    empty_x, empty_y = np.zeros((0, 3), "float32"), np.zeros((0, 1), "float32")
    with pytest.raises(ValueError, match="ObjectiveModel.fit: the data has no samples"):
        model.fit({"features": empty_x}, empty_y, verbose=0)
    with pytest.raises(ValueError, match="ObjectiveModel.evaluate: the data has no samples"):
        model.evaluate({"features": empty_x}, empty_y, verbose=0)


def test_export_inner_loads_without_losskit(tmp_path):
    import subprocess
    import sys

    model = ObjectiveModel(_model(), Objective([Term(losskit.losses.mse)]))
    model.compile(optimizer="sgd")
    x = RNG.normal(size=(4, 3)).astype("float32")
    model.fit({"features": x}, np.zeros((4, 1), "float32"), verbose=0)
    path = tmp_path / "inner.keras"
    model.export_inner(path)
    code = (
        "import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1]); "
        "assert 'losskit' not in sys.modules; "
        "print(m.predict(np.load(sys.argv[2]), verbose=0).sum())"
    )
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    expected = ops.convert_to_numpy(model.predict({"features": x}, verbose=0)).sum()
    np.testing.assert_allclose(float(out.stdout.split()[-1]), expected, rtol=1e-5)

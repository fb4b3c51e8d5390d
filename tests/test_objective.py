"""Term / Objective: routing of every source kind, reductions, errors, serialization, and use in
hand-written GradientTape / jax.grad loops."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import Objective, Term
from losskit.schedules import Linear
from tests.conftest import only_backend

RNG = np.random.default_rng(0)
N = 6
X = RNG.normal(size=(N, 3)).astype("float32")
SIDE = RNG.uniform(0.1, 0.9, size=(N, 2)).astype("float32")
Y = (RNG.uniform(size=N) > 0.5).astype("float32")
P = RNG.uniform(0.1, 0.9, size=(N, 1)).astype("float32")
H = RNG.normal(size=(N, 4)).astype("float32")
K = RNG.normal(size=(3, 1)).astype("float32")


def first(a):
    return a[:, 0]


def row_sum(a):
    return ops.sum(a, axis=-1)


def mse(y_true, y_pred):
    return ops.mean((y_true - y_pred) ** 2, axis=-1)


@keras.saving.register_keras_serializable(package="losskit_tests")
def teacher_gap(t, p, scale=1.0):
    return scale * ops.mean(ops.abs(t - p), axis=-1)


@losskit.loss(package="losskit_tests")
def obj_scaled_se(y_true, y_pred, scale=1.0):
    return scale * ops.mean((y_true - y_pred) ** 2, axis=-1)


def value(term, *args, **kwargs):
    total, values = Objective([term])(*args, **kwargs)
    return float(ops.convert_to_numpy(total)), {
        k: float(ops.convert_to_numpy(v)) for k, v in values.items()
    }


# ----- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        ("y", Y.mean()),
        ("y.a", Y.mean()),
        ("pred", P[:, 0].mean()),
        ("pred.b", SIDE[:, 0].mean()),
        ("x", X[:, 0].mean()),
        ("x.side", SIDE[:, 0].mean()),
        ("layer.hidden", H[:, 0].mean()),
    ],
)
def test_each_source_kind_routes_its_tensor(source, expected):
    x = {"features": X, "side": SIDE} if source == "x.side" else X
    y = {"a": Y[:, None]} if source == "y.a" else Y[:, None]
    pred = {"b": SIDE} if source == "pred.b" else P
    term = Term(first, a=source, name="t")
    total, values = value(term, x, y, pred, layers={"hidden": H})
    np.testing.assert_allclose(values["t"], expected, rtol=1e-6)
    np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_var_source_reads_a_dict_or_a_models_current_variable():
    def penalty(k):
        return ops.sum(k**2)

    term = Term(penalty, k="var.lin.kernel", name="l2")
    _, values = value(term, X, Y, P, variables={"lin.kernel": K})
    np.testing.assert_allclose(values["l2"], (K**2).sum(), rtol=1e-6)

    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1, name="lin")(inp))
    model.get_layer("lin").kernel.assign(K)
    _, values = value(term, X, Y, P, variables=model)
    np.testing.assert_allclose(values["l2"], (K**2).sum(), rtol=1e-6)


def test_default_routing_of_y_true_y_pred_and_defaults_kept():
    term = Term(teacher_gap, t="x.teacher", p="pred")  # scale keeps its default
    assert term.sources == {"t": "x.teacher", "p": "pred"}
    assert Term(mse).sources == {"y_true": "y", "y_pred": "pred"}
    _, values = value(Term(mse), X, Y, P)
    np.testing.assert_allclose(values["mse"], ((Y - P[:, 0]) ** 2).mean(), rtol=1e-6)


def test_keras_function_aligns_n_against_n1_and_takes_constants():
    logits = np.log(P / (1 - P))
    term = Term(keras.losses.binary_crossentropy, from_logits=True, name="bce")
    _, values = value(term, X, Y, logits)  # y (N,), pred (N, 1): never broadcast to (N, N)
    ref = -(Y * np.log(P[:, 0]) + (1 - Y) * np.log(1 - P[:, 0])).mean()
    np.testing.assert_allclose(values["bce"], ref, rtol=1e-5)


def test_keras_loss_instance_uses_per_sample_call_with_sample_weight():
    w = RNG.uniform(0.5, 2.0, size=N).astype("float32")
    huber = keras.losses.Huber(delta=0.3)
    _, values = value(Term(huber), X, Y[:, None], P, sample_weight=w)
    np.testing.assert_allclose(values["huber_loss"], float(huber(Y[:, None], P, w)), rtol=1e-6)


def test_losskit_loss_class_and_instance_use_fn_and_params():
    ref = ((Y - P[:, 0]) ** 2).mean()
    _, by_class = value(Term(obj_scaled_se), X, Y, P)
    _, by_instance = value(Term(obj_scaled_se(scale=3.0), name="se3"), X, Y, P)
    np.testing.assert_allclose(by_class["obj_scaled_se"], ref, rtol=1e-6)
    np.testing.assert_allclose(by_instance["se3"], 3 * ref, rtol=1e-6)


def test_sample_weights_and_global_batch_reduction_and_extra_axes():
    w = np.array([0, 1, 2, 0, 1, 2], "float32")
    term = Term(lambda a: a, a="layer.hidden", name="h")  # (N, 4): extra axis averaged
    _, values = value(term, X, Y, P, sample_weight=w, layers={"hidden": H})
    np.testing.assert_allclose(values["h"], (H.mean(axis=1) * w).sum() / N, rtol=1e-5)


def test_weighted_total_and_schedule_weights():
    objective = Objective(
        [
            Term(mse, weight=2.0),
            Term(row_sum, a="x.side", weight=Linear(0.0, 1.0, steps=10), name="side"),
        ]
    )
    total, values = objective({"side": SIDE}, Y, P, step=4)
    expected = 2 * ((Y - P[:, 0]) ** 2).mean() + 0.4 * SIDE.sum(axis=1).mean()
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert set(values) == {"mse", "side"}
    with pytest.raises(ValueError, match="Term 'side' has a scheduled weight.*step="):
        objective({"side": SIDE}, Y, P)


# ----- errors -------------------------------------------------------------------------------------


def test_missing_source_names_term_parameter_source_and_available_keys():
    term = Term(teacher_gap, t="x.teacher", p="pred", name="distill")
    with pytest.raises(KeyError) as err:
        Objective([term])({"features": X, "mask": SIDE}, Y, P, layers={"hidden": H})
    message = str(err.value)
    for part in [
        "Term 'distill'",
        "parameter 't'",
        "'x.teacher'",
        "x.features",
        "x.mask",
        "layer.hidden",
        "pred",
        "'y'",
    ]:
        assert part in message, (part, message)


def test_parameter_without_source_and_unknown_parameter_are_refused():
    with pytest.raises(TypeError, match="Term 'teacher_gap': parameter 't' has no source"):
        Term(teacher_gap, p="pred")
    with pytest.raises(TypeError, match="Term 'mse': unknown keyword 'z': not a parameter"):
        Term(mse, z="x.side")


def test_source_strings_are_validated():
    parsed = losskit.sources.parse("var.logistic.kernel")
    assert (parsed.kind, parsed.layer, parsed.variable) == ("var", "logistic", "kernel")
    for bad in ("var.logistic", "prd", "y_pred", "layers.x", "layer.", 3):
        assert losskit.sources.parse(bad) is None
    with pytest.raises(ValueError, match="Term 'first': a='layer.' is not a valid source"):
        Term(first, a="layer.")
    assert Term(row_sum, a="x.side", name="s").constants == {}


def test_scalar_from_a_batch_term_is_refused_naming_the_term():
    term = Term(lambda y_true, y_pred: ops.mean((y_true - y_pred) ** 2), name="meaned")
    with pytest.raises(ValueError, match="Term 'meaned' returned a scalar.*per sample"):
        Objective([term])(X, Y, P)


def test_wrong_leading_axis_is_refused():
    term = Term(lambda a: ops.transpose(a), a="layer.hidden", name="transposed")
    with pytest.raises(ValueError, match="term 'transposed'.*leading axis"):
        Objective([term])(X, Y, P, layers={"hidden": H})


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match=r"unique; repeated \['mse'\]"):
        Objective([Term(mse), Term(mse)])


# ----- serialization ------------------------------------------------------------------------------


def test_objective_round_trips_through_keras_serialization():
    objective = Objective(
        [
            Term(keras.losses.binary_crossentropy, from_logits=True, name="bce"),
            Term(teacher_gap, t="x.teacher", p="pred", scale=0.5, weight=Linear(0, 1, 8)),
            Term(obj_scaled_se(scale=2.0), name="se"),
            Term(keras.losses.BinaryCrossentropy(label_smoothing=0.2), weight=0.1),
        ]
    )
    config = keras.saving.serialize_keras_object(objective)
    again = keras.saving.deserialize_keras_object(config, safe_mode=True)
    x = {"teacher": P}
    a, va = objective(x, Y, P, step=3)
    b, vb = again(x, Y, P, step=3)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    assert list(va) == list(vb) == ["bce", "teacher_gap", "se", "binary_crossentropy"]
    assert again.terms[1].sources == {"t": "x.teacher", "p": "pred"}
    assert again.terms[1].constants == {"scale": 0.5}
    assert again.terms[2].fn.params["scale"] == 2.0


def test_lambda_and_unregistered_function_fail_at_save_naming_the_term():
    with pytest.raises(ValueError, match="Term 'anon'.*lambda.*register_keras_serializable"):
        keras.saving.serialize_keras_object(Objective([Term(lambda a: a, a="x", name="anon")]))
    with pytest.raises(ValueError, match="Term 'first'.*'first' is not registered"):
        keras.saving.serialize_keras_object(Objective([Term(first, a="x")]))


# ----- hand-written training loops ----------------------------------------------------------------


def _tiny_model():
    inp = keras.Input((3,))
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="out")(inp))


def _reference_grads(model):
    """Gradient of BCE + 0.5 * mean|teacher - p| computed in NumPy for a logistic model."""
    kernel, bias = (ops.convert_to_numpy(v) for v in model.get_layer("out").variables)
    p = 1 / (1 + np.exp(-(X @ kernel + bias)))[:, 0]
    t = SIDE[:, 0]
    dz = (p - Y) / N + 0.5 * np.sign(p - t) * p * (1 - p) / N
    return [X.T @ dz[:, None], np.array([dz.sum()])]


OBJECTIVE = Objective(
    [
        Term(keras.losses.binary_crossentropy, name="bce"),
        Term(teacher_gap, t="x.teacher", p="pred", weight=0.5),
    ]
)


@only_backend("tensorflow")
def test_objective_in_a_gradient_tape_loop():
    import tensorflow as tf

    model = _tiny_model()
    x = {"features": X, "teacher": SIDE[:, :1]}
    with tf.GradientTape() as tape:
        pred = model(x["features"])
        total, values = OBJECTIVE(x, Y, pred)
    grads = tape.gradient(total, model.trainable_variables)
    for g, ref in zip(grads, _reference_grads(model)):
        np.testing.assert_allclose(g.numpy(), ref, rtol=1e-4, atol=1e-6)
    assert set(values) == {"bce", "teacher_gap"}


@only_backend("jax")
def test_objective_in_a_jax_grad_loop():
    import jax

    model = _tiny_model()
    x = {"features": X, "teacher": SIDE[:, :1]}

    def loss_fn(trainable, non_trainable):
        pred, _ = model.stateless_call(trainable, non_trainable, x["features"])
        total, values = OBJECTIVE(x, Y, pred)
        return total, values

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    (total, values), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        trainable, non_trainable
    )
    for g, ref in zip(grads, _reference_grads(model)):
        np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4, atol=1e-6)
    assert set(values) == {"bce", "teacher_gap"}

"""Contract gaps a new-user trial found (issue 20, second round): labels that a backend's integer
conversion would wrap, parameter domains against Keras's, Term constants, per-sample weights of
per-position values, list inputs, check_gradients' own contract."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import losses as L
from tests import test_fuzz_contracts as fuzz  # the harness's valid inputs of every class
from tests.conftest import only_backend

BIG = 2**32 + 1  # int32 wraps it to 1: a valid class, the silent wrong answer this guards


def _logits(shape=(3, 4)):
    return np.random.default_rng(0).normal(size=shape).astype("float32")


def _probs(shape=(3, 4)):
    return keras.ops.convert_to_numpy(ops.softmax(_logits(shape)))


def _fused(labels):
    rng = np.random.default_rng(1)
    h, w = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    return L.fused_linear_cross_entropy(h, w, labels)


def _fused_distillation(labels):
    rng = np.random.default_rng(1)
    h, w = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    return L.fused_linear_distillation(h, w, h, w, labels)


def _ctc(labels):
    return L.ctc(np.stack([labels, labels]), _logits((2, 6, 4)))


CLASS_INDEX_LOSSES = {
    "sparse_categorical_crossentropy": lambda y: L.sparse_categorical_crossentropy(
        y, _logits(), from_logits=True),
    "SparseCategoricalCrossentropy": lambda y: L.SparseCategoricalCrossentropy(
        from_logits=True)(y, _logits()),
    "generalized_cross_entropy": lambda y: L.generalized_cross_entropy(y, _probs()),
    "GeneralizedCrossEntropy": lambda y: L.GeneralizedCrossEntropy()(y, _probs()),
    "fused_linear_cross_entropy": _fused,
    "fused_linear_distillation": _fused_distillation,
    "ctc": _ctc,
}


@pytest.mark.parametrize("big", [BIG, 2**40, -(2**32) + 2], ids=["2**32+1", "2**40", "-2**32+2"])
@pytest.mark.parametrize("form", ["int64", "list"])
@pytest.mark.parametrize("name", sorted(CLASS_INDEX_LOSSES))
def test_labels_a_backend_would_wrap_raise_naming_the_loss(name, form, big):
    labels = [0, big, 2]
    labels = np.array(labels, "int64") if form == "int64" else labels
    with pytest.raises(ValueError, match=rf"(?s){name}.*{big}"):
        CLASS_INDEX_LOSSES[name](labels)


@pytest.mark.parametrize("loss", [L.triplet, L.supcon, L.Triplet()])
def test_class_ids_are_never_aliased(loss):
    """Metric-learning labels are any ids: 2**32 + 1 and 1 are different classes. Where the
    backend keeps 64 bits the loss equals that of distinct small ids; else it raises."""
    emb = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
    labels = np.array([1, BIG, 1, BIG], "int64")
    name = getattr(loss, "name", None) or loss.__name__
    if losskit.backend.integer_bits() < 64:
        with pytest.raises(ValueError, match=rf"{name}.*{BIG}"):
            loss(labels, emb)
        return
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.sum(loss(labels, emb))),
        ops.convert_to_numpy(ops.sum(loss(np.array([1, 2, 1, 2], "int64"), emb))), rtol=1e-6)


def test_term_side_labels_a_backend_would_wrap_raise_naming_the_term():
    term = losskit.Term(L.sparse_categorical_crossentropy, name="ce", from_logits=True)
    data = {"y": np.array([0, BIG, 2], "int64"), "pred": _logits()}
    with pytest.raises(ValueError, match=rf"Term 'ce'.*{BIG}"):
        term.values(lambda name, p, s: data[s.key if s.kind == "x" else s.kind])


# --- Parameter domains against Keras's ------------------------------------------------------
def _onehot(n=4, k=3):
    return np.eye(k, dtype="float32")[np.arange(n) % k]


def _binary(n=4, d=3):
    return (np.random.default_rng(3).uniform(size=(n, d)) > 0.5).astype("float32")


def _probs_of(y):
    rng = np.random.default_rng(4)
    return rng.uniform(0.05, 0.95, size=y.shape).astype("float32")


def _softmax_probs(n=4, k=3):
    return keras.ops.convert_to_numpy(ops.softmax(_logits((n, k))))


def _reg():
    rng = np.random.default_rng(5)
    return rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 3)).astype("float32")


def _embeddings():
    rng = np.random.default_rng(6)
    e = rng.normal(size=(8, 4)).astype("float32")
    return np.arange(8) % 3, e / np.linalg.norm(e, axis=1, keepdims=True)


# Values at and inside the boundaries of each documented Keras domain, as Python ints and floats
# and NumPy scalars. A value Keras itself refuses is skipped; every other one losskit must accept
# with Keras's value.
UNIT = [0, 0.0, 1e-7, np.float32(0.3), 0.5, np.float64(0.999), 1, 1.0, np.int64(1)]
NONNEGATIVE = [0, 0.0, 1e-7, np.float32(0.3), 1, 2.0, np.int64(3), 1e3]
POSITIVE = [1e-7, np.float32(0.3), 1, 2.0, np.int64(3), 1e3]
ANY = [*UNIT, np.float32(1.5), 2, 4.0, -0.5]  # Keras's focal alpha: any number

# (losskit class, {param: keras param}, keras class, fixed kwargs (losskit, keras), inputs, values)
KERAS_PAIRS = {
    "CategoricalCrossentropy.label_smoothing": (
        L.CategoricalCrossentropy, "label_smoothing", keras.losses.CategoricalCrossentropy,
        "label_smoothing", ({}, {}), lambda: (_onehot(), _softmax_probs()), UNIT),
    "BinaryCrossentropy.label_smoothing": (
        L.BinaryCrossentropy, "label_smoothing", keras.losses.BinaryCrossentropy,
        "label_smoothing", ({}, {}), lambda: (_binary(), _probs_of(_binary())), UNIT),
    "SparseCategoricalCrossentropy.ignore_index": (
        L.SparseCategoricalCrossentropy, "ignore_index", keras.losses.SparseCategoricalCrossentropy,
        "ignore_class", ({"from_logits": True}, {"from_logits": True}),
        lambda: (np.array([0, 1, 2, 1]), _logits((4, 3))), [0, 1, np.int64(2), -1, -100]),
    "Focal(binary).gamma": (
        L.Focal, "gamma", keras.losses.BinaryFocalCrossentropy, "gamma",
        ({"alpha": 0.25}, {"apply_class_balancing": True, "alpha": 0.25}),
        lambda: (_binary(), _probs_of(_binary())), NONNEGATIVE),
    "Focal(binary).alpha": (
        L.Focal, "alpha", keras.losses.BinaryFocalCrossentropy, "alpha",
        ({}, {"apply_class_balancing": True}), lambda: (_binary(), _probs_of(_binary())), ANY),
    "Focal(categorical).gamma": (
        L.Focal, "gamma", keras.losses.CategoricalFocalCrossentropy, "gamma",
        ({"mode": "categorical", "alpha": 0.25}, {"alpha": 0.25}),
        lambda: (_onehot(), _softmax_probs()), NONNEGATIVE),
    "Focal(categorical).alpha": (
        L.Focal, "alpha", keras.losses.CategoricalFocalCrossentropy, "alpha",
        ({"mode": "categorical"}, {}), lambda: (_onehot(), _softmax_probs()), ANY),
    "Huber.delta": (
        L.Huber, "delta", keras.losses.Huber, "delta", ({}, {}), _reg, NONNEGATIVE),
    "GeneralizedCrossEntropy.q": (
        L.GeneralizedCrossEntropy, "q", keras.losses.CategoricalGeneralizedCrossEntropy, "q",
        ({}, {}), lambda: (np.array([0, 1, 2, 1]), _softmax_probs()), UNIT),
    "Circle.gamma": (
        L.Circle, "gamma", keras.losses.Circle, "gamma", ({}, {}), _embeddings,
        NONNEGATIVE[:-1]),
    "Circle.margin": (
        L.Circle, "margin", keras.losses.Circle, "margin", ({}, {}), _embeddings, UNIT),
    "CosineSimilarity.axis": (
        L.CosineSimilarity, "axis", keras.losses.CosineSimilarity, "axis", ({}, {}), _reg,
        [-1, 1, np.int64(-1)]),
}


@pytest.mark.parametrize("case", sorted(KERAS_PAIRS))
def test_every_value_keras_accepts_is_accepted_with_keras_value(case):
    ours, param, theirs, their_param, (fixed, their_fixed), inputs, values = KERAS_PAIRS[case]
    y_true, y_pred = inputs()
    checked = 0
    for value in values:
        try:
            # Per sample: Keras's Circle leaves anchors of value 0 out of its mean.
            expected = ops.convert_to_numpy(theirs(
                **their_fixed, **{their_param: value}, reduction=None)(y_true, y_pred))
        except Exception:  # noqa: BLE001 - a value Keras refuses need not be accepted
            continue
        if not np.isfinite(expected).all():
            continue
        got = ops.convert_to_numpy(ours(**fixed, **{param: value}, reduction=None)(y_true, y_pred))
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6,
                                   err_msg=f"{case}={value!r}")
        checked += 1
    assert checked >= 2, f"Keras accepted only {checked} of {values}"


@pytest.mark.parametrize("fn, kwargs", [
    (L.categorical_crossentropy, {"label_smoothing": 1.0}),
    (L.binary_crossentropy, {"label_smoothing": 1}),
    (L.poly1, {"label_smoothing": 1.0}),
    (L.huber, {"delta": 0.0}),
])
def test_new_boundaries_are_finite_and_differentiable(fn, kwargs):
    y_true = _onehot() if fn is not L.huber else _reg()[0]
    y_pred = _softmax_probs() if fn is not L.huber else _reg()[1]
    values, grads = losskit.backend.value_and_grad(
        lambda p: ops.sum(fn(y_true, p, **kwargs)), [ops.convert_to_tensor(y_pred)])
    assert np.isfinite(ops.convert_to_numpy(values))
    assert np.isfinite(ops.convert_to_numpy(grads[0])).all()


@pytest.mark.parametrize("fn", [L.fused_linear_cross_entropy])
def test_fused_label_smoothing_domain_is_cross_entropys(fn):
    rng = np.random.default_rng(7)
    h, w = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    y = np.arange(6) % 5
    logits = h @ w.T
    expected = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=1.0)(
        np.eye(5, dtype="float32")[y], logits)
    got = fn(h, w, y, label_smoothing=1.0)
    np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(expected),
                               rtol=1e-5)
    assert L.fused_linear_cross_entropy.domains["label_smoothing"].text == (
        L.categorical_crossentropy.domains["label_smoothing"].text)


# --- Term constants against the function's declared domains ---------------------------------
@pytest.mark.parametrize("fn, bad, error", [
    (L.huber, {"delta": -1.0}, ValueError),
    (L.huber, {"delta": float("nan")}, ValueError),
    (L.sparse_categorical_crossentropy, {"label_smoothing": 1.5}, ValueError),
    (L.sparse_categorical_crossentropy, {"inputs": {"ignore_index": "0"}}, TypeError),
    (L.focal, {"inputs": {"mode": "sparse"}}, ValueError),
    (L.fused_linear_cross_entropy, {"hidden": "x.h", "labels": "y", "chunk_size": 0,
                                    "inputs": {"weight": "x.w"}}, ValueError),
])
def test_term_constants_are_checked_at_construction(fn, bad, error):
    constants = {k: v for k, v in {**bad, **bad.get("inputs", {})}.items()
                 if k != "inputs" and not str(v).startswith(("x.", "y"))}
    param = next(iter(constants))
    with pytest.raises(error, match=rf"Term '{fn.__name__}': parameter '{param}' must be"):
        losskit.Term(fn, **bad)


def test_term_constants_in_the_domain_are_kept():
    term = losskit.Term(L.huber, delta=0.0)  # the boundary Keras accepts
    y, p = _reg()
    values, _ = term.values(lambda name, param, s: {"y": y, "pred": p}[s.kind])
    np.testing.assert_allclose(ops.convert_to_numpy(values), 0.0)


# --- Per-sample weights of per-position values --------------------------------------------
def _positions(seed=8):
    rng = np.random.default_rng(seed)
    y = rng.uniform(size=(6, 4, 2)).astype("float32")
    p = rng.uniform(0.05, 0.95, size=(6, 4, 2)).astype("float32")
    return y, p, rng.uniform(0.5, 2.0, size=6).astype("float32")


def _np_per_position(name, y, p):
    e = p - y
    return {
        "Huber": np.mean(np.where(np.abs(e) <= 1.0, 0.5 * e**2, np.abs(e) - 0.5), axis=-1),
        "MSE": np.mean(e**2, axis=-1),
        "MAE": np.mean(np.abs(e), axis=-1),
        "BinaryCrossentropy": np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)), axis=-1),
    }[name]


def _np_reduce(values, weights, reduction):
    weighted = values * weights
    return {"none": weighted, "sum": weighted.sum(),
            "sum_over_batch_size": weighted.sum() / values.size,
            "mean": weighted.sum() / values.size,
            "mean_with_sample_weight": weighted.sum() / weights.sum()}[reduction]


@pytest.mark.parametrize("reduction",
                         ["sum_over_batch_size", "sum", "none", "mean", "mean_with_sample_weight"])
@pytest.mark.parametrize("name", ["Huber", "MSE", "MAE", "BinaryCrossentropy"])
def test_per_sample_weights_of_per_position_values(name, reduction):
    y, p, w = _positions()
    loss = getattr(L, name)(reduction=reduction)
    expanded = np.broadcast_to(w[:, None], (6, 4))
    got = ops.convert_to_numpy(loss(y, p, sample_weight=w))
    # Keras's reduction of the values times the expanded weight, and the same in NumPy.
    keras_value = ops.convert_to_numpy(loss(y, p, sample_weight=expanded))
    np.testing.assert_allclose(got, keras_value, rtol=1e-5)
    reference = _np_reduce(_np_per_position(name, y, p), expanded, reduction)
    if reduction != "mean":  # Keras's "mean" divides by the weights' sum or the count by version
        np.testing.assert_allclose(got, reference, rtol=1e-5)


def test_per_sample_weights_of_per_position_values_in_fit():
    y, _, w = _positions()
    x = np.random.default_rng(9).normal(size=(6, 4, 3)).astype("float32")
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=L.Huber())
    model.fit(x, y, sample_weight=w, batch_size=6, epochs=1, verbose=0)
    p = ops.convert_to_numpy(model(x))
    expected = _np_reduce(_np_per_position("Huber", y, p), w[:, None], "sum_over_batch_size")
    got = model.evaluate(x, y, sample_weight=w, batch_size=6, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# --- Lists, as Keras's functions take them --------------------------------------------------
KERAS_FUNCTIONS = {
    "MSE": keras.losses.mean_squared_error, "MAE": keras.losses.mean_absolute_error,
    "Huber": keras.losses.huber, "LogCosh": keras.losses.log_cosh,
    "BinaryCrossentropy": keras.losses.binary_crossentropy,
    "CategoricalCrossentropy": keras.losses.categorical_crossentropy,
    "SparseCategoricalCrossentropy": keras.losses.sparse_categorical_crossentropy,
    "Hinge": keras.losses.hinge, "SquaredHinge": keras.losses.squared_hinge,
    "MAPE": keras.losses.mean_absolute_percentage_error,
    "MSLE": keras.losses.mean_squared_logarithmic_error,
    "KLDivergence": keras.losses.kl_divergence,
}


@pytest.mark.parametrize("name", sorted(L.CLASSES))
def test_every_library_function_takes_lists(name):
    fn = L.CLASSES[name].fn
    y, p = fuzz._inputs(name)
    expected = ops.convert_to_numpy(fn(y, p))
    got = ops.convert_to_numpy(fn(y.tolist(), p.tolist()))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if name in KERAS_FUNCTIONS:  # where Keras's function takes the lists: the same values
        try:
            keras_value = ops.convert_to_numpy(KERAS_FUNCTIONS[name](y.tolist(), p.tolist()))
        except Exception:  # noqa: BLE001 - Keras's sparse CE reads y_pred.shape of a list
            return
        np.testing.assert_allclose(got, keras_value, rtol=1e-4, atol=1e-6)


def test_the_issue_example_takes_lists():
    got = L.mse([[1.0], [2.0]], [[0.0], [0.0]])
    np.testing.assert_allclose(ops.convert_to_numpy(got), [1.0, 4.0])
    assert "float32" in str(got.dtype)  # Python floats in floatx, as Keras converts them


# --- Shapes unknown while tracing (TensorFlow input signatures with None) -----------------
@only_backend("tensorflow")  # JAX and torch know every shape when they trace
@pytest.mark.parametrize("call, name", [
    (lambda a, b: L.mse(a, b), "mse"), (lambda a, b: L.MSE()(a, b), "MSE"),
    (lambda a, b: L.huber(a, b), "huber")])
@pytest.mark.parametrize("other", [(4, 1), (4, 2)])
def test_shapes_unknown_while_tracing_are_checked_when_the_graph_runs(call, name, other):
    import tensorflow as tf

    spec = [tf.TensorSpec([None, None], "float32")] * 2
    fn = tf.function(call, input_signature=spec)
    a = np.random.default_rng(10).normal(size=(4, 3)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(fn(a, 2 * a)),
                               ops.convert_to_numpy(call(a, 2 * a)), rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{name}.{{1,3}}: y_true"):
        fn(a, np.zeros(other, "float32"))


@only_backend("tensorflow")
def test_sparse_labels_unknown_while_tracing_are_checked_when_the_graph_runs():
    import tensorflow as tf

    fn = tf.function(lambda y, z: L.sparse_categorical_crossentropy(y, z, from_logits=True),
                     input_signature=[tf.TensorSpec([None], "int32"),
                                      tf.TensorSpec([None, 3], "float32")])
    with pytest.raises(tf.errors.InvalidArgumentError, match="sparse_categorical_crossentropy"):
        fn(np.array([0, 1, 2], "int32"), _logits((4, 3)))


# --- check_gradients' own contract ---------------------------------------------------------
def _double(x):
    return x * 2.0


@pytest.mark.parametrize("wrt", [[3], [-1], [], [0.5]])
def test_check_gradients_refuses_to_check_nothing(wrt):
    with pytest.raises(ValueError, match=r"check_gradients\(_double\): wrt"):
        losskit.gradients.check_gradients(_double, np.array([1.0, 2.0]), wrt=wrt)


def test_check_gradients_refuses_integer_only_inputs():
    with pytest.raises(ValueError, match=r"check_gradients\(_double\): no input to check"):
        losskit.gradients.check_gradients(_double, np.array([1, 2]))


@pytest.mark.parametrize("param, value", [("eps", 0), ("eps", -1e-6), ("eps", float("nan")),
                                          ("atol", -1.0), ("rtol", "1e-5")])
def test_check_gradients_parameters_are_checked(param, value):
    with pytest.raises((ValueError, TypeError), match=rf"check_gradients: parameter '{param}'"):
        losskit.gradients.check_gradients(_double, np.array([1.0, 2.0]), **{param: value})


def _sqrt(x):
    return ops.sqrt(x)


def test_check_gradients_reports_a_nan_value():
    report = losskit.gradients.check_gradients(_sqrt, np.array([1.0, 2.0, -1.0]))
    assert not report.ok
    assert "function value is nan at index (2,)" in str(report)


@losskit.custom_gradient
def _no_rule(x):
    return x * 2.0, None


def test_custom_gradient_without_grad_fn_names_the_function():
    x = ops.convert_to_tensor(np.array([1.0, 2.0], "float32"))
    match = r"custom_gradient '_no_rule': the function must return \(value, grad_fn\)"
    with pytest.raises(ValueError, match=match):
        losskit.backend.value_and_grad(lambda x: ops.sum(_no_rule(x)), [x])
    with pytest.raises(ValueError, match=match):
        losskit.gradients.check_gradients(_no_rule, np.array([1.0, 2.0]))

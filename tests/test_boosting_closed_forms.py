"""Closed-form boosting derivatives (`losskit/_closed_form_derivatives.py`) against autodiff.

Every entry of the table, with parameters at and off their defaults, one and several outputs,
on generated rows with extreme scores: `g` and `h` equal the active backend's autodiff of the
same loss object (`derivatives="autodiff"`). Losses or parameters without a closed form fall back
to autodiff. And the class behind a lost parameter: what boosting evaluates is the loss object's
own per-sample value, for every Keras built-in with parameters off their defaults.
"""

import functools
import inspect

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import losskit
from losskit import _closed_form_derivatives, boosting
from losskit._keras import LossFunctionWrapper
from losskit.losses import _common

K = 3  # classes / outputs of the multi-column cases

# Extreme scores saturate the logistic (h ~ 0 where g is not): the flat-Hessian warning is right
# there and not what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore:losskit.boosting.*the Hessian is 0")

# (id, loss, labels kind, outputs)
CASES = [
    ("keras_bce", keras.losses.BinaryCrossentropy(from_logits=True), "binary", 1),
    ("keras_bce_smoothed_multilabel",
     keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.3), "binary", K),
    ("losskit_bce_pos_weight",
     losskit.losses.BinaryCrossentropy(from_logits=True, pos_weight=2.5, label_smoothing=0.1),
     "binary", 1),
    ("losskit_bce_multilabel", losskit.losses.BinaryCrossentropy(from_logits=True), "binary",
     K),
    ("keras_cce_smoothed",
     keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2), "classes", K),
    ("keras_scce", keras.losses.SparseCategoricalCrossentropy(from_logits=True), "classes", K),
    ("losskit_cce", losskit.losses.CategoricalCrossentropy(from_logits=True), "classes", K),
    ("losskit_scce_smoothed",
     losskit.losses.SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.2),
     "classes", K),
    ("keras_mse", keras.losses.MeanSquaredError(), "real", 1),
    ("keras_mse_multioutput", keras.losses.MeanSquaredError(), "real", K),
    ("losskit_mse_function", losskit.losses.mse, "real", 1),
    ("losskit_mse_class", losskit.losses.MSE(), "real", K),
    ("keras_huber", keras.losses.Huber(delta=0.7), "real", 1),
    ("keras_huber_multioutput", keras.losses.Huber(delta=2.0), "real", K),
    ("losskit_huber", losskit.losses.Huber(delta=2.0), "real", 1),
    ("losskit_huber_function", losskit.losses.huber, "real", 1),
    ("losskit_huber_zero_delta", losskit.losses.Huber(delta=0.0), "real", 1),
    ("keras_log_cosh", keras.losses.LogCosh(), "real", 1),
    ("losskit_log_cosh", losskit.losses.LogCosh(), "real", K),
]

EXTREMES = np.array([-1e3, -40.0, -1e-12, 0.0, 1e-12, 0.7, -0.7, 2.0, 40.0, 1e3])


def _rows(kind, k, n, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    score = scale * rng.normal(size=(n, k))
    score.flat[: len(EXTREMES)] = EXTREMES[: score.size]
    if kind == "binary":
        labels = rng.integers(0, 2, size=(n, k)).astype(float)
        labels.flat[::7] = rng.uniform(size=labels.flat[::7].shape)  # soft labels too
    elif kind == "classes":
        labels = rng.integers(0, k, size=n).astype(float)
    else:
        labels = 2.0 * rng.normal(size=(n, k))
        labels[:4] = score[:4]  # zero residuals
        labels[4, 0] = score[4, 0] - 0.7  # |e| exactly at Huber's delta = 0.7
    if k == 1:
        score, labels = score[:, 0], labels.reshape(n)
    return labels, score


def _tolerance(case_id):
    if case_id == "keras_log_cosh" and keras.backend.backend() == "torch":
        # torch's softplus is linear beyond 20: Keras's log-cosh on torch is off by ~e^-20 there.
        return 1e-8
    return 1e-12


@pytest.mark.parametrize("case_id, loss, kind, k", CASES, ids=[c[0] for c in CASES])
def test_closed_form_equals_autodiff(case_id, loss, kind, k):
    closed = boosting.objective(loss)
    assert closed.closed_form is not None, "the table should cover this loss"
    autodiff = boosting.objective(loss, derivatives="autodiff")
    assert autodiff.closed_form is None
    for seed in range(3):
        labels, score = _rows(kind, k, 64, seed)
        weight = np.random.default_rng(seed).uniform(0.1, 3.0, len(score))
        g, h = closed.gradients(labels, score, weight)
        g_ref, h_ref = autodiff.gradients(labels, score, weight)
        assert g.shape == h.shape == np.shape(score)
        atol = _tolerance(case_id)
        np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=atol)
        np.testing.assert_allclose(h, h_ref, rtol=1e-9, atol=atol)
        assert np.all(h >= 0)


@given(
    score=st.floats(-700, 700, allow_nan=False),
    label=st.floats(0, 1),
    pos_weight=st.sampled_from([1.0, 0.5, 4.0]),
    smoothing=st.sampled_from([0.0, 0.25]),
)
def test_binary_closed_form_matches_autodiff_at_any_score(score, label, pos_weight, smoothing):
    loss = losskit.losses.BinaryCrossentropy(
        from_logits=True, pos_weight=pos_weight, label_smoothing=smoothing)
    labels, scores = np.array([label, 1.0 - label]), np.array([score, -score])
    g, h = boosting.objective(loss).gradients(labels, scores)
    g_ref, h_ref = boosting.objective(loss, derivatives="autodiff").gradients(labels, scores)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(h, h_ref, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(
    "loss",
    [
        keras.losses.BinaryCrossentropy(from_logits=True, axis=0),  # not the last-axis mean
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=1),
        losskit.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_index=1),
        functools.partial(keras.losses.binary_crossentropy, from_logits=True, axis=0),
        losskit.losses.Cauchy(),  # no entry
        keras.losses.MeanAbsoluteError(),
    ],
    ids=["bce_axis0", "scce_ignore_class", "scce_ignore_index", "bce_fn_axis0",
         "cauchy", "mae"],
)
def test_uncovered_losses_and_parameters_use_autodiff(loss):
    assert boosting.objective(loss).closed_form is None
    assert "autodiff derivatives" in repr(boosting.objective(loss))


def test_a_subclass_overriding_call_uses_autodiff():
    class Doubled(keras.losses.MeanSquaredError):
        def call(self, y_true, y_pred):
            return 2.0 * super().call(y_true, y_pred)

    obj = boosting.objective(Doubled())
    assert obj.closed_form is None
    g, h = obj.gradients(np.zeros(4), np.arange(4.0))
    np.testing.assert_allclose(g, 4.0 * np.arange(4.0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, np.full(4, 4.0), rtol=0, atol=1e-12)


def test_unknown_parameters_leave_the_table():
    assert _closed_form_derivatives.lookup(losskit.losses.huber, {"delta": 1.0}) is not None
    assert _closed_form_derivatives.lookup(losskit.losses.huber, {"new_knob": 1.0}) is None


def test_derivatives_option_is_checked():
    with pytest.raises(ValueError, match="derivatives must be 'auto' or 'autodiff'"):
        boosting.objective(keras.losses.MeanSquaredError(), derivatives="closed")


def _non_default_kwargs(cls):
    """Each numeric or boolean parameter of a Keras loss class moved off its default (logits
    where the loss takes them: boosting hands raw scores)."""
    kwargs = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        default = parameter.default
        if name in ("self", "reduction", "name", "dtype", "axis"):
            continue
        if isinstance(default, bool):
            kwargs[name] = True if name == "from_logits" else not default
        elif isinstance(default, float):
            kwargs[name] = 0.5 * default + 0.1
    return kwargs


# Keras built-ins whose rows are per-sample values of (scores, labels) boosting can hand over:
# not metric learning (Circle), sequences (CTC), whole-batch overlaps (Dice, Tversky) or a power
# of a probability picked by sparse labels (CategoricalGeneralizedCrossEntropy: no raw scores).
EXCLUDED = ("CTC", "Circle", "Dice", "Tversky", "CategoricalGeneralizedCrossEntropy")
KERAS_CLASSES = sorted(
    (c for c in vars(keras.losses).values()
     if isinstance(c, type) and issubclass(c, LossFunctionWrapper)
     and c is not LossFunctionWrapper and c.__name__ not in EXCLUDED),
    key=lambda c: c.__name__,
)


@pytest.mark.parametrize("cls", KERAS_CLASSES, ids=lambda c: c.__name__)
def test_boosting_evaluates_the_loss_object_itself(cls):
    """A loss rebuilt from its config lost what the config leaves out (Keras's Huber drops
    `delta`); the metric and the objective's derivatives must be those of the object given."""
    loss = cls(**_non_default_kwargs(cls))
    if loss.fn in boosting.PROBABILITY_INPUTS:
        with pytest.raises(ValueError, match="reads y_pred as probabilities"):
            boosting.objective(loss)
        return
    rng = np.random.default_rng(3)
    score = rng.uniform(0.05, 0.95, size=(32, K))  # in range for probability-style losses too
    classes = rng.integers(0, K, 32)
    labels = classes if "Sparse" in cls.__name__ else np.eye(K)[classes]
    expected = float(keras.ops.convert_to_numpy(loss(labels, score)))
    value = boosting.metric(loss).value(labels, score)
    np.testing.assert_allclose(value, expected, rtol=2e-5, atol=1e-7)


def test_keras_huber_keeps_its_delta():
    e = np.array([0.5, 1.5, 3.0])
    for loss in (keras.losses.Huber(delta=2.0), losskit.losses.Huber(delta=2.0)):
        for derivatives in ("auto", "autodiff"):
            g, h = boosting.objective(loss, derivatives=derivatives).gradients(np.zeros(3), e)
            np.testing.assert_allclose(g, [0.5, 1.5, 2.0], rtol=0, atol=1e-12)
            np.testing.assert_allclose(h, [1.0, 1.0, 0.0], rtol=0, atol=1e-12)


def test_partials_of_closed_form_functions_keep_their_parameters():
    obj = boosting.objective(functools.partial(losskit.losses.huber, delta=2.0))
    assert obj.closed_form is not None and obj.loss.name == "huber"
    g, h = obj.gradients(np.zeros(3), np.array([0.5, 1.5, 3.0]))
    np.testing.assert_allclose(g, [0.5, 1.5, 2.0], rtol=0, atol=1e-12)
    sparse = boosting.objective(
        functools.partial(keras.losses.sparse_categorical_crossentropy, from_logits=True))
    assert sparse.closed_form is not None and sparse.loss.sparse
    g, _ = sparse.gradients(np.array([0, 1, 2]), np.zeros((3, 3)))
    np.testing.assert_allclose(g, 1 / 3 - np.eye(3), rtol=0, atol=1e-12)


def _candidate_functions():
    """Every Keras loss function behind a built-in class, and every losskit function of
    `(y_true, y_pred)` rows (not pairs, boxes, sequences, rankings or fused heads)."""
    functions = {f"keras.{c().fn.__name__}": c().fn for c in KERAS_CLASSES}
    families = ("classification", "regression", "divergence", "segmentation", "probabilistic",
                "generative")
    for name, (family, fn) in _common.FUNCTIONS.items():
        if family in families and name not in ("logistic_nll", "gaussian_nll_packed"):
            functions[f"losskit.{name}"] = fn
    return functions


CANDIDATES = _candidate_functions()


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_no_accepted_loss_ignores_raw_scores(name):
    """Boosting scores are any real numbers. A loss that clips them into a probability domain
    has derivative 0 there and trains nothing: it must be refused, and every loss accepted must
    respond to negative scores."""
    fn = CANDIDATES[name]
    parameters = inspect.signature(fn).parameters
    kwargs = {key: True for key in ("from_logits", "log_input") if key in parameters}
    loss = functools.partial(fn, **kwargs) if kwargs else fn
    try:
        obj = boosting.objective(loss)
    except ValueError as err:
        assert fn in boosting.PROBABILITY_INPUTS, err
        assert "reads y_pred as probabilities" in str(err)
        return
    assert fn not in boosting.PROBABILITY_INPUTS
    rng = np.random.default_rng(4)
    classes = rng.integers(0, K, 8)
    labels = classes if obj.loss.sparse or "generalized_cross" in name else np.eye(K)[classes]
    values = []
    for _ in range(2):  # two sets of negative scores: outside every probability domain
        score = -rng.uniform(0.5, 3.0, (8, K)).astype("float32")
        try:
            out = fn(labels, score, **kwargs)
        except Exception as err:  # noqa: BLE001 - inputs this family does not take
            pytest.skip(f"{name} does not take (8, {K}) rows: {err}")
        values.append(keras.ops.convert_to_numpy(out))
    assert np.all(np.isfinite(values[0])) and np.abs(values[0] - values[1]).max() > 1e-6, (
        f"{name} gives the same values at two sets of negative scores: it clips raw scores")

"""Bad-input fuzz harness: every registered loss (`losskit.losses.ALL`) and class (`CLASSES`) on a
generated matrix of bad inputs — strings, NaN/inf and out-of-domain parameters, wrong label dtypes,
out-of-range labels, mismatched shapes, scalar/row/column sample weights, empty batches. Each case
gives either the documented valid result (equal to the Keras built-in where one exists) or an
error whose message names the loss; never a backend error naming nothing, never a silent number.

A deterministic sample runs by default; `LOSSKIT_FUZZ=full` runs every case.
"""

import inspect
import os
import random

import keras
import numpy as np
import pytest
from keras import ops

import losskit

L = losskit.losses
FULL = os.environ.get("LOSSKIT_FUZZ", "") == "full"
SEED = 20


def _sample(cases, k):
    if FULL or len(cases) <= k:
        return cases
    return sorted(random.Random(SEED).sample(cases, k), key=str)


def np_(x):
    return ops.convert_to_numpy(x)


# ------------------------------------------------------------------ parameters

CANDIDATES = ["x", "1.0", float("nan"), float("inf"), -float("inf"), True, None, 1.5, -1, 0,
              2, -0.5, 10**6, [1.0]]


def _parameter_cases():
    cases = []
    for name, fn in L.ALL.items():
        for key, domain in fn.domains.items():
            cases += [("function", name, key, v) for v in CANDIDATES if domain.error(v)]
    for name, cls in L.CLASSES.items():
        for key, domain in cls.domains.items():
            cases += [("class", name, key, v) for v in CANDIDATES if domain.error(v)]
    return cases


PARAMETER_CASES = _parameter_cases()


def test_the_parameter_matrix_covers_every_loss_with_parameters():
    covered = {(kind, name) for kind, name, _, _ in PARAMETER_CASES}
    for name, fn in L.ALL.items():
        assert not fn.domains or ("function", name) in covered
    for name, cls in L.CLASSES.items():
        assert not cls.domains or ("class", name) in covered


@pytest.mark.parametrize(
    "kind, name, key, value", _sample(PARAMETER_CASES, 150), ids=lambda v: repr(v)[:20]
)
def test_out_of_domain_parameters_raise_naming_loss_parameter_and_value(kind, name, key, value):
    if kind == "class":
        call = lambda: L.CLASSES[name](**{key: value})  # noqa: E731
    else:
        fn = L.ALL[name]
        required = [p for p in inspect.signature(fn).parameters.values()
                    if p.default is p.empty]
        dummy = [np.zeros((2, 2), "float32")] * len(required)
        call = lambda: fn(*dummy, **{key: value})  # noqa: E731
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    message = str(info.value)
    assert name in message and f"'{key}'" in message and repr(value)[:8] in message, message


# ------------------------------------------------------------------ inputs

rng = np.random.default_rng(SEED)
N = 4


def _probs(*shape):
    return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype("float32")


def _boxes(n):
    xy = rng.uniform(0, 1, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(0.5, 1, (n, 2))], -1).astype("float32")


GROUPED = np.array([0, 0, 1, 1])
SPARSE = ("SparseCategoricalCrossentropy", "GeneralizedCrossEntropy")
METRIC = ("Contrastive", "Triplet", "InfoNCE", "SupCon", "Circle", "LiftedStructured")
INPUTS = {
    **{name: (np.array([0, 2, 1, 2]), _probs(N, 3)) for name in SPARSE},
    **{name: (GROUPED, rng.normal(size=(N, 3)).astype("float32")) for name in METRIC},
    "NPairs": (GROUPED, rng.normal(size=(N, N)).astype("float32")),
    "GaussianNLL": (rng.normal(size=(N, 3)).astype("float32"),
                    np.concatenate([rng.normal(size=(N, 3)), rng.uniform(0.5, 1.5, (N, 3))],
                                   -1).astype("float32")),
    "CTC": (np.array([[1, 2, 0], [3, 0, 0], [1, 1, 2], [2, 0, 0]]),
            rng.normal(size=(N, 6, 4)).astype("float32")),
    "GIoU": (_boxes(N), _boxes(N)),
    "CIoU": (_boxes(N), _boxes(N)),
    "CategoricalCrossentropy": (np.eye(3, dtype="float32")[[0, 2, 1, 2]], _probs(N, 3)),
    "WeightedKappa": (np.eye(3, dtype="float32")[[0, 2, 1, 2]], _probs(N, 3)),
    "KLDivergence": (_probs(N, 3), _probs(N, 3)),
    "JSDivergence": (_probs(N, 3), _probs(N, 3)),
    "LogisticNLL": (rng.integers(0, 2, (N, 1)).astype("float32"),
                    rng.normal(size=(N, 1)).astype("float32")),
}
DEFAULT = (rng.integers(0, 2, (N, 3)).astype("float32"), rng.uniform(0.05, 0.95, (N, 3))
           .astype("float32"))
KERAS = {
    "MSE": keras.losses.MeanSquaredError, "MAE": keras.losses.MeanAbsoluteError,
    "Huber": keras.losses.Huber, "LogCosh": keras.losses.LogCosh,
    "BinaryCrossentropy": keras.losses.BinaryCrossentropy,
    "CategoricalCrossentropy": keras.losses.CategoricalCrossentropy,
    "SparseCategoricalCrossentropy": keras.losses.SparseCategoricalCrossentropy,
    "Hinge": keras.losses.Hinge, "SquaredHinge": keras.losses.SquaredHinge,
    "MAPE": keras.losses.MeanAbsolutePercentageError,
    "MSLE": keras.losses.MeanSquaredLogarithmicError,
    "CosineSimilarity": keras.losses.CosineSimilarity,
}


def _inputs(name):
    return INPUTS.get(name, DEFAULT)


def _kind(name):
    if name in SPARSE or name == "CTC":
        return "labels"
    if name in METRIC or name == "NPairs":
        return "groups"
    return "dense"


CASES = ["valid", "sw_scalar", "sw_numpy_scalar", "sw_row", "sw_column", "sw_wrong",
         "shape_mismatch", "string_pred", "string_true", "int_pred", "nan_pred", "empty",
         "labels_out_of_range", "labels_fractional", "int_true"]


def _run(name, case):
    cls = L.CLASSES[name]
    y, p = _inputs(name)
    loss = cls()
    per_sample = np_(cls(reduction=None)(y, p))
    if case == "valid":
        assert np.isfinite(per_sample).all() and per_sample.shape[0] == N
        if name in KERAS:
            np.testing.assert_allclose(np_(loss(y, p)), np_(KERAS[name]()(y, p)), rtol=1e-5,
                                       atol=1e-6)
        return
    if case.startswith("sw_"):
        sw = {"sw_scalar": 2.3, "sw_numpy_scalar": np.float32(2.3),
              "sw_row": rng.uniform(0.5, 2, N).astype("float32"),
              "sw_column": rng.uniform(0.5, 2, (N, 1)).astype("float32"),
              "sw_wrong": np.ones(N + 1, "float32")}[case]
        if case == "sw_wrong":
            _named_error(name, lambda: loss(y, p, sample_weight=sw))
            return
        w = np.reshape(np.asarray(sw, "float32"), (-1,) + (1,) * (per_sample.ndim - 1))
        expected = np.sum(per_sample * w) / per_sample.size  # Keras's sum_over_batch_size
        np.testing.assert_allclose(np_(loss(y, p, sample_weight=sw)), expected, rtol=1e-5)
        if name in KERAS:
            np.testing.assert_allclose(np_(loss(y, p, sample_weight=sw)),
                                       np_(KERAS[name]()(y, p, sample_weight=sw)), rtol=1e-5)
        return
    if case == "shape_mismatch":
        bad_y = y[:-1] if _kind(name) != "dense" else np.concatenate([y, y[:, :1]], -1)
        _named_error(name, lambda: loss(bad_y, p))
    elif case == "string_pred":
        _named_error(name, lambda: loss(y, np.full(p.shape, "a")))
    elif case == "string_true":
        _named_error(name, lambda: loss(np.full(np.shape(y), "a"), p))
    elif case == "int_pred":
        _named_error(name, lambda: loss(y, (p * 10).astype("int32")))
    elif case == "nan_pred":
        bad = p.copy()
        bad[1] = np.nan
        _named_error_or(name, lambda: loss(y, bad), lambda v: not np.isfinite(v).all())
    elif case == "empty":
        _named_error_or(name, lambda: cls(reduction=None)(y[:0], p[:0]),
                        lambda v: v.shape[:1] == (0,))
    elif case == "labels_out_of_range" and _kind(name) == "labels":
        bad = np.array(y).copy()
        bad[1] = p.shape[-1] + 3
        _named_error(name, lambda: loss(bad, p), match=str(p.shape[-1] + 3))
    elif case == "labels_fractional" and name in SPARSE:
        _named_error(name, lambda: loss(np.array(y, "float32") + 0.5, p), match="0.5")
    elif case == "int_true" and _kind(name) == "dense" and np.all(np.equal(np.mod(y, 1), 0)):
        # Keras casts integer targets to the predictions' dtype: the same value as floats.
        np.testing.assert_allclose(np_(loss(np.asarray(y).astype("int32"), p)), np_(loss(y, p)),
                                   rtol=1e-6)


def _named_error(name, call, match=None):
    with pytest.raises(Exception) as info:  # noqa: PT011 - any type, if it names the loss
        np_(call())
    message = str(info.value)
    assert name in message, f"{name}: error names no loss: {type(info.value).__name__}: {message}"
    if match is not None:
        assert match in message, message


def _named_error_or(name, call, valid):
    try:
        value = np_(call())
    except Exception as error:  # noqa: BLE001 - any type, if it names the loss
        assert name in str(error), f"{name}: error names no loss: {error}"
        return
    assert valid(value), (name, value)


INPUT_CASES = [(name, case) for name in L.CLASSES for case in CASES]


def test_every_class_has_inputs_that_give_a_finite_value():
    for name in L.CLASSES:
        _run(name, "valid")


@pytest.mark.parametrize("name, case", _sample(INPUT_CASES, 160))
def test_bad_inputs_give_the_valid_result_or_an_error_naming_the_loss(name, case):
    _run(name, case)

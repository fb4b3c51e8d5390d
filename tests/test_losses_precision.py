"""The precision rule over the whole library: no library function accumulates in 16 bits.

Every registered function computes in float32 when given bfloat16/float16 tensors (the `register`
wrapper upcasts them), so its values equal the float32 computation on the same rounded inputs;
the tolerance is float32 round-off (rtol 1e-5). Functions registered with `precision="input"`
(the fused losses) manage precision themselves and are tested in their own files."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops
from test_losses_saving import CASES

from losskit import losses as L

N, K = 6, 4
_binary = lambda r, shape: (r.random(shape) > 0.5).astype("float32")  # noqa: E731
_labels = lambda r, shape: r.integers(0, 3, shape[0]).astype("int32")  # noqa: E731

# class name -> (parameters, target maker, prediction transform); the rest come from CASES.
MORE = {
    "Dice": ({}, _binary, "sigmoid"),
    "Tversky": ({}, _binary, "sigmoid"),
    "FocalTversky": ({}, _binary, "sigmoid"),
    "LovaszHinge": ({}, _binary, None),
    "Contrastive": ({}, _labels, None),
    "Triplet": ({}, _labels, None),
    "InfoNCE": ({}, _labels, None),
    "SupCon": ({}, _labels, None),
    "LogisticNLL": ({}, _binary, None),
}


def _case(name):
    if name in MORE:
        params, make_target, transform = MORE[name]
        return params, (lambda r: make_target(r, (N, K))), K, transform
    params, units, make_target = CASES[name]
    params = {k: v for k, v in params.items() if k not in ("reduction", "name")}
    return params, (lambda r: make_target(r, units)), units, None


def test_every_function_follows_the_precision_rule():
    for name, fn in L.ALL.items():
        assert fn.precision in ("float32", "input"), name
    fused = {*L.FAMILIES["fused"], *L.FAMILIES["fused_distillation"]}
    assert {n for n, f in L.ALL.items() if f.precision == "input"} <= fused


@pytest.mark.parametrize("name", sorted(set(CASES) | set(MORE)))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_16_bit_inputs_compute_in_float32(name, dtype, seed, scale):
    cls = L.CLASSES[name]
    params, make_target, units, transform = _case(name)
    rng = np.random.default_rng(seed)
    y_true = make_target(rng)
    y_pred = rng.normal(size=(N, units)).astype("float32") * scale
    if transform == "sigmoid":
        y_pred = 1.0 / (1.0 + np.exp(-y_pred))
    low = ops.cast(ops.convert_to_tensor(y_pred), dtype)
    rounded = ops.cast(low, "float32")  # the same values, held in float32
    t_low = ops.cast(y_true, dtype) if y_true.dtype == np.float32 else ops.convert_to_tensor(y_true)
    t_rounded = ops.cast(t_low, "float32") if y_true.dtype == np.float32 else t_low
    got = cls.fn(t_low, low, **params)
    expected = cls.fn(t_rounded, rounded, **params)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-6
    )

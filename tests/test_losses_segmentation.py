"""Segmentation losses: values vs Keras built-ins / NumPy references / hand-computed cases,
check_gradients, extreme inputs (probabilities 0 and 1, logits +-1e4), Loss-class round trips."""

import functools
import itertools

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from saving_helpers import assert_loss_survives_saving

import losskit
from losskit.gradients import value_and_grad
from losskit.losses import segmentation as seg


def np_(x):
    return ops.convert_to_numpy(x)


def masks(shape=(2, 4, 4, 3), seed=0):
    rng = np.random.default_rng(seed)
    g = (rng.uniform(size=shape) > 0.6).astype("float32")
    p = rng.uniform(0.02, 0.98, size=shape).astype("float32")
    return g, p


def np_counts(g, p, per_class):
    axes = tuple(range(1, g.ndim - 1 if per_class else g.ndim))
    return (p * g).sum(axes), (p * (1 - g)).sum(axes), ((1 - p) * g).sum(axes)


def np_dice(g, p, smooth=1.0, squared=False, per_class=False):
    axes = tuple(range(1, g.ndim - 1 if per_class else g.ndim))
    denom = (g**2).sum(axes) + (p**2).sum(axes) if squared else g.sum(axes) + p.sum(axes)
    loss = 1 - (2 * (g * p).sum(axes) + smooth) / (denom + smooth)
    return loss.mean(-1) if per_class else loss


def np_tversky_index(g, p, alpha, beta, smooth, per_class):
    tp, fp, fn = np_counts(g, p, per_class)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def np_tversky(g, p, alpha=0.3, beta=0.7, smooth=1.0, per_class=False):
    loss = 1 - np_tversky_index(g, p, alpha, beta, smooth, per_class)
    return loss.mean(-1) if per_class else loss


def np_focal_tversky(g, p, alpha=0.3, beta=0.7, gamma=4 / 3, smooth=1.0, per_class=False):
    loss = (1 - np_tversky_index(g, p, alpha, beta, smooth, per_class)) ** (1 / gamma)
    return loss.mean(-1) if per_class else loss


def jaccard_loss_of_mistakes(g, mistakes):
    """Jaccard loss of the prediction that gets exactly the pixels in `mistakes` wrong."""
    predicted = np.where(mistakes, 1 - g, g)
    union = np.logical_or(predicted, g).sum()
    return 1.0 - np.logical_and(predicted, g).sum() / union if union else 0.0


def np_lovasz_hinge(g, logits):
    """Lovász extension of the Jaccard loss from its definition (Lovász 1983; Berman et al. eq. 8):
    sum_k m_(k) [D({1..k}) - D({1..k-1})] over errors sorted in decreasing order, with D the
    Jaccard loss of mispredicting a set of pixels, evaluated set by set."""
    out = []
    for gi, yi in zip(g.reshape(len(g), -1), logits.reshape(len(g), -1)):
        m = np.maximum(1 - yi * (2 * gi - 1), 0)
        order = np.argsort(-m, kind="stable")
        total, previous, mistakes = 0.0, 0.0, np.zeros(len(m), bool)
        for k in order:
            mistakes[k] = True
            current = jaccard_loss_of_mistakes(gi, mistakes)
            total += m[k] * (current - previous)
            previous = current
        out.append(total)
    return np.array(out)


CASES = [
    ("dice", {}),
    ("dice", {"smooth": 0.5, "squared": True}),
    ("dice", {"per_class": True}),
    ("tversky", {}),
    ("tversky", {"alpha": 0.8, "beta": 0.2, "smooth": 0.1, "per_class": True}),
    ("focal_tversky", {}),
    ("focal_tversky", {"gamma": 2.0, "alpha": 0.5, "beta": 0.5, "per_class": True}),
]
FUNCS = {"dice": (seg.dice, np_dice), "tversky": (seg.tversky, np_tversky)}
FUNCS["focal_tversky"] = (seg.focal_tversky, np_focal_tversky)
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_values_match_numpy_reference(name, kw):
    fn, ref = FUNCS[name]
    g, p = masks()
    got = np_(fn(g, p, **kw))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, ref(g.astype(float), p.astype(float), **kw), rtol=1e-5)


def test_dice_and_tversky_match_keras_builtins():
    g, p = masks()
    axis = (1, 2, 3)
    np.testing.assert_allclose(
        np_(seg.dice(g, p, smooth=0.0)), np_(keras.losses.dice(g, p, axis=axis)), rtol=1e-5
    )
    # keras.losses.tversky's alpha multiplies sum((1 - p) g), i.e. the false negatives
    np.testing.assert_allclose(
        np_(seg.tversky(g, p, alpha=0.2, beta=0.8, smooth=0.0)),
        np_(keras.losses.tversky(g, p, alpha=0.8, beta=0.2, axis=axis)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        np_(seg.tversky(g, p, alpha=0.5, beta=0.5, smooth=0.3)),
        np_(seg.dice(g, p, smooth=0.6)),  # TI(.5, .5; s) = (2TP + 2s) / (2TP + FP + FN + 2s)
        rtol=1e-5,
    )


def test_hand_computed():
    g = np.array([[1.0, 1.0, 0.0, 0.0]], "float32")
    p = np.array([[1.0, 0.0, 0.0, 0.0]], "float32")
    np.testing.assert_allclose(np_(seg.dice(g, p, smooth=0.0)), [1 - 2 / 3], rtol=1e-6)
    # TP = 1, FP = 0, FN = 1: TI = 1 / (1 + 0.7)
    np.testing.assert_allclose(np_(seg.tversky(g, p, smooth=0.0)), [1 - 1 / 1.7], rtol=1e-6)
    np.testing.assert_allclose(
        np_(seg.focal_tversky(g, p, gamma=2.0, smooth=0.0)), [(1 - 1 / 1.7) ** 0.5], rtol=1e-6
    )
    # perfect and empty predictions
    for fn in (seg.dice, seg.tversky, seg.focal_tversky):
        np.testing.assert_allclose(np_(fn(g, g)), [0.0], atol=1e-3)
        np.testing.assert_allclose(np_(fn(np.zeros_like(g), np.zeros_like(g))), [0.0], atol=1e-6)
        for target in (g, np.zeros_like(g)):  # exactly perfect: 1 - TI = 0 in focal_tversky
            value, (grad,) = value_and_grad(functools.partial(fn, target), target)
            assert np.all(np.isfinite(grad)) and np.all(np.isfinite(value)), fn.__name__
    # lovasz: errors [0.5 (fg pixel), 1.2 (bg pixel)]; mispredicting the bg pixel alone costs
    # IoU 1/2, both pixels IoU 0: 1.2 * 0.5 + 0.5 * (1 - 0.5)
    logits = np.array([[0.5, 0.2]], "float32")
    np.testing.assert_allclose(
        np_(seg.lovasz_hinge(np.array([[1.0, 0.0]], "float32"), logits)), [0.85], rtol=1e-6
    )


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), (2, 3, 3, 2)])
def test_lovasz_hinge_matches_lovasz_extension(shape):
    rng = np.random.default_rng(sum(shape))
    g = (rng.uniform(size=shape) > 0.5).astype("float32")
    g[0] = 0.0  # an image without foreground
    logits = rng.normal(scale=2.0, size=shape).astype("float32")
    np.testing.assert_allclose(
        np_(seg.lovasz_hinge(g, logits)), np_lovasz_hinge(g, logits.astype(float)), rtol=1e-5
    )
    margin = np.where(g > 0, 5.0, -5.0).astype("float32")  # confidently right everywhere
    np.testing.assert_allclose(np_(seg.lovasz_hinge(g, margin)), np.zeros(shape[0]), atol=1e-6)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_gradients(name, kw):
    g, p = masks((2, 2, 2, 2), seed=3)
    fn = FUNCS[name][0]
    report = losskit.check_gradients(lambda y: fn(g, y, **kw), p.astype(np.float64))
    assert report.ok, str(report)


def test_lovasz_gradient_where_differentiable():
    rng = np.random.default_rng(4)
    g = (rng.uniform(size=(2, 3, 3)) > 0.5).astype("float64")
    # hinge errors e = 1 - sign * logit all distinct (no ties in the sort) and away from 0
    errors = rng.permutation(18).reshape(2, 3, 3) * 0.23 - 1.05
    assert np.all(np.abs(errors) > 0.05)
    logits = (1.0 - errors) * np.where(g > 0, 1.0, -1.0)
    report = losskit.check_gradients(lambda y: seg.lovasz_hinge(g, y), logits)
    assert report.ok, str(report)


# ----------------------------------------------------------------- extreme inputs (hypothesis)

probabilities = hnp.arrays(
    np.float32,
    (2, 3, 2),
    elements=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1, width=32)),
)
binary = hnp.arrays(np.float32, (2, 3, 2), elements=st.sampled_from([0.0, 1.0]))


@given(g=binary, p=probabilities)
def test_overlap_losses_finite_and_in_unit_interval(g, p):
    for (name, kw), target in itertools.product(CASES[::2], (g, p)):  # soft targets too
        fn = FUNCS[name][0]
        value, (grad,) = value_and_grad(functools.partial(fn, target, **kw), p)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (name, kw)
        assert np.all(value >= -1e-6) and np.all(value <= 1 + 1e-6), (name, kw, value)


@given(
    g=binary,
    logits=hnp.arrays(
        np.float32,
        (2, 3, 2),
        elements=st.one_of(st.sampled_from([-1e4, 1e4, 0.0]), st.floats(-1e4, 1e4, width=32)),
    ),
)
def test_lovasz_finite_and_nonnegative(g, logits):
    value, (grad,) = value_and_grad(lambda y: seg.lovasz_hinge(g, y), logits)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    assert np.all(value >= 0)


# ----------------------------------------------------------------- Loss classes

NON_DEFAULT = {
    seg.Dice: {"smooth": 0.25, "squared": True, "per_class": True},
    seg.Tversky: {"alpha": 0.6, "beta": 0.4, "smooth": 2.0},
    seg.FocalTversky: {"alpha": 0.4, "beta": 0.6, "gamma": 2.0, "per_class": True},
    seg.LovaszHinge: {"reduction": "sum"},
    seg.GeneralizedDice: {"smooth": 1e-3, "ignore_index": 255},
}


@pytest.mark.parametrize("cls", seg.CLASSES, ids=lambda c: c.__name__)
def test_loss_class_config_round_trip_and_value(cls):
    params = NON_DEFAULT[cls]
    config = cls(**params).get_config()
    assert {k: config[k] for k in params} == params
    again = cls.from_config(config)
    assert again.get_config() == config
    g, p = masks()
    kw = {k: v for k, v in params.items() if k != "reduction"}
    per_sample = np_(cls.fn(g, p, **kw))
    expected = per_sample.sum() if params.get("reduction") == "sum" else per_sample.mean()
    np.testing.assert_allclose(np_(again(g, p)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="incompatible"):
        again(g[..., :1], p)


@pytest.mark.parametrize("cls", seg.CLASSES, ids=lambda c: c.__name__)
def test_saved_in_a_compiled_model(cls, tmp_path):
    params = NON_DEFAULT[cls]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 4, 1)).astype("float32")
    y = (rng.uniform(size=(6, 4, 4, 2)) > 0.5).astype("float32")
    activation = None if cls is seg.LovaszHinge else "sigmoid"
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, padding="same", activation=activation)]
    )
    model.compile(optimizer="sgd", loss=cls(**params))
    model.fit(x, y, batch_size=3, epochs=1, verbose=0)
    assert_loss_survives_saving(model, cls, params, x, y, tmp_path)


def test_registry_and_function_serialization():
    assert losskit.losses.FAMILIES["segmentation"] == tuple(f.__name__ for f in seg.FUNCTIONS)
    for fn in seg.FUNCTIONS:
        assert losskit.losses.ALL[fn.__name__] is fn is getattr(losskit.losses, fn.__name__)
        assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fn)) is fn
        assert "Reference" in fn.__doc__
    for cls in seg.CLASSES:
        assert losskit.losses.CLASSES[cls.__name__] is cls is getattr(losskit.losses, cls.__name__)

"""Issue 20: contracts declared once (parameter domains), the label rule, the shape rule for every
Term, sample weights exactly as Keras takes them, and reference behaviour. Each test here fails on
the code before the issue was fixed."""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import domains

L = losskit.losses
BACKEND = keras.backend.backend()
rng = np.random.default_rng(20)


def np_(x):
    return ops.convert_to_numpy(x)


# ------------------------------------------------------------------- 1. parameter domains


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda a: L.fused_linear_cross_entropy(*a, ignore_index="0"), TypeError,
         r"fused_linear_cross_entropy.*'ignore_index' must be an integer, got '0'"),
        (lambda a: L.fused_linear_cross_entropy(*a, z_loss="0.1"), TypeError,
         r"fused_linear_cross_entropy.*'z_loss' must be a number >= 0, got '0.1'"),
        (lambda a: L.fused_linear_cross_entropy(*a, chunk_size="2"), TypeError,
         r"'chunk_size' must be None or an integer >= 1, got '2'"),
        (lambda a: L.fused_linear_cross_entropy(*a, chunk_size=0), ValueError,
         r"'chunk_size' must be None or an integer >= 1, got 0"),
        (lambda a: L.fused_linear_cross_entropy(*a, label_smoothing=1.5), ValueError,
         r"'label_smoothing' must be a number in \[0, 1\], got 1.5"),
        (lambda a: L.fused_linear_distillation(a[0], a[1], a[0], a[1], divergence="js"),
         ValueError, r"fused_linear_distillation.*'divergence' must be one of 'kl', 'jsd'"),
        (lambda a: L.huber(a[0], a[0], delta=-1.0), ValueError,
         r"loss 'huber'.*'delta' must be a number >= 0, got -1.0"),
        (lambda a: L.Huber(delta=-1), ValueError, r"Huber.*'delta' must be a number >= 0"),
        (lambda a: L.Huber(delta=float("nan")), ValueError, r"Huber.*'delta'.*got nan"),
        (lambda a: L.SparseCategoricalCrossentropy(ignore_index="0"), TypeError,
         r"SparseCategoricalCrossentropy.*'ignore_index' must be None or an integer, got '0'"),
        (lambda a: losskit.Term(L.mse, weight=float("nan")), ValueError,
         r"Term 'mse'.*'weight' must be a finite number, got nan"),
        (lambda a: losskit.Term(L.mse, weight=float("inf")), ValueError, r"Term 'mse'.*weight"),
        (lambda a: losskit.schedules.Linear(0.0, float("nan"), 10), ValueError,
         r"Linear.*'end' must be a finite number"),
    ],
)
def test_out_of_domain_parameters_raise_before_tensor_work(call, error, message):
    h = rng.normal(size=(4, 3)).astype("float32")
    w = rng.normal(size=(5, 3)).astype("float32")
    y = np.array([0, 1, 2, 3], "int32")
    args = (h, w, y) if "fused" in message else (h, w)
    with pytest.raises(error, match=message):
        call(args)


def test_every_library_loss_declares_domains_that_its_defaults_satisfy():
    for name, fn in L.ALL.items():
        params = inspect.signature(fn).parameters
        defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}
        tunable = {k for k, v in defaults.items() if isinstance(v, (bool, int, float, str))}
        # Every number, flag and option has a domain (tensors defaulting to None do not).
        assert tunable <= set(fn.domains), (name, tunable - set(fn.domains))
        for key, domain in fn.domains.items():
            assert domain.error(defaults[key]) is None, (name, key, defaults[key])
        if fn.domains:
            assert "Parameter domains" in fn.__doc__, name
            for key, domain in fn.domains.items():
                assert f"`{key}`: {domain.text}" in fn.__doc__
    for name, cls in L.CLASSES.items():
        assert set(cls.domains) <= set(cls.defaults), name
        cls(**dict(cls.defaults))  # the defaults pass their own checks
        assert cls.fn.__doc__ == cls.__doc__ or "Parameter domains" not in (cls.fn.__doc__ or "")


def test_user_losses_declare_domains_the_same_way():
    @losskit.loss(domains={"delta": domains.positive, "mode": domains.one_of("abs", "sq")})
    def my_robust(y_true, y_pred, delta=1.0, mode="abs"):
        """Robust error."""
        err = ops.abs(y_true - y_pred) if mode == "abs" else ops.square(y_true - y_pred)
        return delta * ops.mean(err, axis=-1)

    assert "- `delta`: a number > 0" in my_robust.__doc__
    with pytest.raises(ValueError, match=r"my_robust: parameter 'delta' must be a number > 0"):
        my_robust(delta=0.0)
    with pytest.raises(ValueError, match=r"my_robust: parameter 'mode' must be one of 'abs'"):
        my_robust(mode="huber")
    with pytest.raises(TypeError, match=r"my_robust: parameter 'delta'.*'2' \(str\)"):
        my_robust(delta="2")
    y = np.ones((3, 2), "float32")
    assert float(my_robust(delta=2.0)(y, 0 * y)) == pytest.approx(2.0)
    with pytest.raises(TypeError, match="not a parameter"):
        losskit.loss(domains={"gamma": domains.positive})(my_robust.fn)
    with pytest.raises(ValueError, match=r"\(default\).*'delta'"):
        losskit.loss(name="bad_default", domains={"delta": domains.interval(2, 3)})(
            my_robust.fn
        )


# ------------------------------------------------------------------- 2. labels


def _fused_inputs(label):
    h = rng.normal(size=(4, 3)).astype("float32")
    w = rng.normal(size=(5, 3)).astype("float32")
    return h, w, np.array([0, 1, label, 2], "int32")


LABELLED = {
    "sparse_categorical_crossentropy": lambda y: (
        L.sparse_categorical_crossentropy, (y, np.full((4, 5), 0.2, "float32"))),
    "SparseCategoricalCrossentropy": lambda y: (
        L.SparseCategoricalCrossentropy(reduction=None), (y, np.full((4, 5), 0.2, "float32"))),
    "generalized_cross_entropy": lambda y: (
        L.generalized_cross_entropy, (y, np.full((4, 5), 0.2, "float32"))),
    "fused_linear_cross_entropy": lambda y: (
        lambda h, w, t: L.fused_linear_cross_entropy(h, w, t, reduction="none"),
        _fused_inputs(y[2])),
    "fused_linear_distillation": lambda y: (
        lambda h, w, t: L.fused_linear_distillation(h, w, h, w, labels=t, reduction="none"),
        _fused_inputs(y[2])),
}


@pytest.mark.parametrize("label", [5, 7, -1])
@pytest.mark.parametrize("name", sorted(LABELLED))
def test_out_of_range_labels_raise_in_eager_execution(name, label):
    fn, args = LABELLED[name](np.array([0, 1, label, 2], "int32"))
    with pytest.raises(ValueError, match=rf"{name}.*\[0, 5\).*got {label}"):
        fn(*args)


def test_ctc_labels_out_of_range_raise():
    logits = rng.normal(size=(2, 6, 4)).astype("float32")
    with pytest.raises(ValueError, match=r"loss 'ctc'.*\[0, 4\).*got 9"):
        L.ctc(np.array([[1, 9], [2, 0]], "int32"), logits)


def test_ignore_index_is_not_out_of_range():
    y = np.array([0, 1, -100, 2], "int32")
    values = np_(L.fused_linear_cross_entropy(*_fused_inputs(-100)[:2], y, reduction="none"))
    assert np.isfinite(values).all() and values[2] == 0.0


def _compiled(loss):
    def fn(*args):  # a Loss instance's signature is its constructor's
        return loss(*args)

    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    pytest.skip("torch runs eagerly (labels raise there); torch.compile is not a Keras path")


@pytest.mark.parametrize("name", sorted(LABELLED))
def test_out_of_range_labels_give_nan_inside_compiled_graphs(name):
    fn, args = LABELLED[name](np.array([0, 1, 5, 2], "int32"))
    values = np_(_compiled(fn)(*args))
    assert np.isnan(values[2]) and np.isfinite(np.delete(values, 2)).all()


def test_reduced_fused_loss_is_nan_inside_compiled_graphs():
    h, w, y = _fused_inputs(-1)
    assert np.isnan(np_(_compiled(L.fused_linear_cross_entropy)(h, w, y)))


def test_float_labels_keras_accepts_are_accepted_fractional_ones_refused():
    p = np.full((2, 3), 1 / 3, "float32")
    ours = np_(L.SparseCategoricalCrossentropy()(np.array([2.0, 0.0], "float32"), p))
    keras_ = np_(keras.losses.SparseCategoricalCrossentropy()(np.array([2.0, 0.0]), p))
    np.testing.assert_allclose(ours, keras_, rtol=1e-6)
    with pytest.raises(ValueError, match=r"got 0.5"):
        L.sparse_categorical_crossentropy(np.array([0.5, 0.0], "float32"), p)


# ------------------------------------------------------------------- 3. shapes


MSE_FORMS = {
    "keras function": keras.losses.mean_squared_error,
    "keras class": keras.losses.MeanSquaredError(),
    "library function": L.mse,
    "library class": L.MSE(),
    "plain function": lambda y_true, y_pred: ops.mean(ops.square(y_true - y_pred), axis=-1),
}


@pytest.mark.parametrize("form", sorted(MSE_FORMS))
def test_every_term_refuses_shapes_that_would_broadcast(form):
    objective = losskit.Objective([losskit.Term(MSE_FORMS[form], name="fit")])
    y = rng.normal(size=(8, 2)).astype("float32")
    p = rng.normal(size=(8, 1)).astype("float32")
    with pytest.raises(ValueError, match=r"Term 'fit'.*\(8, 2\).*\(8, 1\)"):
        objective({}, y, p)


def test_library_functions_called_directly_refuse_broadcasting():
    y = rng.normal(size=(8, 2)).astype("float32")
    with pytest.raises(ValueError, match=r"loss 'mse'.*\(8, 2\).*\(8, 1\)"):
        L.mse(y, y[:, :1])


KERAS_CASES = [
    (keras.losses.MeanSquaredError(), (8, 1), (8,)),
    (keras.losses.MeanSquaredError(), (8,), (8, 1)),
    (keras.losses.mean_absolute_error, (8, 3), (8, 3)),
    (keras.losses.BinaryCrossentropy(), (8, 1), (8, 1)),
    (keras.losses.SparseCategoricalCrossentropy(), (8,), (8, 4)),
    (keras.losses.SparseCategoricalCrossentropy(), (8, 1), (8, 4)),
    (keras.losses.sparse_categorical_crossentropy, (8, 5), (8, 5, 4)),
    (keras.losses.CategoricalGeneralizedCrossEntropy(), (8,), (8, 4)),
    (keras.losses.CategoricalCrossentropy(), (8, 4), (8, 4)),
    (keras.losses.Huber(), (8, 5, 2), (8, 5, 2)),
]


@pytest.mark.parametrize("case", range(len(KERAS_CASES)))
def test_term_accepts_what_keras_accepts_with_keras_value(case):
    fn, t_shape, p_shape = KERAS_CASES[case]
    name = getattr(fn, "name", None) or fn.__name__
    sparse = "sparse" in name.lower() or "generalized" in name.lower()
    if sparse:
        y = rng.integers(0, p_shape[-1], size=t_shape)
        p = rng.dirichlet(np.ones(p_shape[-1]), size=p_shape[:-1]).astype("float32")
    else:
        y = rng.integers(0, 2, size=t_shape).astype("float32")
        p = rng.uniform(0.1, 0.9, size=p_shape).astype("float32")
    if isinstance(fn, keras.losses.Loss):
        expected = np_(fn(y, p))
    else:  # what compile(loss=fn) computes: the mean of the function's per-sample values
        expected = np.mean(np_(fn(ops.convert_to_tensor(y), ops.convert_to_tensor(p))))
    total, _ = losskit.Objective([losskit.Term(fn, name="t")])({}, y, p)
    np.testing.assert_allclose(np_(total), expected, rtol=1e-5)


def _plain_sparse_ce(y_true, y_pred):
    """A user's own sparse cross-entropy: integer class indices of `y_pred.shape[:-1]`."""
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


@pytest.mark.parametrize(
    "t_shape, p_shape", [((8,), (8, 4)), ((8, 1), (8, 4)), ((8, 5), (8, 5, 4))]
)
def test_plain_function_with_class_indices_is_accepted_as_keras_does(t_shape, p_shape):
    # Keras's compile(loss=fn) hands such a function its integer labels as they are.
    y = rng.integers(0, p_shape[-1], size=t_shape)
    p = rng.dirichlet(np.ones(p_shape[-1]), size=p_shape[:-1]).astype("float32")
    expected = np.mean(np_(_plain_sparse_ce(ops.convert_to_tensor(y), ops.convert_to_tensor(p))))
    total, _ = losskit.Objective([losskit.Term(_plain_sparse_ce, name="ce")])({}, y, p)
    np.testing.assert_allclose(np_(total), expected, rtol=1e-5)


def test_plain_function_with_float_labels_of_another_shape_raises():
    y = rng.integers(0, 4, size=(8, 5)).astype("float32")  # not class indices: floats
    p = rng.dirichlet(np.ones(4), size=(8, 5)).astype("float32")
    with pytest.raises(ValueError, match=r"Term 'ce'.*\(8, 5\).*\(8, 5, 4\)"):
        losskit.Objective([losskit.Term(_plain_sparse_ce, name="ce")])({}, y, p)


# ------------------------------------------------------------------- 4. sample weights


def _weights(n, t=None):
    return {
        "python float": 2.3,
        "numpy float32": np.float32(2.3),
        "0-d array": np.array(2.3),
        "(B,)": rng.uniform(0.5, 2, n).astype("float32"),
        "(B, 1)": rng.uniform(0.5, 2, (n, 1)).astype("float32"),
        "list": list(rng.uniform(0.5, 2, n)),
        **({} if t is None else {"(B, T)": rng.uniform(0.5, 2, (n, t)).astype("float32")}),
    }


@pytest.mark.parametrize("form", list(_weights(4, 3)))
@pytest.mark.parametrize(
    "ours, theirs",
    [(L.MSE, keras.losses.MeanSquaredError), (L.Huber, keras.losses.Huber),
     (L.BinaryCrossentropy, keras.losses.BinaryCrossentropy)],
)
def test_sample_weights_as_keras_takes_them(ours, theirs, form):
    per_position = form == "(B, T)"
    shape = (4, 3, 2) if per_position else (4, 2)
    sw = _weights(4, 3)[form]
    y = rng.integers(0, 2, shape).astype("float32")
    p = rng.uniform(0.1, 0.9, shape).astype("float32")
    np.testing.assert_allclose(
        np_(ours()(y, p, sample_weight=sw)), np_(theirs()(y, p, sample_weight=sw)), rtol=1e-5
    )
    total, _ = losskit.Objective([losskit.Term(ours())])({}, y, p, sample_weight=sw)
    np.testing.assert_allclose(np_(total), np_(theirs()(y, p, sample_weight=sw)), rtol=1e-5)


def test_sample_weights_that_do_not_fit_name_the_loss():
    y = np.ones((4, 2), "float32")
    with pytest.raises(ValueError, match=r"loss 'MSE'.*sample_weight of shape \(3,\)"):
        L.MSE()(y, y, sample_weight=np.ones(3, "float32"))
    with pytest.raises(TypeError, match=r"loss 'MSE': sample_weight must be a numeric"):
        L.MSE()(y, y, sample_weight="2")
    with pytest.raises(ValueError, match=r"Term 'mse'.*sample_weight of shape \(4, 5\)"):
        losskit.Objective([losskit.Term(L.mse)])({}, y, y, sample_weight=np.ones((4, 5)))


# ------------------------------------------------------------------- 8. references


def test_generalized_dice_without_any_class_is_monai_zero():
    y = np.zeros((2, 4, 4, 3), "float32")
    y[1, ..., 1] = 1.0
    p = np.full((2, 4, 4, 3), 1 / 3, "float32")
    values = np_(L.generalized_dice(y, p))
    # MONAI: absent classes take the largest present weight, here 1/16^2 for every class;
    # with none present every weight is 0 and 1 - smooth/smooth = 0.
    inter, denom = 16 / 3, 16 + 16
    expected = 1 - (2 * inter / 256 + 1e-5) / (denom / 256 + 1e-5)
    np.testing.assert_allclose(values, [0.0, expected], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("q", [0.3, 0.7])
def test_generalized_cross_entropy_at_zero_probability_is_keras(q):
    p = np.array([[0.0, 0.3, 0.7], [0.2, 0.3, 0.5]], "float32")
    y = np.array([0, 2])
    expected = np_(keras.losses.CategoricalGeneralizedCrossEntropy(q=q, reduction=None)(y, p))
    np.testing.assert_allclose(np_(L.generalized_cross_entropy(y, p, q=q)), expected, rtol=1e-6)
    assert expected[0] == pytest.approx(1 / q)


def test_generalized_cross_entropy_q_one_is_one_minus_p():
    # Keras refuses q = 1 (its domain is (0, 1)); the paper's q = 1 is 1 - p_y.
    p = np.array([[0.0, 0.3, 0.7], [0.2, 0.3, 0.5]], "float32")
    values = np_(L.generalized_cross_entropy(np.array([0, 2]), p, q=1.0))
    np.testing.assert_allclose(values, [1.0, 0.5], rtol=1e-6)


def test_reduced_fused_loss_raises_before_the_backend_fast_path():
    # torch's fast path would otherwise index out of bounds, naming no loss.
    h, w, y = _fused_inputs(5)
    with pytest.raises(ValueError, match=r"fused_linear_cross_entropy.*got 5"):
        L.fused_linear_cross_entropy(h, w, y)


@pytest.mark.parametrize(
    "domain, inside, outside",
    [
        (domains.positive, [1e-9, 2, np.float32(0.5)], [0, -1, float("nan"), float("inf"), "1"]),
        (domains.probability, [0, 0.5, 1], [-0.1, 1.1, True]),
        (domains.interval(0, 1, high_closed=False), [0.0, 0.99], [1.0, 1.5]),
        (domains.positive_integer, [1, np.int64(7)], [0, 2.0, "2", None]),
        (domains.optional(domains.integer), [None, -100, 0], [0.5, "0"]),
        (domains.one_of("kl", "jsd"), ["kl", "jsd"], ["js", 1, None]),
        (domains.boolean, [True, np.bool_(False)], [1, "True", None]),
        (domains.interval(infinite=True), [float("inf"), -float("inf"), 0], [float("nan")]),
    ],
)
def test_domains_accept_and_refuse(domain, inside, outside):
    for value in inside:
        assert domain.error(value) is None, (domain, value)
    for value in outside:
        assert domain.error(value) is not None, (domain, value)

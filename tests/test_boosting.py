"""losskit.boosting: losses as XGBoost / LightGBM / CatBoost objectives.

Exactness: with no boost-from-average on either side, 20 rounds of a library's built-in objective
and of `objective(equivalent loss)` give the same raw margins (float32 gradient storage is the only
difference). Derivatives against closed forms; custom-gradient losses use their declared rule;
weights applied once; the Hessian policy; errors naming the loss.
"""

import copy
import functools
import pickle
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import boosting

xgb = pytest.importorskip("xgboost", reason="needs the boosting extra (xgboost)")
lgb = pytest.importorskip("lightgbm", reason="needs the boosting extra (lightgbm)")

ROUNDS = 20


@losskit.loss
def half_squared_error(y_true, y_pred):
    """0.5 (p - y)^2: derivatives exactly (p - y, 1), XGBoost's reg:squarederror."""
    return ops.mean(0.5 * ops.square(y_pred - y_true), axis=-1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 300
    X = rng.normal(size=(n, 5))
    logit = X[:, 0] - 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n)
    return {
        "X": X,
        "binary": (logit > 0).astype(float),
        "regression": 2 * X[:, 0] + np.sin(X[:, 1]) + rng.normal(size=n),
        "classes": np.digitize(X[:, 0] + 0.5 * X[:, 2], [-0.5, 0.5]),
        "weight": rng.uniform(0.2, 2.0, n),
    }


def _xgb_margins(data, y, params, obj=None, weight=None):
    X = data["X"]
    # base_margin 0 on both sides: no base_score / boost-from-average estimate.
    dtrain = xgb.DMatrix(X, label=y, weight=weight, base_margin=np.zeros(len(X)))
    params = {"max_depth": 3, "eta": 0.1, "tree_method": "hist", "nthread": 1, "seed": 0,
              **params}
    booster = xgb.train(params, dtrain, ROUNDS, obj=obj)
    return booster.predict(dtrain, output_margin=True)


@pytest.mark.parametrize("derivatives", ["auto", "autodiff"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(
    "builtin, labels, loss",
    [
        ({"objective": "binary:logistic"}, "binary",
         keras.losses.BinaryCrossentropy(from_logits=True)),
        ({"objective": "reg:squarederror"}, "regression", half_squared_error),  # a @loss class
        ({"objective": "reg:pseudohubererror", "huber_slope": 1.0}, "regression",
         losskit.losses.GeneralRobust(alpha=1.0, scale=1.0)),
    ],
    ids=["logistic", "squared", "pseudohuber"],
)
def test_xgboost_margins_equal_the_builtin_objective(data, builtin, labels, loss, weighted,
                                                     derivatives):
    y = data[labels]
    weight = data["weight"] if weighted else None
    reference = _xgb_margins(data, y, builtin, weight=weight)
    obj = boosting.objective(loss, derivatives=derivatives)
    ours = _xgb_margins(data, y, {"disable_default_eval_metric": 1}, obj=obj, weight=weight)
    assert np.abs(reference).max() > 1.0  # the model learned something
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def _lgb_margins(data, y, objective, weight=None, rounds=ROUNDS, **extra):
    dset = lgb.Dataset(data["X"], label=y, weight=weight, params={"verbose": -1})
    params = {"objective": objective, "num_leaves": 8, "learning_rate": 0.1, "verbose": -1,
              "num_threads": 1, "seed": 0, "deterministic": True, "min_data_in_leaf": 5, **extra}
    booster = lgb.train(params, dset, rounds)
    return booster.predict(data["X"], raw_score=True)


@pytest.mark.parametrize("derivatives", ["auto", "autodiff"])
@pytest.mark.parametrize("weighted", [False, True])
def test_lightgbm_margins_equal_the_builtin_binary(data, weighted, derivatives):
    weight = data["weight"] if weighted else None
    reference = _lgb_margins(data, data["binary"], "binary", weight, boost_from_average=False)
    obj = boosting.objective(keras.losses.BinaryCrossentropy(from_logits=True),
                             derivatives=derivatives)
    ours = _lgb_margins(data, data["binary"], obj, weight)
    assert np.abs(reference).max() > 1.0
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_sklearn_forms_apply_sample_weight_once(data):
    X, y, w = data["X"], data["regression"], data["weight"]
    obj = boosting.objective(losskit.losses.GeneralRobust(alpha=2.0))  # 0.5 e^2: (p - y, 1)
    kw = {"n_estimators": ROUNDS, "max_depth": 3, "learning_rate": 0.1, "n_jobs": 1,
          "base_score": 0.0, "tree_method": "hist"}
    ref = xgb.XGBRegressor(objective="reg:squarederror", **kw).fit(X, y, sample_weight=w)
    ours = xgb.XGBRegressor(objective=obj, **kw).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=0, atol=1e-6)
    clone = pickle.loads(pickle.dumps(ours))  # the objective pickles with the model
    assert copy.deepcopy(obj) is obj  # LightGBM deep-copies params each train(): no recompiling
    np.testing.assert_array_equal(clone.predict(X), ours.predict(X))

    kw = {"n_estimators": ROUNDS, "num_leaves": 8, "learning_rate": 0.1, "n_jobs": 1,
          "min_child_samples": 5, "verbose": -1, "deterministic": True}
    ref = lgb.LGBMRegressor(objective="regression", boost_from_average=False, **kw)
    ours = lgb.LGBMRegressor(objective=obj, **kw)
    ref.fit(X, y, sample_weight=w)
    ours.fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=0, atol=1e-6)
    # Twice the weight applied would move the margins: the check above can fail.
    doubled = lgb.LGBMRegressor(objective=obj, **kw).fit(X, y, sample_weight=w**2)
    assert np.abs(doubled.predict(X) - ref.predict(X)).max() > 1e-3


def _softmax(s):
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    "loss",
    [
        keras.losses.CategoricalCrossentropy(from_logits=True),
        losskit.losses.SparseCategoricalCrossentropy(from_logits=True),
    ],
    ids=["keras_onehot", "losskit_sparse"],
)
@pytest.mark.parametrize("derivatives", ["auto", "autodiff"])
def test_multiclass_derivatives_are_softmax_closed_forms(loss, derivatives):
    rng = np.random.default_rng(1)
    score = 3 * rng.normal(size=(40, 4))
    labels = rng.integers(0, 4, 40).astype(float)  # as XGBoost / LightGBM hand them
    weight = rng.uniform(0.5, 2.0, 40)
    g, h = boosting.objective(loss, derivatives=derivatives).gradients(labels, score, weight)
    p = _softmax(score)
    assert g.shape == h.shape == (40, 4)
    np.testing.assert_allclose(g, (p - np.eye(4)[labels.astype(int)]) * weight[:, None],
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(h, p * (1 - p) * weight[:, None], rtol=0, atol=1e-9)


def test_multiclass_training_matches_builtin_softmax_accuracy(data):
    X, y = data["X"], data["classes"]
    obj = boosting.objective(keras.losses.CategoricalCrossentropy(from_logits=True))
    dtrain = xgb.DMatrix(X, label=y, base_margin=np.zeros((len(y), 3)))
    params = {"max_depth": 3, "eta": 0.3, "nthread": 1, "num_class": 3, "seed": 0}
    ref = xgb.train({**params, "objective": "multi:softprob"}, dtrain, ROUNDS)
    ours = xgb.train({**params, "disable_default_eval_metric": 1}, dtrain, ROUNDS, obj=obj)
    acc_ref = np.mean(ref.predict(dtrain).argmax(1) == y)
    acc_ours = np.mean(ours.predict(dtrain, output_margin=True).argmax(1) == y)
    assert acc_ref > 0.8
    assert abs(acc_ours - acc_ref) <= 0.01

    ref = _lgb_margins(data, y, "multiclass", num_class=3, boost_from_average=False)
    ours = _lgb_margins(data, y, obj, num_class=3)
    assert ours.shape == (len(y), 3)
    acc_ref, acc_ours = np.mean(ref.argmax(1) == y), np.mean(ours.argmax(1) == y)
    assert acc_ref > 0.8
    assert abs(acc_ours - acc_ref) <= 0.01


def test_tensorflow_falls_back_to_the_graph_for_an_op_xla_cannot_compile():
    """TensorFlow compiles the derivatives with XLA; `tf.numpy_function` (Python code) has no
    XLA kernel, and the plain graph must then give the derivatives."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the XLA fallback is TensorFlow's")
    import tensorflow as tf

    def with_python(y_true, y_pred):
        labels = tf.numpy_function(np.copy, [y_true], y_true.dtype, stateful=False)
        labels = tf.ensure_shape(labels, y_true.shape)
        return ops.mean(0.5 * ops.square(y_pred - labels), axis=-1)

    with pytest.raises(Exception):  # noqa: B017 - XLA's own error type varies
        tf.function(with_python, jit_compile=True)(tf.zeros((3, 1)), tf.ones((3, 1)))
    y, s = np.array([0.0, 1.0, 1.0]), np.array([0.5, -2.0, 3.0])
    g, h = boosting.objective(with_python).gradients(y, s)
    np.testing.assert_allclose(g, s - y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, np.ones(3), rtol=0, atol=1e-12)


def test_custom_gradient_loss_uses_its_declared_gradient():
    @losskit.custom_gradient
    def declared(y_true, score):
        value = ops.reshape(0.5 * ops.square(score - y_true), (-1,))

        def grad_fn(upstream):  # deliberately not the value's derivative
            return None, ops.reshape(upstream, (-1, 1)) * 3.0 * ops.sin(score - y_true)

        return value, grad_fn

    rng = np.random.default_rng(2)
    y, s = rng.normal(size=30), rng.normal(size=30)
    g, h = boosting.objective(declared, hessian="clip", min_hessian=0.0).gradients(y, s)
    np.testing.assert_allclose(g, 3 * np.sin(s - y), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, np.maximum(3 * np.cos(s - y), 0.0), rtol=0, atol=1e-12)
    # The library's logistic NLL with its analytic gradient: sigma(s) - y, sigma(1 - sigma).
    g, h = boosting.objective(losskit.losses.logistic_nll_logits).gradients(y > 0, s)
    p = 1 / (1 + np.exp(-s))
    np.testing.assert_allclose(g, p - (y > 0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, p * (1 - p), rtol=0, atol=1e-12)


def test_float32_derivatives_are_float64_rounded():
    rng = np.random.default_rng(5)
    y, s = (rng.random(50) > 0.5).astype(float), 4 * rng.normal(size=50)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    g64, h64 = boosting.objective(loss, derivatives="autodiff").gradients(y, s)
    g32, h32 = boosting.objective(loss, dtype="float32", derivatives="autodiff").gradients(y, s)
    p = 1 / (1 + np.exp(-s))
    np.testing.assert_allclose(g64, p - y, rtol=0, atol=1e-15)
    np.testing.assert_allclose(g32, g64, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h32, h64, rtol=0, atol=1e-6)
    assert np.abs(g32 - g64).max() > 0  # computed in float32 indeed
    with pytest.raises(ValueError, match="dtype must be"):
        boosting.objective(loss, dtype="float16")


def test_hessian_policy_for_a_non_convex_loss():
    y = np.zeros(5)
    s = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])  # Cauchy: h = (1 - e^2) / (1 + e^2)^2 < 0 at |e|>1
    with pytest.raises(ValueError, match=r"'Cauchy'.*negative at 2 of 5.*hessian='clip'"):
        boosting.objective(losskit.losses.Cauchy()).gradients(y, s)
    exact = (1 - s**2) / (1 + s**2) ** 2
    _, h = boosting.objective(losskit.losses.Cauchy(), hessian="clip", min_hessian=1e-3)\
        .gradients(y, s)
    np.testing.assert_allclose(h, np.maximum(exact, 1e-3), rtol=1e-12)
    g, h = boosting.objective(losskit.losses.Cauchy(), hessian="gauss_newton").gradients(y, s)
    np.testing.assert_allclose(g, s / (1 + s**2), rtol=1e-12)
    np.testing.assert_allclose(h, 1 / (1 + s**2), rtol=1e-12)  # rho'(e) / e, 1 at e = 0
    # Barron alpha = -2 (Geman-McClure): the Gauss-Newton weight stays positive, trains.
    _, h = boosting.objective(losskit.losses.GeneralRobust(alpha=-2.0), hessian="gauss_newton")\
        .gradients(y, s)
    np.testing.assert_allclose(h, (0.25 * s**2 + 1) ** -2, rtol=1e-12)


def test_metric_in_each_library_form(data):
    X, y = data["X"], data["binary"]
    w = data["weight"].astype(np.float32).astype(float)  # as the libraries store weights
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    m = boosting.metric(loss)
    s = np.random.default_rng(3).normal(size=len(y))
    per_sample = np.logaddexp(0, s) - y * s
    expected = np.sum(w * per_sample) / np.sum(w)
    name, value = m(s, xgb.DMatrix(X, label=y, weight=w))
    assert name == "binary_crossentropy" and value == pytest.approx(expected, rel=1e-12)
    name, value, higher = m(s, lgb.Dataset(X, label=y, weight=w).construct())
    assert value == pytest.approx(expected, rel=1e-12) and higher is False
    assert m.xgboost_sklearn(y, s) == pytest.approx(per_sample.mean(), rel=1e-12)
    assert m.xgboost_sklearn.__name__ == "binary_crossentropy"  # the name XGBoost logs
    assert m.lightgbm_sklearn(y, s, w)[1] == pytest.approx(expected, rel=1e-12)
    # In training: XGBoost and LightGBM hand the metric raw margins with a custom objective.
    obj = boosting.objective(loss)
    dtrain = xgb.DMatrix(X, label=y, weight=w, base_margin=np.zeros(len(y)))
    log = {}
    booster = xgb.train({"max_depth": 2, "nthread": 1, "disable_default_eval_metric": 1}, dtrain,
                        3, obj=obj, custom_metric=m, evals=[(dtrain, "train")], evals_result=log)
    margins = booster.predict(dtrain, output_margin=True)
    assert log["train"]["binary_crossentropy"][-1] == pytest.approx(m.value(y, margins, w),
                                                                     rel=1e-5)
    dset = lgb.Dataset(X, label=y, weight=w)
    log = {}
    booster = lgb.train({"objective": obj, "metric": "None", "verbose": -1, "num_threads": 1},
                        dset, 3, feval=m, valid_sets=[dset], valid_names=["train"],
                        callbacks=[lgb.record_evaluation(log)])
    margins = booster.predict(X, raw_score=True)
    assert log["train"]["binary_crossentropy"][-1] == pytest.approx(m.value(y, margins, w),
                                                                     rel=1e-6)
    cat = m.for_catboost()
    error, total = cat.evaluate([s], y, w)
    assert cat.get_final_error(error, total) == pytest.approx(expected, rel=1e-12)
    assert cat.is_max_optimal() is False


def test_catboost_derivatives_in_its_sign_convention_and_a_model_trains(data):
    catboost = pytest.importorskip("catboost", reason="needs the boosting extra (catboost)")
    rng = np.random.default_rng(4)
    s, y, w = rng.normal(size=10), (rng.random(10) > 0.5).astype(float), rng.uniform(1, 2, 10)
    cat = boosting.objective(keras.losses.BinaryCrossentropy(from_logits=True)).for_catboost()
    ders = np.array(cat.calc_ders_range(list(s), list(y), list(w)))
    p = 1 / (1 + np.exp(-s))
    # CatBoost maximises: derivatives of the log-likelihood, -(p - y) and -p(1 - p).
    np.testing.assert_allclose(ders[:, 0], (y - p) * w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ders[:, 1], -p * (1 - p) * w, rtol=0, atol=1e-12)
    multi = boosting.objective(keras.losses.CategoricalCrossentropy(from_logits=True))
    der1, der2 = multi.for_catboost().calc_ders_multi([0.5, -1.0, 2.0], 2.0, 1.5)
    q = _softmax(np.array([[0.5, -1.0, 2.0]]))[0]
    np.testing.assert_allclose(der1, -1.5 * (q - [0, 0, 1]), atol=1e-12)
    np.testing.assert_allclose(der2, np.diag(-1.5 * q * (1 - q)), atol=1e-12)

    # A trained model: the same trees as CatBoost's RMSE (Newton leaves), weights applied once.
    X, y, w = data["X"][:200], data["regression"][:200], data["weight"][:200]
    kw = {"iterations": 10, "depth": 3, "learning_rate": 0.3, "verbose": False,
          "thread_count": 1, "random_seed": 0, "boost_from_average": False,
          "leaf_estimation_method": "Newton", "leaf_estimation_iterations": 1,
          "bootstrap_type": "No", "random_strength": 0, "allow_writing_files": False}
    half_squared = boosting.objective(losskit.losses.GeneralRobust(alpha=2.0)).for_catboost()
    for weight in (None, w):
        ref = catboost.CatBoostRegressor(loss_function="RMSE", **kw).fit(X, y, sample_weight=weight)
        ours = catboost.CatBoostRegressor(loss_function=half_squared, eval_metric="RMSE", **kw)
        ours.fit(X, y, sample_weight=weight)
        assert np.abs(ref.predict(X)).max() > 1.0
        np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=0, atol=1e-6)


def test_probability_losses_are_refused():
    for loss in (keras.losses.BinaryCrossentropy(),
                 losskit.losses.CategoricalCrossentropy(from_logits=False)):
        with pytest.raises(ValueError, match=r"expects probabilities.*from_logits=True"):
            boosting.objective(loss)
    with pytest.raises(ValueError, match="expects probabilities"):
        boosting.metric(keras.losses.BinaryCrossentropy)  # the class, default from_logits=False


def test_bad_input_names_the_loss():
    obj = boosting.objective(losskit.losses.Huber(delta=2.0))
    with pytest.raises(ValueError, match=r"'Huber'.*3 labels for 4 scores"):
        obj.gradients(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"'Huber'.*sample_weight must have shape \(4,\)"):
        obj.gradients(np.zeros(4), np.zeros(4), np.ones(3))
    with pytest.raises(ValueError, match=r"'Huber'.*non-negative"):
        obj.gradients(np.zeros(4), np.zeros(4), -np.ones(4))
    with pytest.raises(ValueError, match=r"'Huber'.*NaN or inf"):
        obj.gradients(np.zeros(4), np.array([0.0, np.nan, 0.0, 0.0]))
    multi = boosting.objective(keras.losses.CategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=r"'categorical_crossentropy'.*class indices in \[0, 3\)"):
        multi.gradients(np.array([0, 1, 3]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"integer class indices in \[0, 3\), got non-integer "
                       r"values 1\.5$"):  # fmt: skip
        multi.gradients(np.array([0.0, 1.5, 2.0]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"one score per class.*num_class"):
        multi.gradients(np.array([0, 1, 2]), np.zeros(3))  # booster without num_class
    bce = boosting.objective(keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=r"binary labels must lie in \[0, 1\]"):
        bce.gradients(np.array([0.0, 2.0]), np.zeros(2))
    with pytest.raises(ValueError, match="hessian must be one of"):
        boosting.objective(losskit.losses.Huber(), hessian="newton")
    with pytest.raises(ValueError, match="min_hessian"):
        boosting.objective(losskit.losses.Huber(), min_hessian=-1.0)
    for logits in (keras.losses.CategoricalCrossentropy(from_logits=True),
                   losskit.losses.BinaryCrossentropy(from_logits=True)):  # at construction
        with pytest.raises(ValueError, match="gauss_newton' is the curvature of a loss of the "
                                             "residual"):
            boosting.objective(logits, hessian="gauss_newton")
    with pytest.raises(ValueError, match="gauss_newton' needs one output"):
        boosting.objective(keras.losses.MeanSquaredError(), hessian="gauss_newton").gradients(
            np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="expected a keras.losses.Loss"):
        boosting.objective("huber")
    # Rows coupled through a batch statistic: the Hessian diagonal would be wrong; refused.
    centred = boosting.objective(lambda y, p: ops.mean(ops.square(p - ops.mean(p) - y), axis=-1))
    with pytest.raises(ValueError, match="depend on other rows"):
        centred.gradients(np.zeros(5), np.arange(5.0))
    # A non-finite derivative (sqrt of a negative score) is refused, not trained on.
    root = boosting.objective(lambda y, p: ops.mean(ops.sqrt(p) - y * p, axis=-1))
    with pytest.raises(ValueError, match=r"not finite at 1 of 2 entries \(first at row 1"):
        root.gradients(np.ones(2), np.array([1.0, -1.0]))


@pytest.mark.parametrize(
    "loss",
    [keras.losses.BinaryCrossentropy(from_logits=True), losskit.losses.MSE(),
     losskit.losses.Huber(delta=2.0), losskit.losses.Cauchy()],
    ids=["bce_closed_form", "mse_closed_form", "huber_closed_form", "cauchy_autodiff"],
)
def test_objectives_and_metrics_pickle_with_their_models(data, loss):
    X, y = data["X"], data["binary"]
    for derivatives in ("auto", "autodiff"):
        obj = boosting.objective(loss, derivatives=derivatives, hessian="clip")
        clone = pickle.loads(pickle.dumps(obj))
        np.testing.assert_array_equal(clone.gradients(y, X[:, 0])[0], obj.gradients(y, X[:, 0])[0])
        assert pickle.loads(pickle.dumps(obj.for_catboost())).objective.loss.name == obj.loss.name
    metric = pickle.loads(pickle.dumps(boosting.metric(loss)))
    assert metric.value(y, X[:, 0]) == boosting.metric(loss).value(y, X[:, 0])
    model = xgb.XGBRegressor(objective=boosting.objective(loss, hessian="clip"), n_estimators=3,
                             max_depth=2, n_jobs=1).fit(X, y)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(X), model.predict(X))


def test_flat_hessian_warns_once_and_gauss_newton_trains(data):
    X = data["X"]
    y = 3.0 * data["regression"] + 20.0  # far from the starting score 0: Huber's linear tails
    huber = keras.losses.Huber(delta=2.0)
    obj = boosting.objective(huber)
    with pytest.warns(UserWarning, match=r"'huber_loss': the exact Hessian is about 0 .*gauss_n"):
        obj.gradients(y, np.zeros(len(y)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj.gradients(y, np.zeros(len(y)))  # once per objective
        boosting.objective(keras.losses.MeanSquaredError()).gradients(y, np.zeros(len(y)))
        boosting.objective(keras.losses.BinaryCrossentropy(from_logits=True)).gradients(
            data["binary"], np.zeros(len(y)))
        # A saturated logistic start is flat too, but its curvature is exact (no advice to give);
        # a chosen policy and rows of weight 0 do not warn.
        boosting.objective(keras.losses.BinaryCrossentropy(from_logits=True)).gradients(
            np.ones(10), np.full(10, -40.0))
        boosting.objective(huber, hessian="clip").gradients(y, np.zeros(len(y)))
        far, weight = np.full(len(y), 20.0), np.zeros(len(y))
        far[0], weight[0] = 0.5, 1.0  # the one row that counts is in the quadratic part
        boosting.objective(huber).gradients(far, np.zeros(len(y)), weight)
        newton = boosting.objective(huber, hessian="gauss_newton")
        dtrain = xgb.DMatrix(X, label=y, base_margin=np.zeros(len(y)))
        booster = xgb.train({"max_depth": 3, "eta": 0.3, "nthread": 1,
                             "disable_default_eval_metric": 1}, dtrain, ROUNDS, obj=newton)
    rmse = np.sqrt(np.mean((booster.predict(dtrain, output_margin=True) - y) ** 2))
    assert rmse < 0.5 * y.std()


def test_more_bad_input_names_the_loss():
    bce = boosting.objective(keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="'binary_crossentropy': labels must be numbers"):
        bce.gradients(np.array(["a", "b"]), np.zeros(2))
    scce = boosting.objective(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="sparse loss takes class indices of shape"):
        scce.gradients(np.eye(3), np.zeros((3, 3)))
    with pytest.raises(TypeError, match="AUC is a Keras metric"):
        boosting.objective(keras.metrics.AUC())
    with pytest.raises(ValueError, match=r"expects probabilities.*functools.partial"):
        boosting.objective(keras.losses.binary_crossentropy)
    with pytest.raises(ValueError, match="log_input=True"):
        boosting.objective(losskit.losses.PoissonNLL())
    # A reduction over the batch axis couples the rows, even with as many rows as columns.
    coupled = boosting.objective(keras.losses.CategoricalCrossentropy(from_logits=True, axis=0))
    with pytest.raises(ValueError, match="not one value per row"):
        coupled.gradients(np.array([0, 1, 2]), np.zeros((3, 3)))


def test_a_loss_that_ignores_the_score_warns():
    """A loss of probabilities hidden in a plain function clips raw scores: g = 0 everywhere;
    so does a loss with no path from the score at all (torch raised its own error there)."""
    hidden = lambda y_true, y_pred: keras.losses.binary_crossentropy(y_true, y_pred)  # noqa: E731
    detached = lambda y_true, y_pred: ops.mean(  # noqa: E731
        ops.square(ops.stop_gradient(y_pred) - y_true), axis=-1)
    for loss in (hidden, detached):
        with pytest.warns(UserWarning, match="gradient is 0 at every entry"):
            g, h = boosting.objective(loss).gradients(np.array([0.0, 1.0, 1.0]),
                                                      np.array([-3.0, -1.0, -2.0]))
        assert not g.any() and not h.any()


def test_pseudo_huber_far_from_the_start_warns():
    """Its Hessian (1 + e^2)^(-3/2) is 1e-4 at |e| = 20: not 0, but no curvature beside lambda."""
    with pytest.warns(UserWarning, match="exact Hessian is about 0"):
        boosting.objective(losskit.losses.GeneralRobust(alpha=1.0)).gradients(
            np.full(10, 20.0), np.zeros(10))


def test_round_off_negative_hessians_are_not_non_convexity():
    """float32 autodiff of Charbonnier's far tail (h ~ 1e-11) gave -2e-8: within round-off of
    the largest |h| (1 / epsilon = 1000), so 0 under "exact"; Cauchy's real negatives raise."""
    far = np.full(8, 20.0) + 0.1 * np.arange(8)  # every row far: the largest |h| is tiny too
    boosting.objective(losskit.losses.Charbonnier(), dtype="float32").gradients(far, np.zeros(8))
    s = np.linspace(-60.0, 60.0, 4001)
    y = np.zeros_like(s)
    raw = boosting.objective(losskit.losses.Charbonnier(), dtype="float32")
    assert raw._autodiff(*raw.loss.prepare(y, s, None)[:2])[1].min() < 0  # round-off, every backend
    g, h = raw.gradients(y, s)
    assert np.all(h >= 0)
    with pytest.raises(ValueError, match="negative at"):
        boosting.objective(losskit.losses.Cauchy()).gradients(y, s)


def test_gauss_newton_only_for_losses_of_the_residual():
    for loss in (losskit.losses.logistic_nll_logits, losskit.losses.PoissonNLL(log_input=True),
                 keras.losses.Hinge(), keras.losses.SquaredHinge(),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 losskit.losses.LovaszHinge(), losskit.losses.SparsemaxLoss(),
                 losskit.losses.PairwiseLogistic(), keras.losses.CosineSimilarity(),
                 losskit.losses.CosineSimilarity()):
        with pytest.raises(ValueError, match="curvature of a loss of the residual"):
            boosting.objective(loss, hessian="gauss_newton")
    for loss in (losskit.losses.Huber(), losskit.losses.Cauchy(), keras.losses.LogCosh(),
                 losskit.losses.mse, keras.losses.MeanAbsoluteError(), losskit.losses.Pinball(),
                 half_squared_error):  # the last: a user's own loss, taken at its word
        boosting.objective(loss, hessian="gauss_newton")


def test_keras_metrics_are_not_losses():
    for metric in (keras.metrics.AUC(), keras.metrics.AUC, keras.metrics.MeanSquaredError,
                   keras.metrics.binary_accuracy):
        with pytest.raises(TypeError, match="is a Keras metric, not a loss"):
            boosting.objective(metric)
    boosting.objective(keras.metrics.mean_squared_error)  # Keras's loss function, exported twice
    with pytest.raises(TypeError, match="binary_accuracy is a Keras metric"):
        boosting.objective(functools.partial(keras.metrics.binary_accuracy, threshold=0.0))
    with pytest.raises(ValueError, match="one score per class"):  # a loss over classes
        boosting.objective(losskit.losses.SparsemaxLoss()).gradients(np.zeros(3), np.zeros(3))


def test_coupled_rows_are_caught_whatever_the_first_rows():
    """In-batch pair losses look independent on rows of one label: the check takes rows of
    distinct labels and rows spread over the batch."""
    rng = np.random.default_rng(0)
    y = np.sort(rng.integers(0, 2, 50)).astype(float)[::-1].copy()  # first rows share a label
    with pytest.raises(ValueError, match="depend on other rows"):
        boosting.objective(keras.losses.Circle(), hessian="clip").gradients(
            y, rng.normal(size=50))
    # A first call that proves nothing (one row, one label) leaves the check for the next.
    centred = boosting.objective(
        lambda y, p: ops.mean(ops.square(p - ops.mean(p, axis=0, keepdims=True) - y), axis=-1))
    with pytest.warns(UserWarning, match="gradient is 0"):
        centred.gradients(np.array([1.0]), np.array([0.3]))
    with pytest.raises(ValueError, match="depend on other rows"):
        centred.gradients(rng.normal(size=40), rng.normal(size=40))
    with pytest.raises(ValueError, match="depend on other rows"):  # the metric checks too
        boosting.metric(keras.losses.Circle()).value(y, rng.normal(size=50))


def test_sklearn_metric_pickles_with_the_model(data):
    m = boosting.metric(losskit.losses.Huber(delta=2.0))
    obj = boosting.objective(losskit.losses.Huber(delta=2.0), hessian="gauss_newton")
    model = xgb.XGBRegressor(objective=obj, eval_metric=m.xgboost_sklearn, n_estimators=3,
                             n_jobs=1).fit(data["X"], data["regression"])
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict(data["X"]), model.predict(data["X"]))
    assert m.xgboost_sklearn.__name__ == "Huber"
    with pytest.raises(ValueError, match="sample weights sum to 0"):
        m.value(data["regression"], np.zeros(len(data["X"])), np.zeros(len(data["X"])))

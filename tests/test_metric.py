"""`@losskit.metric` and the metric library."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit.metrics import regression_accuracy


def _reference_accuracy(y_true, y_pred, tolerance, relative):
    bound = tolerance * np.abs(y_true) if relative else tolerance
    return (np.abs(y_pred - y_true) <= bound).astype("float64")


@pytest.mark.parametrize("relative", [True, False])
def test_regression_accuracy_matches_numpy(relative):
    rng = np.random.default_rng(0)
    y_true = rng.normal(size=(50, 1)).astype("float32") * 10
    y_pred = y_true + rng.normal(size=(50, 1)).astype("float32")
    metric = regression_accuracy(tolerance=0.3, relative=relative)
    metric.update_state(y_true, y_pred)
    expected = _reference_accuracy(y_true, y_pred, 0.3, relative).mean()
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    assert 0.0 < expected < 1.0  # the data exercises both outcomes


def test_weighted_running_mean_and_reset():
    rng = np.random.default_rng(1)
    metric = regression_accuracy(tolerance=0.5, relative=False)
    hits, weights = [], []
    for _ in range(3):
        y_true = rng.normal(size=(8,)).astype("float32")
        y_pred = (y_true + rng.normal(size=(8,))).astype("float32")
        w = rng.uniform(0, 2, size=8).astype("float32")
        metric.update_state(y_true, y_pred, sample_weight=w)
        hits.append(_reference_accuracy(y_true, y_pred, 0.5, False))
        weights.append(w)
    hits, weights = np.concatenate(hits), np.concatenate(weights)
    np.testing.assert_allclose(float(metric.result()), (hits * weights).sum() / weights.sum(),
                               rtol=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_custom_metric_with_parameters_round_trips():
    @losskit.metric
    def mean_prediction(y_true, y_pred, shift=0.0):
        return ops.mean(y_pred, axis=-1) + shift

    metric = mean_prediction(shift=2.5, name="mp")
    metric.update_state(np.zeros((4, 2)), np.ones((4, 2), "float32"))
    assert float(metric.result()) == pytest.approx(3.5)
    config = metric.get_config()
    assert config["shift"] == 2.5 and config["name"] == "mp"
    clone = mean_prediction.from_config(config)
    assert clone.shift == 2.5 and clone.name == "mp"


def test_metric_guards():
    metric = regression_accuracy()
    with pytest.raises(ValueError, match=r"metric 'regression_accuracy'.*\(4, 3\).*\(4, 2\)"):
        metric.update_state(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"))
    with pytest.raises(ValueError, match="y_pred must be a floating"):
        metric.update_state(np.ones((4, 1), "float32"), np.ones((4, 1), "int32"))


def test_metric_in_fit_logs_under_its_name():
    x = np.random.default_rng(2).normal(size=(64, 2)).astype("float32")
    y = x.sum(axis=1, keepdims=True) + 10
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse",
                  metrics=[regression_accuracy(tolerance=0.1, name="within_10pct")])
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    prediction = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    expected = _reference_accuracy(y, prediction, 0.1, True).mean()
    np.testing.assert_allclose(logs["within_10pct"], expected, rtol=1e-6)

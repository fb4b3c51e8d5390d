"""`@losskit.metric`: a per-sample function with parameters becomes a serializable Keras Metric."""

import keras
from keras import ops

from losskit import _contract, _wrap
from losskit._keras import apply_mask, get_keras_mask


class FunctionMetric(_wrap.ParametersMixin, keras.metrics.Mean):
    """Base class of every Metric made by `@losskit.metric`: the running weighted mean of the
    function's per-sample values (masks and `sample_weight` applied per sample)."""

    base_parameters = {"name": None, "dtype": None}

    def __init__(self, *args, name=None, dtype=None, **params):
        self.params = _wrap.bind_parameters(type(self), args, params)
        super().__init__(name=name or type(self).__name__, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        owner = f"metric '{self.name}'"
        _contract.check_floating(owner, y_pred)
        mask = get_keras_mask(y_pred)
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        y_true = ops.convert_to_tensor(y_true, dtype=self.dtype)
        y_true, y_pred = _contract.align(owner, y_true, y_pred)
        values = self.fn(y_true, y_pred, **self.params)
        _contract.check_per_sample(owner, values, y_pred.shape[0])
        sample_weight = apply_mask(sample_weight, mask, dtype=self.dtype, reduction="sum")
        return super().update_state(values, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), **self.params}


def metric(fn=None, *, package="losskit", name=None):
    """Turns a per-sample function into a registered, serializable `keras.metrics.Metric` class.

    ```python
    @losskit.metric
    def within(y_true, y_pred, tolerance=0.1):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred) <= tolerance, axis=-1)

    model.compile(optimizer="adam", loss="mse", metrics=[within(tolerance=0.5)])
    ```

    `result()` is the weighted mean of the per-sample values seen since the last
    `reset_state()`. Parameters become constructor arguments and config, exactly as for
    `losskit.loss`, and survive `model.save()` / `keras.saving.load_model()`.
    """
    if fn is None:
        return lambda f: metric(f, package=package, name=name)
    return _wrap.make_class(fn, FunctionMetric, "metric", package, name)

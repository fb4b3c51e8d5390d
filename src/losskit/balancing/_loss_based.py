"""Balancers that weight the terms by their values: `Uncertainty` (learned log-variances) and
`DWA` (the last two epochs' mean term losses). Neither needs per-term gradients."""

import keras
from keras import ops

from losskit.balancing._base import Balancer, _number, _register, _state


@_register
class Uncertainty(Balancer):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learned log-variance `s_t` per term (initialised to 0, a model weight trained by the
    model's optimizer, saved and resumed with the model):

        total = sum_t c_t * (exp(-s_t) * L_t + s_t)                    (default)
        total = sum_t c_t * (0.5 * exp(-s_t) * L_t + 0.5 * s_t)        (regression=True)

    `c_t` is the term's schedule weight (1 without one). `<term>_weight` logs `exp(-s_t)`
    (`0.5 * exp(-s_t)` with `regression=True`), times `c_t`; the regulariser `sum_t c_t * s_t`
    (`0.5 * ...`) is logged as `uncertainty_regularizer`. The regression form is the paper's
    Gaussian likelihood; the default is the common form with both factors 1/2 dropped (same
    minimiser in `L_t`, different step sizes for `s_t`).

    Args:
        regression: use the 0.5 factors of the Gaussian likelihood.
    """

    def __init__(self, regression=False):
        if not isinstance(regression, bool):
            raise TypeError(f"Uncertainty: regression must be True or False, got {regression!r}")
        self.regression = regression

    def bind(self, model):
        self.log_var = model.add_weight(
            shape=(len(model.objective.terms),),
            initializer="zeros",
            trainable=True,
            name="uncertainty_log_var",
        )

    def apply(self, step):
        s = ops.cast(self.log_var.value, "float32")
        half = 0.5 if self.regression else 1.0
        weights = {n: half * ops.exp(-s[i]) for i, n in enumerate(step.names)}
        # s_t does not depend on the batch: each replica adds its share, summing to s_t once.
        regularizer = sum(
            step.schedule[n] * half * s[i] / step.replicas for i, n in enumerate(step.names)
        )
        total = step.weighted_total(weights) + regularizer
        return total, weights, {"uncertainty_regularizer": regularizer}

    def get_config(self):
        return {"regression": self.regression}

    contributions = ("uncertainty_regularizer",)


class _DWAEpochEnd(keras.callbacks.Callback):
    """Moves the finished epoch's mean term losses into the model's DWA state. The epoch means
    are the term logs of `fit`, so the compiled step only reads two variables."""

    def __init__(self, balancer):
        super().__init__()
        self.balancer = balancer

    def on_epoch_end(self, epoch, logs=None):
        b = self.balancer
        latest = [float(ops.convert_to_numpy(logs[n])) for n in b.names]
        history = ops.convert_to_numpy(b.history.value)
        b.history.assign(ops.stack([ops.convert_to_tensor(latest, "float32"), history[0]]))
        b.epochs.assign(ops.convert_to_numpy(b.epochs.value) + 1)


@_register
class DWA(Balancer):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

        r_t = L_t(e - 1) / L_t(e - 2),    w_t = K * softmax_t(r_t / T)

    for epoch `e` (1-based) with `K` terms and temperature `T`; `w_t = 1` in the first two
    epochs. `L_t(e)` is the epoch mean of term `t`'s unweighted value (its `fit` log). The last
    two epochs' means are non-trainable model variables, updated by a callback that `fit` adds,
    so training resumed from a saved model continues the averaging.

    Args:
        temperature: `T > 0`; large values give uniform weights.
    """

    def __init__(self, temperature=2.0):
        self.temperature = _number("DWA", "temperature", temperature, 0.0, strict=True)

    def bind(self, model):
        self.names = [t.name for t in model.objective.terms]
        k = len(self.names)
        # Row 0: L(e - 1), row 1: L(e - 2).
        self.history = _state(model, "dwa_history", (2, k), initializer="ones")
        self.epochs = _state(model, "dwa_epochs", (), dtype="int32")

    def apply(self, step):
        history = ops.cast(self.history.value, "float32")
        ratio = ops.divide_no_nan(history[0], history[1])
        k = len(step.names)
        w = k * ops.softmax(ratio / self.temperature)
        w = ops.where(self.epochs.value >= 2, w, ops.ones_like(w))
        weights = {n: w[i] for i, n in enumerate(step.names)}
        return step.weighted_total(weights), weights

    def callbacks(self):
        return [_DWAEpochEnd(self)]

    def get_config(self):
        return {"temperature": self.temperature}

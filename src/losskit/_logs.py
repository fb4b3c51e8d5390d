"""What an `ObjectiveModel` logs (its trackers), and the guard that reads the logs."""

import math

import keras
import numpy as np
from keras import ops


class StepLogs(keras.metrics.Metric):
    """`loss` and each term's value: means over batches weighted by their sizes (`feed`).

    One metric with two variables for the total and every term: each metric variable is state a
    compiled JAX step passes in and out, and each update is ops an eager (torch) step pays for, so
    `keras.metrics.Mean` per term (which also broadcasts sample weights) cost a small model's step
    several percent. Keras feeds its loss tracker the replica loss times the number of replicas,
    exact only when every replica gets as many samples; that update is ignored and the objective
    feeds the exact values instead.
    """

    def __init__(self, names, dtype=None):
        super().__init__(name="loss", dtype=dtype)
        self.names = list(names)
        self.sums = self.add_variable((len(self.names) + 1,), "zeros", aggregation="sum",
                                      name="sums")
        self.count = self.add_variable((), "zeros", aggregation="sum", name="count")

    def update_state(self, *args, **kwargs):
        pass

    def feed(self, total, values, batch):
        """Adds `batch` times the step's `total` and term `values` (in `names`' order)."""
        stacked = ops.stack([ops.cast(v, self.dtype) for v in (total, *values)])
        self.sums.assign_add(stacked * batch)
        self.count.assign_add(ops.cast(batch, self.dtype))

    def result(self):
        means = ops.divide_no_nan(self.sums, self.count)
        return {"loss": means[0], **{name: means[i + 1] for i, name in enumerate(self.names)}}


class Latest(keras.metrics.Metric):
    """Reports the last value it was given (a scheduled term's current weight)."""

    def __init__(self, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        # Every replica holds the same weight, so their mean is that weight.
        self.value = self.add_variable((), "zeros", aggregation="mean", name="value")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.value.dtype))

    def result(self):
        # A copy, not the variable's own buffer: under JAX that buffer is donated to the next
        # compiled step, and `History` would keep a deleted array.
        return ops.copy(self.value)

    def reset_state(self):
        pass  # a weight stays meaningful across epochs


class NanGuard(keras.callbacks.Callback):
    """Stops `fit` or `evaluate` at the first batch where a term's logged value is NaN or
    infinite, naming the term and the batch as Keras numbers it (the `batch` index its callbacks
    receive, from 0 in each epoch) with the optimizer step."""

    def __init__(self, names):
        super().__init__()
        self.names = [*names, "loss"]
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, where, logs):
        for name in self.names:
            if name in (logs or {}):
                value = float(np.asarray(ops.convert_to_numpy(logs[name])))
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"nan_policy='raise': term '{name}' became {value} in {where}. Check its "
                        "inputs, weight and learning rate."
                    )

    def on_train_batch_end(self, batch, logs=None):
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
        self._check(f"fit, epoch {self._epoch + 1}, batch {batch} (optimizer step {step})", logs)

    def on_test_batch_end(self, batch, logs=None):
        self._check(f"evaluate, batch {batch}", logs)

"""What an `ObjectiveModel` logs (its trackers), and the guard that reads the logs."""

import math

import keras
import numpy as np
from keras import ops

from losskit._keras import optimizer_counter


class StepLogs(keras.metrics.Metric):
    """`loss`, each term and each other contribution, as one evaluation over all the data seen.

    A term's log is `sum over steps of (value * count) / sum of counts`, with `count` the number of
    kept positions the step's value is the mean over (`Result.counts`): samples for a per-sample
    term, kept positions (not the batch size) for a per-position one. That is the term's value on
    all the steps' data at once, whatever the batch sizes and however many positions each batch
    ignores. `loss` is the sum of the logged contributions: each term's `weight * value` (the
    applied weight of each step, counted the same way) plus each `extra` contribution (a
    balancer's regulariser, the inner model's own losses), which are batch-independent and
    counted per sample. `extra` names are reported once `seen` (a step produced them).

    One metric holding every sum in one vector: each metric variable is state a compiled JAX step
    passes in and out, and each update is ops an eager (torch) step pays for. Keras feeds its
    loss tracker the replica loss times the number of replicas, exact only when every replica
    gets as many samples; that update is ignored and the objective feeds the exact values.
    """

    def __init__(self, names, extras=(), dtype=None):
        super().__init__(name="loss", dtype=dtype)
        self.names = list(names)
        self.extras = list(extras)
        self.seen = set()
        k, e = len(self.names), len(self.extras)
        # [values * count (k), weight * value * count (k), counts (k), extras * batch (e), batch]
        self.sums = self.add_variable((3 * k + e + 1,), "zeros", aggregation="sum", name="sums")

    def update_state(self, *args, **kwargs):
        pass

    def feed(self, values, weights, counts, extras, batch):
        """Adds one step: per term (in `names`' order) its value, applied weight and `(count
        on this replica, global count)`; `extras` `{name: value}` and this replica's `batch`.

        Values are this replica's shares (they sum to the global value over replicas): a share
        times the global count, summed over replicas, is the global value times the count."""
        scaled = [ops.cast(v, self.dtype) * ops.cast(c[1], self.dtype)
                  for v, c in zip(values, counts)]
        weighted = [ops.cast(w, self.dtype) * s for w, s in zip(weights, scaled)]
        local = [ops.cast(c[0], self.dtype) for c in counts]
        more = []
        for name in self.extras:
            if name in extras:
                self.seen.add(name)
                more.append(ops.cast(extras[name], self.dtype))
            else:
                more.append(ops.zeros((), self.dtype))
        batch = ops.cast(batch, self.dtype)
        self.sums.assign_add(ops.stack([*scaled, *weighted, *local, *(m * batch for m in more),
                                        batch]))

    def result(self):
        k = len(self.names)
        sums = self.sums
        counts = sums[2 * k:3 * k]
        terms = ops.divide_no_nan(sums[:k], counts)
        contributions = ops.divide_no_nan(sums[k:2 * k], counts)
        extras = ops.divide_no_nan(sums[3 * k:-1], sums[-1])
        logs = {name: terms[i] for i, name in enumerate(self.names)}
        loss = ops.sum(contributions)
        for i, name in enumerate(self.extras):
            if name in self.seen:
                logs[name] = extras[i]
                loss = loss + extras[i]
        return {"loss": loss, **logs}


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
                    balance = getattr(self.model, "balance", None)
                    hint = balance and balance.explain_non_finite(self.names[:-1], logs)
                    raise FloatingPointError(
                        f"nan_policy='raise': term '{name}' became {value} in {where}. "
                        + (hint or "Check its inputs, weight and learning rate.")
                    )

    def on_train_batch_end(self, batch, logs=None):
        # The step the batch's schedules read (reduction rule 6: micro-batches share one).
        counter, k = optimizer_counter(self.model.optimizer)
        step = (int(ops.convert_to_numpy(counter)) - 1) // k
        self._check(f"fit, epoch {self._epoch + 1}, batch {batch} (optimizer step {step})", logs)

    def on_test_batch_end(self, batch, logs=None):
        self._check(f"evaluate, batch {batch}", logs)


# Keys Keras's own callbacks write into the epoch logs (ReduceLROnPlateau, LearningRateScheduler,
# TensorBoard): a term of that name would be overwritten in `History` when one is used.
KERAS_KEYS = {"learning_rate": "the learning rate that Keras's LR callbacks log"}


def check_log_names(owner, terms, keys):
    """Raises a `ValueError` when two logs would share a key, so that one silently overwrites the
    other in `History`, `evaluate` and the progress bar.

    `terms` are the term names (each logged under its name); `keys` are `(key, what it is)` for
    every other key the owner logs (`<term>_weight`, a balancer's regulariser, a compiled metric,
    ...; `loss` is added here). Validation adds `val_` to each, so a term `val_a` clashes with
    the validation log of a term `a`. Names that cannot clash are never refused."""
    entries = [(name, f"term '{name}'") for name in terms]
    entries += [("loss", "the total objective"), *keys]
    entries += [(f"val_{key}", f"the validation log of {what}") for key, what in entries]
    entries += list(KERAS_KEYS.items())
    seen = {}
    for key, what in entries:
        if key in seen:
            first = seen[key]
            term = next((w for w in (first, what) if w.startswith("term ")), None)
            fix = f" Rename {term} (Term(..., name=...))." if term else ""
            raise ValueError(
                f"{owner}: {first} and {what} would both be logged as '{key}', and one would "
                f"overwrite the other.{fix}"
            )
        seen[key] = what

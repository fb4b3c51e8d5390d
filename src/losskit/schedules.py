"""Term-weight schedules: pure functions of the optimizer step.

A schedule maps the optimizer's step `t` (`optimizer.iterations` before the update, so the first
step is `t = 0`; with `gradient_accumulation_steps=k` Keras counts updates, so the `k`
micro-batches of one update share a step) to a weight. Being a pure function of `t` it needs no
callback or variable, updates inside the compiled train step on every backend, and resumes
exactly from a checkpoint because `optimizer.iterations` is saved with the model.

```python
weight = losskit.schedules.Linear(0.0, 1.0, steps=500)       # KL annealing
losskit.Term(losskit.losses.gaussian_kl, z_mean="layer.z_mean", z_log_var="layer.z_log_var",
             weight=weight, name="kl")
float(weight(250))  # 0.5
```
"""

import math
import numbers

import keras
from keras import ops

from losskit import domains

_register = keras.saving.register_keras_serializable(package="losskit")


def _number(schedule, name, value, domain=domains.finite):
    """`value` as a float in `domain` (the checks of `losskit.domains`, as for loss parameters);
    strings, bools, NaN and inf are refused."""
    domain.validate(schedule, name, value)
    return float(value)


def _integer(schedule, name, value, minimum):
    """`value` as an int >= `minimum`; a float is accepted only when integral (1e3)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{schedule}: {name} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif math.isfinite(value) and float(value).is_integer():
        number = int(value)
    else:
        raise TypeError(f"{schedule}: {name} must be an integer number of steps, got {value!r}")
    if number < minimum:
        raise ValueError(f"{schedule}: {name} must be >= {minimum}, got {value!r}")
    return number


def _progress(step, steps, delay):
    """Fraction of the ramp done at `step`: 0 before `delay`, 1 after `delay + steps`."""
    t = ops.cast(step, "float32") - float(delay)
    return ops.clip(t / float(max(steps, 1)), 0.0, 1.0)


class Schedule:
    """Base class: `schedule(step)` returns the weight at optimizer step `step` (float32 scalar)."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return dict(self._config)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


@_register
class Constant(Schedule):
    """`w(t) = value`."""

    def __init__(self, value):
        self._config = {"value": _number("Constant", "value", value)}

    def __call__(self, step):
        del step
        return ops.convert_to_tensor(self._config["value"], "float32")


class _Ramp(Schedule):
    """`start` until `delay`, then from `start` to `end` over `steps` steps along `shape(p)`,
    `p = clip((t - delay) / steps, 0, 1)`, then `end`."""

    def __init__(self, start, end, steps, delay=0):
        name = type(self).__name__
        self._config = {
            "start": _number(name, "start", start),
            "end": _number(name, "end", end),
            # steps=0 would silently be a step function at `delay`.
            "steps": _integer(name, "steps", steps, 1),
            "delay": _integer(name, "delay", delay, 0),
        }

    @staticmethod
    def shape(p):
        raise NotImplementedError

    def __call__(self, step):
        c = self._config
        p = _progress(step, c["steps"], c["delay"])
        return c["start"] + (c["end"] - c["start"]) * self.shape(p)


@_register
class Linear(_Ramp):
    """Linear ramp: `start` until `delay`, then linearly to `end` over `steps` steps, then `end`.

    `w(t) = start + (end - start) * clip((t - delay) / steps, 0, 1)`.
    """

    @staticmethod
    def shape(p):
        return p


@_register
class Cosine(_Ramp):
    """Half-cosine ramp from `start` to `end` over `steps` steps after `delay`.

    `w(t) = start + (end - start) * (1 - cos(pi * p)) / 2`, `p = clip((t - delay) / steps, 0, 1)`:
    smooth at both ends (zero slope where it starts and where it arrives).
    """

    @staticmethod
    def shape(p):
        return 0.5 * (1.0 - ops.cos(math.pi * p))


@_register
class Sigmoid(Schedule):
    """Logistic ramp (KL annealing of Bowman et al. 2016, "Generating Sentences from a Continuous
    Space", CoNLL): `w(t) = start + (end - start) * sigmoid(rate * (t - midpoint))`.

    `midpoint` is the step where the weight is halfway; `rate` the steepness (per step).
    """

    def __init__(self, start=0.0, end=1.0, midpoint=1000, rate=0.01):
        # rate 0 is a constant and a negative rate runs from `end` to `start`: both mistakes.
        rate = _number("Sigmoid", "rate", rate, domains.positive)
        self._config = {
            "start": _number("Sigmoid", "start", start),
            "end": _number("Sigmoid", "end", end),
            "midpoint": _number("Sigmoid", "midpoint", midpoint),
            "rate": rate,
        }

    def __call__(self, step):
        c = self._config
        z = c["rate"] * (ops.cast(step, "float32") - c["midpoint"])
        return c["start"] + (c["end"] - c["start"]) * ops.sigmoid(z)


@_register
class Cyclical(Schedule):
    """Cyclical annealing (Fu et al. 2019, "Cyclical Annealing Schedule: A Simple Approach to
    Mitigating KL Vanishing", NAACL).

    The steps are split into cycles of `period` steps; within a cycle, with `tau` the fraction of
    the cycle done, the weight ramps linearly from `start` to `end` over the first `ratio` of the
    cycle and stays at `end` for the rest:
    `w(t) = start + (end - start) * min(tau / ratio, 1)`, `tau = (t mod period) / period`.
    `cycles` (optional) stops cycling after that many cycles and holds `end`.
    """

    def __init__(self, period, start=0.0, end=1.0, ratio=0.5, cycles=None):
        ratio = _number("Cyclical", "ratio", ratio, domains.interval(0, 1, low_closed=False))
        self._config = {
            "period": _integer("Cyclical", "period", period, 1),
            "start": _number("Cyclical", "start", start),
            "end": _number("Cyclical", "end", end),
            "ratio": ratio,
            "cycles": None if cycles is None else _integer("Cyclical", "cycles", cycles, 1),
        }

    def __call__(self, step):
        c = self._config
        t = ops.cast(step, "float32")
        tau = ops.mod(t, float(c["period"])) / float(c["period"])
        ramp = ops.minimum(tau / c["ratio"], 1.0)
        if c["cycles"] is not None:
            ramp = ops.where(t >= float(c["period"] * c["cycles"]), 1.0, ramp)
        return c["start"] + (c["end"] - c["start"]) * ramp


def get(identifier):
    """A `Schedule` from a schedule, a number (`Constant`) or a serialized config."""
    if isinstance(identifier, Schedule):
        return identifier
    if isinstance(identifier, (int, float)):
        return Constant(identifier)
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise TypeError(f"Not a schedule: {identifier!r}")

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


@_register
class FAMO(Balancer):
    """Fast Adaptive Multitask Optimization (Liu, Liu, Stone & Liu, "FAMO: Fast Adaptive
    Multitask Optimization", NeurIPS 2023), with one forward and one backward pass per step.

    Logits `xi` (init 0, non-trainable model variables), `z = softmax(xi)`. The network follows
    the gradient of `sum_t z_t log D_t / sg(C)`, `D_t = L_t + 1e-8`, `C = sum_t z_t / D_t`, i.e.
    the term weights

        b_t = z_t / (C D_t)        (so the update is `sum_t c_t b_t grad L_t`),

    which decrease every term's log-loss at the same rate to first order. The logits follow the
    change of the log-losses: at each training step after the first, with the previous step's
    `D'`,

        delta = log D' - log D,       grad_xi = (diag(z) - z z^T) delta   (= J_softmax^T delta),

    and `xi` takes one Adam step on `grad_xi + gamma xi` (L2 decay; betas 0.9, 0.999, eps 1e-8)
    with step size `learning_rate`, before this step's `z` is formed. This is the authors' code
    (`w_opt = Adam([w], lr=w_lr, weight_decay=gamma)`; its paper's Algorithm 1 writes a plain
    gradient step), except that the loss change is measured between consecutive steps' batches
    (as LibMTL does) instead of by a second forward pass on the same batch after the update.
    `L_t` are the unweighted global term values, which must be >= 0 (the paper's `min_losses` is
    0): a negative one makes every weight NaN, which `nan_policy="raise"` reports naming FAMO and
    the term; `c_t` the schedule weight. Evaluation uses the current logits and leaves them
    unchanged.

    Args:
        learning_rate: Adam's step size for the logits (`> 0`; the authors' default 0.025).
        gamma: the logits' L2 decay (`>= 0`; the authors use 0.001 to 0.01).
    """

    def __init__(self, learning_rate=0.025, gamma=0.001):
        self.learning_rate = _number("FAMO", "learning_rate", learning_rate, 0.0, strict=True)
        self.gamma = _number("FAMO", "gamma", gamma, 0.0)

    def bind(self, model):
        k = len(model.objective.terms)
        self.logits = _state(model, "famo_logits", (k,))
        self.previous = _state(model, "famo_previous_log_losses", (k,))
        self.moments = _state(model, "famo_adam_moments", (2, k))
        self.updates = _state(model, "famo_updates", (), dtype="int32")
        self.started = _state(model, "famo_started", (), dtype="int32")

    def apply(self, step):
        xi = ops.copy(ops.cast(self.logits.value, "float32"))
        losses = ops.stack([step.global_values[n] for n in step.names])
        log_d = ops.log(losses + 1e-8)
        if step.training:
            z = ops.softmax(xi)
            delta = ops.cast(self.previous.value, "float32") - log_d
            grad = z * (delta - ops.sum(z * delta)) + self.gamma * xi
            moments = ops.cast(self.moments.value, "float32")
            first = 0.9 * moments[0] + 0.1 * grad
            second = 0.999 * moments[1] + 0.001 * grad**2
            t = ops.cast(self.updates.value + 1, "float32")
            stepped = xi - self.learning_rate * (first / (1 - 0.9**t)) / (
                ops.sqrt(second / (1 - 0.999**t)) + 1e-8
            )
            started = self.started.value > 0
            xi = ops.where(started, stepped, xi)
            self.logits.assign(xi)
            self.moments.assign(ops.where(started, ops.stack([first, second]), moments))
            self.updates.assign(self.updates.value + ops.cast(started, "int32"))
            self.previous.assign(log_d)
            self.started.assign(ops.ones((), "int32"))
        z = ops.softmax(xi)
        d = ops.exp(log_d)
        b = ops.stop_gradient(z / (ops.sum(z / d) * d))
        weights = {n: b[i] for i, n in enumerate(step.names)}
        return step.weighted_total(weights), weights

    def explain_non_finite(self, names, logs):
        negative = [n for n in names if n in logs and float(ops.convert_to_numpy(logs[n])) < 0]
        if negative:
            values = ", ".join(
                f"'{n}' = {float(ops.convert_to_numpy(logs[n])):.4g}" for n in negative
            )
            return (
                f"FAMO weights the log of each term, so every term must be >= 0; {values}. "
                "Shift or reformulate the negative term(s), or use another balancer."
            )
        return None

    def get_config(self):
        return {"learning_rate": self.learning_rate, "gamma": self.gamma}


class _StateSeed(keras.random.SeedGenerator):
    """A `SeedGenerator` whose state is a given variable (here: a model weight, so that the
    random sequence saves, loads and resumes with the model, and JAX's stateless step carries
    it); `next` as Keras's ordered one: return the state, advance its counter."""

    def __init__(self, state):  # no super().__init__: it would create a variable of its own
        self.state = state

    def next(self, ordered=True):
        del ordered
        value = self.state.value * 1
        self.state.assign(value + ops.convert_to_tensor([0, 1], dtype=self.state.dtype))
        return value


@_register
class RLW(Balancer):
    """Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022): every training step draws

        b = K softmax(x),    x ~ N(0, I_K),

    fresh weights summing to `K` (the paper's weights sum to 1: these are `K` times them, the
    scale of equal weights 1, like `DWA` and `GradNorm`). The draws come from Keras's generator
    with seed `[seed, step]`, its state a model variable: a run is reproducible, every replica
    draws the same weights, and a resumed model continues the sequence. Evaluation uses weights
    1 (their expectation) and draws nothing.

    Args:
        seed: an integer seed.
    """

    def __init__(self, seed=0):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"RLW: seed must be an integer, got {seed!r}")
        self.seed = seed

    def bind(self, model):
        dtype = keras.random.SeedGenerator(self.seed).state.dtype
        state = model.add_weight(
            shape=(2,),
            initializer=lambda shape, dtype: ops.convert_to_tensor([self.seed, 0], dtype),
            dtype=dtype,
            trainable=False,
            name="rlw_seed",
            aggregation="only_first_replica",
        )
        self.generator = _StateSeed(state)

    def apply(self, step):
        k = len(step.names)
        if step.training:
            w = k * ops.softmax(keras.random.normal((k,), seed=self.generator))
        else:
            w = ops.ones((k,))
        weights = {n: w[i] for i, n in enumerate(step.names)}
        return step.weighted_total(weights), weights

    def get_config(self):
        return {"seed": self.seed}

"""Loss balancing for `ObjectiveModel(..., balance=...)`: weights that the training sets.

A balancer turns the terms' values of a step into the total that is differentiated, and reports
the weight it applied to each term (logged as `<term>_weight`). A term's schedule weight
multiplies the balancer's weight: `applied_t = schedule_t(step) * balancer_t`.

- `Uncertainty()`: learned log-variances (model weights, trained by the optimizer).
- `DWA(temperature)`: the ratio of the last two epochs' mean term losses.
- `PCGrad()`: weights 1; the update is the sum of per-term gradients projected off conflicts.
  Needs per-term gradients w.r.t. every trainable weight of the inner model.
- `GradNorm(alpha, shared)`: weights updated so that the terms' gradient norms on a shared
  layer follow their relative training rates. Needs per-term gradients w.r.t. that layer.

Per-term gradients come from `losskit.backend.term_gradients`: a second forward pass and one
backward pass per term on TensorFlow and JAX (JAX: one `jacrev`), the step's own graph on torch.
"""

import keras
from keras import ops

from losskit import backend

_register = keras.saving.register_keras_serializable(package="losskit")


def _number(balancer, name, value, low=None, strict=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{balancer}: {name} must be a number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(
            f"{balancer}: {name} must be {'>' if strict else '>='} {low}, got {value!r}"
        )
    return float(value)


def _dot(a, b):
    return sum(ops.sum(x * y) for x, y in zip(a, b))


def _norm(grads):
    return ops.sqrt(_dot(grads, grads))



def _state(model, name, shape, initializer="zeros", dtype=None):
    """A balancer's non-trainable state, a model weight so that it saves, loads and resumes; every
    replica holds the same value."""
    return model.add_weight(
        shape=shape,
        initializer=initializer,
        dtype=dtype,
        trainable=False,
        name=name,
        aggregation="only_first_replica",
    )

class Step:
    """What a balancer sees of one step (built by `combine`).

    `values` are the terms' values as the Objective returns them (under `tf.distribute`: this
    replica's share); `global_values` their sums over replicas; `schedule` the scheduled weights.
    `gradients(variables)` returns `{term: [gradient per variable]}` of the unweighted global
    terms (all-reduced under `tf.distribute`), computed once per list of variables.
    """

    def __init__(self, model, result, values_fn, training):
        self.model = model
        self.names = [t.name for t in model.objective.terms]
        self.values = result.values
        self.schedule = {n: ops.cast(result.weights[n], "float32") for n in self.names}
        self.training = training
        self.replicas, self._context = backend.replica_context()
        self._values_fn = values_fn
        self._cache = {}

    @property
    def global_values(self):
        return {n: backend.all_reduce_sum(self._context, self.values[n]) for n in self.names}

    def gradients(self, variables):
        key = tuple(id(v) for v in variables)
        for known, grads in list(self._cache.items()):
            if key not in self._cache and set(key) <= set(known):  # no second pass for a subset
                index = [known.index(k) for k in key]
                self._cache[key] = {n: [gs[i] for i in index] for n, gs in grads.items()}
        if key not in self._cache:
            ids = set(key)
            constants = [v for v in self.model.variables if id(v) not in ids]
            local = [self.values[n] for n in self.names]
            grads = backend.term_gradients(self._values_fn, variables, constants, local)
            self._cache[key] = {
                n: [backend.all_reduce_sum(self._context, g) for g in gs]
                for n, gs in zip(self.names, grads)
            }
        return self._cache[key]

    def weighted_total(self, weights):
        return sum(self.schedule[n] * weights[n] * self.values[n] for n in self.names)


class Balancer:
    """Base class. A balancer creates its state on the model in `bind`, and in `apply` returns
    `(total, {term: balancer weight})`; `callbacks()` are added to `fit`."""

    def attach(self, model):
        """Creates this balancer's state on `model`; one model per balancer, since the state
        (model variables) would otherwise be shared or silently re-pointed."""
        bound = getattr(self, "_model_name", None)
        if bound is not None:
            raise ValueError(
                f"{type(self).__name__}: this balancer already balances model '{bound}'; give "
                f"each ObjectiveModel its own, e.g. balance={type(self).__name__}(...)."
            )
        self.bind(model)
        self._model_name = model.name

    def bind(self, model):
        del model

    def apply(self, step):
        raise NotImplementedError

    def callbacks(self):
        return []

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@_register
class Uncertainty(Balancer):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learned log-variance `s_t` per term (initialised to 0, a model weight trained by the
    model's optimizer, saved and resumed with the model):

        total = sum_t c_t * (exp(-s_t) * L_t + s_t)                    (default)
        total = sum_t c_t * (0.5 * exp(-s_t) * L_t + 0.5 * s_t)        (regression=True)

    `c_t` is the term's schedule weight (1 without one). `<term>_weight` logs `exp(-s_t)`
    (`0.5 * exp(-s_t)` with `regression=True`), times `c_t`. The regression form is the paper's
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
        total = sum(
            step.schedule[n] * (weights[n] * step.values[n] + half * s[i] / step.replicas)
            for i, n in enumerate(step.names)
        )
        return total, weights

    def get_config(self):
        return {"regression": self.regression}


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


def _surrogate(step, variables, direction):
    """A zero-valued loss whose gradient w.r.t. `variables` is `direction` (a global gradient):
    `sum_v <sg(d_v), v> - sg(<d_v, v>)`. Each replica contributes `d / replicas`, and the
    optimizer sums replicas, so the update follows `direction` exactly."""
    scaled = [ops.stop_gradient(d) / step.replicas for d in direction]
    values = [ops.cast(v.value, "float32") for v in variables]
    inner = _dot(scaled, values)
    return inner - ops.stop_gradient(inner)


@_register
class PCGrad(Balancer):
    """Projecting Conflicting Gradients (Yu et al., "Gradient Surgery for Multi-Task Learning",
    NeurIPS 2020).

    With `g_t` the gradient of the weighted term `c_t * L_t` (`c_t` its schedule weight) w.r.t.
    all trainable weights of the inner model (concatenated), each term's gradient is projected
    off every other term's *original* gradient it conflicts with, in term order:

        g_i' = g_i;  for j != i in order:  if g_i' . g_j < 0:  g_i' -= (g_i' . g_j) / |g_j|^2 g_j

    and the update is `sum_i g_i'`. For two terms this is exactly
    `g_1 - min(0, g_1.g_2)/|g_2|^2 g_2 + g_2 - min(0, g_2.g_1)/|g_1|^2 g_1`. The paper's
    Algorithm 1 visits the other terms in random order; a fixed order keeps a step reproducible
    and distributed replicas identical. Weights of the model itself (not the inner model's) get
    the plain gradient of the total. `<term>_weight` logs `c_t` (the balancer's weight is 1).

    Cost: a second forward pass and one backward pass per term (TF, JAX), per-term backward
    passes on torch, and K gradients' worth of memory.
    """

    def apply(self, step):
        variables = step.model.inner.trainable_variables
        weights = {n: ops.ones(()) for n in step.names}
        total = step.weighted_total(weights)
        if not step.training or not variables:
            return total, weights
        grads = step.gradients(variables)
        g = [[step.schedule[n] * x for x in grads[n]] for n in step.names]
        projected = []
        for i, gi in enumerate(g):
            out = list(gi)
            for j, gj in enumerate(g):
                if j == i:
                    continue
                dot = _dot(out, gj)
                coef = ops.divide_no_nan(ops.minimum(dot, 0.0), _dot(gj, gj))
                out = [a - coef * b for a, b in zip(out, gj)]
            projected.append(out)
        direction = [sum(p[v] for p in projected) for v in range(len(variables))]
        # The terms' own gradients are replaced by `direction`; the value stays the total.
        return ops.stop_gradient(total) + _surrogate(step, variables, direction), weights


@_register
class GradNorm(Balancer):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018), Algorithm 1.

    Term weights `w_t` (initially 1) are non-trainable model variables. Each training step, with
    `W` the weights of the layer `shared`:

        G_t = w_t * |grad_W L_t|,   G_mean = mean_t G_t,
        r_t = (L_t / L_t(0)) / mean_k (L_k / L_k(0)),
        L_grad = sum_t |G_t - sg(G_mean * r_t ** alpha)|,
        w_t <- w_t - learning_rate * dL_grad/dw_t  ( = sign(G_t - target_t) * |grad_W L_t| ),
        w <- K * w / sum(w)           (after clipping each w_t at 1e-3, keeping it positive)

    `L_t(0)` are the term values of the first training step (kept in model variables, so a
    resumed model keeps them). The step uses the weights from before its update (logged as
    `<term>_weight`, times the schedule weight `c_t`, which multiplies the balanced weight; the
    gradient norms are those of the unscheduled terms). The network is trained on
    `sum_t c_t w_t L_t` by the model's optimizer; the weights by plain gradient descent with
    `learning_rate` (the paper trains them with the network's optimizer).

    Cost: a second forward pass and one backward pass per term w.r.t. the shared layer's weights
    (TF, JAX), per-term backward passes on torch.

    Args:
        alpha: the restoring-force strength (`>= 0`; the paper uses 0.12 to 1.5).
        shared: the name of the inner model's layer whose weights are `W`, normally the last
            layer all terms depend on. Required: `ObjectiveModel` refuses `None`.
        learning_rate: the step size of the weights' update (`> 0`).
    """

    def __init__(self, alpha=1.5, shared=None, learning_rate=0.025):
        self.alpha = _number("GradNorm", "alpha", alpha, 0.0)
        if shared is not None and not isinstance(shared, str):
            raise TypeError(f"GradNorm: shared must be a layer name (str), got {shared!r}")
        self.shared = shared
        self.learning_rate = _number("GradNorm", "learning_rate", learning_rate, 0.0, strict=True)

    def bind(self, model):
        inner = model.inner
        layers = [layer.name for layer in getattr(inner, "layers", []) if layer.trainable_weights]
        if self.shared is None:
            raise ValueError(
                "GradNorm: pass shared='<layer name>', the inner model's layer whose weights the "
                "terms' gradient norms are measured on (the paper: the last layer all terms "
                f"depend on). Layers with trainable weights: {layers}."
            )
        try:
            layer = inner.get_layer(self.shared)
        except ValueError:
            raise ValueError(
                f"GradNorm: shared={self.shared!r} names no layer of {inner.name}; layers with "
                f"trainable weights: {layers}."
            ) from None
        if not layer.trainable_weights:
            raise ValueError(
                f"GradNorm: layer {self.shared!r} has no trainable weights; pick one of {layers}."
            )
        self._layer = layer
        k = len(model.objective.terms)
        self.term_weights = _state(model, "gradnorm_weights", (k,), initializer="ones")
        self.initial = _state(model, "gradnorm_initial_losses", (k,), initializer="ones")
        self.started = _state(model, "gradnorm_started", (), dtype="int32")

    def apply(self, step):
        # A copy: torch would otherwise log a view of the variable, updated in place below.
        w = ops.copy(ops.cast(self.term_weights.value, "float32"))
        weights = {n: w[i] for i, n in enumerate(step.names)}
        total = step.weighted_total(weights)
        if not step.training:
            return total, weights
        grads = step.gradients(self._layer.trainable_weights)
        norms = ops.stack([_norm(grads[n]) for n in step.names])
        losses = ops.stack([step.global_values[n] for n in step.names])
        started = self.started.value > 0
        initial = ops.where(started, ops.cast(self.initial.value, "float32"), losses)
        ratio = ops.divide_no_nan(losses, initial)
        rate = ops.divide_no_nan(ratio, ops.mean(ratio))
        g = w * norms
        target = ops.stop_gradient(ops.mean(g) * rate**self.alpha)
        updated = ops.maximum(w - self.learning_rate * ops.sign(g - target) * norms, 1e-3)
        k = len(step.names)
        self.term_weights.assign(k * updated / ops.sum(updated))
        self.initial.assign(initial)
        self.started.assign(ops.ones((), "int32"))
        return total, weights

    def get_config(self):
        return {"alpha": self.alpha, "shared": self.shared, "learning_rate": self.learning_rate}


def get(balance):
    """A balancer from an instance, None, or a serialized config."""
    if balance is None or isinstance(balance, Balancer):
        return balance
    if isinstance(balance, dict):
        return keras.saving.deserialize_keras_object(balance)
    raise TypeError(
        "ObjectiveModel: balance must be None or a losskit.balancing balancer (Uncertainty(), "
        f"GradNorm(...), DWA(...), PCGrad()), got {balance!r}"
    )


def combine(model, result, values_fn, training):
    """`(total, {term: applied weight}, {term: gradient norm} or None)` for one step.

    The applied weight is the schedule weight times the balancer's; the gradient norm (with
    `log_grad_norms`, training only) is the global L2 norm of the gradient of the weighted term
    w.r.t. the inner model's trainable weights.
    """
    step = Step(model, result, values_fn, training)
    variables = model.inner.trainable_variables
    if training and model.log_grad_norms and variables:
        step.gradients(variables)  # first, so that a balancer's subset reuses them
    if model.balance is None:
        total, weights = result.total, {n: 1.0 for n in step.names}
    else:
        total, weights = model.balance.apply(step)
    applied = {n: step.schedule[n] * weights[n] for n in step.names}
    norms = None
    if training and model.log_grad_norms and variables:
        grads = step.gradients(variables)
        norms = {n: ops.abs(applied[n]) * _norm(grads[n]) for n in step.names}
    return total, applied, norms

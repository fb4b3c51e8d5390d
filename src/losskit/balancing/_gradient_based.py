"""Balancers that need per-term gradients (`Step.gradients`): `PCGrad` (projects conflicting
gradients, w.r.t. the inner model's weights) and `GradNorm` (balances gradient norms on one
shared layer)."""

from keras import ops

from losskit.balancing._base import Balancer, _dot, _norm, _number, _register, _state


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


@_register
class GradNormScale(Balancer):
    """Gradient-norm scaling: every term's gradient rescaled to the terms' mean gradient norm,
    the cheap strong baseline of recent comparisons (e.g. Kurin et al., "In Defense of the
    Unitary Scalarization for Deep Multi-Task Learning", NeurIPS 2022; Xin et al., "Do Current
    Multi-Task Optimization Methods in Deep Learning Even Help?", NeurIPS 2022). With `g_t` the
    gradient of the unweighted global term `L_t` w.r.t. `W` (all trainable weights of the inner
    model, or those of layer `shared`), concatenated,

        b_t = sg( mean_k |g_k| / |g_t| )      (0 where |g_t| = 0),

    so each term's gradient `b_t grad_W L_t` has norm `mean_k |g_k|`, and the update is
    `sum_t c_t b_t grad L_t` (`c_t` the schedule weight, which still scales its term). Unlike
    `GradNorm` there is no state and no target rate: the weights are recomputed each step.
    Evaluation uses weights 1.

    Cost: per-term gradients w.r.t. `W` (a second forward pass and one backward pass per term on
    TF and JAX; per-term backward passes on torch).

    Args:
        shared: None (every trainable weight of the inner model) or the name of the inner model's
            layer whose weights the norms are measured on (cheaper; e.g. the last shared layer).
    """

    def __init__(self, shared=None):
        if shared is not None and not isinstance(shared, str):
            raise TypeError(f"GradNormScale: shared must be None or a layer name, got {shared!r}")
        self.shared = shared

    def bind(self, model):
        if self.shared is None:
            self._layer = None
            return
        try:
            self._layer = model.inner.get_layer(self.shared)
        except ValueError:
            raise ValueError(
                f"GradNormScale: shared={self.shared!r} names no layer of {model.inner.name}"
            ) from None
        if not self._layer.trainable_weights:
            raise ValueError(f"GradNormScale: layer {self.shared!r} has no trainable weights")

    def apply(self, step):
        layer = self._layer
        variables = step.model.inner.trainable_variables if layer is None else (
            layer.trainable_weights
        )
        if not step.training or not variables:
            weights = {n: ops.ones(()) for n in step.names}
            return step.weighted_total(weights), weights
        grads = step.gradients(variables)
        norms = ops.stack([_norm(grads[n]) for n in step.names])
        b = ops.stop_gradient(ops.divide_no_nan(ops.mean(norms), norms))
        weights = {n: b[i] for i, n in enumerate(step.names)}
        return step.weighted_total(weights), weights

    def get_config(self):
        return {"shared": self.shared}

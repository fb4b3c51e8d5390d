"""What a balancer sees of one step (`Step`), and `combine`, which turns a step's term values
into the total that is differentiated (called by `ObjectiveModel.compute_loss`)."""

from keras import ops

from losskit import backend
from losskit.balancing._base import _norm


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


def combine(model, result, values_fn, training):
    """`(total, {term: applied weight}, {term: gradient norm} or None, {name: value})` for one
    step.

    The applied weight is the schedule weight times the balancer's; the gradient norm (with
    `log_grad_norms`, training only) is the global L2 norm of the gradient of the weighted term
    w.r.t. the inner model's trainable weights. The last dict holds the balancer's other
    contributions to the total (`Balancer.contributions`, e.g. a regulariser), logged by name:
    `total = sum_t applied_t * L_t + sum of them`.
    """
    step = Step(model, result, values_fn, training)
    variables = model.inner.trainable_variables
    if training and model.log_grad_norms and variables:
        step.gradients(variables)  # first, so that a balancer's subset reuses them
    extras = {}
    if model.balance is None:
        total, weights = result.total, {n: 1.0 for n in step.names}
    else:
        total, weights, *more = model.balance.apply(step)
        if more:
            extras = more[0]
    applied = {n: step.schedule[n] * weights[n] for n in step.names}
    norms = None
    if training and model.log_grad_norms and variables:
        grads = step.gradients(variables)
        norms = {n: ops.abs(applied[n]) * _norm(grads[n]) for n in step.names}
    return total, applied, norms, extras

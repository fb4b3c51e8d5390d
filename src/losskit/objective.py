"""Objectives over any tensor of a training step: `Objective`, the weighted sum of `Term`s.

An `Objective` is the weighted sum of its terms (`losskit.term`), reduced so that a distributed step
equals a single-device step. The source strings are described and parsed in `losskit.sources`.
"""

import dataclasses

import keras
from keras import ops

from losskit import _contract, backend
from losskit._logs import check_log_names
from losskit.term import Term

_register = keras.saving.register_keras_serializable(package="losskit")

__all__ = ["Objective", "Result", "Term"]


def _flatten(prefix, value, out):
    out[prefix] = value
    if isinstance(value, dict):
        for key, item in value.items():
            out[f"{prefix}.{key}"] = item


def _first_batched(*structures):
    for s in structures:
        for t in keras.tree.flatten(s):
            if t is not None and len(getattr(t, "shape", ())) > 0:
                return t
    raise ValueError("The Objective found no batched tensor to take the batch size from.")


@dataclasses.dataclass
class Result:
    """What one evaluation of an `Objective` gives: the `total`, each term's `values` and the
    `weights` applied, the batch sizes it reduced by (`batch` on this replica, `global_batch`
    over all `replicas`), and each term's `counts`, `(on this replica, global)`: the number of
    kept positions its value is the mean over (samples for a per-sample term, kept positions
    for a per-position one, the batch size for a batch-independent one). A model logs these
    without recomputing anything; weighting each step's value by its global count makes a
    logged mean over steps the term's value over all their data at once."""

    total: object
    values: dict
    weights: dict
    batch: object
    global_batch: object
    replicas: int = 1
    counts: dict = dataclasses.field(default_factory=dict)


def _fit_sample_weight(term, sample_weight, values):
    """`sample_weight` shaped to multiply `values` (see `_contract.check_sample_weight`)."""
    _contract.check_numeric(f"Term '{term}'", sample_weight, "sample_weight")
    sw = ops.cast(sample_weight, "float32")
    return _contract.shape_sample_weight(f"Term '{term}'", sw, values)


def _term_sample_weight(term, sample_weight):
    """The sample weights of `term` when they come per label key (`y` a dict; Keras's array
    adapter copies a single `sample_weight` array to every key). A term takes the weights of the
    first label key it reads, in parameter order, and the first key's if it reads none: the same
    array whenever a single array was given. Different per-key weights for a term reading
    several keys or none cannot be refused: in a compiled step their values are not known."""
    if not isinstance(sample_weight, dict):
        return sample_weight
    given = {k: w for k, w in sample_weight.items() if w is not None}
    if not given:
        return None
    read = [s.key for s in term.sources.values() if s.kind == "y" and s.key in given]
    return given[read[0]] if read else next(iter(given.values()))


@_register
class Objective:
    """A weighted sum of `Term`s, each a loss over any tensors of the step.

    `total = sum_t weight_t(step) * value_t`. One reduction rule for every term:

        value_t = sum over kept positions of (w * l_t) / (number of kept positions)

    counted over the **global** batch. A per-sample term `(B,)` has `B` positions; a per-position
    term `(B, T, ...)` has one per element; positions a loss ignores (the Keras mask it attaches,
    e.g. `sparse_categorical_crossentropy(ignore_index=...)`) are not kept and never count in the
    denominator. `w` are the sample weights, per sample or per position. A batch-independent term
    (all sources `"var.*"`) adds its scalar once per step.

    Under `tf.distribute`, calling it inside a replica returns that replica's share: the
    denominators are all-reduced, so the shares of all replicas sum to the global value and summed
    gradients equal the single-device gradient whatever the split and padding (the convention of
    `tf.nn.compute_average_loss`). JAX `DataParallel` and single devices see the whole batch.

    ```python
    with tf.GradientTape() as tape:
        pred = model(x["features"])
        total, terms = objective(x, y, pred, step=optimizer.iterations)
    ```
    """

    def __init__(self, terms):
        terms = list(terms)
        if not terms or not all(isinstance(t, Term) for t in terms):
            raise TypeError(f"An Objective needs a non-empty list of losskit.Term, got {terms!r}")
        names = [t.name for t in terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"Objective: term names must be unique; repeated {dupes}. Pass name=.")
        check_log_names("Objective", names, weight_logs(terms, balanced=False))
        self.terms = terms

    @property
    def sources(self):
        """Every source used by the terms."""
        return sorted({s for t in self.terms for s in t.sources.values()})

    def _keys(self, kind):
        return sorted({s.key for s in self.sources if s.kind == kind and s.key is not None})

    @property
    def taps(self):
        """Names of the layers whose outputs the terms read (`"layer.<name>"`)."""
        return self._keys("layer")

    @property
    def side_inputs(self):
        """Keys of the feature dict the terms read (`"x.<key>"`): side data unless the model
        takes them too."""
        return self._keys("x")

    def __call__(self, x, y, pred, sample_weight=None, step=None, layers=None, variables=None):
        """Returns `(total, {term name: value})`.

        Args:
            x: the batch's features (a dict for `"x.<key>"` sources).
            y: labels (a dict for `"y.<key>"`).
            pred: model outputs (a dict for `"pred.<key>"`).
            sample_weight: per-sample `(batch,)` or per-position weights, or None.
            step: the optimizer step, needed by scheduled weights.
            layers: `{layer name: tensor}` for `"layer.<name>"` sources.
            variables: for `"var.<layer>.<var>"`, a dict `{"<layer>.<var>": tensor}` or a Keras
                model whose variables are read (their current, differentiable value).
        """
        result = self.compute(x, y, pred, sample_weight, step, layers, variables)
        return result.total, result.values

    def compute(self, x, y, pred, sample_weight=None, step=None, layers=None, variables=None):
        """As `__call__`, returning the whole `Result`."""
        lookup = self._lookup(x, y, pred, layers, variables)
        replicas, ctx = backend.replica_context()
        first = _first_batched(pred, y, x)
        if ctx is None and first.shape[0] is not None:
            n_local = n_global = float(first.shape[0])  # known when tracing: costs no op
        else:
            n_local = ops.cast(ops.shape(first)[0], "float32")
            n_global = backend.all_reduce_sum(ctx, n_local)
        values, weights, counts = {}, {}, {}
        total = None
        for term in self.terms:
            if term.reduces_itself:
                v, counts[term.name] = self._reduce_itself(
                    term, lookup, sample_weight, first.shape[0], ctx
                )
            else:
                v, mask = term.values(lookup)
                if len(v.shape) == 0:
                    v = v / replicas
                    counts[term.name] = (n_local, n_global)
                else:
                    _contract.check_per_sample(f"term '{term.name}'", v, first.shape[0])
                    v, counts[term.name] = self._reduce(
                        term, v, mask, sample_weight, n_local, n_global, ctx
                    )
            w = term.weight_at(step)
            values[term.name] = v
            weights[term.name] = w
            # A constant weight of 1 adds no op: an eager step (torch) pays for every op.
            weighted = v if isinstance(w, float) and w == 1.0 else w * v
            total = weighted if total is None else total + weighted
        return Result(total, values, weights, n_local, n_global, replicas, counts)

    @staticmethod
    def _reduce(term, v, mask, sample_weight, n_local, n_global, ctx):
        """`(value, (local count, global count))`: the kept-position mean and its denominator."""
        sample_weight = _term_sample_weight(term, sample_weight)
        if sample_weight is not None:
            v = v * _fit_sample_weight(term.name, sample_weight, v)
        positions = 1
        for d in v.shape[1:]:
            positions = None if d is None or positions is None else positions * d
        if mask is None and positions is not None:
            local, count = n_local * positions, n_global * positions  # no other all-reduce
        else:
            kept = ops.ones_like(v) if mask is None else ops.cast(mask, "float32")
            while len(kept.shape) < len(v.shape):
                kept = ops.expand_dims(kept, -1)
            kept = ops.broadcast_to(kept, ops.shape(v))
            v = ops.where(kept > 0, v, ops.zeros_like(v))  # an ignored NaN must not leak
            local = ops.sum(kept)
            count = backend.all_reduce_sum(ctx, local)
        if isinstance(count, float) and count > 0:
            return ops.sum(v) / count, (local, count)
        return ops.divide_no_nan(ops.sum(v), count), (local, count)

    @staticmethod
    def _reduce_itself(term, lookup, sample_weight, batch, ctx):
        """`_reduce`'s `(value, counts)`, the value computed by the term's function from each
        position's weight over the global normaliser: a scalar whose gradient the function
        writes in its forward pass (the fused losses' in-place schedule: as many matmuls as the
        naive head)."""
        tensors = term.tensors(lookup)
        kept = ops.cast(term.kept(tensors), "float32")
        _contract.check_per_sample(f"term '{term.name}'", kept, batch)
        weights = kept
        sample_weight = _term_sample_weight(term, sample_weight)
        if sample_weight is not None:
            weights = kept * _fit_sample_weight(term.name, sample_weight, kept)
        local = ops.sum(kept)
        count = backend.all_reduce_sum(ctx, local)
        value = term.weighted_sum(tensors, ops.divide_no_nan(weights, count))
        return value, (local, count)

    def _lookup(self, x, y, pred, layers, variables):
        tensors = {}
        _flatten("x", x, tensors)
        _flatten("y", y, tensors)
        _flatten("pred", pred, tensors)
        for name, value in (layers or {}).items():
            tensors[f"layer.{name}"] = value

        def lookup(term, param, source):
            if source in tensors and tensors[source] is not None:
                return tensors[source]
            if source.kind == "var" and variables is not None:
                found = _variable(variables, source)
                if found is not None:
                    return found
            available = sorted(k for k, v in tensors.items() if v is not None)
            if variables is not None and not isinstance(variables, dict):
                available.append("var.<layer>.<variable>")
            elif variables:
                available += [f"var.{k}" for k in variables]
            raise KeyError(
                f"Term '{term}': parameter '{param}' needs source '{source}', which this step does "
                f"not have. Available: {available}."
            )

        return lookup

    def get_config(self):
        return {"terms": [keras.saving.serialize_keras_object(t) for t in self.terms]}

    @classmethod
    def from_config(cls, config):
        return cls([keras.saving.deserialize_keras_object(t) for t in config["terms"]])

    def __repr__(self):
        return f"Objective({self.terms!r})"


def _variable(variables, source):
    if isinstance(variables, dict):
        return variables.get(source.key)
    try:
        layer = variables.get_layer(source.layer)
    except ValueError:
        return None
    for v in layer.variables:
        if v.name == source.variable or v.path.endswith(f"/{source.variable}"):
            return v.value  # inside a StatelessScope (JAX trainer) this is the traced value
    return None


def weight_logs(terms, balanced):
    """`("<term>_weight", what)` for the terms whose applied weight is logged: scheduled terms,
    or every term under a balancer."""
    return [
        (f"{t.name}_weight", f"the logged weight of term '{t.name}'")
        for t in terms
        if balanced or callable(t.weight)
    ]

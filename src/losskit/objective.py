"""Objectives over any tensor of a training step: `Term` and `Objective`.

A `Term` routes the parameters of a loss function to named tensors of the step (its *sources*); an
`Objective` is the weighted sum of its terms, reduced so that a distributed step equals a
single-device step.

| source | tensor |
|---|---|
| `"y"`, `"y.<key>"` | the labels, or one entry of a dict of labels |
| `"pred"`, `"pred.<key>"` | the model output, or one entry of a dict of outputs |
| `"x"`, `"x.<key>"` | the features, or one entry of the feature dict (inputs or side data) |
| `"layer.<name>"` | the output of layer `<name>` (tapped in the same forward pass) |
| `"var.<layer>.<variable>"` | the current value of a layer variable (`"var.logistic.kernel"`) |
"""

import inspect

import keras
from keras import ops

from losskit import _contract, backend, schedules
from losskit._keras import squeeze_or_expand_to_same_rank
from losskit.loss import FunctionLoss

_register = keras.saving.register_keras_serializable(package="losskit")
_KINDS = ("y", "pred", "x", "layer", "var")


def is_source(value):
    """Whether `value` is a source string (`"y"`, `"pred.logits"`, `"layer.z_mean"`, ...)."""
    if not isinstance(value, str):
        return False
    kind, dot, key = value.partition(".")
    if kind not in _KINDS:
        return False
    if kind == "layer":
        return bool(key)
    if kind == "var":
        return all(key.partition(".")[::2])
    return not dot or bool(key)


def _is_lambda(fn):
    return getattr(fn, "__name__", "") == "<lambda>"


def _target(fn):
    """The function that computes a term's values, and the constants it is called with."""
    if isinstance(fn, FunctionLoss):
        return fn.fn, dict(fn.params)
    if isinstance(fn, keras.losses.Loss):
        return fn.call, {}  # per-sample values, before Keras's reduction
    if callable(fn):
        return fn, {}
    raise TypeError(f"A Term needs a loss function or Loss, got {fn!r}")


class Term:
    """One weighted loss term whose parameters are tensors of the training step.

    ```python
    losskit.Term(keras.losses.binary_crossentropy, name="bce")  # y_true="y", y_pred="pred"
    losskit.Term(kl_divergence, p="x.teacher", q="pred", weight=Linear(0, 1, steps=500))
    losskit.Term(activation_l2, a="layer.dense_1", weight=1e-3, name="act")
    ```

    Args:
        fn: a losskit loss (class or instance; its `.fn` is called with its `.params`), a Keras
            `Loss` instance (its per-sample `.call`), a Keras loss function, or any function of
            tensors. It returns per-sample values (leading axis = batch; further axes are
            averaged). Only a term whose sources are all `"var.*"` (a penalty on weights, which
            does not depend on the batch) may return a scalar: it is added once per step.
        weight: a float or a `losskit.schedules` schedule of the optimizer step.
        name: the name the term is logged under (default: the loss's or function's name).
        **sources: `parameter="source"` for each tensor parameter. `y_true` and `y_pred` default to
            `"y"` and `"pred"`; parameters with defaults keep them. A keyword whose value is not a
            source string is passed as a constant (`from_logits=True`).
    """

    def __init__(self, fn, *, weight=1.0, name=None, **sources):
        if inspect.isclass(fn) and issubclass(fn, keras.losses.Loss):
            fn = fn()
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", None) or "term"
        self.weight = weight if callable(weight) else float(weight)
        target, constants = _target(fn)
        self._target = target
        for key, value in sources.items():
            if (
                isinstance(value, str)
                and value.partition(".")[0] in _KINDS
                and not is_source(value)
            ):
                raise ValueError(
                    f"Term '{self.name}': {key}={value!r} is not a valid source; use 'y', "
                    "'y.<key>', 'pred', 'pred.<key>', 'x', 'x.<key>', 'layer.<name>' or "
                    "'var.<layer>.<variable>'."
                )
        self.constants = {k: v for k, v in sources.items() if not is_source(v)}
        self._call_constants = {**constants, **self.constants}
        given = {k: v for k, v in sources.items() if is_source(v)}
        self.sources = self._route(target, given, set(self._call_constants))
        self._sparse = getattr(fn, "sparse_labels", False)

    def _route(self, target, given, constants):
        params = inspect.signature(target).parameters
        takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(given) - set(params))
        if unknown and not takes_kwargs:
            raise TypeError(
                f"Term '{self.name}': {sorted(unknown)} are not parameters of "
                f"{getattr(target, '__name__', target)}{inspect.signature(target)}."
            )
        routes = dict(given)
        defaults = {"y_true": "y", "y_pred": "pred"}
        for p in params.values():
            variadic = p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            if p.name in given or p.name in constants or variadic:
                continue
            if p.name in defaults:
                routes[p.name] = defaults[p.name]
            elif p.default is p.empty:
                raise TypeError(
                    f"Term '{self.name}': parameter '{p.name}' has no source; pass it as "
                    f"{p.name}='x.<key>' (or 'y', 'pred', 'layer.<name>', 'var.<layer>.<var>')."
                )
        return routes

    @property
    def batch_independent(self):
        """True when every source is a variable: the term is a penalty on weights."""
        return all(s.startswith("var.") for s in self.sources.values())

    def weight_at(self, step):
        """The term's weight at optimizer step `step` (a tensor for schedules)."""
        if not callable(self.weight):
            return self.weight
        if step is None:
            raise ValueError(
                f"Term '{self.name}' has a scheduled weight {self.weight!r}: pass step= "
                "(e.g. optimizer.iterations) when calling the Objective."
            )
        return self.weight(step)

    def values(self, lookup):
        """Per-sample values `(batch,)` (or a scalar for a batch-independent term)."""
        tensors = {p: lookup(self.name, p, s) for p, s in self.sources.items()}
        if "y_true" in tensors and "y_pred" in tensors:
            tensors["y_true"], tensors["y_pred"] = self._align(tensors["y_true"], tensors["y_pred"])
        values = self._target(**tensors, **self._call_constants)
        values = ops.cast(values, "float32")
        if len(values.shape) == 0:
            if not self.batch_independent:
                raise ValueError(
                    f"Term '{self.name}' returned a scalar, but it depends on batch tensors "
                    f"{sorted(self.sources.values())}: return one value per sample (leading axis "
                    "= batch), e.g. keras.ops.mean(err, axis=-1) rather than keras.ops.mean(err), "
                    "so that sample weights and the global-batch reduction apply."
                )
            return values
        if len(values.shape) > 1:
            values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
        return values

    def _align(self, y_true, y_pred):
        if isinstance(self.fn, FunctionLoss):
            return _contract.align(f"term '{self.name}'", y_true, y_pred, self._sparse)
        if isinstance(self.fn, keras.losses.Loss):  # as Loss.__call__ does before .call
            dtype = self.fn.dtype
            return ops.convert_to_tensor(y_true, dtype), ops.convert_to_tensor(y_pred, dtype)
        # Keras loss functions would broadcast (N,) against (N, 1) to (N, N).
        return squeeze_or_expand_to_same_rank(y_true, y_pred)

    def get_config(self):
        return {
            "fn": _serialize_fn(self.name, self.fn),
            "weight": keras.saving.serialize_keras_object(self.weight)
            if callable(self.weight)
            else self.weight,
            "name": self.name,
            **self.sources,
            **self.constants,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        fn = keras.saving.deserialize_keras_object(config.pop("fn"))
        weight = config.pop("weight")
        if isinstance(weight, dict):
            weight = schedules.get(weight)
        return cls(fn, weight=weight, **config)

    def __repr__(self):
        routes = ", ".join(f"{k}={v!r}" for k, v in self.sources.items())
        return f"Term({self.name!r}, {routes}, weight={self.weight!r})"


_register(Term)


def _serialize_fn(term, fn):
    """Serializes a term's function, refusing at save time what could not be loaded back."""
    fix = (
        "Define it with `def` and decorate it with "
        "@keras.saving.register_keras_serializable(package='my_pkg'), or use @losskit.loss."
    )
    if _is_lambda(fn):
        raise ValueError(f"Term '{term}': its function is a lambda, which cannot be saved. {fix}")
    config = keras.saving.serialize_keras_object(fn)
    if not isinstance(fn, keras.losses.Loss):
        try:
            loadable = keras.saving.deserialize_keras_object(config) is fn
        except Exception:  # noqa: BLE001 - any failure means it would not load back
            loadable = False
        if not loadable:
            raise ValueError(
                f"Term '{term}': function {getattr(fn, '__qualname__', fn)!r} is not registered "
                f"as Keras-serializable, so a saved model could not be loaded back. {fix}"
            )
    return config


def _flatten(prefix, value, out):
    out[prefix] = value
    if isinstance(value, dict):
        for key, item in value.items():
            out[f"{prefix}.{key}"] = item


def _batch_size(*structures):
    for s in structures:
        for t in keras.tree.flatten(s):
            if t is not None and len(getattr(t, "shape", ())) > 0:
                return ops.cast(ops.shape(t)[0], "float32")
    raise ValueError("The Objective found no batched tensor to take the batch size from.")


@_register
class Objective:
    """A weighted sum of `Term`s, each a loss over any tensors of the step.

    `total = sum_t weight_t(step) * value_t`, where for a per-sample term
    `value_t = sum_i w_i * l_t(i) / N` over the **global** batch of size `N` (`w` = sample
    weights), and a batch-independent term (all sources `"var.*"`) adds its scalar once per step.

    Under `tf.distribute`, calling it inside a replica returns that replica's share: the shares of
    all replicas sum to the global value, so summed gradients equal the single-device gradient
    (the same convention as `tf.nn.compute_average_loss`). JAX `DataParallel` and single devices see
    the whole batch and get the value itself.

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
        self.terms = terms

    @property
    def sources(self):
        """Every source string used by the terms."""
        return sorted({s for t in self.terms for s in t.sources.values()})

    def __call__(self, x, y, pred, sample_weight=None, step=None, layers=None, variables=None):
        """Returns `(total, {term name: value})`.

        Args:
            x: the batch's features (a dict for `"x.<key>"` sources).
            y: labels (a dict for `"y.<key>"`).
            pred: model outputs (a dict for `"pred.<key>"`).
            sample_weight: per-sample weights `(batch,)`, or None.
            step: the optimizer step, needed by scheduled weights.
            layers: `{layer name: tensor}` for `"layer.<name>"` sources.
            variables: for `"var.<layer>.<var>"`, a dict `{"<layer>.<var>": tensor}` or a Keras
                model whose variables are read (their current, differentiable value).
        """
        total, values, _ = self.compute(x, y, pred, sample_weight, step, layers, variables)
        return total, values

    def compute(self, x, y, pred, sample_weight=None, step=None, layers=None, variables=None):
        """As `__call__`, plus the term weights used: `(total, values, weights)`."""
        lookup = self._lookup(x, y, pred, layers, variables)
        replicas, ctx = backend.replica_context()
        n_local = None
        n_global = None
        values, weights = {}, {}
        total = 0.0
        for term in self.terms:
            v = term.values(lookup)
            if len(v.shape) == 0:
                v = v / replicas
            else:
                if n_local is None:
                    n_local = _batch_size(pred, y, x)
                    n_global = backend.all_reduce_sum(ctx, n_local)
                _contract.check_per_sample(f"term '{term.name}'", v, _static_batch(pred, y, x))
                if sample_weight is not None:
                    sw = ops.cast(sample_weight, "float32")
                    sw = ops.reshape(sw, (-1,)) if len(sw.shape) > 1 else sw
                    v = v * sw
                v = ops.divide_no_nan(ops.sum(v), n_global)
            w = term.weight_at(step)
            values[term.name] = v
            weights[term.name] = w
            total = total + w * v
        return total, values, weights

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
            if source.startswith("var.") and variables is not None:
                found = _variable(variables, source[4:])
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


def _static_batch(*structures):
    for s in structures:
        for t in keras.tree.flatten(s):
            if t is not None and len(getattr(t, "shape", ())) > 0:
                return t.shape[0]
    return None


def _variable(variables, key):
    if isinstance(variables, dict):
        return variables.get(key)
    layer_name, _, var_name = key.partition(".")
    try:
        layer = variables.get_layer(layer_name)
    except ValueError:
        return None
    for v in layer.variables:
        if v.name == var_name or v.path.endswith(f"/{var_name}"):
            return v.value  # inside a StatelessScope (JAX trainer) this is the traced value
    return None

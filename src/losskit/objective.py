"""Objectives over any tensor of a training step: `Term` and `Objective`.

A `Term` routes the parameters of a loss function to named tensors of the step (its *sources*); an
`Objective` is the weighted sum of its terms, reduced so that a distributed step equals a
single-device step. The source strings are described and parsed in `losskit.sources`.
"""

import dataclasses
import inspect
from collections.abc import Mapping

import keras
from keras import ops

from losskit import _contract, _keras, _precision, backend, schedules, sources
from losskit._wrap import is_lambda
from losskit.loss import FunctionLoss

_register = keras.saving.register_keras_serializable(package="losskit")


def _target(fn):
    """The function that computes a term's values, and the constants it is called with."""
    if isinstance(fn, FunctionLoss):
        return fn.fn, dict(fn.params)
    if isinstance(fn, keras.losses.Loss):
        return fn.call, {}  # per-sample values, before Keras's reduction
    if callable(fn):
        return fn, {}
    raise TypeError(f"A Term needs a loss function or Loss, got {fn!r}")


def _check_weight(name, weight):
    if callable(weight):
        return weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(
            f"Term '{name}': weight must be a number or a losskit.schedules schedule, "
            f"got {weight!r}"
        )
    return float(weight)


class Term:
    """One weighted loss term whose parameters are tensors of the training step.

    ```python
    losskit.Term(keras.losses.binary_crossentropy, name="bce")  # y_true="y", y_pred="pred"
    losskit.Term(kl_divergence, p="x.teacher", q="pred", weight=Linear(0, 1, steps=500))
    losskit.Term(activation_l2, a="layer.dense_1", weight=1e-3, name="act")
    losskit.Term(fused_linear_cross_entropy, inputs={"hidden": "layer.h", "weight": "x.W"},
                 labels="y", reduction="none")
    ```

    Args:
        fn: a losskit loss (class or instance; its `.fn` is called with its `.params`), a Keras
            `Loss` instance (its per-sample `.call`), a Keras loss function, or any function of
            tensors. It returns per-sample values `(B,)` or per-position values `(B, T, ...)`
            (see `Objective` for their reduction). Only a term whose sources are all `"var.*"`
            (a penalty on weights, which does not depend on the batch) may return a scalar: it
            is added once per step.
        weight: a number or a `losskit.schedules` schedule of the optimizer step.
        name: the name the term is logged under (default: the loss's or function's name).
        inputs: a mapping `{parameter: source or constant}`, merged with `**sources`: for
            parameters named like Term's own keywords (`weight`, `name`, `inputs`) and for
            string constants (`{"mode": "categorical"}`): a string in `inputs` that is not a
            valid source is a constant.
        **sources: `parameter="source"` for each tensor parameter. `y_true` and `y_pred` default to
            `"y"` and `"pred"`; parameters with defaults keep them. A string must be a valid
            source; numbers, booleans and None are constants (`from_logits=True`).

    Unknown parameters and invalid source strings are refused here, at construction. Under
    `mixed_float16`/`mixed_bfloat16` the function receives its floating tensors in float32
    (`keras.backend.floatx()`), as a `compile` loss does, and its values are float32.
    """

    def __init__(self, fn, *, weight=1.0, name=None, inputs=None, **sources_):
        if inspect.isclass(fn) and issubclass(fn, keras.losses.Loss):
            fn = fn()
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", None) or "term"
        self.weight = _check_weight(self.name, weight)
        target, loss_constants = _target(fn)
        self._target = target
        if inputs is not None and not isinstance(inputs, Mapping):
            raise TypeError(
                f"Term '{self.name}': inputs= must be a mapping {{parameter: source or "
                f"constant}}, got {inputs!r}. To route a parameter named 'inputs', write "
                f"inputs={{'inputs': {inputs!r}}}."
            )
        inputs = dict(inputs or {})
        both = sorted(set(inputs) & set(sources_))
        if both:
            raise TypeError(f"Term '{self.name}': {both} given both as keywords and in inputs=")
        params = inspect.signature(target).parameters
        routes, constants = {}, {}
        for key, value in {**sources_, **inputs}.items():
            self._check_parameter(key, params, target)
            source = sources.parse(value)
            if source is not None:
                routes[key] = source
            elif isinstance(value, str) and key not in inputs:
                raise ValueError(
                    f"Term '{self.name}': {key}={value!r} is not a valid source; use "
                    f"{sources.FORMS}. A string constant goes through "
                    f"inputs={{{key!r}: {value!r}}}."
                )
            else:
                constants[key] = value
        self.constants = constants
        self._call_constants = {**loss_constants, **constants}
        if "reduction" in params and "reduction" not in self._call_constants:
            # A function that can reduce itself (the fused losses) gives the Objective its
            # per-position values, which the Objective reduces by its own rule.
            self._call_constants["reduction"] = "none"
        self.sources = self._route(params, routes, set(self._call_constants))
        self._sparse = getattr(fn, "sparse_labels", False)

    def _check_parameter(self, key, params, target):
        takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        if key not in params and not takes_kwargs:
            raise TypeError(
                f"Term '{self.name}': unknown keyword {key!r}: not a parameter of "
                f"{getattr(target, '__name__', target)}{inspect.signature(target)}."
            )

    def _route(self, params, given, constants):
        routes = dict(given)
        defaults = {"y_true": "y", "y_pred": "pred"}
        for p in params.values():
            variadic = p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            if p.name in given or p.name in constants or variadic:
                continue
            if p.name in defaults:
                routes[p.name] = sources.parse(defaults[p.name])
            elif p.default is p.empty:
                raise TypeError(
                    f"Term '{self.name}': parameter '{p.name}' has no source; pass it as "
                    f"{p.name}='x.<key>' (or 'y', 'pred', 'layer.<name>', 'var.<layer>.<var>')."
                )
        return routes

    @property
    def batch_independent(self):
        """True when every source is a variable: the term is a penalty on weights."""
        return all(s.kind == "var" for s in self.sources.values())

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
        """The term's float32 values: per sample `(B,)`, per position `(B, T, ...)`, or a scalar
        for a batch-independent term; with the Keras mask the function attached, if any."""
        floatx = keras.backend.floatx()
        tensors = {
            p: _precision.to_float(lookup(self.name, p, s), floatx)
            for p, s in self.sources.items()
        }
        if "y_true" in tensors and "y_pred" in tensors:
            tensors["y_true"], tensors["y_pred"] = self._align(tensors["y_true"], tensors["y_pred"])
        try:
            values = self._target(**tensors, **self._call_constants)
        except Exception as error:  # noqa: BLE001 - re-raised with the term's name
            raise _named(error, f"Term '{self.name}'") from error
        mask = _keras.get_keras_mask(values)
        values = ops.cast(values, "float32")
        if len(values.shape) == 0 and not self.batch_independent:
            raise ValueError(
                f"Term '{self.name}' returned a scalar, but it depends on batch tensors "
                f"{sorted(self.sources.values())}: return one value per sample (leading axis "
                "= batch), e.g. keras.ops.mean(err, axis=-1) rather than keras.ops.mean(err), "
                "so that sample weights and the global-batch reduction apply."
            )
        return values, mask

    def _align(self, y_true, y_pred):
        if isinstance(self.fn, FunctionLoss):
            return _contract.align(f"term '{self.name}'", y_true, y_pred, self._sparse)
        if isinstance(self.fn, keras.losses.Loss):  # as Loss.__call__ does before .call
            dtype = self.fn.dtype
            return ops.convert_to_tensor(y_true, dtype), ops.convert_to_tensor(y_pred, dtype)
        # Keras loss functions would broadcast (N,) against (N, 1) to (N, N).
        return _keras.squeeze_or_expand_to_same_rank(y_true, y_pred)

    def get_config(self):
        return {
            "fn": _serialize_fn(self.name, self.fn),
            "weight": keras.saving.serialize_keras_object(self.weight)
            if callable(self.weight)
            else self.weight,
            "name": self.name,
            # One mapping: constants may be strings, or named like Term's own keywords.
            "inputs": {**self.sources, **self.constants},
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
        args = {**self.sources, **self.constants}
        routes = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return f"Term({self.name!r}, {routes}, weight={self.weight!r})"


_register(Term)


def _serialize_fn(term, fn):
    """Serializes a term's function, refusing at save time what could not be loaded back."""
    fix = (
        "Define it with `def` and decorate it with "
        "@keras.saving.register_keras_serializable(package='my_pkg'), or use @losskit.loss."
    )
    if is_lambda(fn):
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


def _named(error, owner):
    """`error` with `owner` in front of its message, same type (or as is if that fails)."""
    if str(error).startswith(owner):
        return error
    try:
        return type(error)(f"{owner}: {error}")
    except Exception:  # noqa: BLE001 - exception types with other constructors keep their text
        return error


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
    `weights` applied, and the batch sizes it reduced by (`batch` on this replica, `global_batch`
    over all `replicas`). A model logs these without recomputing anything."""

    total: object
    values: dict
    weights: dict
    batch: object
    global_batch: object
    replicas: int = 1


def _fit_sample_weight(term, sample_weight, values):
    """`sample_weight` shaped to multiply `values` (see `_contract.check_sample_weight`)."""
    sw = ops.cast(sample_weight, "float32")
    shape = _contract.check_sample_weight(f"Term '{term}'", sw, values)
    sw = ops.reshape(sw, [-1 if d is None else d for d in shape]) if shape else sw
    for _ in range(len(values.shape) - len(shape)):
        sw = ops.expand_dims(sw, -1)
    return sw


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
        n_local = ops.cast(ops.shape(first)[0], "float32")
        n_global = backend.all_reduce_sum(ctx, n_local)
        values, weights = {}, {}
        total = None
        for term in self.terms:
            v, mask = term.values(lookup)
            if len(v.shape) == 0:
                v = v / replicas
            else:
                _contract.check_per_sample(f"term '{term.name}'", v, first.shape[0])
                v = self._reduce(term, v, mask, sample_weight, n_global, ctx)
            w = term.weight_at(step)
            values[term.name] = v
            weights[term.name] = w
            # A constant weight of 1 adds no op: an eager step (torch) pays for every op.
            weighted = v if isinstance(w, float) and w == 1.0 else w * v
            total = weighted if total is None else total + weighted
        return Result(total, values, weights, n_local, n_global, replicas)

    @staticmethod
    def _reduce(term, v, mask, sample_weight, n_global, ctx):
        if sample_weight is not None:
            v = v * _fit_sample_weight(term.name, sample_weight, v)
        positions = 1
        for d in v.shape[1:]:
            positions = None if d is None or positions is None else positions * d
        if mask is None and positions is not None:
            count = n_global * positions  # known without another all-reduce
        else:
            kept = ops.ones_like(v) if mask is None else ops.cast(mask, "float32")
            while len(kept.shape) < len(v.shape):
                kept = ops.expand_dims(kept, -1)
            kept = ops.broadcast_to(kept, ops.shape(v))
            v = ops.where(kept > 0, v, ops.zeros_like(v))  # an ignored NaN must not leak
            count = backend.all_reduce_sum(ctx, ops.sum(kept))
        return ops.divide_no_nan(ops.sum(v), count)

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

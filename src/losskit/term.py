"""`Term`: one weighted loss whose parameters are tensors of a training step.

A term routes the parameters of a loss function to named tensors of the step (its *sources*, parsed
by `losskit.sources`), checks everything it can at construction, and computes its values; the
`Objective` (`losskit.objective`) sums terms and reduces their values.
"""

import inspect
import numbers
from collections.abc import Mapping

import keras
from keras import ops

from losskit import _contract, _keras, _precision, domains, schedules, sources
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


# Keras built-ins whose y_true is not shaped like y_pred: integer class indices of
# y_pred.shape[:-1] ("sparse"), or shapes of their own (label sequences, labels of embeddings).
_KERAS_SHAPES = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_generalized_cross_entropy": "sparse",
    "ctc": None,
    "circle": None,
}


def _shape_rule(fn):
    """How a term's `y_true` must match its `y_pred`: "same" shape (a trailing 1 aligned),
    "sparse" (class indices of `y_pred.shape[:-1]`) or None (the function checks its own).

    The per-sample contract holds for every function: a losskit loss declares its rule, a Keras
    built-in has Keras's, and any other function or Loss is "sparse" if it carries
    `sparse_labels = True` (as `@losskit.loss(sparse_labels=True)` classes do), else "infer":
    integer labels of `y_pred.shape[:-1]` are class indices (Keras passes them to such a function
    as they are), anything else must have `y_pred`'s shape."""
    if isinstance(fn, FunctionLoss):
        return "sparse" if fn.sparse_labels else "same"
    if getattr(fn, "sparse_labels", False):
        return "sparse"
    if hasattr(fn, "shapes") and getattr(fn, "precision", None) is not None:
        return fn.shapes  # a library function (losses._common.register)
    inner = getattr(fn, "fn", fn) if isinstance(fn, keras.losses.Loss) else fn
    if getattr(inner, "__module__", "").startswith("keras."):
        return _KERAS_SHAPES.get(getattr(inner, "__name__", None), "same")
    return "infer"


def _class_indices(y_true, y_pred):
    """Integer labels shaped as `y_pred` without its last axis (a trailing 1 allowed)."""
    t, p = tuple(y_true.shape), tuple(y_pred.shape)
    if "int" not in keras.backend.standardize_dtype(y_true.dtype) or not p or p[-1] == 1:
        return False  # one output per sample: (N,) against (N, 1) is aligned, not indices
    if len(t) == len(p) and t and t[-1] == 1 and p[-1] != 1:
        t = t[:-1]
    return len(t) == len(p) - 1 and all(a is None or b is None or a == b for a, b in zip(t, p))


def _check_weight(name, weight):
    if callable(weight):
        return weight
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        hint = ""
        if isinstance(weight, str) and sources.parse(weight) is not None:
            # A source meant for a loss parameter named `weight` (a fused head's projection).
            hint = (f" weight= is the term's loss weight; to route the loss's parameter "
                    f"'weight', did you mean inputs={{'weight': {weight!r}}}?")
        raise TypeError(
            f"Term '{name}': weight must be a number or a losskit.schedules schedule, "
            f"got {weight!r}.{hint}"
        )
    # The same check as a loss parameter's: a NaN or infinite weight poisons every step.
    domains.finite.validate(f"Term '{name}'", "weight", weight)
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
        **sources_: `parameter="source"` for each tensor parameter. `y_true` and `y_pred` default to
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
        # A library function's declared domains hold for its constants here, at construction,
        # as they do for a Loss class's parameters (not at the first step).
        domains.validate(f"Term '{self.name}'", getattr(target, "domains", {}), constants)
        self.constants = constants
        self._call_constants = {**loss_constants, **constants}
        # A function that reduces itself (`fn.kept_positions`: the fused losses) is handed each
        # position's weight over the global normaliser by the Objective and returns the term's
        # value as a scalar, so that its backward pass only scales (see `weighted_sum`); unless
        # the term fixes its reduction or weights itself.
        self.reduces_itself = (
            callable(getattr(target, "kept_positions", None))
            and {"reduction", "sample_weight"} <= set(params)
            and not {"reduction", "sample_weight"} & (set(self._call_constants) | set(routes))
        )
        if "reduction" in params and "reduction" not in self._call_constants:
            # A function that can reduce itself (the fused losses) gives the Objective its
            # per-position values, which the Objective reduces by its own rule.
            self._call_constants["reduction"] = "none"
        self.sources = self._route(params, routes, set(self._call_constants))
        self._shapes = _shape_rule(fn)

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
        tensors = self.tensors(lookup)
        values = self._call(tensors)
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

    def tensors(self, lookup):
        """The function's tensor arguments, `{parameter: tensor}`, read from the step."""
        floatx = keras.backend.floatx()
        # NumPy arrays become tensors: outside `fit` (torch `train_on_batch`, a hand-written
        # loop) side data and labels can arrive as NumPy, which torch cannot mix with tensors.
        owner = f"Term '{self.name}'"
        tensors = {
            p: _precision.to_float(
                _precision.as_tensor(_contract.host_input(owner, lookup(self.name, p, s), p)),
                floatx,
            )
            for p, s in self.sources.items()
        }
        if "y_true" in tensors and "y_pred" in tensors:
            tensors["y_true"], tensors["y_pred"] = self._align(tensors["y_true"], tensors["y_pred"])
        return tensors

    def _call(self, tensors, fn=None, **overrides):
        try:
            return (fn or self._target)(**tensors, **{**self._call_constants, **overrides})
        except Exception as error:  # noqa: BLE001 - re-raised with the term's name
            raise _contract.named(error, f"Term '{self.name}'") from error

    def kept(self, tensors):
        """For a term that `reduces_itself`: the positions its values would have, true where
        kept (the Keras mask its per-position values would carry)."""
        return self._call(tensors, fn=self._target.kept_positions)

    def weighted_sum(self, tensors, weights):
        """For a term that `reduces_itself`: `sum_i weights_i * value_i` over its positions
        (`weights` shaped as `kept`), a float32 scalar, computed by the function itself."""
        value = self._call(tensors, reduction="sum", sample_weight=weights)
        return ops.cast(value, "float32")

    def _align(self, y_true, y_pred):
        if isinstance(self.fn, keras.losses.Loss) and not isinstance(self.fn, FunctionLoss):
            dtype = self.fn.dtype  # as Loss.__call__ does before .call
            y_true = ops.convert_to_tensor(y_true, dtype)
            y_pred = ops.convert_to_tensor(y_pred, dtype)
        if self._shapes is None:
            # Keras loss functions would broadcast (N,) against (N, 1) to (N, N).
            return _keras.squeeze_or_expand_to_same_rank(y_true, y_pred)
        # Shapes that differ other than by a trailing 1 raise here, at trace time: a Keras
        # function would broadcast (8, 2) against (8, 1) and train on the wrong loss.
        sparse = self._shapes == "sparse" or (
            self._shapes == "infer" and _class_indices(y_true, y_pred)
        )
        return _contract.align(f"Term '{self.name}'", y_true, y_pred, sparse_labels=sparse)

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

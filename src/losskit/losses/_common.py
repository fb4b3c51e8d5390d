"""Helpers shared by the loss families: the one way to define a library loss, and per-sample
reductions.

A library loss is a function decorated with `@register` and, where it takes `(y_true, y_pred)`,
a Keras class made by `loss_class`:

```python
@register
def huber(y_true, y_pred, delta=1.0):
    ...

Huber = loss_class(huber, "Huber")
```

`register` makes the function Keras-serializable as `losskit.losses>name` (so terms that use it
save and load in safe mode), makes it compute in float32 when given 16-bit inputs (the precision
rule; `precision="input"` for functions that manage precision themselves, such as the fused
losses) and records it under its family, the module's last name. `losskit.losses.ALL`, `CLASSES`
and `FAMILIES` are read from this registry.
"""

import functools
import inspect

import keras
import numpy as np
from keras import ops

from losskit import _contract, _precision, _wrap
from losskit import domains as _domains
from losskit._keras import set_keras_mask
from losskit.loss import FunctionLoss, loss

PACKAGE = "losskit.losses"

# name -> (family, function) and name -> (family, class), in definition order.
FUNCTIONS = {}
CLASSES = {}


def _family(module):
    return module.rsplit(".", 1)[-1]


def _pair(fn, shapes):
    """How `fn`'s `(y_true, y_pred)` must match: "same" (equal shapes, a trailing 1 aligned),
    "sparse" (integer labels of `y_pred.shape[:-1]`), or None (the function checks itself)."""
    if shapes is not None:
        if shapes not in ("same", "sparse", "own"):
            raise ValueError(f"register: shapes must be 'same', 'sparse' or 'own', got {shapes!r}")
        return None if shapes == "own" else shapes
    names = list(inspect.signature(fn).parameters)[:2]
    return "same" if names == ["y_true", "y_pred"] else None


def register(fn=None, *, precision="float32", domains=None, shapes=None):
    """Registers a library loss function (see the module docstring).

    `domains` maps parameter names to `losskit.domains` objects: checked on every call before any
    tensor work (and by the Loss class at construction), and listed in the docstring. `shapes`:
    how `(y_true, y_pred)` must match ("same" by default for functions of `y_true, y_pred`,
    "sparse" for integer class indices, "own" where the function checks its own shapes).
    """
    if fn is None:
        return lambda f: register(f, precision=precision, domains=domains, shapes=shapes)
    if precision not in ("float32", "input"):
        raise ValueError(f"register: precision must be 'float32' or 'input', got {precision!r}")
    declared = _domains.declare(fn, domains)
    inner = _precision.compute_in_float32(fn) if precision == "float32" else fn
    signature = inspect.signature(fn)
    owner = f"loss '{fn.__name__}'"
    pair = _pair(fn, shapes)
    # The inputs a list may be given for: every parameter without a declared domain (those
    # with one are numbers, flags and options).
    tensors = set(signature.parameters) - set(declared)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{owner}: {error}") from None
        arguments = bound.arguments
        _domains.validate(owner, declared, arguments)
        for key, value in arguments.items():
            if key in declared and isinstance(value, np.generic):
                # A NumPy scalar parameter (np.float64(0.5)) would otherwise mix its dtype into
                # float32 math (TensorFlow refuses float64 + float32): a Python number, as Keras
                # takes it.
                arguments[key] = value.item()
            elif key in tensors or isinstance(value, (np.ndarray, np.generic)):
                # Lists become arrays; host integers are checked before anything converts them.
                arguments[key] = _contract.host_input(owner, value, key)
        if pair is not None and "y_true" in arguments and "y_pred" in arguments:
            _contract.check_floating(owner, arguments["y_pred"])
            _contract.check_numeric(owner, arguments["y_true"], "y_true")
            arguments["y_true"], arguments["y_pred"] = _contract.align(
                owner, arguments["y_true"], arguments["y_pred"], pair == "sparse"
            )
        return inner(*bound.args, **bound.kwargs)

    wrapped.__doc__ = _domains.docstring(fn.__doc__, declared)
    wrapped.domains = declared
    wrapped.precision = precision
    wrapped.shapes = pair
    wrapped = keras.saving.register_keras_serializable(package=PACKAGE)(wrapped)
    FUNCTIONS[fn.__name__] = (_family(fn.__module__), wrapped)
    return wrapped


def loss_class(fn, name, sparse_labels=False, base=None):
    """The Keras `Loss` class of a library function, registered as `losskit.losses>Name`."""
    if base is None:
        cls = loss(fn, package=PACKAGE, name=name, sparse_labels=sparse_labels)
    else:
        cls = _wrap.make_class(fn, base, "loss", PACKAGE, name)
        cls.sparse_labels = sparse_labels
    CLASSES[name] = (_family(fn.__module__), cls)
    return cls


def family(module):
    """`(functions, classes)` registered by family module `module` (its `__name__`)."""
    name = _family(module)
    functions = tuple(f for fam, f in FUNCTIONS.values() if fam == name)
    classes = tuple(c for fam, c in CLASSES.values() if fam == name)
    return functions, classes


def public(functions, classes, *extra):
    """A family module's `__all__`."""
    return ["FUNCTIONS", "CLASSES", *(f.__name__ for f in functions),
            *(c.__name__ for c in classes), *extra]


def epsilon():
    return keras.config.epsilon()


def per_sample_mean(x):
    """Mean over the last axis, as Keras's element-wise losses take it: `(B, d)` gives one value
    per sample, `(B, T, d)` one per position `(B, T)`; a 1-D input is already per sample."""
    if len(x.shape) <= 1:
        return x
    return ops.mean(x, axis=-1)


def per_sample_sum(x):
    """Sum over every axis but the leading (batch) one."""
    if len(x.shape) <= 1:
        return x
    return ops.sum(x, axis=tuple(range(1, len(x.shape))))


def as_float(x, like):
    """Casts labels to the dtype of the predictions (after integer-label checks)."""
    return ops.cast(x, like.dtype)


def safe_log(p):
    """log(p) where p > 0 and 0 elsewhere, with a finite gradient: for x log x terms with x = 0."""
    positive = p > 0
    return ops.where(positive, ops.log(ops.where(positive, p, ops.ones_like(p))), ops.zeros_like(p))


def masked(values, keep):
    """`values` with `keep` attached as their Keras mask: the positions a loss ignores, which
    Keras's reductions and an `Objective` leave out of the denominator."""
    set_keras_mask(values, keep)
    return values


def neg_log_binary(y_pred, from_logits):
    """`(-log p, -log(1 - p))` from logits (softplus forms, exact for any logit) or from
    probabilities clipped to `[epsilon, 1 - epsilon]` as Keras does."""
    if from_logits:
        return ops.softplus(-y_pred), ops.softplus(y_pred)
    p = ops.clip(y_pred, epsilon(), 1.0 - epsilon())
    return -ops.log(p), -ops.log1p(-p)


class PackedLoss(FunctionLoss):
    """A Loss whose `y_pred` packs several predictions on its last axis (e.g. mean and variance),
    so `y_pred.shape[-1]` is a multiple `k` of `y_true.shape[-1]` instead of equal to it."""

    pack = 2

    def call(self, y_true, y_pred):
        t, p = tuple(y_true.shape), tuple(y_pred.shape)
        if len(t) == len(p) - 1:
            y_true = ops.expand_dims(y_true, -1)
            t = tuple(y_true.shape)
        ok = len(t) == len(p) and t[-1] is not None and p[-1] == self.pack * t[-1]
        if not ok:
            raise ValueError(
                f"{self._owner}: y_pred of shape {p} must pack {self.pack} predictions per target "
                f"on its last axis, i.e. have {self.pack} * y_true.shape[-1] entries there; "
                f"y_true has shape {t}."
            )
        values = self.fn(y_true, y_pred, **self.params)
        _contract.check_per_sample(self._owner, values, p[0])
        return values

"""Shared machinery of `@losskit.loss` and `@losskit.metric`: a function's keyword parameters
become a registered Keras class's constructor arguments and config."""

import inspect
import numbers
import types

import keras
import numpy as np

from losskit import domains as _domains

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def is_lambda(obj):
    return callable(obj) and getattr(obj, "__name__", "") == "<lambda>"


def keyword_parameters(fn, kind, reserved):
    """Returns the defaults of `fn(y_true, y_pred, k=default, ...)`'s keyword parameters."""
    if not callable(fn):
        raise TypeError(f"@losskit.{kind} decorates a function, got {fn!r}")
    if is_lambda(fn):
        raise ValueError(
            f"@losskit.{kind} cannot make a saveable {kind} from a lambda: it has no name to "
            "register and Keras refuses to load lambdas in safe mode. Define it with "
            f"`def my_{kind}(y_true, y_pred, ...)` instead."
        )
    params = list(inspect.signature(fn).parameters.values())
    required = [p for p in params if p.default is inspect.Parameter.empty]
    if len(params) < 2 or params[:2] != required or any(p.kind not in _NAMED for p in params):
        raise TypeError(
            f"@losskit.{kind} '{fn.__name__}': the function must take exactly two tensors "
            "(y_true, y_pred) followed by named parameters with defaults, e.g. "
            f"`def huber(y_true, y_pred, delta=1.0)`; got {fn.__name__}{inspect.signature(fn)}"
        )
    defaults = {p.name: p.default for p in params[2:]}
    clash = sorted(set(defaults) & set(reserved))
    if clash:
        raise TypeError(
            f"@losskit.{kind} '{fn.__name__}': parameter name(s) {clash} are reserved by Keras "
            f"({', '.join(reserved)}); rename them."
        )
    return defaults


def make_class(fn, base, kind, package, name, domains=None):
    """Creates `base` subclass `name` wrapping `fn` and registers it as `package>name`.

    `domains` (`{parameter: losskit.domains.Domain}`) are added to those `fn` declares itself (a
    library function's `@register(domains=...)`), checked at construction, listed in the docstring.
    """
    reserved = base.base_parameters
    defaults = keyword_parameters(fn, kind, reserved)
    class_name = name or fn.__name__
    own = _domains.declare(fn, domains)
    declared = {**getattr(fn, "domains", {}), **own}
    # Every default must lie in its domain: a declaration that refuses the default is a typo.
    _domains.validate(f"{kind} '{class_name}' (default)", declared, defaults)
    cls = type(
        class_name,
        (base,),
        {
            "fn": staticmethod(fn),
            "defaults": types.MappingProxyType(defaults),
            "domains": types.MappingProxyType(declared),
            "__doc__": _domains.docstring(fn.__doc__, own) if own else fn.__doc__,
            "__module__": fn.__module__,
            "__qualname__": class_name,
        },
    )
    # So that help() and IDEs show the real constructor arguments.
    cls.__signature__ = inspect.Signature(
        inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
        for k, v in {**defaults, **reserved}.items()
    )
    return keras.saving.register_keras_serializable(package=package, name=class_name)(cls)


def _is_number(value):
    """Python and NumPy ints and floats; bools (an `int` subclass) and strings are not."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _numeric_default(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def bind_parameters(cls, args, params):
    """Validates constructor arguments against the wrapped function's keyword parameters."""
    if args:
        example = ", ".join(f"{k}=..." for k in cls.defaults)
        raise TypeError(
            f"{cls.__name__} is a Keras class made by losskit: construct it with keyword "
            f"parameters, {cls.__name__}({example}), then call the instance on tensors; "
            f"{cls.__name__}.fn is the plain function."
        )
    unknown = sorted(set(params) - set(cls.defaults))
    if unknown:
        raise TypeError(
            f"{cls.__name__}: unknown parameter(s) {unknown}; it takes "
            f"{list(cls.defaults) + list(cls.base_parameters)}."
        )
    for key, value in params.items():
        if is_lambda(value):
            raise ValueError(
                f"{cls.__name__}: parameter '{key}' is a lambda, which cannot be saved and "
                "reloaded in safe mode; pass a named function registered with "
                "@keras.saving.register_keras_serializable()."
            )
        # A string such as delta="2.0" would otherwise fail deep inside the backend, naming
        # neither the loss nor the parameter.
        if key in cls.domains:
            cls.domains[key].validate(f"{cls.__name__}", key, value)
            if isinstance(value, np.generic):  # a Python number in the config and the math
                params[key] = value.item()
        elif _numeric_default(cls.defaults[key]) and not _is_number(value):
            raise TypeError(
                f"{cls.__name__}: parameter '{key}' must be a number (int or float), got "
                f"{value!r} of type {type(value).__name__}."
            )
    return {**cls.defaults, **params}


class ParametersMixin:
    """Exposes the wrapped function's parameters as read-only attributes (`loss.delta`)."""

    def __getattr__(self, key):
        params = self.__dict__.get("params")
        if params is not None and key in params:
            return params[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

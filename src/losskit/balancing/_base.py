"""`Balancer` (the base class), `get` (a balancer from what `ObjectiveModel` is given), and the
helpers the balancers share: argument checks, state as model weights, gradient-list arithmetic."""

import keras
from keras import ops

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


class Balancer:
    """Base class. A balancer creates its state on the model in `bind`, and in `apply` returns
    `(total, {term: balancer weight})`, or `(total, weights, {name: value})` when the total has
    contributions besides the weighted terms (a regulariser): their names are listed in
    `contributions` and each is logged under its name. `callbacks()` are added to `fit`."""

    contributions = ()

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

    def explain_non_finite(self, names, logs):
        """Why a step's logs (`{name: value}`, the terms `names` among them) hold a NaN or
        infinity, when this balancer can tell (said by `nan_policy="raise"`); else None."""
        del names, logs

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


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

"""`@losskit.loss`: a per-sample function with parameters becomes a serializable Keras Loss."""

import keras
from keras import ops

from losskit import _contract, _wrap
from losskit._keras import get_keras_mask, reduce_weighted_values


class FunctionLoss(_wrap.ParametersMixin, keras.losses.Loss):
    """Base class of every Loss made by `@losskit.loss`.

    Subclasses carry `fn` (the per-sample function) and `defaults` (its keyword parameters).
    `__call__` follows `keras.losses.Loss.__call__` (masks, sample weights, reductions, float32
    compute under mixed precision) and adds the contract guards of `losskit._contract`.
    """

    base_parameters = {"name": None, "reduction": "sum_over_batch_size", "dtype": None}
    sparse_labels = False

    def __init__(self, *args, name=None, reduction="sum_over_batch_size", dtype=None, **params):
        self.params = _wrap.bind_parameters(type(self), args, params)
        super().__init__(name=name or type(self).__name__, reduction=reduction, dtype=dtype)

    @property
    def _owner(self):
        return f"loss '{self.name}'"

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_true = _contract.host_input(self._owner, y_true, "y_true")
        y_pred = _contract.host_input(self._owner, y_pred, "y_pred")
        _contract.check_floating(self._owner, y_pred)
        _contract.check_numeric(self._owner, y_true, "y_true")
        in_mask = get_keras_mask(y_pred)
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            label_dtype = None if self.sparse_labels else self.dtype
            y_true = ops.convert_to_tensor(y_true, dtype=label_dtype)
            try:
                losses = self.call(y_true, y_pred)
            except Exception as error:  # noqa: BLE001 - backend errors get the loss's name
                raise _contract.named(error, self._owner) from error
            if sample_weight is not None:
                given_rank = _contract.rank_or_none(sample_weight)
                sample_weight = _contract.shape_sample_weight(self._owner, sample_weight, losses)
                if given_rank and given_rank < len(losses.shape):
                    # One weight per sample counts once per position, as in an Objective: Keras's
                    # "mean_with_sample_weight" divides by the weights' sum over every position.
                    sample_weight = ops.broadcast_to(sample_weight, ops.shape(losses))
            out_mask = get_keras_mask(losses)
            masks = [m for m in (in_mask, out_mask) if m is not None]
            mask = masks[0] & masks[1] if len(masks) == 2 else (masks[0] if masks else None)
            return reduce_weighted_values(
                losses,
                sample_weight=sample_weight,
                mask=mask,
                reduction=self.reduction,
                dtype=self.dtype,
            )

    def call(self, y_true, y_pred):
        y_true, y_pred = _contract.align(self._owner, y_true, y_pred, self.sparse_labels)
        values = self.fn(y_true, y_pred, **self.params)
        _contract.check_per_sample(self._owner, values, y_pred.shape[0])
        return values

    def get_config(self):
        return {**super().get_config(), "dtype": self._dtype_policy.name, **self.params}


def loss(fn=None, *, package="losskit", name=None, sparse_labels=False, domains=None):
    """Turns a per-sample loss function into a registered, serializable `keras.losses.Loss` class.

    ```python
    @losskit.loss
    def huber(y_true, y_pred, delta=1.0):
        err = keras.ops.abs(y_true - y_pred)
        quad = keras.ops.minimum(err, delta)
        return keras.ops.mean(0.5 * quad**2 + delta * (err - quad), axis=-1)

    model.compile(optimizer="adam", loss=huber(delta=2.0))
    ```

    The function takes `(y_true, y_pred)` then keyword parameters with defaults, and returns one
    value per sample (leading axis = batch). The decorated name becomes a `Loss` subclass whose
    constructor takes those parameters plus `name`, `reduction`, `dtype`; every parameter is in
    `get_config()`, so `model.save()` / `keras.saving.load_model()` (safe mode, no
    `custom_objects`) keep them. The class is registered as `"{package}>{name}"`; `.fn` is the
    undecorated function.

    Args:
        fn: the per-sample function.
        package: registration package (default `"losskit"`).
        name: class and registration name (default: the function's name).
        sparse_labels: `y_true` holds integer class indices of shape `y_pred.shape[:-1]`; they
            keep their integer dtype instead of being cast to float.
        domains: `{parameter: domain}` from `losskit.domains` (`positive`, `interval(0, 1)`,
            `one_of("a", "b")`, ...): checked when the class is constructed (TypeError for a
            wrong type, ValueError for a value outside, naming the loss, parameter, value and
            domain) and listed under "Parameter domains" in the class's docstring.
    """
    if fn is None:
        return lambda f: loss(
            f, package=package, name=name, sparse_labels=sparse_labels, domains=domains
        )
    cls = _wrap.make_class(fn, FunctionLoss, "loss", package, name, domains)
    cls.sparse_labels = sparse_labels
    return cls

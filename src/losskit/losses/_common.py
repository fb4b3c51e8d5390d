"""Helpers shared by the loss families: registration and per-sample reductions."""

import keras
from keras import ops

from losskit import _wrap
from losskit.loss import FunctionLoss, loss

PACKAGE = "losskit.losses"


def register(fn):
    """Registers a plain loss function as Keras-serializable under `losskit.losses>name`, so
    objective terms that reference it save and load in safe mode."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(fn)


def loss_class(fn, name, sparse_labels=False, base=None):
    """The Keras `Loss` class of a library function, registered as `losskit.losses>Name`."""
    if base is None:
        return loss(fn, package=PACKAGE, name=name, sparse_labels=sparse_labels)
    cls = _wrap.make_class(fn, base, "loss", PACKAGE, name)
    cls.sparse_labels = sparse_labels
    return cls


def epsilon():
    return keras.config.epsilon()


def per_sample_mean(x):
    """Mean over every axis but the leading (batch) one; a 1-D input is already per sample."""
    if len(x.shape) <= 1:
        return x
    return ops.mean(x, axis=tuple(range(1, len(x.shape))))


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
        from losskit import _contract

        values = self.fn(y_true, y_pred, **self.params)
        _contract.check_per_sample(self._owner, values, p[0])
        return values

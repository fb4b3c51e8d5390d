"""The only place losskit touches Keras internals (`keras.src`), each use with the reason.

Keras's private modules change between minor releases; pyproject pins the Keras versions this
module is tested with. When Keras exports one of these, import it from here and drop the line.
"""

import contextlib

# The mask Keras attaches to a tensor (`tensor._keras_mask`). Losses read the mask of their
# predictions and of their per-sample values to leave masked positions out of the reduction
# exactly as Keras's own losses do; not exported.
from keras.src.backend import get_keras_mask, set_keras_mask
from keras.src.backend.common import dtypes as _dtypes

# Keras's reduction of per-sample values (masks folded into sample weights, the five
# reductions). Reusing it keeps `@losskit.loss` numerically identical to Keras's built-ins.
from keras.src.losses.loss import (
    apply_mask,
    reduce_weighted_values,
    squeeze_or_expand_to_same_rank,
)

# Keras's built-in losses are `LossFunctionWrapper`s computing `fn(y_true, y_pred, **kwargs)`;
# their `get_config()` does not always hold the kwargs (`Huber` drops `delta`), so
# `losskit.boosting` reads them from the wrapper to recognise a loss with closed-form derivatives.
from keras.src.losses.losses import LossFunctionWrapper

# `Trainer.compile` creates its trackers without attribute tracking; `ObjectiveModel.compile`
# does the same so its loss tracker is not saved as a model weight.
from keras.src.utils.tracking import no_automatic_dependency_tracking


def optimizer_counter(optimizer):
    """`(counter, k)`: the variable counting the optimizer's `apply` calls (one per training
    step, i.e. per micro-batch) and its `gradient_accumulation_steps` (1 without). The public
    `optimizer.iterations` is that variable only without accumulation; with it, Keras returns a new
    tensor `counter // k` at each access, which a JAX compiled step cannot find in the
    optimizer's state and which has no `.value`. A `LossScaleOptimizer` counts in its inner
    optimizer (which skips the count on non-finite gradients, as its update)."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer._iterations, optimizer.gradient_accumulation_steps or 1


def wrapped_function(loss):
    """`(fn, kwargs)` when the per-sample values of Keras loss `loss` are exactly
    `fn(y_true, y_pred, **kwargs)` (a built-in whose `call` is the wrapper's), else None."""
    if isinstance(loss, LossFunctionWrapper) and type(loss).call is LossFunctionWrapper.call:
        return loss.fn, dict(loss._fn_kwargs)
    return None


@contextlib.contextmanager
def float64_promotion():
    """Lets Keras's type promotion keep float64 under JAX, where it maps float64 to float32
    (`keras.backend.result_type`) even with `jax.enable_x64`. Used by `check_gradients`, whose
    finite differences are meaningless in float32."""
    saved = _dtypes.BIT64_TO_BIT32_DTYPE.get("float64")
    _dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
    try:
        yield
    finally:
        _dtypes.BIT64_TO_BIT32_DTYPE["float64"] = saved


__all__ = [
    "apply_mask",
    "float64_promotion",
    "get_keras_mask",
    "no_automatic_dependency_tracking",
    "optimizer_counter",
    "reduce_weighted_values",
    "set_keras_mask",
    "squeeze_or_expand_to_same_rank",
    "wrapped_function",
]

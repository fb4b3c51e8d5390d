"""The metric library. Each metric is a `@losskit.metric` class: construct it with parameters."""

from keras import ops

from losskit.metric import metric


@metric
def regression_accuracy(y_true, y_pred, tolerance=0.05, relative=True):
    r"""Fraction of predictions within `tolerance` of the target.

    With `relative=True` a prediction counts as correct when
    :math:`|\hat y - y| \le \text{tolerance} \cdot |y|`, otherwise when
    :math:`|\hat y - y| \le \text{tolerance}`. The per-sample value is the fraction of correct
    outputs along the last axis, so `result()` is the fraction over all samples seen.

    A "custom accuracy for regression" as used with the airfoil self-noise data
    (Brooks, Pope & Marcolini, 1989, NASA RP-1218).
    """
    err = ops.abs(y_pred - y_true)
    bound = tolerance * ops.abs(y_true) if relative else ops.full_like(y_true, tolerance)
    return ops.mean(ops.cast(err <= bound, y_pred.dtype), axis=-1)


__all__ = ["regression_accuracy"]

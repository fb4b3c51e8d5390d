r"""Closed-form score derivatives of the losses boosting uses most, for `losskit.boosting`.

A boosting library asks its objective for :math:`g_i = \partial\ell_i/\partial s_i` and
:math:`h_i = \partial^2\ell_i/\partial s_i^2` on every row, every round. Autodiff of a loss costs
several forward passes (a reverse pass and a second-order pass, each recomputing the loss's
transcendental functions, plus the host-device round trip): 6-10 ms a round at 200,000 rows for
Keras's binary cross-entropy, a third of a boosting round (benchmarks/boosting.py). The closed
forms below share one transcendental function between gradient and Hessian and run on the NumPy
arrays the libraries hand over, as their built-in objectives do. Where a tail makes the Hessian
smaller than :math:`10^{-16}` they may round it to 0 (autodiff keeps the tiny value; XGBoost's
own logistic objective floors it at :math:`10^{-16}`).

Each entry is the exact derivative of the Keras or losskit function it is registered for, with
that function's keyword parameters; parameters it does not cover (an `axis`, an ignored class)
leave the loss to autodiff. The derivative functions are module-level (`functools.partial` of
them), so an objective pickles with the model that holds it. tests/test_boosting_closed_forms.py
checks every entry against the backends' autodiff of the function itself.

Inputs: float64 `(n, k)` scores, labels as `losskit.boosting` prepares them (float `(n, k)`, or
int `(n,)` class indices for a sparse loss); per-sample values average over the `k` columns
(Keras's last-axis mean), hence the `/ k` of the element-wise losses.
"""

import functools

import keras
import numpy as np

from losskit.losses import classification, regression


def _sigmoid_parts(score):
    r"""`(sigmoid(s), sigmoid(s) sigmoid(-s))` as :math:`\tfrac12 + \tfrac12 t` and
    :math:`\tfrac14 (1 - t^2)`, :math:`t = \tanh(s/2)`: one transcendental, no overflow, and
    three arrays (at 200,000 rows each fresh temporary costs more than the `tanh`, in page
    faults)."""
    t = np.multiply(score, 0.5)
    np.tanh(t, out=t)
    p = np.multiply(t, 0.5)
    p += 0.5
    np.square(t, out=t)
    np.subtract(1.0, t, out=t)
    t *= 0.25
    return p, t


def _per_column(g, h):
    """Derivatives of a last-axis mean over `k` columns: the element-wise ones over `k`."""
    k = g.shape[1]
    if k != 1:
        g /= k
        h /= k
    return g, h


def binary_crossentropy(labels, score, label_smoothing=0.0, pos_weight=1.0):
    r""":math:`\ell = w_+ y\,\mathrm{softplus}(-s) + (1 - y)\,\mathrm{softplus}(s)`:
    :math:`g = \sigma(s)(w_+ y + 1 - y) - w_+ y`, :math:`h = \sigma(s)\sigma(-s)(w_+ y + 1 - y)`."""
    y = labels * (1.0 - label_smoothing) + label_smoothing / 2 if label_smoothing else labels
    g, h = _sigmoid_parts(score)
    if pos_weight != 1.0:
        scale = pos_weight * y + 1.0 - y
        g *= scale
        h *= scale
        y = pos_weight * y
    g -= y
    return _per_column(g, h)


def softmax_crossentropy(labels, score, label_smoothing=0.0, sparse=False):
    r""":math:`\ell = -\sum_j y_j \log\mathrm{softmax}(s)_j`: :math:`g = p \sum_j y_j - y`,
    :math:`h = p (1 - p) \sum_j y_j` (the Hessian's diagonal; one-hot rows sum to 1)."""
    k = score.shape[1]
    p = np.exp(score - score.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if sparse:
        y = np.zeros_like(p)
        y[np.arange(len(labels)), labels] = 1.0
    else:
        y = labels
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + label_smoothing / k
    if sparse:  # every row sums to 1
        return p - y, p * (1.0 - p)
    total = y.sum(axis=1, keepdims=True)
    return p * total - y, p * (1.0 - p) * total


def squared_error(labels, score):
    r""":math:`\ell = e^2`, `e = s - y`: :math:`g = 2e`, :math:`h = 2`."""
    g = score - labels
    g *= 2.0
    return _per_column(g, np.full(score.shape, 2.0))


def huber(labels, score, delta=1.0):
    r""":math:`\ell = \tfrac12 e^2` for :math:`|e| \le \delta`, else
    :math:`\delta(|e| - \tfrac12\delta)`: :math:`g = e` or :math:`\delta\,\mathrm{sign}(e)`,
    :math:`h = 1` or 0 (the quadratic branch at :math:`|e| = \delta`, as the functions'
    `where` picks it)."""
    e = score - labels
    inside = np.abs(e) <= delta
    return _per_column(np.where(inside, e, delta * np.sign(e)), inside.astype(np.float64))


def log_cosh(labels, score):
    r""":math:`\ell = \log\cosh e`: :math:`g = \tanh e`, :math:`h = 1 - \tanh^2 e`."""
    g = np.subtract(score, labels)
    np.tanh(g, out=g)
    h = np.square(g)
    np.subtract(1.0, h, out=h)
    return _per_column(g, h)


# Each entry takes the function's keyword parameters and returns the derivatives with them
# bound, or None for parameters it does not cover.


def _binary_entry(from_logits=False, label_smoothing=0.0, pos_weight=1.0, axis=-1):
    if not from_logits or axis != -1:
        return None
    return functools.partial(
        binary_crossentropy, label_smoothing=label_smoothing, pos_weight=pos_weight)


def _softmax_entry(sparse):
    def entry(from_logits=False, label_smoothing=0.0, axis=-1, ignore_class=None,
              ignore_index=None):
        if not from_logits or axis != -1 or ignore_class is not None or ignore_index is not None:
            return None
        return functools.partial(
            softmax_crossentropy, label_smoothing=label_smoothing, sparse=sparse)

    return entry


def _huber_entry(delta=1.0):
    return functools.partial(huber, delta=delta)


def _plain(derivatives):
    def entry():
        return derivatives

    return entry


# Per-sample function -> entry(**its keyword parameters) -> derivatives(labels, score) or None.
ENTRIES = {
    keras.losses.binary_crossentropy: _binary_entry,
    classification.binary_crossentropy: _binary_entry,
    keras.losses.categorical_crossentropy: _softmax_entry(sparse=False),
    classification.categorical_crossentropy: _softmax_entry(sparse=False),
    keras.losses.sparse_categorical_crossentropy: _softmax_entry(sparse=True),
    classification.sparse_categorical_crossentropy: _softmax_entry(sparse=True),
    keras.losses.mean_squared_error: _plain(squared_error),
    regression.mse: _plain(squared_error),
    keras.losses.huber: _huber_entry,
    regression.huber: _huber_entry,
    keras.losses.log_cosh: _plain(log_cosh),
    regression.log_cosh: _plain(log_cosh),
}


def lookup(fn, kwargs):
    """`derivatives(labels, score) -> (g, h)` of per-sample function `fn` with keyword
    parameters `kwargs`, or None (no closed form here: autodiff)."""
    entry = ENTRIES.get(fn)
    if entry is None:
        return None
    try:
        return entry(**kwargs)
    except TypeError:  # a parameter this closed form does not know: not covered
        return None

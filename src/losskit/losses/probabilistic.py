r"""Negative log-likelihoods: `gaussian_nll`, `poisson_nll`, `logistic_nll`.

`logistic_nll(y_true, inputs, kernel, bias)` is the NLL of binary labels under a logistic head
:math:`p = \sigma(x^\top w + b)` with an **analytic gradient** (`losskit.custom_gradient`): the
head's kernel and bias get the closed form, and the gradient w.r.t. the head's `inputs` flows on
by autodiff into the layers below. `logistic_nll_logits` is the two-tensor form used by the
`LogisticNLL` Loss class.
"""

import math

from keras import ops

from losskit import backend
from losskit import domains as dom
from losskit.gradients import custom_gradient
from losskit.losses._common import (
    PackedLoss,
    as_float,
    epsilon,
    family,
    loss_class,
    per_sample_mean,
    public,
    register,
)

# --------------------------------------------------------------------------------------------------
# Gaussian


@register(domains=dict(eps=dom.positive, full=dom.boolean))
def gaussian_nll(y_true, mean, variance, eps=1e-6, full=False):
    r"""Heteroscedastic Gaussian NLL, averaged over the non-batch axes:

    .. math:: \tfrac12 \left(\log \sigma^2 + \frac{(y - \mu)^2}{\sigma^2}\right)
              \;[+\ \tfrac12 \log 2\pi \text{ if full}],
              \qquad \sigma^2 = \max(\text{variance}, \text{eps})

    `variance` is predicted per element (e.g. through a softplus); clamping it at `eps` keeps the
    loss finite as the variance collapses (as `torch.nn.GaussianNLLLoss` does).

    Reference: Nix & Weigend, "Estimating the mean and variance of the target probability
    distribution", ICNN 1994. torch: `torch.nn.functional.gaussian_nll_loss`.
    """
    y_true = as_float(y_true, mean)
    var = ops.maximum(ops.cast(variance, mean.dtype), eps)
    value = 0.5 * (ops.log(var) + ops.square(y_true - mean) / var)
    if full:
        value = value + 0.5 * math.log(2.0 * math.pi)
    return per_sample_mean(value)


@register(domains=dict(eps=dom.positive, full=dom.boolean), shapes="own")
def gaussian_nll_packed(y_true, y_pred, eps=1e-6, full=False):
    r"""`gaussian_nll` with `y_pred = concatenate([mean, variance], axis=-1)`: the form of the
    `GaussianNLL` Loss class, for a model with one output of `2 * d` units,
    :math:`\tfrac12 (\log \sigma^2 + (y - \mu)^2 / \sigma^2)` averaged over the `d` targets.

    Reference: Nix & Weigend, ICNN 1994 (as `gaussian_nll`)."""
    d = y_pred.shape[-1] // 2
    return gaussian_nll(y_true, y_pred[..., :d], y_pred[..., d:], eps=eps, full=full)


# --------------------------------------------------------------------------------------------------
# Poisson


@register(domains=dict(log_input=dom.boolean, full=dom.boolean))
def poisson_nll(y_true, y_pred, log_input=False, full=False):
    r"""Poisson NLL of counts :math:`y` under rate :math:`\lambda`, averaged over the non-batch
    axes: :math:`\lambda - y \log \lambda` [:math:`+ \log y!` if full, via `lgamma(y + 1)`].

    With `log_input=True`, `y_pred` is :math:`\log\lambda` and the loss is
    :math:`e^{\log\lambda} - y \log\lambda` (no log of a rate near 0). Otherwise `y_pred` is the
    rate and :math:`\log(\lambda + \epsilon)` is used, as `keras.losses.poisson` does.

    Reference: McCullagh & Nelder, Generalized Linear Models (1989), ch. 6.
    Keras: `keras.losses.poisson`; torch: `torch.nn.PoissonNLLLoss`.
    """
    y_true = as_float(y_true, y_pred)
    if log_input:
        value = ops.exp(y_pred) - y_true * y_pred
    else:
        value = y_pred - y_true * ops.log(y_pred + epsilon())
    if full:
        value = value + _log_factorial(y_true)
    return per_sample_mean(value)


def _log_factorial(counts):
    """log(y!) = lgamma(y + 1) of the (label) counts."""
    return backend.lgamma(counts + 1.0)


# --------------------------------------------------------------------------------------------------
# Logistic


def _labels(y_true, like):
    return ops.reshape(ops.cast(y_true, like.dtype), (-1,))


@register
@custom_gradient
def logistic_nll(y_true, inputs, kernel, bias):
    r"""Per-sample NLL of binary labels under a logistic head, with an analytic gradient.

    .. math:: z = x^\top w + b,\quad
              L = \operatorname{softplus}(z) - y z
                = -[y \log \sigma(z) + (1 - y)\log(1 - \sigma(z))]

    .. math:: \frac{\partial L}{\partial z} = \sigma(z) - y,\quad
              \frac{\partial L}{\partial w} = (\sigma(z) - y)\, x,\quad
              \frac{\partial L}{\partial b} = \sigma(z) - y,\quad
              \frac{\partial L}{\partial x} = (\sigma(z) - y)\, w

    Args:
        y_true: labels in {0, 1} (or soft labels), shape `(N,)` or `(N, 1)`; no gradient.
        inputs: the head's inputs `x`, shape `(N, D)` (e.g. a `Dense(4)` layer's output): its
            gradient flows on by autodiff into the layers below.
        kernel: the head's weights, shape `(D, 1)` (a `Dense(1)` kernel) or `(D,)`.
        bias: the head's bias, shape `(1,)` or `()`.

    Returns shape `(N,)`. Use it where the head's weights are at hand, e.g. in a model's
    `compute_loss`: `logistic_nll(y, h, head.kernel, head.bias)`.

    Reference: Cox 1958; the gradient is the classical logistic-regression score, e.g. Bishop,
    Pattern Recognition and Machine Learning (2006), eq. (4.91).
    """
    w = ops.reshape(kernel, (-1,))
    z = ops.matmul(inputs, w) + ops.reshape(bias, ())
    y = _labels(y_true, z)
    value = ops.softplus(z) - y * z

    def grad_fn(upstream):
        r = upstream * (ops.sigmoid(z) - y)
        return (
            None,
            ops.expand_dims(r, -1) * ops.expand_dims(w, 0),
            ops.reshape(ops.matmul(r, inputs), ops.shape(kernel)),
            ops.reshape(ops.sum(r), ops.shape(bias)),
        )

    return value, grad_fn


@register
@custom_gradient
def logistic_nll_logits(y_true, logits):
    r"""Per-sample logistic NLL from the logit :math:`z`: :math:`\operatorname{softplus}(z) - y z`
    (averaged over the non-batch axes), with the analytic gradient :math:`\sigma(z) - y`.
    Equal to `binary_crossentropy(..., from_logits=True)`; this form exercises the custom
    gradient. Reference: as `logistic_nll`.
    """
    y = ops.cast(y_true, logits.dtype)
    value = ops.softplus(logits) - y * logits
    size = 1
    for s in logits.shape[1:]:
        size *= s

    def grad_fn(upstream):
        up = upstream
        for _ in logits.shape[1:]:
            up = ops.expand_dims(up, -1)
        return None, up * (ops.sigmoid(logits) - y) / size

    return per_sample_mean(value), grad_fn


class _GaussianPacked(PackedLoss):
    pack = 2


GaussianNLL = loss_class(gaussian_nll_packed, "GaussianNLL", base=_GaussianPacked)
PoissonNLL = loss_class(poisson_nll, "PoissonNLL")
LogisticNLL = loss_class(logistic_nll_logits, "LogisticNLL")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES, 'gaussian_nll_packed')

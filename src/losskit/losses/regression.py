r"""Regression losses: `mse`, `mae`, `huber`, `log_cosh`, `pinball`, `charbonnier`, `cauchy`,
`general_robust`, `mape`, `msle`, `smooth_l1`, `cosine_similarity`.

Every function takes `y_true`, `y_pred` of the same shape `(N, ...)` and returns one value per
sample, shape `(N,)`: the elementwise penalty of the residual `e = y_true - y_pred` averaged over
all non-batch axes (a 1-D input is one value per sample already). For `(N, d)` inputs this equals
the Keras built-ins, which average over the last axis.
"""

import math

from keras import ops

from losskit import domains as dom
from losskit.losses._common import (
    as_float,
    epsilon,
    family,
    loss_class,
    per_sample_mean,
    public,
    register,
)


def _residual(y_true, y_pred):
    return as_float(y_true, y_pred) - y_pred


@register
def mse(y_true, y_pred):
    r"""Mean squared error: :math:`\operatorname{mean}(e^2)`, `e = y_true - y_pred`.

    Reference: Gauss (1809), least squares. Keras: `keras.losses.mean_squared_error`.
    """
    return per_sample_mean(ops.square(_residual(y_true, y_pred)))


@register
def mae(y_true, y_pred):
    r"""Mean absolute error: :math:`\operatorname{mean}|e|`.

    Reference: P.-S. Laplace, "Mémoire sur la probabilité des causes par les événements" (1774),
    least absolute deviations. Keras: `keras.losses.mean_absolute_error`.
    """
    return per_sample_mean(ops.abs(_residual(y_true, y_pred)))


@register(domains=dict(delta=dom.nonnegative))
def huber(y_true, y_pred, delta=1.0):
    r"""Huber loss: :math:`\tfrac12 e^2` for :math:`|e| \le \delta`, else
    :math:`\delta(|e| - \tfrac12\delta)`. Both branches are exact; the `where` form (as in Keras)
    compiles to a faster gradient than :math:`\tfrac12 q^2 + \delta(|e| - q)`,
    :math:`q = \min(|e|, \delta)`, under XLA (2x under JAX, benchmarks/losses.py).

    Reference: P. J. Huber, "Robust Estimation of a Location Parameter", Ann. Math. Stat. 1964.
    Keras: `keras.losses.huber`.
    """
    e = _residual(y_true, y_pred)
    err = ops.abs(e)
    values = ops.where(err <= delta, 0.5 * ops.square(e), delta * (err - 0.5 * delta))
    return per_sample_mean(values)


@register
def log_cosh(y_true, y_pred):
    r"""Log-cosh: :math:`\log\cosh e = |e| + \operatorname{softplus}(-2|e|) - \log 2`.

    The right-hand form never overflows (`cosh` does for :math:`|e| > 89` in float32); its
    gradient is :math:`\tanh e`. Reference: Saleh & Saleh, "Statistical Properties of the log-cosh
    Loss Function Used in Machine Learning", arXiv:2208.04564. Keras: `keras.losses.log_cosh`.
    """
    e = _residual(y_true, y_pred)
    # |e| as a branch, not `abs`: autodiff takes abs'(0) = 0, which gives a second derivative of
    # 0 at e = 0 (the true one is 1). The softplus argument stays <= 0 in the branch taken.
    positive = e >= 0
    err = ops.where(positive, e, -e)
    return per_sample_mean(err + ops.softplus(-2.0 * err) - math.log(2.0))


@register(domains=dict(tau=dom.probability))
def pinball(y_true, y_pred, tau=0.5):
    r"""Pinball (quantile) loss for quantile level :math:`\tau \in (0, 1)`:
    :math:`\max(\tau e, (\tau - 1) e)`, `e = y_true - y_pred`. Minimised by the
    :math:`\tau`-quantile; :math:`\tau = 0.5` is half the MAE.

    Reference: Koenker & Bassett, "Regression Quantiles", Econometrica 1978.
    """
    err = _residual(y_true, y_pred)
    return per_sample_mean(ops.maximum(tau * err, (tau - 1.0) * err))


@register(domains=dict(epsilon=dom.positive))
def charbonnier(y_true, y_pred, epsilon=1e-3):
    r"""Charbonnier loss (smooth L1): :math:`\sqrt{e^2 + \epsilon^2}`.

    Reference: Charbonnier et al., "Two deterministic half-quadratic regularization algorithms for
    computed imaging", ICIP 1994; as used in Lai et al., "Deep Laplacian Pyramid Networks" (LapSRN),
    CVPR 2017.
    """
    err = _residual(y_true, y_pred)
    return per_sample_mean(ops.sqrt(ops.square(err) + epsilon**2))


@register(domains=dict(scale=dom.positive))
def cauchy(y_true, y_pred, scale=1.0):
    r"""Cauchy (Lorentzian) loss: :math:`\tfrac{c^2}{2}\log\!\left(1 + (e/c)^2\right)`, `c = scale`.

    Quadratic near 0, logarithmic in the tails (redescending influence). Reference: Black &
    Anandan, "The robust estimation of multiple motions", CVIU 1996; Barron 2019 (alpha = 0, up to
    the factor :math:`c^2`).
    """
    err = _residual(y_true, y_pred) / scale
    return per_sample_mean(0.5 * scale**2 * ops.log1p(ops.square(err)))


@register(domains=dict(alpha=dom.interval(infinite=True), scale=dom.positive))
def general_robust(y_true, y_pred, alpha=1.0, scale=1.0):
    r"""Barron's general and adaptive robust loss with shape :math:`\alpha` and scale :math:`c`:

    .. math:: \rho(e) = \frac{|\alpha - 2|}{\alpha}
              \left[\left(\frac{(e/c)^2}{|\alpha - 2|} + 1\right)^{\alpha/2} - 1\right]

    with its limits :math:`\tfrac12 (e/c)^2` (:math:`\alpha = 2`),
    :math:`\log(\tfrac12 (e/c)^2 + 1)` (:math:`\alpha = 0`),
    :math:`1 - \exp(-\tfrac12 (e/c)^2)` (:math:`\alpha = -\infty`) and
    :math:`\exp(\tfrac12 (e/c)^2) - 1` (:math:`\alpha = +\infty`; it overflows
    float32 for :math:`|e/c| > 13`). :math:`\alpha = 1` is the
    pseudo-Huber / Charbonnier loss :math:`\sqrt{(e/c)^2 + 1} - 1`. The bracket is computed as
    `expm1(alpha / 2 * log1p(z))`, accurate for small residuals.

    Reference: J. T. Barron, "A General and Adaptive Robust Loss Function", CVPR 2019.
    """
    alpha = float(alpha)
    sq = ops.square(_residual(y_true, y_pred) / scale)
    if alpha == 2.0:
        value = 0.5 * sq
    elif alpha == 0.0:
        value = ops.log1p(0.5 * sq)
    elif math.isinf(alpha) and alpha < 0:
        value = -ops.expm1(-0.5 * sq)
    elif math.isinf(alpha):  # the general form is inf/inf = NaN here
        value = ops.expm1(0.5 * sq)
    else:
        b = abs(alpha - 2.0)
        value = (b / alpha) * ops.expm1(0.5 * alpha * ops.log1p(sq / b))
    return per_sample_mean(value)


@register
def mape(y_true, y_pred):
    r"""Mean absolute percentage error: :math:`100 \operatorname{mean}(|e| / \max(|y|, \epsilon))`,
    :math:`\epsilon` = `keras.config.epsilon()` (so a target of 0 gives a large finite value).

    Reference: Hyndman & Koehler, "Another look at measures of forecast accuracy", IJF 2006.
    Keras: `keras.losses.mean_absolute_percentage_error`.
    """
    y_true = as_float(y_true, y_pred)
    scale = ops.maximum(ops.abs(y_true), epsilon())
    return 100.0 * per_sample_mean(ops.abs(y_true - y_pred) / scale)


@register
def msle(y_true, y_pred):
    r"""Mean squared logarithmic error:
    :math:`\operatorname{mean}(\log(1 + \max(p, \epsilon)) - \log(1 + \max(y, \epsilon)))^2`;
    inputs below :math:`\epsilon` (`keras.config.epsilon()`) are raised to it, as in Keras
    (`log1p` keeps small values accurate).

    Reference: used for targets spanning orders of magnitude, e.g. Kaggle RMSLE metrics; Keras:
    `keras.losses.mean_squared_logarithmic_error`.
    """
    y_true = as_float(y_true, y_pred)
    diff = ops.log1p(ops.maximum(y_pred, epsilon())) - ops.log1p(ops.maximum(y_true, epsilon()))
    return per_sample_mean(ops.square(diff))


@register(domains=dict(beta=dom.nonnegative))
def smooth_l1(y_true, y_pred, beta=1.0):
    r"""Smooth L1 loss: :math:`\tfrac{1}{2} e^2 / \beta` for :math:`|e| < \beta`, else
    :math:`|e| - \tfrac12 \beta` (`huber` divided by :math:`\beta`); ``beta=0`` is the L1 loss.

    Reference: R. Girshick, "Fast R-CNN", ICCV 2015. torch: `nn.SmoothL1Loss(beta=...)`.
    """
    e = _residual(y_true, y_pred)
    err = ops.abs(e)
    if beta == 0:
        return per_sample_mean(err)
    # The square of `e`, not of `|e|`: autodiff takes |e|' = sign(0) = 0 at e = 0, which would
    # make the second derivative there 0 instead of 1 / beta.
    return per_sample_mean(ops.where(err < beta, 0.5 * ops.square(e) / beta, err - 0.5 * beta))


@register(domains=dict(axis=dom.integer))
def cosine_similarity(y_true, y_pred, axis=-1):
    r"""Negative cosine similarity along `axis` (Keras's sign, so that lower is better):
    :math:`-\sum_k \hat y_k \hat p_k`, :math:`\hat x = x / \max(\lVert x \rVert, \epsilon)`,
    in :math:`[-1, 1]`; 0 when either vector is 0. Other non-batch axes are averaged.

    Placed with the regression losses: it compares a predicted vector with a target vector
    (direction regression). Reference: Keras `keras.losses.cosine_similarity`; torch:
    `-nn.CosineSimilarity(dim=-1)` (which bounds each norm separately the same way).
    """
    y_true = as_float(y_true, y_pred)

    def unit(x):
        sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
        return x * ops.rsqrt(ops.maximum(sq, epsilon() ** 2))

    return per_sample_mean(-ops.sum(unit(y_true) * unit(y_pred), axis=axis))


MSE = loss_class(mse, "MSE")
MAE = loss_class(mae, "MAE")
Huber = loss_class(huber, "Huber")
LogCosh = loss_class(log_cosh, "LogCosh")
Pinball = loss_class(pinball, "Pinball")
Charbonnier = loss_class(charbonnier, "Charbonnier")
Cauchy = loss_class(cauchy, "Cauchy")
GeneralRobust = loss_class(general_robust, "GeneralRobust")
MAPE = loss_class(mape, "MAPE")
MSLE = loss_class(msle, "MSLE")
SmoothL1 = loss_class(smooth_l1, "SmoothL1")
CosineSimilarity = loss_class(cosine_similarity, "CosineSimilarity")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

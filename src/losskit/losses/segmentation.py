r"""Segmentation losses: `dice`, `tversky`, `focal_tversky`, `lovasz_hinge`.

``y_true`` and ``y_pred`` have the same shape ``(N, ...)`` (e.g. ``(N, H, W)`` or
``(N, H, W, C)``); the value is **per image**: shape ``(N,)``, all non-batch axes reduced.
`dice`, `tversky` and `focal_tversky` take probabilities (apply a sigmoid/softmax first) and
targets in ``[0, 1]``; with ``per_class=True`` the last axis is the class axis, the overlap is
computed per class and averaged over classes. `lovasz_hinge` takes logits and binary targets.
"""

from keras import ops

from losskit.losses._common import family, loss_class, public, register


def _axes(x, per_class):
    """The axes to sum over: everything but the batch (and the class axis if ``per_class``)."""
    last = len(x.shape) - 1 if per_class else len(x.shape)
    if last < 1:
        raise ValueError(
            f"segmentation losses need a batch axis plus at least one "
            f"{'spatial axis and a class' if per_class else 'pixel'} axis, "
            f"got shape {tuple(x.shape)}"
        )
    return tuple(range(1, last))


def _mean_over_classes(values, per_class):
    return ops.mean(values, axis=-1) if per_class else values


def overlap_counts(y_true, y_pred, per_class=False):
    """Soft true positives, false positives and false negatives per image (and class).

    :math:`TP = \\sum p g`, :math:`FP = \\sum p (1 - g)`, :math:`FN = \\sum (1 - p) g`.
    """
    axes = _axes(y_pred, per_class)
    y_true = ops.cast(y_true, y_pred.dtype)
    tp = ops.sum(y_pred * y_true, axis=axes)
    fp = ops.sum(y_pred * (1.0 - y_true), axis=axes)
    fn = ops.sum((1.0 - y_pred) * y_true, axis=axes)
    return tp, fp, fn


@register
def dice(y_true, y_pred, smooth=1.0, squared=False, per_class=False):
    r"""Soft Dice loss per image.

    .. math:: 1 - \frac{2 \sum p g + s}{\sum p + \sum g + s}
       \quad\text{or, with ``squared=True`` (Milletari et al.),}\quad
       1 - \frac{2 \sum p g + s}{\sum p^2 + \sum g^2 + s}

    In :math:`[0, 1]` for :math:`p, g \in [0, 1]`; an image whose target and prediction are both
    empty has loss 0 (for ``smooth > 0``). ``smooth=0`` matches `keras.losses.dice` with
    ``axis`` = the non-batch axes (up to its ``epsilon``).

    Reference: F. Milletari, N. Navab, S.-A. Ahmadi, "V-Net: Fully Convolutional Neural Networks
    for Volumetric Medical Image Segmentation", 3DV 2016.
    """
    axes = _axes(y_pred, per_class)
    y_true = ops.cast(y_true, y_pred.dtype)
    inter = ops.sum(y_true * y_pred, axis=axes)
    if squared:
        denom = ops.sum(ops.square(y_true), axis=axes) + ops.sum(ops.square(y_pred), axis=axes)
    else:
        denom = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    score = (2.0 * inter + smooth) / (denom + smooth)
    return _mean_over_classes(1.0 - score, per_class)


def _tversky_index(y_true, y_pred, alpha, beta, smooth, per_class):
    tp, fp, fn = overlap_counts(y_true, y_pred, per_class)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


@register
def tversky(y_true, y_pred, alpha=0.3, beta=0.7, smooth=1.0, per_class=False):
    r"""Tversky loss per image: :math:`1 - TI`,

    .. math:: TI = \frac{TP + s}{TP + \alpha\, FP + \beta\, FN + s},\quad
       TP = \sum p g,\ FP = \sum p(1-g),\ FN = \sum (1-p) g .

    ``alpha`` weighs false positives, ``beta`` false negatives (paper's choice 0.3 / 0.7);
    ``alpha = beta = 0.5`` is `dice`. Note `keras.losses.Tversky` puts its ``alpha`` on
    :math:`\sum (1-p) g` (false negatives): ``keras.losses.tversky(alpha=a, beta=b)`` equals
    this loss with ``alpha=b, beta=a, smooth=0``. In :math:`[0, 1]` for ``alpha, beta >= 0``.

    Reference: S. S. M. Salehi, D. Erdogmus, A. Gholipour, "Tversky loss function for image
    segmentation using 3D fully convolutional deep networks", MLMI 2017 (arXiv:1706.05721).
    """
    index = _tversky_index(y_true, y_pred, alpha, beta, smooth, per_class)
    return _mean_over_classes(1.0 - index, per_class)


@register
def focal_tversky(
    y_true, y_pred, alpha=0.3, beta=0.7, gamma=4.0 / 3.0, smooth=1.0, per_class=False
):
    r"""Focal Tversky loss per image: :math:`(1 - TI)^{1/\gamma}` (`tversky` for :math:`TI`).

    The paper recommends :math:`\gamma \in [1, 3]` (4/3 in its experiments). With
    :math:`1/\gamma < 1` the derivative is unbounded as :math:`TI \to 1`; below
    :math:`1 - TI = 10^{-6}` the power is replaced by its chord to 0, so the value is 0 for a
    perfect prediction and value and gradient stay finite. With ``per_class`` the per-class terms
    are averaged (the paper sums them).

    Reference: N. Abraham, N. M. Khan, "A Novel Focal Tversky Loss Function with Improved
    Attention U-Net for Lesion Segmentation", ISBI 2019 (arXiv:1810.07842).
    """
    index = _tversky_index(y_true, y_pred, alpha, beta, smooth, per_class)
    base = 1.0 - index
    eps = 1e-6
    power = ops.power(ops.maximum(base, eps), 1.0 / gamma)
    linear = base * eps ** (1.0 / gamma - 1.0)  # the chord from 0 to eps: finite slope
    return _mean_over_classes(ops.where(base > eps, power, linear), per_class)


def lovasz_gradient(gt_sorted):
    r"""Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman, alg. 1).

    ``gt_sorted``: binary targets, shape ``(N, P)``, sorted by decreasing error.
    """
    gts = ops.sum(gt_sorted, axis=-1, keepdims=True)
    intersection = gts - ops.cumsum(gt_sorted, axis=-1)
    union = gts + ops.cumsum(1.0 - gt_sorted, axis=-1)  # >= 1 everywhere
    jaccard = 1.0 - intersection / union
    return ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)


@register
def lovasz_hinge(y_true, y_pred):
    r"""Binary Lovász hinge loss per image (Berman et al. 2018), ``y_pred`` = logits.

    With signs :math:`\sigma = 2g - 1`, hinge errors :math:`e = 1 - \sigma\, y` sorted in
    decreasing order :math:`e_{\pi(1)} \ge \dots`, and :math:`\Delta J` the Lovász gradient of the
    Jaccard loss for that order (`lovasz_gradient`):

    .. math:: \ell = \sum_k \max(0, e_{\pi(k)})\, \Delta J_k .

    A convex surrogate of :math:`1 - \text{IoU}`; non-negative, piecewise linear in the logits
    (differentiable except where errors tie or cross 0). Linear in the logits, so finite for
    any finite logits.

    Reference: M. Berman, A. Rannen Triki, M. B. Blaschko, "The Lovász-Softmax loss: A tractable
    surrogate for the optimization of the intersection-over-union measure in neural networks",
    CVPR 2018.
    """
    n = ops.shape(y_pred)[0]
    logits = ops.reshape(y_pred, (n, -1))
    gt = ops.reshape(ops.cast(y_true, y_pred.dtype), (n, -1))
    errors = 1.0 - logits * (2.0 * gt - 1.0)
    order = ops.argsort(-ops.stop_gradient(errors), axis=-1)
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    gt_sorted = ops.take_along_axis(gt, order, axis=-1)
    return ops.sum(ops.relu(errors_sorted) * lovasz_gradient(gt_sorted), axis=-1)


Dice = loss_class(dice, "Dice")
Tversky = loss_class(tversky, "Tversky")
FocalTversky = loss_class(focal_tversky, "FocalTversky")
LovaszHinge = loss_class(lovasz_hinge, "LovaszHinge")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

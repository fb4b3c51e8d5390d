r"""Segmentation losses: `dice`, `tversky`, `focal_tversky`, `generalized_dice`, `lovasz_hinge`.

``y_true`` and ``y_pred`` have the same shape ``(N, ...)`` (e.g. ``(N, H, W)`` or
``(N, H, W, C)``); the value is **per image**: shape ``(N,)``, all non-batch axes reduced.
`dice`, `tversky` and `focal_tversky` take probabilities (apply a sigmoid/softmax first) and
targets in ``[0, 1]``; with ``per_class=True`` the last axis is the class axis, the overlap is
computed per class and averaged over classes. `lovasz_hinge` takes logits and binary targets.

Every one takes ``ignore_index`` (default None): pixels whose ``y_true`` equals it (e.g. 255 for
"void") are left out of every sum, as if absent from the image. With a class axis
(``per_class=True``, `generalized_dice`) a pixel is left out when any of its class entries equals
``ignore_index``.
"""

from keras import ops

from losskit import domains as dom
from losskit.losses._common import family, loss_class, public, register

_IGNORE = dom.optional(dom.integer)


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


def _drop_ignored(y_true, y_pred, ignore_index, class_axis):
    """Zeroes ignored pixels in both tensors (a zero pixel adds nothing to TP, FP, FN or any sum
    of p, g, p g); returns ``(y_true, y_pred, valid)``, ``valid`` of the shape of ``y_pred``."""
    y_true = ops.cast(y_true, y_pred.dtype)
    if ignore_index is None:
        return y_true, y_pred, None
    valid = ops.not_equal(y_true, ops.cast(ignore_index, y_true.dtype))
    if class_axis:
        valid = ops.all(valid, axis=-1, keepdims=True) & ops.ones_like(y_pred, dtype="bool")
    zero = ops.zeros_like(y_pred)
    return ops.where(valid, y_true, zero), ops.where(valid, y_pred, zero), valid


def _mean_over_classes(values, per_class):
    return ops.mean(values, axis=-1) if per_class else values


def overlap_counts(y_true, y_pred, per_class=False, ignore_index=None):
    """Soft true positives, false positives and false negatives per image (and class).

    :math:`TP = \\sum p g`, :math:`FP = \\sum p (1 - g)`, :math:`FN = \\sum (1 - p) g`.
    """
    axes = _axes(y_pred, per_class)
    y_true, y_pred, _ = _drop_ignored(y_true, y_pred, ignore_index, per_class)
    tp = ops.sum(y_pred * y_true, axis=axes)
    fp = ops.sum(y_pred * (1.0 - y_true), axis=axes)
    fn = ops.sum((1.0 - y_pred) * y_true, axis=axes)
    return tp, fp, fn


@register(domains=dict(
    smooth=dom.nonnegative, squared=dom.boolean, per_class=dom.boolean,
    ignore_index=_IGNORE))
def dice(y_true, y_pred, smooth=1.0, squared=False, per_class=False, ignore_index=None):
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
    y_true, y_pred, _ = _drop_ignored(y_true, y_pred, ignore_index, per_class)
    inter = ops.sum(y_true * y_pred, axis=axes)
    if squared:
        denom = ops.sum(ops.square(y_true), axis=axes) + ops.sum(ops.square(y_pred), axis=axes)
    else:
        denom = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    score = (2.0 * inter + smooth) / (denom + smooth)
    return _mean_over_classes(1.0 - score, per_class)


def _tversky_index(y_true, y_pred, alpha, beta, smooth, per_class, ignore_index):
    tp, fp, fn = overlap_counts(y_true, y_pred, per_class, ignore_index)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


@register(domains=dict(
    alpha=dom.nonnegative, beta=dom.nonnegative, smooth=dom.nonnegative,
    per_class=dom.boolean, ignore_index=_IGNORE))
def tversky(y_true, y_pred, alpha=0.3, beta=0.7, smooth=1.0, per_class=False, ignore_index=None):
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
    index = _tversky_index(y_true, y_pred, alpha, beta, smooth, per_class, ignore_index)
    return _mean_over_classes(1.0 - index, per_class)


@register(domains=dict(
    alpha=dom.nonnegative, beta=dom.nonnegative, gamma=dom.positive,
    smooth=dom.nonnegative, per_class=dom.boolean, ignore_index=_IGNORE))
def focal_tversky(
    y_true,
    y_pred,
    alpha=0.3,
    beta=0.7,
    gamma=4.0 / 3.0,
    smooth=1.0,
    per_class=False,
    ignore_index=None,
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
    index = _tversky_index(y_true, y_pred, alpha, beta, smooth, per_class, ignore_index)
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


@register(domains=dict(ignore_index=_IGNORE))
def lovasz_hinge(y_true, y_pred, ignore_index=None):
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
    y_true, y_pred, valid = _drop_ignored(y_true, y_pred, ignore_index, False)
    logits = ops.reshape(y_pred, (n, -1))
    gt = ops.reshape(y_true, (n, -1))
    errors = 1.0 - logits * (2.0 * gt - 1.0)
    if valid is not None:
        # Ignored pixels (g = 0) go below every other error: last in the order, they change no
        # other pixel's Jaccard gradient, and max(0, e) = 0 removes their own term.
        floor = ops.stop_gradient(ops.min(errors)) - 1.0
        errors = ops.where(ops.reshape(valid, (n, -1)), errors, ops.minimum(floor, -1.0))
    order = ops.argsort(-ops.stop_gradient(errors), axis=-1)
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    gt_sorted = ops.take_along_axis(gt, order, axis=-1)
    return ops.sum(ops.relu(errors_sorted) * lovasz_gradient(gt_sorted), axis=-1)


@register(domains=dict(smooth=dom.nonnegative, ignore_index=_IGNORE))
def generalized_dice(y_true, y_pred, smooth=1e-5, ignore_index=None):
    r"""Generalised Dice loss per image, the last axis holding `C` classes (one-hot or soft
    targets, probabilities):

    .. math:: 1 - \frac{2 \sum_c w_c \sum_i p_{ic} g_{ic} + s}
                       {\sum_c w_c \sum_i (p_{ic} + g_{ic}) + s},
              \qquad w_c = 1 / \bigl(\textstyle\sum_i g_{ic}\bigr)^2 .

    A class absent from an image's target (infinite weight) gets the largest weight of the
    classes present (MONAI's rule); if none is present, every weight is 0 and the loss is
    :math:`1 - s/s = 0` (MONAI's value with its equal default smoothing terms), with gradient 0.
    In :math:`[0, 1]`.

    Reference: C. H. Sudre, W. Li, T. Vercauteren, S. Ourselin, M. J. Cardoso, "Generalised Dice
    overlap as a deep learning loss function for highly unbalanced segmentations", DLMIA 2017.
    MONAI: `monai.losses.GeneralizedDiceLoss` (same weights and absent-class rule).
    """
    axes = _axes(y_pred, True)
    y_true, y_pred, _ = _drop_ignored(y_true, y_pred, ignore_index, True)
    counts = ops.sum(y_true, axis=axes)
    present = counts > 0
    raw = 1.0 / ops.square(ops.where(present, counts, 1.0))
    largest = ops.max(ops.where(present, raw, 0.0), axis=-1, keepdims=True)
    weights = ops.where(present, raw, largest)
    weights = ops.stop_gradient(weights)  # depends on the targets only
    inter = ops.sum(weights * ops.sum(y_true * y_pred, axis=axes), axis=-1)
    denom = ops.sum(weights * ops.sum(y_true + y_pred, axis=axes), axis=-1)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


Dice = loss_class(dice, "Dice")
Tversky = loss_class(tversky, "Tversky")
FocalTversky = loss_class(focal_tversky, "FocalTversky")
LovaszHinge = loss_class(lovasz_hinge, "LovaszHinge")
GeneralizedDice = loss_class(generalized_dice, "GeneralizedDice")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

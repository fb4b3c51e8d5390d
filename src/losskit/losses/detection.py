r"""Bounding-box regression losses: `giou`, `ciou`.

Boxes are corner coordinates ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2`` on the last
axis (size 4): ``y_true`` and ``y_pred`` of shape ``(N, 4)`` or ``(N, M, 4)`` (``M`` boxes per
sample). The value is one per sample, shape ``(N,)``: the per-box loss averaged over the ``M``
boxes. Areas and the enclosing box's squared diagonal get ``eps`` added to their denominators, so
degenerate (zero-area) boxes give finite values and gradients.
"""

import math

from keras import ops

from losskit import domains as dom
from losskit.losses._common import family, loss_class, per_sample_mean, public, register


def _check(name, y_true, y_pred):
    if y_pred.shape[-1] != 4 or len(y_pred.shape) < 2:
        raise ValueError(
            f"{name}: boxes must have shape (N, 4) or (N, M, 4) as (x1, y1, x2, y2), "
            f"got y_pred of shape {tuple(y_pred.shape)}"
        )
    return ops.cast(y_true, y_pred.dtype)


def _corners(b):
    return b[..., 0], b[..., 1], b[..., 2], b[..., 3]


def _iou_parts(y_true, y_pred, eps):
    """IoU, the enclosing box's corners and both boxes' corners."""
    tx1, ty1, tx2, ty2 = _corners(y_true)
    px1, py1, px2, py2 = _corners(y_pred)
    inter_w = ops.relu(ops.minimum(tx2, px2) - ops.maximum(tx1, px1))
    inter_h = ops.relu(ops.minimum(ty2, py2) - ops.maximum(ty1, py1))
    inter = inter_w * inter_h
    union = (tx2 - tx1) * (ty2 - ty1) + (px2 - px1) * (py2 - py1) - inter
    iou = inter / (union + eps)
    enclosing = (
        ops.minimum(tx1, px1),
        ops.minimum(ty1, py1),
        ops.maximum(tx2, px2),
        ops.maximum(ty2, py2),
    )
    return iou, union, enclosing


@register(domains=dict(eps=dom.positive))
def giou(y_true, y_pred, eps=1e-7):
    r"""Generalized IoU loss :math:`1 - \mathrm{GIoU}` for boxes ``(x1, y1, x2, y2)``:

    .. math:: \mathrm{GIoU} = \mathrm{IoU} - \frac{|C| - |A \cup B|}{|C|},

    :math:`C` the smallest box enclosing both. In :math:`[0, 2]`; unlike :math:`1 - \mathrm{IoU}`
    it still has a gradient when the boxes do not overlap.

    Reference: H. Rezatofighi et al., "Generalized Intersection over Union: A Metric and A Loss
    for Bounding Box Regression", CVPR 2019. keras-cv: `keras_cv.losses.GIoULoss`
    (``bounding_box_format="xyxy"``); torch: `torchvision.ops.generalized_box_iou_loss`.
    """
    y_true = _check("giou", y_true, y_pred)
    iou, union, (cx1, cy1, cx2, cy2) = _iou_parts(y_true, y_pred, eps)
    area_c = (cx2 - cx1) * (cy2 - cy1)
    return per_sample_mean(1.0 - iou + (area_c - union) / (area_c + eps))


@register(domains=dict(eps=dom.positive))
def ciou(y_true, y_pred, eps=1e-7):
    r"""Complete IoU loss for boxes ``(x1, y1, x2, y2)``:

    .. math:: 1 - \mathrm{IoU} + \frac{\rho^2}{c^2} + \alpha v,\quad
              v = \frac{4}{\pi^2}\Bigl(\arctan\frac{w^{gt}}{h^{gt}} - \arctan\frac{w}{h}\Bigr)^2,
              \quad \alpha = \frac{v}{(1 - \mathrm{IoU}) + v},

    :math:`\rho` the distance between the box centres, :math:`c` the diagonal of the enclosing
    box. :math:`\alpha` is a trade-off weight and gets no gradient (as in the authors' code and
    torchvision). Non-negative (at most 5 + some :math:`\alpha v \le 1`).

    Reference: Z. Zheng et al., "Enhancing Geometric Factors in Model Learning and Inference for
    Object Detection and Instance Segmentation" (CIoU), IEEE T-Cybernetics 2021 (AAAI 2020).
    keras-cv: `keras_cv.losses.CIoULoss`; torch: `torchvision.ops.complete_box_iou_loss`.
    """
    y_true = _check("ciou", y_true, y_pred)
    iou, _, (cx1, cy1, cx2, cy2) = _iou_parts(y_true, y_pred, eps)
    tx1, ty1, tx2, ty2 = _corners(y_true)
    px1, py1, px2, py2 = _corners(y_pred)
    diag = ops.square(cx2 - cx1) + ops.square(cy2 - cy1) + eps
    centre = ops.square((px1 + px2 - tx1 - tx2) * 0.5) + ops.square((py1 + py2 - ty1 - ty2) * 0.5)
    # eps in the ratio keeps value and gradient finite for zero-height boxes.
    angle = ops.arctan((tx2 - tx1) / (ty2 - ty1 + eps)) - ops.arctan(
        (px2 - px1) / (py2 - py1 + eps)
    )
    v = (4.0 / math.pi**2) * ops.square(angle)
    alpha = ops.stop_gradient(v / (1.0 - iou + v + eps))
    return per_sample_mean(1.0 - iou + centre / diag + alpha * v)


GIoU = loss_class(giou, "GIoU")
CIoU = loss_class(ciou, "CIoU")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

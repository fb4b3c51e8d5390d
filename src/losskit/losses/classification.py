r"""Classification losses: `categorical_crossentropy`, `sparse_categorical_crossentropy`,
`binary_crossentropy`, `focal`, `poly1`, `multiclass_hinge`, `sparsemax_loss`, `hinge`,
`squared_hinge`, `generalized_cross_entropy`, `weighted_kappa`.

Conventions follow Keras: `y_pred` holds probabilities unless `from_logits=True`; the class axis
is the last one. Logits go through `log_softmax` / `softplus` forms, exact for any finite logit
(:math:`\pm 10^4` included). Probabilities are clipped to :math:`[\epsilon, 1 - \epsilon]`
(`keras.config.epsilon()`) before the log, as Keras does, so predictions of exactly 0 and 1 give a
finite value and gradient. Multi-class losses return one value per sample (class axis reduced:
shape `y_pred.shape[:-1]`); binary losses average over the non-batch axes (shape `(N,)`).
"""

import keras
import numpy as np
from keras import ops

from losskit import _contract
from losskit import domains as dom
from losskit.losses._common import (
    as_float,
    epsilon,
    family,
    loss_class,
    masked,
    neg_log_binary,
    per_sample_mean,
    public,
    register,
)

# Keras's label smoothing, "a float in [0, 1]": s = 1 replaces every target by the uniform
# distribution (Keras accepts it, and the loss stays finite).
SMOOTHING = dom.probability


def _log_probs(y_pred, from_logits, axis=-1):
    """Log-probabilities over `axis`: log_softmax of logits, or the log of clipped normalised
    probabilities (Keras's convention for probability inputs)."""
    if from_logits:
        return ops.log_softmax(y_pred, axis=axis)
    probs = y_pred / ops.sum(y_pred, axis=axis, keepdims=True)
    return ops.log(ops.clip(probs, epsilon(), 1.0 - epsilon()))


def _weighted_sum(weights, log_p, axis=-1):
    """`sum_k w_k log p_k` with `0 * log 0 = 0`: a class masked with a -inf logit adds nothing
    where its weight is 0 (+inf where it is not), and its gradient is 0, not NaN."""
    return ops.sum(weights * ops.where(weights != 0, log_p, 0.0), axis=axis)


def _smooth(y_true, label_smoothing, num_classes):
    if label_smoothing:
        return y_true * (1.0 - label_smoothing) + label_smoothing / num_classes
    return y_true


@register(domains=dict(from_logits=dom.boolean, label_smoothing=SMOOTHING))
def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    r"""Cross-entropy with one-hot (or soft) targets:
    :math:`-\sum_k y_k \log p_k`, with :math:`p = \operatorname{softmax}(z)` for logits
    (computed as `log_softmax`) and label smoothing :math:`y \leftarrow (1 - s) y + s / K`.

    Reference: Goodfellow, Bengio & Courville, Deep Learning (2016) §6.2.2; label smoothing:
    Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016.
    Keras: `keras.losses.categorical_crossentropy`.
    """
    y_true = _smooth(as_float(y_true, y_pred), label_smoothing, y_pred.shape[-1])
    if from_logits:  # TensorFlow's fused softmax-cross-entropy kernel: 1.7x faster fwd+bwd there
        # The kernel computes 0 * inf = NaN for a -inf (masked) logit. The lowest finite float
        # has the same softmax (exp underflows to 0) and gives 0 * finite = 0; only a masked
        # target, whose loss is +inf, must then be restored.
        lowest = float(np.finfo(keras.backend.standardize_dtype(y_pred.dtype)).min)
        masked = y_pred == float("-inf")
        values = ops.categorical_crossentropy(
            y_true, ops.maximum(y_pred, lowest), from_logits=True
        )
        masked_target = ops.any(ops.logical_and(masked, y_true != 0), axis=-1)
        return ops.where(masked_target, float("inf"), values)
    return -_weighted_sum(y_true, _log_probs(y_pred, from_logits))


@register(domains=dict(
    from_logits=dom.boolean, label_smoothing=SMOOTHING,
    ignore_index=dom.optional(dom.integer)), shapes="sparse")
def sparse_categorical_crossentropy(
    y_true, y_pred, from_logits=False, label_smoothing=0.0, ignore_index=None
):
    r"""Cross-entropy with integer class indices `y_true` of shape `y_pred.shape[:-1]`:
    :math:`-\log p_{y}` (with label smoothing,
    :math:`-(1-s)\log p_y - \tfrac{s}{K}\sum_k \log p_k`).

    Samples whose label equals `ignore_index` get loss 0 and are masked out of the Loss class's
    reduction (the mean is over the remaining samples), like `ignore_class` in Keras and
    `ignore_index` in PyTorch. Reference: as `categorical_crossentropy`.
    Keras: `keras.losses.sparse_categorical_crossentropy`.
    """
    num_classes = y_pred.shape[-1]
    invalid = _contract.invalid_labels(
        "loss 'sparse_categorical_crossentropy'", y_true, num_classes, ignore_index
    )
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == len(y_pred.shape) and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, -1)
    valid = None
    if ignore_index is not None:
        valid = ops.not_equal(labels, ignore_index)
        labels = ops.where(valid, labels, ops.zeros_like(labels))
    log_p = _log_probs(y_pred, from_logits)
    onehot = _smooth(
        ops.one_hot(labels, num_classes, dtype=y_pred.dtype), label_smoothing, num_classes
    )
    values = _contract.nan_where(invalid, -_weighted_sum(onehot, log_p))
    if valid is not None:
        values = masked(ops.where(valid, values, ops.zeros_like(values)), valid)
    return values


@register(domains=dict(
    from_logits=dom.boolean, label_smoothing=SMOOTHING,
    pos_weight=dom.nonnegative))
def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, pos_weight=1.0):
    r"""Binary cross-entropy with a positive-class weight :math:`w_+`:
    :math:`w_+\, y \,(-\log p) + (1 - y)(-\log(1 - p))`, averaged over the non-batch axes.
    For logits, :math:`-\log p = \operatorname{softplus}(-z)` and
    :math:`-\log(1-p) = \operatorname{softplus}(z)`, exact for any :math:`z`.
    Label smoothing: :math:`y \leftarrow (1 - s) y + s/2`.

    Reference: Cox, "The regression analysis of binary sequences", JRSS-B 1958; `pos_weight` as in
    `torch.nn.BCEWithLogitsLoss` / `tf.nn.weighted_cross_entropy_with_logits`.
    Keras: `keras.losses.binary_crossentropy` (for `pos_weight=1`).
    """
    y_true = _smooth(as_float(y_true, y_pred), label_smoothing, 2)
    if from_logits:
        # softplus(-z) and softplus(z) share log(1 + e^-|z|): one exp and one log1p, not two.
        # |z| and max(z, 0) take the same branch (z >= 0), as in TensorFlow's
        # sigmoid_cross_entropy_with_logits: `abs` and `relu` would each take a derivative of 0
        # at z = 0 and give a gradient of 0 there instead of sigmoid(0) - y.
        positive = y_pred >= 0
        shared = ops.log1p(ops.exp(ops.where(positive, -y_pred, y_pred)))
        neg_log_p = ops.where(positive, 0.0, -y_pred) + shared  # softplus(-z)
        neg_log_q = ops.where(positive, y_pred, 0.0) + shared  # softplus(z)
    else:
        neg_log_p, neg_log_q = neg_log_binary(y_pred, from_logits)
    return per_sample_mean(pos_weight * y_true * neg_log_p + (1.0 - y_true) * neg_log_q)


@register(domains=dict(
    # Any finite alpha, as Keras's focal losses take it (alpha > 1 in binary mode gives the
    # negatives a negative weight there too).
    gamma=dom.nonnegative, alpha=dom.optional(dom.finite), from_logits=dom.boolean,
    mode=dom.one_of("binary", "categorical")))
def focal(y_true, y_pred, gamma=2.0, alpha=None, from_logits=False, mode="binary"):
    r"""Focal loss: cross-entropy down-weighted on well-classified examples by
    :math:`(1 - p_t)^\gamma`.

    - `mode="binary"` (sigmoid outputs, averaged over the non-batch axes):
      :math:`\alpha_t (1 - p_t)^\gamma\, \mathrm{BCE}`, with
      :math:`p_t = y p + (1 - y)(1 - p)` and :math:`\alpha_t = y\alpha + (1 - y)(1 - \alpha)`
      (no class balancing when `alpha is None`).
    - `mode="categorical"` (softmax over the last axis):
      :math:`-\sum_k \alpha\, y_k (1 - p_k)^\gamma \log p_k` (`alpha=None` means 1).

    `gamma >= 1` keeps the gradient finite at saturated predictions. Reference: Lin et al., "Focal
    Loss for Dense Object Detection", ICCV 2017. Keras: `keras.losses.binary_focal_crossentropy`
    (`apply_class_balancing=alpha is not None`), `keras.losses.categorical_focal_crossentropy`.
    """
    y_true = as_float(y_true, y_pred)
    if mode == "categorical":
        log_p = _log_probs(y_pred, from_logits)
        weight = ops.power(1.0 - ops.exp(log_p), gamma)
        if alpha is not None:
            weight = alpha * weight
        return -_weighted_sum(weight * y_true, log_p)
    neg_log_p, neg_log_q = neg_log_binary(y_pred, from_logits)
    if from_logits:  # 1 - sigmoid(z) = sigmoid(-z), exact in the saturated tail
        p, one_minus_p = ops.sigmoid(y_pred), ops.sigmoid(-y_pred)
    else:
        p = ops.clip(y_pred, epsilon(), 1.0 - epsilon())
        one_minus_p = 1.0 - p
    one_minus_pt = y_true * one_minus_p + (1.0 - y_true) * p
    bce = y_true * neg_log_p + (1.0 - y_true) * neg_log_q
    values = ops.power(one_minus_pt, gamma) * bce
    if alpha is not None:
        values = (y_true * alpha + (1.0 - y_true) * (1.0 - alpha)) * values
    return per_sample_mean(values)


@register(domains=dict(
    epsilon=dom.interval(-1), from_logits=dom.boolean, label_smoothing=SMOOTHING))
def poly1(y_true, y_pred, epsilon=1.0, from_logits=False, label_smoothing=0.0):
    r"""Poly-1 loss: cross-entropy plus :math:`\epsilon (1 - p_t)`,
    :math:`p_t = \sum_k y_k p_k` (one-hot or soft targets over the last axis).
    `epsilon=0` is the cross-entropy.

    Reference: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions", ICLR 2022.
    """
    y_true = _smooth(as_float(y_true, y_pred), label_smoothing, y_pred.shape[-1])
    log_p = _log_probs(y_pred, from_logits)
    p_t = ops.sum(y_true * ops.exp(log_p), axis=-1)
    return -_weighted_sum(y_true, log_p) + epsilon * (1.0 - p_t)


@register(domains=dict(margin=dom.nonnegative))
def multiclass_hinge(y_true, y_pred, margin=1.0):
    r"""Multi-class hinge loss of Crammer & Singer on scores :math:`s` with one-hot targets:
    :math:`\max(0,\ m + \max_{j \ne y} s_j - s_y)`.

    Unlike `keras.losses.categorical_hinge` (which takes :math:`\max_j (1 - y_j) s_j` and so
    treats a wrong-class score below 0 as 0), the maximum runs over the wrong classes only.
    Reference: Crammer & Singer, "On the Algorithmic Implementation of Multiclass Kernel-based
    Vector Machines", JMLR 2001.
    """
    y_true = as_float(y_true, y_pred)
    correct = ops.sum(y_true * y_pred, axis=-1)
    # -inf masks the true class in the same pass as the max (no extra min-reduction pass).
    wrong = ops.max(ops.where(y_true > 0, float("-inf"), y_pred), axis=-1)
    return ops.relu(margin + wrong - correct)


def sparsemax(logits, axis=-1):
    r"""Sparsemax: the Euclidean projection of the logits onto the probability simplex,
    :math:`\operatorname{sparsemax}(z)_j = \max(z_j - \tau(z), 0)`.

    The threshold is found by sorting; the support is then held fixed (its gradient is zero almost
    everywhere) and :math:`\tau = (\sum_{j \in S} z_j - 1) / |S|` recomputed differentiably.
    Reference: Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016.
    """
    logits = ops.convert_to_tensor(logits)  # NumPy input: torch cannot mix it with tensors
    support = _sparsemax_support(logits, axis)
    tau = _sparsemax_tau(logits, support, axis)
    return ops.relu(logits - tau)


def _sparsemax_support(z, axis=-1):
    z = ops.stop_gradient(z)
    z = z - ops.max(z, axis=axis, keepdims=True)
    z_sorted = ops.flip(ops.sort(z, axis=axis), axis=axis)
    k = ops.cast(ops.arange(1, z.shape[axis] + 1), z.dtype)
    shape = [1] * len(z.shape)
    shape[axis] = z.shape[axis]
    k = ops.reshape(k, shape)
    in_support = ops.cast(1.0 + k * z_sorted > ops.cumsum(z_sorted, axis=axis), z.dtype)
    size = ops.sum(in_support, axis=axis, keepdims=True)
    tau = (ops.sum(in_support * z_sorted, axis=axis, keepdims=True) - 1.0) / size
    return ops.cast(z > tau, z.dtype)


def _sparsemax_tau(z, support, axis=-1):
    size = ops.sum(support, axis=axis, keepdims=True)
    return (ops.sum(support * z, axis=axis, keepdims=True) - 1.0) / size


@register
def sparsemax_loss(y_true, y_pred):
    r"""Sparsemax loss on logits :math:`z` with target distribution :math:`y` (one-hot or soft):

    .. math:: L(z, y) = -y^\top z + \tfrac12 \sum_{j \in S(z)} (z_j^2 - \tau(z)^2)
              + \tfrac12 \lVert y \rVert^2

    the sparsemax analogue of cross-entropy: :math:`L \ge 0`, :math:`\nabla_z L =
    \operatorname{sparsemax}(z) - y`. Evaluated on :math:`z - \max z` (the loss is
    shift-invariant), so logits of :math:`\pm 10^4` lose no precision; the quadratic term is
    :math:`\sum_S (z_j - \tau)(z_j + \tau)`. Reference: Martins & Astudillo, "From Softmax to
    Sparsemax", ICML 2016, eq. (16)-(18).
    """
    y_true = as_float(y_true, y_pred)
    z = y_pred - ops.stop_gradient(ops.max(y_pred, axis=-1, keepdims=True))
    # A -inf (masked) logit is never in the support; any value below max(z) - 1 <= tau keeps it
    # out, and a finite one keeps 0 * inf out of the sums (values of TF Addons' sparsemax_loss).
    finite_z = ops.where(z == float("-inf"), -2.0, z)
    support = _sparsemax_support(finite_z)
    tau = _sparsemax_tau(finite_z, support)
    quad = ops.sum(support * (finite_z - tau) * (finite_z + tau), axis=-1)
    linear = _weighted_sum(y_true, z)  # +inf when a target class is masked
    return -linear + 0.5 * quad + 0.5 * ops.sum(ops.square(y_true), axis=-1)


def _hinge_margins(y_true, y_pred):
    """`1 - y s` with labels in {-1, 1}; {0, 1} labels are mapped to {-1, 1} when every entry of
    `y_true` is 0 or 1 (Keras's rule, decided on the whole tensor)."""
    y_true = as_float(y_true, y_pred)
    binary = ops.all(ops.logical_or(ops.equal(y_true, 0.0), ops.equal(y_true, 1.0)))
    signs = ops.where(binary, 2.0 * y_true - 1.0, y_true)
    return 1.0 - signs * y_pred


@register
def hinge(y_true, y_pred):
    r"""Binary hinge loss on scores :math:`s` with labels :math:`y \in \{-1, 1\}`:
    :math:`\operatorname{mean}\max(0, 1 - y s)` over the non-batch axes. Labels given as
    {0, 1} (every entry of `y_true`) are mapped to {-1, 1}, as Keras does.

    Reference: Cortes & Vapnik, "Support-vector networks", Machine Learning 1995.
    Keras: `keras.losses.hinge`.
    """
    return per_sample_mean(ops.relu(_hinge_margins(y_true, y_pred)))


@register
def squared_hinge(y_true, y_pred):
    r"""Squared hinge loss :math:`\operatorname{mean}\max(0, 1 - y s)^2` (labels as in `hinge`):
    differentiable everywhere.

    Reference: Rennie & Srebro, "Loss functions for preference levels", IJCAI 2005 workshop;
    L2-SVM. Keras: `keras.losses.squared_hinge`.
    """
    return per_sample_mean(ops.square(ops.relu(_hinge_margins(y_true, y_pred))))


@register(domains=dict(
    q=dom.interval(0, 1, low_closed=False), from_logits=dom.boolean), shapes="sparse")
def generalized_cross_entropy(y_true, y_pred, q=0.5, from_logits=False):
    r"""Generalized cross-entropy (the :math:`\mathcal{L}_q` loss) with integer labels `y_true`
    of shape `y_pred.shape[:-1]`: :math:`(1 - p_y^q) / q`, :math:`q \in (0, 1]`.
    :math:`q \to 0` is the cross-entropy, :math:`q = 1` the MAE on the one-hot target (up to a
    factor); larger :math:`q` is more robust to label noise.

    For logits, :math:`p_y^q = \exp(q \log p_y)` with `log_softmax`. For probabilities the value
    is Keras's, :math:`(1 - p_y^q)/q` of the probability itself (:math:`1/q` at :math:`p_y = 0`),
    and the gradient is that of the probability clipped to :math:`[\epsilon, 1 - \epsilon]`, so
    :math:`p_y = 0` gives a finite gradient where the exact one is infinite. Unlike Keras,
    probabilities are first normalised to sum to 1 over the class axis (as the other losskit
    cross-entropies do); for normalised inputs the values are equal.

    Reference: Z. Zhang, M. R. Sabuncu, "Generalized Cross Entropy Loss for Training
    Deep Neural Networks with Noisy Labels", NeurIPS 2018.
    Keras: `keras.losses.CategoricalGeneralizedCrossEntropy` (probabilities, integer labels;
    Keras refuses :math:`q = 1`).
    """
    invalid = _contract.invalid_labels(
        "loss 'generalized_cross_entropy'", y_true, y_pred.shape[-1]
    )
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == len(y_pred.shape) and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, -1)
    onehot = ops.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype)
    log_p = ops.sum(onehot * _log_probs(y_pred, from_logits), axis=-1)
    values = -ops.expm1(q * log_p) / q
    if not from_logits:
        # The value of the unclipped probability, as Keras computes it ((1 - 0^q)/q = 1/q at
        # p = 0); the gradient of the clipped one, finite where d p^q / dp is not.
        p = ops.stop_gradient(ops.sum(onehot * (y_pred / ops.sum(y_pred, -1, keepdims=True)), -1))
        exact = (1.0 - ops.power(p, q)) / q
        values = exact + (values - ops.stop_gradient(values))
    return _contract.nan_where(invalid, values)


_KAPPA_WEIGHTS = ("linear", "quadratic")


@register(domains=dict(weightage=dom.one_of(*_KAPPA_WEIGHTS), epsilon=dom.positive))
def weighted_kappa(y_true, y_pred, weightage="quadratic", epsilon=1e-6):
    r"""Weighted kappa loss for ordinal classes (one-hot `y_true`, class probabilities `y_pred`,
    shape `(N, K)`): :math:`\log(O / E + \epsilon)` with weights
    :math:`w_{ij} = |i - j|` (``"linear"``) or :math:`(i - j)^2` (``"quadratic"``),

    .. math:: O = \sum_n \sum_j w_{y_n j}\, p_{nj}, \qquad
              E = \tfrac1N \sum_{i, j} w_{ij}\, h_i\, \hat h_j,

    :math:`h = \sum_n y_n`, :math:`\hat h = \sum_n p_n` (observed vs. chance disagreement;
    :math:`O/E = 1 - \kappa`; taken as 0 where :math:`E = 0`). It is a **batch** quantity:
    every sample gets the batch value, so the Loss class's mean is the batch loss (it can be
    negative: its minimum is :math:`\log\epsilon`).

    Reference: J. de la Torre, D. Puig, A. Valls, "Weighted kappa loss function for multi-class
    classification of ordinal data in deep learning", Pattern Recognition Letters 2018.
    TF Addons: `tfa.losses.WeightedKappaLoss`.
    """
    if len(y_pred.shape) != 2:
        raise ValueError(
            f"weighted_kappa: y_pred must have shape (N, K), got {tuple(y_pred.shape)}"
        )
    y_true = as_float(y_true, y_pred)
    k = y_pred.shape[-1]
    classes = ops.cast(ops.arange(k), y_pred.dtype)
    gap = ops.expand_dims(classes, 1) - ops.expand_dims(classes, 0)
    weights = ops.abs(gap) if weightage == "linear" else ops.square(gap)
    observed = ops.sum(ops.matmul(y_true, weights) * y_pred)
    n = ops.cast(ops.shape(y_pred)[0], y_pred.dtype)
    hist_true, hist_pred = ops.sum(y_true, axis=0), ops.sum(y_pred, axis=0)
    expected = ops.sum(ops.matmul(hist_true, weights) * hist_pred) / n
    # E = 0 only when labels and predictions sit in one class (or the predictions are all 0),
    # where O = 0 too: 0/0 is taken as 0 (log eps), with a zero gradient rather than 1/0.
    defined = expected > 1e-12
    ratio = ops.where(defined, observed / ops.where(defined, expected, 1.0), 0.0)
    ratio = ops.where(ops.isnan(expected), expected, ratio)  # a NaN input must not vanish
    value = ops.log(ratio + epsilon)
    return ops.zeros_like(y_pred[:, 0]) + value


CategoricalCrossentropy = loss_class(categorical_crossentropy, "CategoricalCrossentropy")
SparseCategoricalCrossentropy = loss_class(
    sparse_categorical_crossentropy, "SparseCategoricalCrossentropy", sparse_labels=True
)
BinaryCrossentropy = loss_class(binary_crossentropy, "BinaryCrossentropy")
Focal = loss_class(focal, "Focal")
Poly1 = loss_class(poly1, "Poly1")
MulticlassHinge = loss_class(multiclass_hinge, "MulticlassHinge")
SparsemaxLoss = loss_class(sparsemax_loss, "SparsemaxLoss")
Hinge = loss_class(hinge, "Hinge")
SquaredHinge = loss_class(squared_hinge, "SquaredHinge")
GeneralizedCrossEntropy = loss_class(
    generalized_cross_entropy, "GeneralizedCrossEntropy", sparse_labels=True
)
WeightedKappa = loss_class(weighted_kappa, "WeightedKappa")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES, 'sparsemax')

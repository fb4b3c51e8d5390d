r"""Learning-to-rank losses: `ranking_softmax`, `pairwise_logistic`, `list_mle`.

``y_true`` holds graded relevance labels and ``y_pred`` scores, both of shape ``(N, L)``: ``N``
lists (queries) of ``L`` items; the value is one per list, shape ``(N,)``. Lists shorter than
``L`` are padded, and the padding is marked by a **negative label** (e.g. -1, TF-Ranking's
convention): a padded item takes part in no sum, whatever its score. A list with nothing to rank
(no relevant item, no ordered pair) has loss 0.
"""

from keras import ops

from losskit.losses._common import as_float, family, loss_class, public, register
from losskit.losses._pairwise import masked_logsumexp


def _lists(name, y_true, y_pred):
    if len(y_pred.shape) != 2:
        raise ValueError(
            f"{name}: y_true and y_pred must have shape (N, L) (lists of L items), "
            f"got y_pred of shape {tuple(y_pred.shape)}"
        )
    labels = as_float(y_true, y_pred)
    return labels, labels >= 0


@register(shapes="own")  # lists: checked by _lists
def ranking_softmax(y_true, y_pred):
    r"""Listwise softmax cross-entropy: the labels normalised to a distribution over the list's
    items against the softmax of the scores,

    .. math:: \ell = -\sum_i \frac{y_i}{\sum_j y_j} \log \frac{e^{s_i}}{\sum_j e^{s_j}},

    sums over the valid (non-padded) items. Non-negative for labels :math:`\ge 0`; exact for any
    finite scores.

    Reference: Z. Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach"
    (ListNet, top-one probability), ICML 2007; S. Bruch et al., "An Analysis of the Softmax Cross
    Entropy Loss for Learning-to-Rank with Binary Relevance", ICTIR 2019.
    optax: `optax.losses.ranking_softmax_loss`; TF-Ranking: `tfr.keras.losses.SoftmaxLoss`.
    """
    labels, valid = _lists("ranking_softmax", y_true, y_pred)
    labels = ops.where(valid, labels, 0.0)
    total = ops.sum(labels, axis=-1, keepdims=True)
    targets = labels / ops.where(total > 0, total, 1.0)
    log_p = y_pred - ops.expand_dims(masked_logsumexp(y_pred, valid), -1)
    return -ops.sum(ops.where(valid, targets * log_p, 0.0), axis=-1)


@register(shapes="own")  # lists: checked by _lists
def pairwise_logistic(y_true, y_pred):
    r"""Pairwise logistic (RankNet) loss: over the ordered pairs of valid items with
    :math:`y_i > y_j`,

    .. math:: \ell = \operatorname{mean}_{(i, j):\, y_i > y_j}
              \log\bigl(1 + e^{-(s_i - s_j)}\bigr)

    (`softplus`, exact for any finite scores). Non-negative; 0 for a list without such a pair.

    Reference: C. Burges et al., "Learning to Rank using Gradient Descent" (RankNet), ICML 2005.
    keras-rs: `keras_rs.losses.PairwiseLogisticLoss` (which sums over pairs instead of averaging);
    TF-Ranking: `tfr.keras.losses.PairwiseLogisticLoss`.
    """
    labels, valid = _lists("pairwise_logistic", y_true, y_pred)
    both = ops.logical_and(ops.expand_dims(valid, 2), ops.expand_dims(valid, 1))
    ordered = ops.logical_and(both, ops.expand_dims(labels, 2) > ops.expand_dims(labels, 1))
    gap = ops.expand_dims(y_pred, 2) - ops.expand_dims(y_pred, 1)
    count = ops.sum(ops.cast(ordered, y_pred.dtype), axis=(1, 2))
    total = ops.sum(ops.where(ordered, ops.softplus(-gap), 0.0), axis=(1, 2))
    # A NaN score drops out of every comparison above; its list's loss must not be a number.
    lost = ops.any(ops.isnan(y_pred), axis=-1)
    return ops.where(lost, float("nan"), total / ops.maximum(count, 1.0))


@register(shapes="own")  # lists: checked by _lists
def list_mle(y_true, y_pred):
    r"""ListMLE: the negative Plackett-Luce log-likelihood of the ranking given by the labels,

    .. math:: \ell = \sum_{k=1}^{L'} \Bigl(\log \sum_{j \ge k} e^{s_{\pi(j)}} - s_{\pi(k)}\Bigr),

    :math:`\pi` the valid items sorted by decreasing label (ties kept in list order), :math:`L'`
    their number. Each log-sum-exp is evaluated stably over its suffix (an ``L x L`` mask per
    list), so scores of any size give finite values. Non-negative.

    Reference: F. Xia et al., "Listwise Approach to Learning to Rank: Theory and Algorithm",
    ICML 2008. keras-rs: `keras_rs.losses.ListMLELoss`; TF-Ranking: `tfr.keras.losses.ListMLELoss`
    (which breaks ties at random).
    """
    labels, valid = _lists("list_mle", y_true, y_pred)
    length = ops.shape(y_pred)[1]
    position = ops.arange(length, dtype="int32")
    key = ops.stop_gradient(ops.where(valid, labels, float("-inf")))
    # Rank of item i: items with a larger key, plus earlier items with an equal key; a permutation.
    ahead = ops.logical_or(
        ops.expand_dims(key, 1) > ops.expand_dims(key, 2),
        ops.logical_and(
            ops.expand_dims(key, 1) == ops.expand_dims(key, 2),
            ops.expand_dims(position, 0) < ops.expand_dims(position, 1),
        ),
    )
    rank = ops.sum(ops.cast(ahead, "int32"), axis=-1)
    order = ops.argsort(rank, axis=-1)
    scores = ops.take_along_axis(y_pred, order, axis=-1)
    valid_sorted = ops.take_along_axis(valid, order, axis=-1)
    suffix = ops.logical_and(
        ops.expand_dims(position, 1) <= ops.expand_dims(position, 0),
        ops.expand_dims(valid_sorted, 1),
    )  # suffix[n, k, j]: j >= k and item j valid
    tails = masked_logsumexp(ops.expand_dims(scores, 1), suffix)
    return ops.sum(ops.where(valid_sorted, tails - scores, 0.0), axis=-1)


RankingSoftmax = loss_class(ranking_softmax, "RankingSoftmax")
PairwiseLogistic = loss_class(pairwise_logistic, "PairwiseLogistic")
ListMLE = loss_class(list_mle, "ListMLE")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

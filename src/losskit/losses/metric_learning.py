r"""Metric-learning losses: `contrastive`, `triplet`, `info_nce` (NT-Xent), `supcon`, `circle`,
`lifted_structured` and `npairs`.

Input convention (all but `npairs`, which takes TF Addons' anchor-positive similarity matrix):
``labels`` of shape ``(N,)`` (integer or float class ids; samples
with equal labels are positives of each other, a sample is never its own positive) and
``embeddings`` of shape ``(N, D)``. Each function returns **one value per anchor**, shape
``(N,)``; an anchor with no positive (or, for triplets, no negative) contributes 0.

For NT-Xent / SimCLR with two augmented views of ``M`` images, concatenate the views and give both
copies of image ``k`` the label ``k``::

    embeddings = concatenate([z_view1, z_view2])        # (2M, D)
    labels = concatenate([arange(M), arange(M)])        # (2M,)

The losses are composed from small parts, as in pytorch-metric-learning (defined in
`losskit.losses._pairwise`, imported here): a pairwise similarity/distance helper, label masks,
miners (`hardest_positive_negative`, `semi_hard_negatives`) and a row-block driver. With
``block_size=b`` the ``N x N`` matrix is never formed: anchors are processed ``b`` rows at a time
(`keras.ops.map` over row blocks), so the forward pass holds ``b x N`` pairwise values at a time,
and each block is rematerialised (`keras.remat`) so the backward pass does not store them for
every block either; the result equals the unblocked one. Measured under JAX
(``jax.jit(...).compile().memory_analysis()``, N = 4096, D = 64, b = 256): `supcon` value and
gradient need 16 MiB of temporaries instead of 273 MiB unblocked, `triplet` semi-hard 49 MiB
instead of 912 MiB.

The Loss classes (`Contrastive`, `Triplet`, `InfoNCE`, `SupCon`) take ``y_true = labels`` and
``y_pred = embeddings``; labels keep their integer dtype (``sparse_labels`` contract: ``y_true``
has the shape of ``y_pred`` without its last axis).
"""

from keras import ops

from losskit import _contract
from losskit import domains as dom
from losskit.losses._common import family, loss_class, public, register
from losskit.losses._pairwise import (
    hardest_positive_negative,
    l2_normalize,
    label_masks,
    masked_logsumexp,
    masked_mean,
    pairwise_distance,
    pairwise_similarity,
    pairwise_squared_distance,
    per_anchor,
    safe_sqrt,
    semi_hard_negatives,
)

_MINING = ("batch_hard", "semi_hard")
_BLOCK = dom.optional(dom.positive_integer)


def _check_inputs(name, labels, embeddings):
    if len(embeddings.shape) != 2:
        raise ValueError(
            f"{name}: embeddings must have shape (N, D), got {tuple(embeddings.shape)}; "
            "labels must have shape (N,)."
        )
    if len(labels.shape) == 2 and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, -1)
    if len(labels.shape) != 1:
        raise ValueError(f"{name}: labels must have shape (N,), got {tuple(labels.shape)}.")
    return labels


@register(domains=dict(margin=dom.nonnegative, block_size=_BLOCK))
def contrastive(labels, embeddings, margin=1.0, block_size=None):
    r"""Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006), over all pairs of the batch.

    With Euclidean distance :math:`d_{ij} = \|x_i - x_j\|` and :math:`y_{ij} = [l_i = l_j]`,
    the value of anchor :math:`i` is the mean over all :math:`j \ne i` of

    .. math:: \tfrac12\, y_{ij}\, d_{ij}^2 + \tfrac12\,(1 - y_{ij}) \max(0, m - d_{ij})^2 .

    Non-negative. Shape ``(N,)``; 0 for a batch of one.

    Reference: R. Hadsell, S. Chopra, Y. LeCun, "Dimensionality Reduction by Learning an
    Invariant Mapping", CVPR 2006.
    """
    labels = _check_inputs("contrastive", labels, embeddings)

    def rows(index, anchors, anchor_labels, embeddings):
        positive, negative = label_masks(anchor_labels, index, labels)
        d2 = pairwise_squared_distance(anchors, embeddings)
        pull = 0.5 * d2
        push = 0.5 * ops.square(ops.relu(margin - safe_sqrt(d2)))
        pair = ops.where(positive, pull, ops.where(negative, push, 0.0))
        return masked_mean(pair, ops.logical_or(positive, negative))

    return per_anchor(rows, labels, embeddings, block_size)


@register(domains=dict(
    margin=dom.nonnegative, mining=dom.one_of(*_MINING), squared=dom.boolean,
    block_size=_BLOCK, soft_margin=dom.boolean))
def triplet(
    labels,
    embeddings,
    margin=1.0,
    mining="batch_hard",
    squared=False,
    block_size=None,
    soft_margin=False,
):
    r"""Triplet margin loss with online mining inside the batch.

    :math:`\ell(a, p, n) = \max(0,\ m + d(a, p) - d(a, n))`, :math:`d` Euclidean (squared with
    ``squared=True``, as in Schroff et al.).

    - ``mining="batch_hard"`` (Hermans, Beyer & Leibe 2017): per anchor,
      :math:`\max(0, m + \max_{p} d(a,p) - \min_{n} d(a,n))`.
    - ``mining="semi_hard"`` (Schroff, Kalenichenko & Philbin 2015; the rule of
      `tfa.losses.triplet_semihard_loss`): for every positive ``p`` of the anchor, the negative is
      the closest one with :math:`d(a,n) > d(a,p)`, or the farthest negative if there is none;
      the anchor's value is the mean over its positives.

    With ``soft_margin=True`` the hinge :math:`\max(0, m + x)` is replaced by the soft margin
    :math:`\log(1 + e^{x}) = \operatorname{softplus}(x)`, :math:`x = d(a,p) - d(a,n)` (``margin``
    unused), as in Hermans et al. and `tfa.losses.TripletHardLoss(soft=True)`.

    Non-negative. Shape ``(N,)``; 0 for anchors without a positive or without a negative.

    References: F. Schroff et al., "FaceNet", CVPR 2015; A. Hermans et al., "In Defense of the
    Triplet Loss for Person Re-Identification", arXiv:1703.07737.
    """
    labels = _check_inputs("triplet", labels, embeddings)

    def penalty(gap):
        return ops.softplus(gap) if soft_margin else ops.relu(margin + gap)

    def rows(index, anchors, anchor_labels, embeddings):
        positive, negative = label_masks(anchor_labels, index, labels)
        d = pairwise_distance(anchors, embeddings, squared=squared)
        if mining == "batch_hard":
            d_pos, d_neg, valid = hardest_positive_negative(d, positive, negative)
            return ops.where(valid, penalty(d_pos - d_neg), 0.0)
        d_neg = semi_hard_negatives(d, negative)
        has_neg = ops.any(negative, axis=-1, keepdims=True)
        return masked_mean(penalty(d - d_neg), ops.logical_and(positive, has_neg))

    return _contract.keep_nan(per_anchor(rows, labels, embeddings, block_size), embeddings)


def _similarity_logits(embeddings, temperature, normalize):
    if normalize:
        embeddings = l2_normalize(embeddings)
    return embeddings, 1.0 / temperature


@register(domains=dict(temperature=dom.positive, normalize=dom.boolean, block_size=_BLOCK))
def info_nce(labels, embeddings, temperature=0.1, normalize=True, block_size=None):
    r"""InfoNCE / NT-Xent (Oord et al. 2018; Chen et al. 2020, SimCLR).

    With :math:`s_{ij} = z_i \cdot z_j / \tau` (:math:`z` L2-normalised when ``normalize``),
    positives :math:`P(i) = \{j \ne i: l_j = l_i\}` and :math:`A(i) = \{a \ne i\}`:

    .. math:: \ell_i = -\log \frac{\sum_{p \in P(i)} e^{s_{ip}}}{\sum_{a \in A(i)} e^{s_{ia}}} .

    With exactly one positive per anchor (two views, labels ``[0..M-1, 0..M-1]``) this is
    SimCLR's NT-Xent; with several positives it is the "summation inside the log" variant
    :math:`\mathcal{L}^{sup}_{in}` of Khosla et al. (see `supcon` for the outside variant).
    Non-negative; 0 for anchors without a positive. Shape ``(N,)``.

    References: A. van den Oord et al., "Representation Learning with Contrastive Predictive
    Coding", arXiv:1807.03748; T. Chen et al., "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020.
    """
    labels = _check_inputs("info_nce", labels, embeddings)
    embeddings, scale = _similarity_logits(embeddings, temperature, normalize)

    def rows(index, anchors, anchor_labels, embeddings):
        positive, negative = label_masks(anchor_labels, index, labels)
        logits = pairwise_similarity(anchors, embeddings) * scale
        others = ops.logical_or(positive, negative)
        value = masked_logsumexp(logits, others) - masked_logsumexp(logits, positive)
        return ops.where(ops.any(positive, axis=-1), value, 0.0)

    return per_anchor(rows, labels, embeddings, block_size)


@register(domains=dict(temperature=dom.positive, normalize=dom.boolean, block_size=_BLOCK))
def supcon(labels, embeddings, temperature=0.1, normalize=True, block_size=None):
    r"""Supervised contrastive loss :math:`\mathcal{L}^{sup}_{out}` (Khosla et al. 2020).

    With :math:`s_{ij} = z_i \cdot z_j / \tau` (:math:`z` L2-normalised when ``normalize``),
    :math:`P(i) = \{j \ne i: l_j = l_i\}` and :math:`A(i) = \{a \ne i\}`:

    .. math:: \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
              \log \frac{e^{s_{ip}}}{\sum_{a \in A(i)} e^{s_{ia}}} .

    Temperature 0.1 as in the paper (its code defaults to 0.07). Non-negative; 0 for anchors
    without a positive (as the reference implementation). Equals `info_nce` when every anchor
    has exactly one positive. Shape ``(N,)``. The reference code's extra factor
    ``temperature / base_temperature`` (1 at its defaults) is left out.

    Reference: P. Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
    """
    labels = _check_inputs("supcon", labels, embeddings)
    embeddings, scale = _similarity_logits(embeddings, temperature, normalize)

    def rows(index, anchors, anchor_labels, embeddings):
        positive, negative = label_masks(anchor_labels, index, labels)
        logits = pairwise_similarity(anchors, embeddings) * scale
        log_norm = masked_logsumexp(logits, ops.logical_or(positive, negative))
        value = ops.expand_dims(log_norm, -1) - logits
        return masked_mean(value, positive)

    return per_anchor(rows, labels, embeddings, block_size)


@register(domains=dict(gamma=dom.nonnegative, margin=dom.nonnegative, block_size=_BLOCK))
def circle(labels, embeddings, gamma=80.0, margin=0.4, block_size=None):
    r"""Circle loss (Sun et al. 2020) on L2-normalised embeddings, pair-based form.

    With cosine distances :math:`c_{ij} = \max(0, 1 - z_i \cdot z_j)` (the embeddings are used as
    given: normalise them first, e.g. with `keras.layers.UnitNormalization`), positives
    :math:`P(i)` and negatives :math:`N(i)`:

    .. math:: \ell_i = \operatorname{softplus}\Bigl(
              \operatorname{LSE}_{p \in P(i)} -\gamma\,[m + c_{ip}]_+ (m - c_{ip}) +
              \operatorname{LSE}_{n \in N(i)} \gamma\,[1 + m - c_{in}]_+ (1 - m - c_{in})\Bigr)

    (Keras's parameterisation by distances: optimum 0 for positives, 1 for negatives). 0 for
    anchors without a positive or a negative. Non-negative. Unlike `keras.losses.Circle`, which
    masks anchors with value 0 out of its mean, the Loss class averages over all anchors (the
    family's rule).

    Reference: Y. Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
    Optimization", CVPR 2020. Keras: `keras.losses.circle` (per sample, ``remove_diagonal=True``).
    """
    labels = _check_inputs("circle", labels, embeddings)

    def rows(index, anchors, anchor_labels, embeddings):
        positive, negative = label_masks(anchor_labels, index, labels)
        dist = ops.relu(1.0 - pairwise_similarity(anchors, embeddings))
        pos = -gamma * ops.relu(margin + dist) * (margin - dist)
        neg = gamma * ops.relu(1.0 + margin - dist) * (1.0 - margin - dist)
        total = masked_logsumexp(pos, positive) + masked_logsumexp(neg, negative)
        valid = ops.logical_and(ops.any(positive, axis=-1), ops.any(negative, axis=-1))
        return ops.where(valid, ops.softplus(total), 0.0)

    return per_anchor(rows, labels, embeddings, block_size)


@register(domains=dict(margin=dom.nonnegative))
def lifted_structured(labels, embeddings, margin=1.0):
    r"""Lifted structured loss (Oh Song et al. 2016), one value per anchor.

    With Euclidean distances :math:`d`, for each positive pair :math:`(i, j)`

    .. math:: J_{ij} = \log\Bigl(\sum_{k \in N(i)} e^{m - d_{ik}} +
              \sum_{l \in N(j)} e^{m - d_{jl}}\Bigr) + d_{ij},
              \qquad \ell_i = \tfrac12 \operatorname{mean}_{j \in P(i)} \max(0, J_{ij})^2 .

    When every anchor has the same number of positives, the mean of :math:`\ell_i` is the paper's
    :math:`\frac{1}{2|P|}\sum_{(i,j)} \max(0, J_{ij})^2`. The log-sum-exp is evaluated stably;
    0 for anchors without a positive or a negative. Needs the whole ``N x N`` distance matrix
    (no ``block_size``). Non-negative.

    Reference: H. Oh Song, Y. Xiang, S. Jegelka, S. Savarese, "Deep Metric Learning via Lifted
    Structured Feature Embedding", CVPR 2016. TF Addons: `tfa.losses.LiftedStructLoss` (which
    averages over all positive pairs of the batch with a factor 1/4).
    """
    labels = _check_inputs("lifted_structured", labels, embeddings)
    index = ops.arange(ops.shape(embeddings)[0], dtype="int32")
    positive, negative = label_masks(labels, index, labels)
    d = pairwise_distance(embeddings, embeddings)
    lse = masked_logsumexp(margin - d, negative)  # (N,): anchor i's negatives
    # Positives share their negatives (same label), so both sums are over N(i).
    j_ij = ops.logaddexp(ops.expand_dims(lse, 1), ops.expand_dims(lse, 0)) + d
    has_neg = ops.any(negative, axis=-1, keepdims=True)
    pairs = ops.logical_and(positive, has_neg)
    return _contract.keep_nan(0.5 * masked_mean(ops.square(ops.relu(j_ij)), pairs), embeddings)


@register
def npairs(labels, similarities):
    r"""Multi-class N-pair loss (Sohn 2016) on an anchor-positive similarity matrix, as in TF
    Addons: ``similarities[i, j] = f_i \cdot f^+_j`` (shape ``(N, N)``), ``labels`` ``(N,)``;
    soft cross-entropy of row :math:`i` against the positives of anchor :math:`i`:

    .. math:: \ell_i = -\sum_j t_{ij} \log\operatorname{softmax}(S_{i\cdot})_j,
              \qquad t_{ij} = [l_i = l_j] / \textstyle\sum_k [l_i = l_k] .

    Non-negative; exact for any finite similarities (`log_softmax`). The paper's L2 penalty on
    the embeddings is left to the caller (a regulariser term).

    Reference: K. Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
    NeurIPS 2016. TF Addons: `tfa.losses.NpairsLoss` (batch mean of these values).
    """
    if len(similarities.shape) != 2 or similarities.shape[0] != similarities.shape[1]:
        raise ValueError(
            f"npairs: similarities must be a square (N, N) matrix, got {tuple(similarities.shape)}"
        )
    labels = _check_inputs("npairs", labels, similarities)
    same = ops.cast(ops.expand_dims(labels, 1) == ops.expand_dims(labels, 0), similarities.dtype)
    targets = same / ops.sum(same, axis=-1, keepdims=True)
    return -ops.sum(targets * ops.log_softmax(similarities, axis=-1), axis=-1)


Contrastive = loss_class(contrastive, "Contrastive", sparse_labels=True)
Triplet = loss_class(triplet, "Triplet", sparse_labels=True)
InfoNCE = loss_class(info_nce, "InfoNCE", sparse_labels=True)
SupCon = loss_class(supcon, "SupCon", sparse_labels=True)
Circle = loss_class(circle, "Circle", sparse_labels=True)
LiftedStructured = loss_class(lifted_structured, "LiftedStructured", sparse_labels=True)
NPairs = loss_class(npairs, "NPairs", sparse_labels=True)

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

"""Losses that Keras 3, TF Addons, keras-cv, optax and keras-rs ship (issue 15): values per sample
against the Keras built-in (rtol 1e-5) or a NumPy reference written here / hand-computed cases,
check_gradients, Hypothesis properties at extreme inputs, `.keras` round trips in a compiled
model, ignore_index for the segmentation losses, and a docs row for every loss."""

import functools
import math
import pathlib

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from saving_helpers import assert_loss_survives_saving
from scipy.special import logsumexp, softmax
from test_losses_metric_learning import np_dist, np_triplet

import losskit
from losskit import losses as L
from losskit.gradients import value_and_grad

NEW_FUNCTIONS = [
    "mape", "msle", "smooth_l1", "cosine_similarity", "hinge", "squared_hinge",
    "generalized_cross_entropy", "weighted_kappa", "generalized_kl", "generalized_dice",
    "circle", "lifted_structured", "npairs", "giou", "ciou", "ctc", "ranking_softmax",
    "pairwise_logistic", "list_mle",
]  # fmt: skip
NEW_CLASSES = [
    "MAPE", "MSLE", "SmoothL1", "CosineSimilarity", "Hinge", "SquaredHinge",
    "GeneralizedCrossEntropy", "WeightedKappa", "GeneralizedKL", "GeneralizedDice", "Circle",
    "LiftedStructured", "NPairs", "GIoU", "CIoU", "CTC", "RankingSoftmax", "PairwiseLogistic",
    "ListMLE",
]  # fmt: skip


def np_(x):
    return ops.convert_to_numpy(x)


def rng(seed):
    return np.random.default_rng(seed)


def regression_data(seed=0, shape=(4, 3)):
    r = rng(seed)
    y = r.uniform(0.2, 3.0, size=shape).astype("float32")
    p = (y + r.choice([-1.0, 1.0], size=shape) * r.uniform(0.1, 1.5, size=shape)).astype("float32")
    return y, p


def unit_rows(n, d, seed):
    x = rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


LABELS = np.array([0, 1, 0, 2, 1, 0, 3])  # class 3 is a singleton (no positive)


# ============================================================ values against Keras built-ins


def keras_fn(name):
    return getattr(keras.losses, name)


@pytest.mark.parametrize(
    "fn, reference",
    [
        (L.mape, "mean_absolute_percentage_error"),
        (L.msle, "mean_squared_logarithmic_error"),
        (L.cosine_similarity, "cosine_similarity"),
    ],
    ids=["mape", "msle", "cosine_similarity"],
)
def test_regression_matches_keras(fn, reference):
    y, p = regression_data(1)
    p[0, 0] = -0.5  # msle raises negative predictions to epsilon, like Keras
    y[1, 1] = 0.0  # mape divides by max(|y|, epsilon)
    np.testing.assert_allclose(np_(fn(y, p)), np_(keras_fn(reference)(y, p)), rtol=1e-5)


@pytest.mark.parametrize("name", ["hinge", "squared_hinge"])
@pytest.mark.parametrize("labels", ["01", "pm1"])
def test_hinge_matches_keras(name, labels):
    r = rng(2)
    y = (r.uniform(size=(5, 4)) > 0.5).astype("float32")
    if labels == "pm1":
        y = 2 * y - 1
    s = r.normal(scale=1.5, size=(5, 4)).astype("float32")
    np.testing.assert_allclose(
        np_(getattr(L, name)(y, s)), np_(keras_fn(name)(y, s)), rtol=1e-5, atol=1e-7
    )


def test_cosine_similarity_zero_vector_and_extra_axes():
    y = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], "float32")
    p = np.array([[1.0, 2.0, 3.0], [-2.0, -4.0, -4.0]], "float32")
    np.testing.assert_allclose(np_(L.cosine_similarity(y, p)), [0.0, 1.0], atol=1e-6)
    y3, p3 = regression_data(3, shape=(2, 3, 4))
    expected = np_(keras.losses.cosine_similarity(y3, p3)).mean(-1)
    np.testing.assert_allclose(np_(L.cosine_similarity(y3, p3)), expected, rtol=1e-5)


@pytest.mark.parametrize("q", [0.3, 0.7, 0.95])
def test_generalized_cross_entropy_matches_keras(q):
    probs = rng(4).dirichlet(np.ones(5), size=6).astype("float32")
    labels = np.array([0, 1, 2, 3, 4, 2])
    expected = keras.losses.CategoricalGeneralizedCrossEntropy(q=q, reduction=None)(labels, probs)
    got = L.generalized_cross_entropy(labels, probs, q=q)
    np.testing.assert_allclose(np_(got), np_(expected), rtol=1e-5)
    logits = np.log(probs)  # the same distribution given as logits
    np.testing.assert_allclose(
        np_(L.generalized_cross_entropy(labels, logits, q=q, from_logits=True)),
        np_(expected),
        rtol=1e-5,
    )
    # q = 1 (outside Keras's open interval) is 1 - p_y, the MAE-like end
    np.testing.assert_allclose(
        np_(L.generalized_cross_entropy(labels, probs, q=1.0)),
        1 - probs[np.arange(6), labels],
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="generalized_cross_entropy"):
        L.generalized_cross_entropy(labels, probs, q=0.0)


def ctc_data(seed=5):
    labels = np.array([[1, 2, 2, 0], [3, 1, 0, 0], [2, 0, 0, 0]], "int32")
    logits = rng(seed).normal(size=(3, 7, 4)).astype("float32")
    return labels, logits


def test_ctc_matches_keras():
    labels, logits = ctc_data()
    np.testing.assert_allclose(
        np_(L.ctc(labels, logits)), np_(keras.losses.ctc(labels, logits)), rtol=1e-5
    )
    np.testing.assert_allclose(
        np_(L.CTC()(labels, logits)), np_(keras.losses.CTC()(labels, logits)), rtol=1e-5
    )


def test_ctc_single_frame_by_hand():
    # One frame, label "1": the only alignment is (1), so the loss is -log softmax(z)_1.
    z = np.array([[[0.3, 1.2, -0.4]]], "float32")
    expected = -(z[0, 0, 1] - logsumexp(z[0, 0]))
    np.testing.assert_allclose(np_(L.ctc(np.array([[1]]), z)), [expected], rtol=1e-5)


@pytest.mark.parametrize("gamma, margin", [(80.0, 0.4), (16.0, 0.25)])
def test_circle_matches_keras(gamma, margin):
    x = unit_rows(7, 5, 6)
    expected = keras.losses.circle(LABELS, x, gamma=gamma, margin=margin)
    got = L.circle(LABELS, x, gamma=gamma, margin=margin)
    np.testing.assert_allclose(np_(got), np_(expected), rtol=1e-5, atol=1e-6)
    blocked = L.circle(LABELS, x, gamma=gamma, margin=margin, block_size=3)
    np.testing.assert_allclose(np_(blocked), np_(got), rtol=1e-5, atol=1e-6)
    assert np_(got)[-1] == 0.0  # the singleton anchor


# ============================================================ values against NumPy references


def np_smooth_l1(y, p, beta):
    e = np.abs(y.astype(float) - p)
    return np.where(e < beta, 0.5 * e**2 / beta, e - 0.5 * beta).mean(-1)


def test_smooth_l1_reference_and_huber_relation():
    y, p = regression_data(7)
    np.testing.assert_allclose(np_(L.smooth_l1(y, p, beta=0.8)), np_smooth_l1(y, p, 0.8), rtol=1e-5)
    np.testing.assert_allclose(
        np_(L.smooth_l1(y, p, beta=0.8)), np_(L.huber(y, p, delta=0.8)) / 0.8, rtol=1e-5
    )
    np.testing.assert_allclose(np_(L.smooth_l1(y, p, beta=0.0)), np_(L.mae(y, p)), rtol=1e-6)
    with pytest.raises(ValueError, match="smooth_l1"):
        L.smooth_l1(y, p, beta=-1.0)


def test_generalized_kl_reference():
    r = rng(8)
    p = r.uniform(0.0, 3.0, size=(4, 5)).astype("float32")
    p[0, 0] = 0.0  # 0 log 0 = 0
    q = r.uniform(0.1, 3.0, size=(4, 5)).astype("float32")
    pp, qq = p.astype(float), q.astype(float)
    terms = np.where(pp > 0, pp * np.log(np.where(pp > 0, pp, 1) / qq), 0.0) - pp + qq
    np.testing.assert_allclose(np_(L.generalized_kl(p, q)), terms.sum(-1), rtol=1e-5)
    np.testing.assert_allclose(
        np_(L.generalized_kl(p, np.log(q), log_input=True)), terms.sum(-1), rtol=1e-5
    )
    # normalised measures: the ordinary KL
    pn, qn = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        np_(L.generalized_kl(pn, qn)), np_(L.kl_divergence(pn, qn)), rtol=1e-5, atol=1e-7
    )


def np_weighted_kappa(onehot, probs, weightage, eps=1e-6):
    n, k = probs.shape
    w = np.array([[abs(i - j) if weightage == "linear" else (i - j) ** 2 for j in range(k)]
                  for i in range(k)], float)  # fmt: skip
    labels = onehot.argmax(-1)
    observed = sum(w[labels[s], j] * probs[s, j] for s in range(n) for j in range(k))
    hist_true, hist_pred = onehot.sum(0), probs.sum(0)
    expected = sum(w[i, j] * hist_true[i] * hist_pred[j] for i in range(k) for j in range(k)) / n
    return np.log(observed / expected + eps)


@pytest.mark.parametrize("weightage", ["quadratic", "linear"])
def test_weighted_kappa_reference(weightage):
    r = rng(9)
    probs = r.dirichlet(np.ones(4), size=8).astype("float32")
    onehot = np.eye(4, dtype="float32")[r.integers(0, 4, size=8)]
    got = np_(L.weighted_kappa(onehot, probs, weightage=weightage))
    assert got.shape == (8,)
    # log(O/E) near 0: float32 O/E is good to ~1e-7 absolute, not relative
    np.testing.assert_allclose(
        got, np_weighted_kappa(onehot, probs, weightage), rtol=1e-5, atol=1e-6
    )
    # hard predictions: O / E = 1 - Cohen's kappa from the confusion matrix
    hard = np.eye(4, dtype="float32")[r.integers(0, 4, size=8)]
    confusion = onehot.T @ hard
    w = (np.arange(4)[:, None] - np.arange(4)[None, :]) ** 2
    if weightage == "linear":
        w = np.abs(np.arange(4)[:, None] - np.arange(4)[None, :])
    chance = np.outer(confusion.sum(1), confusion.sum(0)) / confusion.sum()
    kappa = 1 - (w * confusion).sum() / (w * chance).sum()
    np.testing.assert_allclose(
        np.exp(np_(L.weighted_kappa(onehot, hard, weightage=weightage))[0]) - 1e-6,
        1 - kappa,
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="weighted_kappa"):
        L.weighted_kappa(onehot, probs, weightage="cubic")


def np_lifted(labels, x, margin=1.0):
    d = np_dist(x)
    out = np.zeros(len(x))
    for i in range(len(x)):
        pos = [j for j in range(len(x)) if j != i and labels[j] == labels[i]]
        neg_i = [k for k in range(len(x)) if labels[k] != labels[i]]
        if not pos or not neg_i:
            continue
        terms = []
        for j in pos:
            neg_j = [k for k in range(len(x)) if labels[k] != labels[j]]
            total = sum(math.exp(margin - d[i, k]) for k in neg_i)
            total += sum(math.exp(margin - d[j, k]) for k in neg_j)
            terms.append(max(0.0, math.log(total) + d[i, j]) ** 2)
        out[i] = 0.5 * np.mean(terms)
    return out


@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_lifted_structured_reference(margin):
    x = rng(10).normal(scale=0.7, size=(7, 3)).astype("float32")
    got = np_(L.lifted_structured(LABELS, x, margin=margin))
    np.testing.assert_allclose(got, np_lifted(LABELS, x, margin), rtol=1e-5, atol=1e-7)
    assert got[-1] == 0.0


def test_npairs_reference():
    r = rng(11)
    s = r.normal(scale=2.0, size=(7, 7)).astype("float32")
    expected = np.zeros(7)
    for i in range(7):
        t = (LABELS == LABELS[i]).astype(float)
        expected[i] = -(t / t.sum() * np.log(softmax(s[i].astype(float)))).sum()
    np.testing.assert_allclose(np_(L.npairs(LABELS, s)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="npairs"):
        L.npairs(LABELS, s[:, :5])


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_soft_margin_reference(mining):
    x = rng(12).normal(size=(7, 3)).astype("float32")
    got = L.triplet(LABELS, x, mining=mining, soft_margin=True, margin=5.0)  # margin unused
    expected = np_triplet(LABELS, x, mining=mining, soft_margin=True)
    np.testing.assert_allclose(np_(got), expected, rtol=1e-5)
    blocked = L.triplet(LABELS, x, mining=mining, soft_margin=True, block_size=3)
    np.testing.assert_allclose(np_(blocked), np_(got), rtol=1e-5)


def np_box_losses(t, p, eps=1e-7):
    """GIoU and CIoU losses of one box pair, from the papers' definitions."""
    iw = max(0.0, min(t[2], p[2]) - max(t[0], p[0]))
    ih = max(0.0, min(t[3], p[3]) - max(t[1], p[1]))
    inter = iw * ih
    union = (t[2] - t[0]) * (t[3] - t[1]) + (p[2] - p[0]) * (p[3] - p[1]) - inter
    iou = inter / (union + eps)
    cw, ch = max(t[2], p[2]) - min(t[0], p[0]), max(t[3], p[3]) - min(t[1], p[1])
    giou = iou - (cw * ch - union) / (cw * ch + eps)
    dx, dy = (t[0] + t[2]) / 2 - (p[0] + p[2]) / 2, (t[1] + t[3]) / 2 - (p[1] + p[3]) / 2
    rho2 = dx**2 + dy**2
    v = 4 / math.pi**2 * (math.atan((t[2] - t[0]) / (t[3] - t[1])) -
                          math.atan((p[2] - p[0]) / (p[3] - p[1]))) ** 2  # fmt: skip
    alpha = v / (1 - iou + v) if v > 0 else 0.0
    return 1 - giou, 1 - iou + rho2 / (cw**2 + ch**2) + alpha * v


def boxes(seed, shape):
    r = rng(seed)
    xy = r.uniform(-2, 2, size=(*shape, 2))
    wh = r.uniform(0.3, 3, size=(*shape, 2))
    return np.concatenate([xy, xy + wh], -1).astype("float32")


def np_alpha_v(t, p, eps=1e-7):
    iw = max(0.0, min(t[2], p[2]) - max(t[0], p[0]))
    ih = max(0.0, min(t[3], p[3]) - max(t[1], p[1]))
    union = (t[2] - t[0]) * (t[3] - t[1]) + (p[2] - p[0]) * (p[3] - p[1]) - iw * ih
    iou = iw * ih / (union + eps)
    v = 4 / math.pi**2 * (math.atan((t[2] - t[0]) / (t[3] - t[1]))
                          - math.atan((p[2] - p[0]) / (p[3] - p[1]))) ** 2  # fmt: skip
    return v / (1 - iou + v), v


def test_ciou_gradient_holds_alpha_fixed():
    """alpha gets no gradient: the gradient is the finite-difference one with alpha frozen at
    its value for the unperturbed boxes."""
    t, p = boxes(25, (3,)).astype(float), boxes(26, (3,)).astype(float)
    _, (_, grad) = value_and_grad(L.ciou, t, p)

    def frozen(i, pp, alpha0):
        alpha, v = np_alpha_v(t[i], pp)
        return np_box_losses(t[i], pp)[1] - alpha * v + alpha0 * v

    h = 1e-6
    for i in range(3):
        alpha0 = np_alpha_v(t[i], p[i])[0]
        assert alpha0 > 0.01  # alpha matters at these boxes
        for k in range(4):
            step = np.eye(4)[k] * h
            fd = (frozen(i, p[i] + step, alpha0) - frozen(i, p[i] - step, alpha0)) / (2 * h)
            np.testing.assert_allclose(grad[i, k], fd, rtol=1e-4, atol=1e-6)


def test_box_losses_by_hand():
    t = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], "float32")
    p = np.array([[0.5, 0.5, 1.5, 1.5], [3, 3, 4, 4]], "float32")
    # IoU 1/7, enclosing 2.25, union 1.75 | disjoint: IoU 0, enclosing 16, union 5
    np.testing.assert_allclose(np_(L.giou(t, p)), [1 - 1 / 7 + 0.5 / 2.25, 1 + 11 / 16], rtol=1e-5)
    # same aspect ratios (v = 0): centre distances 0.5 and 12.5 over diagonals 4.5 and 32
    np.testing.assert_allclose(
        np_(L.ciou(t, p)), [1 - 1 / 7 + 0.5 / 4.5, 1 + 12.5 / 32], rtol=1e-5
    )
    np.testing.assert_allclose(np_(L.giou(t, t)), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np_(L.ciou(t, t)), [0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("shape", [(5,), (3, 4)])
def test_box_losses_reference(shape):
    t, p = boxes(13, shape), boxes(14, shape)
    ref = np.vectorize(lambda i: np_box_losses(t.reshape(-1, 4)[i], p.reshape(-1, 4)[i]),
                       otypes=[float, float])(np.arange(t.size // 4))  # fmt: skip
    giou_ref, ciou_ref = (r.reshape(shape) for r in ref)
    if len(shape) == 2:
        giou_ref, ciou_ref = giou_ref.mean(-1), ciou_ref.mean(-1)
    np.testing.assert_allclose(np_(L.giou(t, p)), giou_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(L.ciou(t, p)), ciou_ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="giou"):
        L.giou(t[..., :3], p[..., :3])


def np_generalized_dice(g, p, smooth=1e-5):
    out = []
    for gi, pi in zip(g.astype(float), p.astype(float)):
        gi, pi = gi.reshape(-1, g.shape[-1]), pi.reshape(-1, g.shape[-1])
        counts = gi.sum(0)
        w = np.where(counts > 0, 1 / np.where(counts > 0, counts, 1) ** 2, np.nan)
        w = np.where(np.isnan(w), np.nanmax(w) if np.any(counts > 0) else 1.0, w)
        num = 2 * (w * (gi * pi).sum(0)).sum() + smooth
        out.append(1 - num / ((w * (gi + pi).sum(0)).sum() + smooth))
    return np.array(out)


def seg_data(seed=15, shape=(3, 4, 4, 3)):
    r = rng(seed)
    g = np.eye(shape[-1], dtype="float32")[r.integers(0, shape[-1], size=shape[:-1])]
    p = r.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype("float32")
    return g, p


def test_generalized_dice_reference():
    g, p = seg_data()
    g[1, ..., 2] = 0.0  # image 1 has no pixel of class 2: that class gets the largest weight
    g[1, ..., 0] = 1.0 - g[1, ..., 1]
    np.testing.assert_allclose(np_(L.generalized_dice(g, p)), np_generalized_dice(g, p), rtol=1e-5)
    np.testing.assert_allclose(np_(L.generalized_dice(g, g)), np.zeros(3), atol=1e-6)
    # one class: the weight cancels and it is the (smoothed) Dice loss
    np.testing.assert_allclose(
        np_(L.generalized_dice(g[..., :1], p[..., :1], smooth=0.0)),
        np_(L.dice(g[..., 0], p[..., 0], smooth=0.0)),
        rtol=1e-5,
    )


RELEVANCE = np.array([[2, 1, 0, -1, -1], [0, 0, 1, 3, 1], [0, 0, 0, 0, -1]], "float32")


def np_ranking(labels, scores):
    soft, pair, mle = [], [], []
    for y, s in zip(labels.astype(float), scores.astype(float)):
        valid = y >= 0
        y, s = y[valid], s[valid]
        log_p = s - logsumexp(s)
        soft.append(-(y / y.sum() * log_p).sum() if y.sum() > 0 else 0.0)
        terms = [np.logaddexp(0, -(s[i] - s[j])) for i in range(len(y)) for j in range(len(y))
                 if y[i] > y[j]]  # fmt: skip
        pair.append(np.mean(terms) if terms else 0.0)
        order = sorted(range(len(y)), key=lambda i: -y[i])  # stable: ties in list order
        ss = s[order]
        mle.append(sum(logsumexp(ss[k:]) - ss[k] for k in range(len(ss))))
    return {"ranking_softmax": soft, "pairwise_logistic": pair, "list_mle": mle}


@pytest.mark.parametrize("name", ["ranking_softmax", "pairwise_logistic", "list_mle"])
def test_ranking_reference(name):
    scores = rng(16).normal(scale=2.0, size=RELEVANCE.shape).astype("float32")
    expected = np_ranking(RELEVANCE, scores)[name]
    np.testing.assert_allclose(np_(getattr(L, name)(RELEVANCE, scores)), expected, rtol=1e-5)
    # padding takes part in nothing: its score does not matter
    moved = scores.copy()
    moved[RELEVANCE < 0] = 1e3
    np.testing.assert_allclose(np_(getattr(L, name)(RELEVANCE, moved)), expected, rtol=1e-5)


def test_ranking_by_hand():
    y = np.array([[1.0, 0.0]], "float32")
    s = np.array([[0.5, -0.5]], "float32")
    # two items, one relevant: softmax CE = RankNet = -log sigmoid(1); ListMLE adds log(1) = 0
    expected = math.log1p(math.exp(-1.0))
    for fn in (L.ranking_softmax, L.pairwise_logistic, L.list_mle):
        np.testing.assert_allclose(np_(fn(y, s)), [expected], rtol=1e-6)
    with pytest.raises(ValueError, match="list_mle"):
        L.list_mle(y[0], s[0])


# ============================================================ ignore_index (segmentation)

IGNORABLE = {
    "dice": {},
    "dice_per_class": {"per_class": True},
    "tversky": {"alpha": 0.6, "beta": 0.4},
    "focal_tversky": {"per_class": True},
    "generalized_dice": {},
    "lovasz_hinge": {},
}


def _ignorable(name):
    fn = getattr(L, name.replace("_per_class", ""))
    kw = IGNORABLE[name]
    g, p = seg_data(17)
    if name == "lovasz_hinge":
        g, p = g[..., 0], rng(17).normal(size=g.shape[:-1]).astype("float32")
    elif not (kw.get("per_class") or name == "generalized_dice"):
        g, p = g[..., 1], p[..., 1]
    return fn, kw, g, p


@pytest.mark.parametrize("name", sorted(IGNORABLE))
def test_ignore_index_equals_cropping_the_ignored_pixels(name):
    fn, kw, g, p = _ignorable(name)
    marked = g.copy()
    marked[:, 0] = 255.0  # the first row of every image is "void"
    expected = np_(fn(g[:, 1:], p[:, 1:], **kw))
    got = np_(fn(marked, p, ignore_index=255, **kw))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(np_(fn(g, p, **kw)), expected)  # the row did matter
    _, (grad,) = value_and_grad(lambda y: fn(marked, y, ignore_index=255, **kw), p)
    assert np.all(grad[:, 0] == 0) and np.any(grad[:, 1:] != 0)


def test_ignore_index_with_a_class_axis_drops_the_whole_pixel():
    g, p = seg_data(18)
    marked = g.copy()
    marked[0, 1, 2, 0] = -1.0  # one class entry marks the pixel
    keep = np.ones(g.shape[:-1], bool)
    keep[0, 1, 2] = False
    zeroed_g, zeroed_p = g * keep[..., None], p * keep[..., None]
    np.testing.assert_allclose(
        np_(L.dice(marked, p, per_class=True, ignore_index=-1)),
        np_(L.dice(zeroed_g, zeroed_p, per_class=True)),
        rtol=1e-6,
    )


# ============================================================ gradients (check_gradients)

x64 = functools.partial(np.asarray, dtype="float64")


def gradient_cases():
    y, p = regression_data(20, shape=(3, 2))
    r = rng(21)
    yb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = np.array([[0.3, 0.4], [-0.2, 2.5], [1.7, -0.6]])  # margins 1 - ys away from 0
    probs = r.dirichlet(np.ones(3), size=4)
    labels4 = np.array([0, 2, 1, 2])
    onehot = np.eye(3)[labels4]
    x = r.normal(size=(6, 3))
    unit = x / np.linalg.norm(x, axis=1)[:, None]
    lab6 = LABELS[:6]
    g, gp = seg_data(22, shape=(2, 2, 2, 3))
    ctc_labels, ctc_logits = ctc_data()
    t, b = boxes(23, (3,)), boxes(24, (3,))
    rel = RELEVANCE[:2]
    sc = r.normal(size=rel.shape)
    return {
        "mape": (L.mape, y, x64(p)),
        "msle": (L.msle, y, x64(p)),
        "smooth_l1": (functools.partial(L.smooth_l1, beta=0.05), y, x64(p)),
        "cosine_similarity": (L.cosine_similarity, y, x64(p)),
        "hinge": (L.hinge, yb, s),
        "squared_hinge": (L.squared_hinge, yb, s),
        "generalized_cross_entropy": (
            functools.partial(L.generalized_cross_entropy, q=0.6), labels4, probs
        ),
        "generalized_cross_entropy_logits": (
            functools.partial(L.generalized_cross_entropy, q=0.6, from_logits=True),
            labels4,
            r.normal(size=(4, 3)),
        ),
        "weighted_kappa": (L.weighted_kappa, onehot, probs),
        "generalized_kl": (L.generalized_kl, r.uniform(0.1, 2, (3, 4)), r.uniform(0.1, 2, (3, 4))),
        "generalized_dice": (L.generalized_dice, g, x64(gp)),
        "circle": (functools.partial(L.circle, gamma=4.0), lab6, unit),
        "lifted_structured": (L.lifted_structured, lab6, x),
        "npairs": (L.npairs, lab6, r.normal(size=(6, 6))),
        "triplet_soft": (functools.partial(L.triplet, soft_margin=True), lab6, x),
        "giou": (L.giou, t, x64(b)),
        "ciou_equal_aspect": (L.ciou, t, x64(t * 1.5 + 0.2)),  # v = 0
        "ctc": (L.ctc, ctc_labels, x64(ctc_logits)[:, :5]),
        "ranking_softmax": (L.ranking_softmax, rel, sc),
        "pairwise_logistic": (L.pairwise_logistic, rel, sc),
        "list_mle": (L.list_mle, rel, sc),
    }


GRADIENT_CASES = sorted(gradient_cases())


@pytest.mark.parametrize("name", GRADIENT_CASES)
def test_gradients(name):
    fn, first, second = gradient_cases()[name]
    first = np.asarray(first)
    tolerances = {}
    if name == "ctc" and keras.backend.backend() == "tensorflow":
        # Keras runs tf.nn.ctc_loss in float32 even for float64 inputs (TF's kernel has no
        # float64), so finite differences need a larger step and tolerance there.
        tolerances = {"eps": 1e-2, "atol": 2e-4, "rtol": 1e-3}
    report = losskit.check_gradients(fn, first, x64(second), wrt=[1], **tolerances)
    assert report.ok, str(report)


# ============================================================ extreme inputs (hypothesis)

big = st.floats(-1e4, 1e4, allow_nan=False, width=32)
extreme_pairs = hnp.arrays(np.float32, (2, 2, 3), elements=st.one_of(st.sampled_from([0.0]), big))


@given(extreme_pairs)
def test_regression_family_finite_at_extremes(pair):
    y, p = pair
    for fn in (L.mape, L.msle, L.smooth_l1, L.cosine_similarity, L.hinge, L.squared_hinge):
        value, (_, grad) = value_and_grad(fn, y, p)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), fn.__name__
        if fn is L.cosine_similarity:
            assert np.all(np.abs(value) <= 1 + 1e-5)
        else:
            assert np.all(value >= 0), fn.__name__


measures = hnp.arrays(
    np.float32, (2, 4), elements=st.one_of(st.sampled_from([0.0]), st.floats(0, 1e4, width=32))
)


@given(measures, measures, hnp.arrays(np.float32, (2, 4), elements=st.floats(-100, 50, width=32)))
def test_generalized_kl_finite_and_non_negative(p, q, log_q):
    for args, kw in (((p, q), {}), ((p, log_q), {"log_input": True})):
        value, (_, grad) = value_and_grad(functools.partial(L.generalized_kl, **kw), *args)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), kw
        assert np.all(value >= -1e-6 * np.maximum(1.0, np.abs(value))), (kw, value)


class_scores = hnp.arrays(
    np.float32, (3, 4), elements=st.one_of(st.sampled_from([0.0, 1.0, -1e4, 1e4]), big)
)
probabilities = hnp.arrays(
    np.float32, (3, 4), elements=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1, width=32))
)


@given(class_scores, probabilities, st.sampled_from([0.1, 0.5, 1.0]))
def test_generalized_cross_entropy_finite_and_bounded(logits, probs, q):
    labels = np.array([0, 3, 1])
    probs = probs + np.float32(1e-3)  # a row of zeros is no distribution
    for pred, from_logits in ((logits, True), (probs, False)):
        fn = functools.partial(L.generalized_cross_entropy, q=q, from_logits=from_logits)
        value, (grad,) = value_and_grad(lambda y, fn=fn: fn(labels, y), pred)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
        assert np.all(value >= 0) and np.all(value <= 1 / q + 1e-5)


@given(probabilities, st.lists(st.integers(0, 3), min_size=3, max_size=3))
def test_weighted_kappa_finite_at_saturated_predictions(probs, labels):
    onehot = np.eye(4, dtype="float32")[labels]
    value, (_, grad) = value_and_grad(L.weighted_kappa, onehot, probs)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    assert np.all(value >= math.log(1e-6) - 1e-4)  # O >= 0
    assert np.all(value == value[0])  # a batch quantity


@given(
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e2, 1e4]),
    seed=st.integers(0, 2**16),
    duplicate=st.booleans(),
)
def test_metric_learning_finite_at_extremes(scale, seed, duplicate):
    x = rng(seed).normal(size=(7, 3)).astype("float32") * np.float32(scale)
    if duplicate:
        x[1] = x[0]
        x[2] = x[0]
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cases = [
        (functools.partial(L.circle, LABELS), unit),
        (functools.partial(L.circle, LABELS, block_size=3), unit),
        (functools.partial(L.lifted_structured, LABELS), x),
        (functools.partial(L.triplet, LABELS, soft_margin=True), x),
        (functools.partial(L.triplet, LABELS, soft_margin=True, mining="semi_hard"), x),
        (functools.partial(L.npairs, LABELS), x @ x.T),
    ]
    for fn, inputs in cases:
        value, (grad,) = value_and_grad(fn, inputs)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (fn, value)
        assert np.all(value >= 0), (fn, value)


corner = st.floats(-1e4, 1e4, allow_nan=False, width=32)
size = st.one_of(st.sampled_from([0.0]), st.floats(0, 1e4, width=32))


@given(hnp.arrays(np.float32, (2, 2, 3, 2), elements=corner),
       hnp.arrays(np.float32, (2, 2, 3, 2), elements=size))  # fmt: skip
def test_box_losses_finite_and_bounded(corners, sizes):
    t, p = (np.concatenate([c, c + s], -1) for c, s in zip(corners, sizes))
    for fn, upper in ((L.giou, 2.0), (L.ciou, 6.0)):
        value, (_, grad) = value_and_grad(fn, t, p)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), fn.__name__
        assert np.all(value >= -1e-5) and np.all(value <= upper + 1e-5), (fn.__name__, value)


@given(
    hnp.arrays(np.float32, (2, 5), elements=st.one_of(st.sampled_from([-1e4, 1e4]), big)),
    hnp.arrays(np.float32, (2, 5), elements=st.sampled_from([-1.0, 0.0, 1.0, 2.0, 3.0])),
)
def test_ranking_finite_and_non_negative(scores, labels):
    for fn in (L.ranking_softmax, L.pairwise_logistic, L.list_mle):
        value, (_, grad) = value_and_grad(fn, labels, scores)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), fn.__name__
        assert np.all(value >= -1e-3 * np.maximum(1.0, np.abs(value))), (fn.__name__, value)


@given(hnp.arrays(np.float32, (2, 6, 4), elements=st.floats(-100, 100, width=32)))
def test_ctc_finite_and_non_negative(logits):
    labels = np.array([[1, 2, 0], [3, 3, 1]], "int32")
    value, (grad,) = value_and_grad(lambda z: L.ctc(labels, z), logits)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    assert np.all(value >= -1e-4)


unit_or_edge = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1, width=32))
seg_probs = hnp.arrays(np.float32, (2, 3, 2, 3), elements=unit_or_edge)


@given(seg_probs, st.integers(0, 2**16))
def test_generalized_dice_finite_and_in_unit_interval(p, seed):
    g = np.eye(3, dtype="float32")[rng(seed).integers(0, 3, size=(2, 3, 2))]
    for target in (g, np.zeros_like(g)):  # also images with no labelled pixel at all
        value, (_, grad) = value_and_grad(L.generalized_dice, target, p)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
        assert np.all(value >= -1e-6) and np.all(value <= 1 + 1e-6), value


# ============================================================ Loss classes in compiled models


def dense(inputs, units, **kw):
    return keras.Sequential([keras.Input(inputs), keras.layers.Dense(units, **kw)])


def saving_cases():
    r = rng(30)
    x3 = r.normal(size=(14, 4)).astype("float32")
    y_pos = r.uniform(0.5, 2.0, size=(14, 3)).astype("float32")
    y_pm = r.choice([-1.0, 1.0], size=(14, 3)).astype("float32")
    cls4 = r.integers(0, 4, size=14)
    labels = np.tile(np.arange(7), 2)
    softmax4 = functools.partial(dense, (4,), 4, activation="softmax")
    ranked = np.array([[3, 2, 1, 0, -1]] * 14, "float32")
    items = r.normal(size=(14, 5, 2)).astype("float32")
    seq = np.array([[1, 2, 0], [2, 0, 0]] * 7, "int32")
    box_head = functools.partial(
        dense, (4,), 4, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer=keras.initializers.Constant([0.0, 0.0, 1.0, 1.0]),
    )  # fmt: skip
    g = np.eye(3, dtype="float32")[r.integers(0, 3, size=(14, 4, 4))]
    return {
        "MAPE": ({}, lambda: dense((4,), 3), x3, y_pos),
        "MSLE": ({}, lambda: dense((4,), 3, activation="softplus"), x3, y_pos),
        "SmoothL1": ({"beta": 0.5}, lambda: dense((4,), 3), x3, y_pos),
        "CosineSimilarity": ({"axis": -1}, lambda: dense((4,), 3), x3, y_pos),
        "Hinge": ({}, lambda: dense((4,), 3), x3, y_pm),
        "SquaredHinge": ({}, lambda: dense((4,), 3), x3, y_pm),
        "GeneralizedCrossEntropy": ({"q": 0.3}, softmax4, x3, cls4),
        "WeightedKappa": ({"weightage": "linear"}, softmax4, x3, np.eye(4, dtype="float32")[cls4]),
        "GeneralizedKL": ({"log_input": True}, lambda: dense((4,), 3), x3, y_pos),
        "GeneralizedDice": (
            {"smooth": 1e-3, "ignore_index": 255},
            lambda: dense((4, 4, 3), 3, activation="softmax"),
            g * 2.0 - 0.5,
            g,
        ),
        "Circle": (
            {"gamma": 32.0, "margin": 0.3, "block_size": 3},
            lambda: keras.Sequential(
                [keras.Input((4,)), keras.layers.Dense(3), keras.layers.UnitNormalization()]
            ),
            x3,
            labels,
        ),
        "LiftedStructured": ({"margin": 0.5}, lambda: dense((4,), 3), x3, labels),
        "NPairs": ({}, lambda: dense((4,), 7), x3[:7], labels[:7]),
        "Triplet": ({"soft_margin": True, "block_size": 3}, lambda: dense((4,), 3), x3, labels),
        "GIoU": ({"eps": 1e-6}, box_head, x3, boxes(31, (14,))),
        "CIoU": ({"eps": 1e-6}, box_head, x3, boxes(32, (14,))),
        "CTC": ({}, lambda: dense((6, 2), 4), r.normal(size=(14, 6, 2)).astype("float32"), seq),
        "RankingSoftmax": ({}, ranker, items, ranked),
        "PairwiseLogistic": ({}, ranker, items, ranked),
        "ListMLE": ({}, ranker, items, ranked),
    }


def ranker():
    return keras.Sequential(
        [keras.Input((5, 2)), keras.layers.Dense(1), keras.layers.Reshape((5,))]
    )


@pytest.mark.parametrize("name", sorted(saving_cases()))
def test_saved_in_a_compiled_model(name, tmp_path):
    params, build, x, y = saving_cases()[name]
    cls = L.CLASSES[name]
    model = build()
    model.compile(optimizer="sgd", loss=cls(**params))
    history = model.fit(x, y, batch_size=7, epochs=1, verbose=0)  # NPairs: a (7, 7) matrix
    assert np.isfinite(history.history["loss"][-1])
    assert_loss_survives_saving(model, cls, params, x, y, tmp_path)


def test_class_value_is_the_mean_of_the_function():
    y, p = regression_data(33)
    for name, fn in (("MAPE", L.mape), ("MSLE", L.msle), ("Hinge", L.hinge)):
        np.testing.assert_allclose(np_(L.CLASSES[name]()(y, p)), np_(fn(y, p)).mean(), rtol=1e-6)
    labels, logits = ctc_data()
    with pytest.raises(ValueError, match="label sequences"):
        L.CTC()(labels[:2], logits)


# ============================================================ registry and docs


def test_registry_serialization_and_docs():
    docs = (pathlib.Path(__file__).parents[1] / "docs" / "losses.md").read_text()
    for name in NEW_FUNCTIONS:
        fn = L.ALL[name]
        assert fn is getattr(L, name)
        assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fn)) is fn
        assert "Reference" in fn.__doc__, name
        assert f"| `{name}" in docs, f"docs/losses.md has no row for {name}"
    for name in NEW_CLASSES:
        assert L.CLASSES[name] is getattr(L, name)
        assert f"`{name}`" in docs, name
    assert set(L.FAMILIES["ranking"]) == {"ranking_softmax", "pairwise_logistic", "list_mle"}
    assert L.FAMILIES["detection"] == ("giou", "ciou")
    assert L.FAMILIES["sequence"] == ("ctc",)
    assert "soft_margin" in L.Triplet.defaults

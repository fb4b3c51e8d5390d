"""Metric-learning losses: values vs loop-based NumPy references and hand-computed cases,
gradients via check_gradients, blocked == unblocked, extreme inputs, Loss-class round trips."""

import functools

import keras
import numpy as np
import pytest
from conftest import BACKEND, only_backend
from hypothesis import given
from hypothesis import strategies as st
from keras import ops
from saving_helpers import assert_loss_survives_saving
from scipy.special import logsumexp

import losskit
from losskit.gradients import value_and_grad
from losskit.losses import metric_learning as ml

LABELS = np.array([0, 1, 0, 2, 1, 0, 3])  # class 3 is a singleton: an anchor without positives
# npairs takes an (N, N) similarity matrix, not embeddings: tested in test_losses_anchors.py.
EMBEDDING_FUNCTIONS = [f for f in ml.FUNCTIONS if f is not ml.npairs]
EMBEDDING_CLASSES = [c for c in ml.CLASSES if c is not ml.NPairs]


def np_dist(x):
    x = x.astype(float)  # the reference in float64
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def np_contrastive(labels, x, margin=1.0):
    d = np_dist(x)
    out = np.zeros(len(x))
    for i in range(len(x)):
        terms = [
            0.5 * d[i, j] ** 2 if labels[i] == labels[j] else 0.5 * max(0.0, margin - d[i, j]) ** 2
            for j in range(len(x))
            if j != i
        ]
        out[i] = np.mean(terms) if terms else 0.0
    return out


def np_triplet(labels, x, margin=1.0, mining="batch_hard", squared=False, soft_margin=False):
    d = np_dist(x) ** 2 if squared else np_dist(x)

    def penalty(gap):  # gap = d(a, p) - d(a, n)
        return np.logaddexp(0.0, gap) if soft_margin else max(0.0, margin + gap)

    out = np.zeros(len(x))
    for a in range(len(x)):
        pos = [p for p in range(len(x)) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(len(x)) if labels[n] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_hard":
            hp, hn = max(d[a, p] for p in pos), min(d[a, n] for n in neg)
            out[a] = penalty(hp - hn)
            continue
        terms = []
        for p in pos:  # tfa.losses.triplet_semihard_loss's rule, one triplet at a time
            farther = [d[a, n] for n in neg if d[a, n] > d[a, p]]
            dn = min(farther) if farther else max(d[a, n] for n in neg)
            terms.append(penalty(d[a, p] - dn))
        out[a] = np.mean(terms)
    return out


def np_logits(x, temperature, normalize):
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T / temperature


def np_info_nce(labels, x, temperature=0.1, normalize=True):
    s = np_logits(x, temperature, normalize)
    out = np.zeros(len(x))
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        pos = [j for j in others if labels[j] == labels[i]]
        if pos:
            out[i] = -(logsumexp(s[i, pos]) - logsumexp(s[i, others]))
    return out


def np_supcon(labels, x, temperature=0.1, normalize=True):
    s = np_logits(x, temperature, normalize)
    out = np.zeros(len(x))
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        pos = [j for j in others if labels[j] == labels[i]]
        if pos:
            out[i] = -np.mean([s[i, p] - logsumexp(s[i, others]) for p in pos])
    return out


def np_nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent written from the paper: view k's positive is the other view of k."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / temperature
    m = len(z1)
    out = []
    for k in range(2 * m):
        pos = (k + m) % (2 * m)
        denom = sum(np.exp(sim[k, j]) for j in range(2 * m) if j != k)
        out.append(-np.log(np.exp(sim[k, pos]) / denom))
    return np.array(out)


REFERENCES = {
    "contrastive": (ml.contrastive, np_contrastive),
    "triplet": (ml.triplet, np_triplet),
    "info_nce": (ml.info_nce, np_info_nce),
    "supcon": (ml.supcon, np_supcon),
}
CASES = [
    ("contrastive", {}),
    ("contrastive", {"margin": 2.5}),
    ("triplet", {"mining": "batch_hard"}),
    ("triplet", {"mining": "semi_hard", "margin": 0.7}),
    ("triplet", {"mining": "batch_hard", "squared": True}),
    ("triplet", {"mining": "semi_hard", "squared": True, "margin": 2.0}),
    ("info_nce", {}),
    ("info_nce", {"temperature": 0.5, "normalize": False}),
    ("supcon", {}),
    ("supcon", {"temperature": 0.3, "normalize": False}),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in CASES]


def embeddings(n=7, d=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype("float32")


def np_(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("name,kw", CASES, ids=CASE_IDS)
def test_values_match_numpy_reference(name, kw):
    fn, ref = REFERENCES[name]
    x = embeddings()
    got = np_(fn(LABELS, x, **kw))
    assert got.shape == (len(x),)
    np.testing.assert_allclose(got, ref(LABELS, x.astype(np.float64), **kw), rtol=1e-4, atol=1e-5)


def test_contrastive_hand_computed():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.5]], "float32")
    # d01 = 5 (same class): 12.5; d02 = 0.5 (other): 0.5 * 0.5**2; d12 = 4.61 > margin: 0
    np.testing.assert_allclose(
        np_(ml.contrastive(np.array([0, 0, 1]), x)), [6.3125, 6.25, 0.0625], rtol=1e-6
    )


def test_triplet_hand_computed():
    x = np.array([[0.0], [1.0], [3.0], [0.5]], "float32")
    labels = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(np_(ml.triplet(labels, x)), [1.5, 1.5, 1.5, 3.0], rtol=1e-6)
    # semi-hard: anchors 0, 1 have a negative farther than their positive but within the margin
    # only for anchor 2 (3 vs 2.5); anchor 3 has none and falls back to its farthest negative.
    np.testing.assert_allclose(
        np_(ml.triplet(labels, x, mining="semi_hard")), [0.0, 0.0, 0.5, 3.0], rtol=1e-6
    )


def test_info_nce_two_views_is_nt_xent_and_equals_supcon():
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    x = np.concatenate([z1, z2]).astype("float32")
    labels = np.concatenate([np.arange(4), np.arange(4)])
    expected = np_nt_xent(z1, z2, 0.2)
    np.testing.assert_allclose(np_(ml.info_nce(labels, x, temperature=0.2)), expected, rtol=1e-4)
    np.testing.assert_allclose(np_(ml.supcon(labels, x, temperature=0.2)), expected, rtol=1e-4)


def test_anchors_without_positives_contribute_zero():
    labels = np.arange(5)
    x = embeddings(5)
    for fn in (ml.info_nce, ml.supcon, ml.triplet):  # contrastive still pushes negatives away
        np.testing.assert_array_equal(np_(fn(labels, x)), np.zeros(5))
    np.testing.assert_array_equal(np_(ml.supcon(labels, x, block_size=2)), np.zeros(5))
    for fn in EMBEDDING_FUNCTIONS:  # a batch of one
        np.testing.assert_array_equal(np_(fn(np.array([3]), x[:1])), [0.0])


def test_label_shape_n_by_1_and_bad_shapes():
    x = embeddings()
    np.testing.assert_allclose(
        np_(ml.supcon(LABELS[:, None], x)), np_(ml.supcon(LABELS, x)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="embeddings must have shape"):
        ml.triplet(LABELS, x[:, :, None])
    with pytest.raises(ValueError, match="mining"):
        ml.triplet(LABELS, x, mining="hardest")


@pytest.mark.parametrize("name,kw", CASES, ids=CASE_IDS)
def test_gradients(name, kw):
    fn = REFERENCES[name][0]
    x = embeddings(6, 3, seed=2).astype(np.float64)
    labels = LABELS[:6]
    report = losskit.check_gradients(lambda e: fn(labels, e, **kw), x)
    assert report.ok, str(report)


BLOCK_CASES = [(case, 3) for case in CASES[::2] + [CASES[3]]] + [
    (CASES[3], 1),  # one anchor per block
    (CASES[6], 4),
    (CASES[8], 50),  # block larger than the batch: the unblocked path
]


@pytest.mark.parametrize(
    "case,block_size", BLOCK_CASES, ids=[f"{c[0]}-{i}-b{b}" for i, (c, b) in enumerate(BLOCK_CASES)]
)
def test_blocked_equals_unblocked(case, block_size):
    name, kw = case
    fn = REFERENCES[name][0]
    x = embeddings()  # 7 anchors: blocks of 3 and 4 leave a partial last block
    full_value, (full_grad,) = value_and_grad(lambda e: fn(LABELS, e, **kw), x)
    value, (grad,) = value_and_grad(lambda e: fn(LABELS, e, block_size=block_size, **kw), x)
    assert value.shape == (7,)
    np.testing.assert_allclose(value, full_value, rtol=1e-5, atol=1e-6)
    # float32 sums in another order: compare to the gradient's scale
    np.testing.assert_allclose(grad, full_grad, rtol=1e-5, atol=1e-6 * np.abs(full_grad).max())


@only_backend("tensorflow")
def test_blocked_with_unknown_batch_size_in_a_graph():
    import tensorflow as tf

    x = embeddings()

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 3], tf.float32)]
    )
    def blocked(labels, e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = ml.triplet(labels, e, mining="semi_hard", block_size=3)
        return value, tape.gradient(value, e)

    value, grad = blocked(LABELS, x)
    np.testing.assert_allclose(value.numpy(), np_triplet(LABELS, x, mining="semi_hard"), rtol=1e-4)
    _, (expected_grad,) = value_and_grad(lambda e: ml.triplet(LABELS, e, mining="semi_hard"), x)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-5, atol=1e-6)
    spec = [tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 3], tf.float32)]
    for fn in EMBEDDING_FUNCTIONS:  # unblocked, unknown batch size
        graph = tf.function(fn, input_signature=spec)
        np.testing.assert_allclose(graph(LABELS, x).numpy(), np_(fn(LABELS, x)), rtol=1e-5)


@only_backend("tensorflow", "jax")  # torch runs eagerly: the other tests cover it
def test_jit_blocked():
    x = embeddings()
    if BACKEND == "jax":
        import jax

        fn = jax.jit(functools.partial(ml.supcon, block_size=2))
    else:
        import tensorflow as tf

        fn = tf.function(functools.partial(ml.supcon, block_size=2), jit_compile=False)
    np.testing.assert_allclose(np_(fn(LABELS, x)), np_supcon(LABELS, x), rtol=1e-4)


# ----------------------------------------------------------------- extreme inputs (hypothesis)

CASES_EXTREME = CASES[::2] + [CASES[3], CASES[7], CASES[9]]


@given(
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e2, 1e4]),
    seed=st.integers(0, 2**16),
    duplicate=st.booleans(),
)
def test_finite_and_nonnegative_at_extremes(scale, seed, duplicate):
    x = embeddings(seed=seed) * np.float32(scale)
    if duplicate:  # identical embeddings: zero distances where sqrt is not differentiable
        x[1] = x[0]
        x[2] = x[0]
    for name, kw in CASES_EXTREME:
        fn = REFERENCES[name][0]
        blocked = functools.partial(fn, LABELS, **kw)
        value, (grad,) = value_and_grad(blocked, x)
        assert np.all(np.isfinite(value)), (name, kw, value)
        assert np.all(np.isfinite(grad)), (name, kw, grad)
        assert np.all(value >= -1e-5 * max(1.0, np.abs(value).max())), (name, kw, value)


# ----------------------------------------------------------------- Loss classes

NON_DEFAULT = {
    ml.Contrastive: {"margin": 0.5, "block_size": 3},
    ml.Triplet: {"margin": 0.3, "mining": "semi_hard", "squared": True, "block_size": 3},
    ml.InfoNCE: {"temperature": 0.5, "normalize": False, "block_size": 3},
    ml.SupCon: {"temperature": 0.2, "block_size": 3},
    ml.Circle: {"gamma": 32.0, "margin": 0.3, "block_size": 3},
    ml.LiftedStructured: {"margin": 0.5},
}


@pytest.mark.parametrize("cls", EMBEDDING_CLASSES, ids=lambda c: c.__name__)
def test_loss_class_config_round_trip_and_value(cls):
    params = NON_DEFAULT[cls]
    loss = cls(**params)
    config = loss.get_config()
    assert {k: config[k] for k in params} == params
    again = cls.from_config(config)
    assert again.get_config() == config
    x = embeddings()
    per_sample = cls.fn(LABELS, x, **params)
    np.testing.assert_allclose(np_(again(LABELS, x)), np.mean(np_(per_sample)), rtol=1e-5)
    # the Loss keeps integer labels and checks that they are (N,) for (N, D) embeddings
    with pytest.raises(ValueError, match="do not match"):
        loss(LABELS[:-1], x)


@pytest.mark.parametrize("cls", EMBEDDING_CLASSES, ids=lambda c: c.__name__)
def test_saved_in_a_compiled_model(cls, tmp_path):
    params = NON_DEFAULT[cls]
    rng = np.random.default_rng(0)
    features = rng.normal(size=(14, 4)).astype("float32")
    labels = np.tile(np.arange(7), 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=cls(**params))
    model.fit(features, labels, batch_size=7, epochs=1, verbose=0)
    assert_loss_survives_saving(model, cls, params, features, labels, tmp_path)


def test_registry_and_function_serialization():
    assert losskit.losses.FAMILIES["metric_learning"] == tuple(f.__name__ for f in ml.FUNCTIONS)
    for fn in ml.FUNCTIONS:
        assert losskit.losses.ALL[fn.__name__] is fn is getattr(losskit.losses, fn.__name__)
        assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fn)) is fn
        assert "Reference" in fn.__doc__
    for cls in ml.CLASSES:
        assert losskit.losses.CLASSES[cls.__name__] is cls is getattr(losskit.losses, cls.__name__)

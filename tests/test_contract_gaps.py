"""Contract gaps a new-user trial found (issue 20, second round): labels that a backend's integer
conversion would wrap, parameter domains against Keras's, Term constants, per-sample weights of
per-position values, list inputs, check_gradients' own contract."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import losses as L

BIG = 2**32 + 1  # int32 wraps it to 1: a valid class, the silent wrong answer this guards


def _logits(shape=(3, 4)):
    return np.random.default_rng(0).normal(size=shape).astype("float32")


def _probs(shape=(3, 4)):
    return keras.ops.convert_to_numpy(ops.softmax(_logits(shape)))


def _fused(labels):
    rng = np.random.default_rng(1)
    h, w = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    return L.fused_linear_cross_entropy(h, w, labels)


def _fused_distillation(labels):
    rng = np.random.default_rng(1)
    h, w = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    return L.fused_linear_distillation(h, w, h, w, labels)


def _ctc(labels):
    return L.ctc(np.stack([labels, labels]), _logits((2, 6, 4)))


CLASS_INDEX_LOSSES = {
    "sparse_categorical_crossentropy": lambda y: L.sparse_categorical_crossentropy(
        y, _logits(), from_logits=True),
    "SparseCategoricalCrossentropy": lambda y: L.SparseCategoricalCrossentropy(
        from_logits=True)(y, _logits()),
    "generalized_cross_entropy": lambda y: L.generalized_cross_entropy(y, _probs()),
    "GeneralizedCrossEntropy": lambda y: L.GeneralizedCrossEntropy()(y, _probs()),
    "fused_linear_cross_entropy": _fused,
    "fused_linear_distillation": _fused_distillation,
    "ctc": _ctc,
}


@pytest.mark.parametrize("big", [BIG, 2**40, -(2**32) + 2], ids=["2**32+1", "2**40", "-2**32+2"])
@pytest.mark.parametrize("form", ["int64", "list"])
@pytest.mark.parametrize("name", sorted(CLASS_INDEX_LOSSES))
def test_labels_a_backend_would_wrap_raise_naming_the_loss(name, form, big):
    labels = [0, big, 2]
    labels = np.array(labels, "int64") if form == "int64" else labels
    with pytest.raises(ValueError, match=rf"(?s){name}.*{big}"):
        CLASS_INDEX_LOSSES[name](labels)


@pytest.mark.parametrize("loss", [L.triplet, L.supcon, L.Triplet()])
def test_class_ids_are_never_aliased(loss):
    """Metric-learning labels are any ids: 2**32 + 1 and 1 are different classes. Where the
    backend keeps 64 bits the loss equals that of distinct small ids; else it raises."""
    emb = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
    labels = np.array([1, BIG, 1, BIG], "int64")
    name = getattr(loss, "name", None) or loss.__name__
    if losskit.backend.integer_bits() < 64:
        with pytest.raises(ValueError, match=rf"{name}.*{BIG}"):
            loss(labels, emb)
        return
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.sum(loss(labels, emb))),
        ops.convert_to_numpy(ops.sum(loss(np.array([1, 2, 1, 2], "int64"), emb))), rtol=1e-6)


def test_term_side_labels_a_backend_would_wrap_raise_naming_the_term():
    term = losskit.Term(L.sparse_categorical_crossentropy, name="ce", from_logits=True)
    data = {"y": np.array([0, BIG, 2], "int64"), "pred": _logits()}
    with pytest.raises(ValueError, match=rf"Term 'ce'.*{BIG}"):
        term.values(lambda name, p, s: data[s.key if s.kind == "x" else s.kind])

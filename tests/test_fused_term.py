"""A Dense head trained through `ObjectiveModel` with the fused cross-entropy as a token-level
Term: the same steps as the naive per-token cross-entropy of the head's logits, logits never
computed in training, `predict` still the logits, and evaluate / save / load / resume."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import Objective, ObjectiveModel, Term

B, T, V, H, E = 6, 5, 11, 8, 7
RNG = np.random.default_rng(3)
TOKENS = RNG.integers(0, V, size=(B, T)).astype("int32")
LABELS = RNG.integers(0, V, size=(B, T)).astype("int32")
LABELS[0, 3:] = -100  # padding, uneven across sequences
LABELS[4, 1:] = -100


def language_model():
    keras.utils.set_random_seed(7)
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(V, E, name="embed")(tokens)
    h = keras.layers.Dense(H, activation="tanh", name="h")(x)
    logits = keras.layers.Dense(V, name="head")(h)
    return keras.Model(tokens, logits)


def fused_objective():
    return Objective([
        Term(losskit.losses.fused_linear_cross_entropy, hidden="layer.h",
             kernel="var.head.kernel", bias="var.head.bias", labels="y",
             name="ce"),
    ])  # fmt: skip


def naive_objective():
    return Objective([
        Term(losskit.losses.sparse_categorical_crossentropy, from_logits=True,
             ignore_index=-100, name="ce"),
    ])  # fmt: skip


def train(objective, epochs=2):
    model = ObjectiveModel(language_model(), objective)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    history = model.fit({"tokens": TOKENS}, LABELS, batch_size=3, epochs=epochs, shuffle=False,
                        verbose=0)  # fmt: skip
    return model, history


def np_token_ce(logits, labels):
    kept = labels != -100
    z = logits[kept].astype(float)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, labels[kept][:, None], -1).mean()


def test_fused_term_trains_like_the_naive_token_cross_entropy():
    fused, fused_history = train(fused_objective())
    naive, naive_history = train(naive_objective())
    np.testing.assert_allclose(fused_history.history["ce"], naive_history.history["ce"],
                               rtol=1e-5)  # fmt: skip
    for a, b in zip(fused.inner.get_weights(), naive.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    logits = ops.convert_to_numpy(fused.predict({"tokens": TOKENS}, verbose=0))
    assert logits.shape == (B, T, V)
    logs = fused.evaluate({"tokens": TOKENS}, LABELS, batch_size=B, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["ce"], np_token_ce(logits, LABELS), rtol=1e-5)


def test_training_never_runs_the_head():
    model = ObjectiveModel(language_model(), fused_objective())
    assert "head" not in [layer.name for layer in model._tapped.layers]
    model.compile(optimizer="sgd", metrics=["accuracy"])  # metrics read the output: head back
    assert "head" in [layer.name for layer in model._tapped.layers]


def test_fused_term_saves_loads_and_resumes(tmp_path):
    straight, _ = train(fused_objective(), epochs=2)
    first, _ = train(fused_objective(), epochs=1)
    path = tmp_path / "lm.keras"
    first.save(path)
    loaded = keras.saving.load_model(path)
    loaded.fit({"tokens": TOKENS}, LABELS, batch_size=3, epochs=2, initial_epoch=1,
               shuffle=False, verbose=0)  # fmt: skip
    for a, b in zip(straight.inner.get_weights(), loaded.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----- sample weights that change rank between calls -------------------------------------------
# TensorFlow retraces a step whose sample weights changed rank ((B,) then (B, T)) with an
# unknown-rank weight (`tf.function(reduce_retracing=True)`); its shape is only known when the
# step runs. Every call must still give the weighted kept-token mean, on every backend.

PER_SEQUENCE = RNG.uniform(0.5, 2.0, size=B).astype("float32")
PER_TOKEN = RNG.uniform(0.5, 2.0, size=(B, T)).astype("float32")


def np_weighted_token_ce(logits, labels, weights):
    kept = labels != -100
    z = logits.astype(float) - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, np.where(kept, labels, 0)[..., None], -1)[..., 0]
    w = np.broadcast_to(weights.reshape(weights.shape + (1,) * (2 - weights.ndim)), ce.shape)
    return np.sum(ce * w * kept) / kept.sum()


def _ce_of(model, method, weights):
    x = {"tokens": TOKENS}
    if method == "fit":
        history = model.fit(x, LABELS, sample_weight=weights, batch_size=B, verbose=0)
        return history.history["ce"][0]
    if method == "evaluate":
        return model.evaluate(x, LABELS, sample_weight=weights, batch_size=B, verbose=0,
                              return_dict=True)["ce"]  # fmt: skip
    return getattr(model, method)(x, LABELS, sample_weight=weights, return_dict=True)["ce"]


@pytest.mark.parametrize("objective", [fused_objective, naive_objective])
def test_sample_weights_of_another_rank_in_the_next_call(objective):
    model = ObjectiveModel(language_model(), objective())
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # the weights stay: one reference
    logits = ops.convert_to_numpy(model.predict({"tokens": TOKENS}, batch_size=B, verbose=0))
    methods = ["evaluate", "test_on_batch", "train_on_batch", "fit"]
    for method in methods if objective is fused_objective else methods[:2]:
        for weights in (PER_SEQUENCE, PER_TOKEN, PER_SEQUENCE):
            expected = np_weighted_token_ce(logits, LABELS, weights)
            np.testing.assert_allclose(_ce_of(model, method, weights), expected, rtol=1e-5,
                                       err_msg=f"{method} {weights.shape}")  # fmt: skip
    # A shape that fits no position: refused when traced (JAX, torch, TF's first trace), NaN
    # where its rank is only known when the step runs (TF's relaxed trace): never broadcast.
    wrong = np.ones((T, B), "float32")
    try:
        value = _ce_of(model, "evaluate", wrong)
    except ValueError as error:
        assert "sample_weight" in str(error)
    else:
        assert np.isnan(value)


def test_losskit_loss_takes_sample_weights_of_another_rank_in_the_next_call():
    """A losskit `Loss` in Keras's own `compile` (where Keras's built-in loss fails on TF, on the
    unknown-rank weight)."""
    labels = np.where(LABELS < 0, 0, LABELS)
    model = language_model()
    model.compile(loss=losskit.losses.SparseCategoricalCrossentropy(from_logits=True))
    logits = ops.convert_to_numpy(model.predict(TOKENS, batch_size=B, verbose=0))
    for weights in (PER_SEQUENCE, PER_TOKEN, PER_SEQUENCE):
        expected = np_weighted_token_ce(logits, labels, weights)  # "sum_over_batch_size"
        value = model.evaluate(TOKENS, labels, sample_weight=weights, batch_size=B, verbose=0)
        np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=str(weights.shape))

"""A Dense head trained through `ObjectiveModel` with the fused cross-entropy as a token-level
Term: the same steps as the naive per-token cross-entropy of the head's logits, logits never
computed in training, `predict` still the logits, and evaluate / save / load / resume."""

import keras
import numpy as np
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

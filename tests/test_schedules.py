"""Schedules: values against their formulas, serialization, and updating inside the compiled
train step (TF and JAX; plain Keras freezes a variable loss weight under JAX jit)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import losskit
from losskit import schedules

STEPS = [0, 1, 5, 10, 14, 15, 20, 37, 100]


def _values(schedule):
    return [float(ops.convert_to_numpy(schedule(s))) for s in STEPS]


def _ramp(t, steps, delay):
    return min(max((t - delay) / steps, 0.0), 1.0)


@pytest.mark.parametrize(
    "schedule, formula",
    [
        (schedules.Constant(0.3), lambda t: 0.3),
        (schedules.Linear(0.0, 1.0, steps=20), lambda t: _ramp(t, 20, 0)),
        (schedules.Linear(2.0, 0.5, steps=10, delay=5), lambda t: 2.0 - 1.5 * _ramp(t, 10, 5)),
        (
            schedules.Cosine(0.0, 1.0, steps=20, delay=5),
            lambda t: 0.5 * (1 - math.cos(math.pi * _ramp(t, 20, 5))),
        ),
        (
            schedules.Sigmoid(0.0, 2.0, midpoint=15, rate=0.3),
            lambda t: 2.0 / (1 + math.exp(-0.3 * (t - 15))),
        ),
        (
            schedules.Cyclical(period=10, ratio=0.5),
            lambda t: min((t % 10) / 10 / 0.5, 1.0),
        ),
        (
            schedules.Cyclical(period=10, start=0.2, end=1.0, ratio=0.8, cycles=2),
            lambda t: 1.0 if t >= 20 else 0.2 + 0.8 * min((t % 10) / 10 / 0.8, 1.0),
        ),
    ],
)
def test_schedule_values_match_their_formula(schedule, formula):
    np.testing.assert_allclose(_values(schedule), [formula(t) for t in STEPS], rtol=1e-5, atol=1e-6)


def test_schedules_round_trip_through_keras_serialization():
    for schedule in [
        schedules.Constant(2.0),
        schedules.Linear(0, 1, 50, delay=3),
        schedules.Cosine(1, 0, 40),
        schedules.Sigmoid(0, 1, midpoint=7, rate=0.5),
        schedules.Cyclical(12, ratio=0.25, cycles=3),
    ]:
        config = keras.saving.serialize_keras_object(schedule)
        again = keras.saving.deserialize_keras_object(config, safe_mode=True)
        assert type(again) is type(schedule)
        assert again.get_config() == schedule.get_config()
        np.testing.assert_allclose(_values(again), _values(schedule))


def test_invalid_cyclical_is_refused():
    with pytest.raises(ValueError, match="Cyclical"):
        schedules.Cyclical(period=10, ratio=0.0)


def ones(y_true, y_pred):
    """A term worth exactly 1 per sample: the logged total is then the weight used."""
    return ops.ones_like(y_pred[:, 0]) + 0.0 * y_true[:, 0]


def test_schedule_changes_inside_the_compiled_train_step():
    schedule = schedules.Linear(0.0, 1.0, steps=8)
    inp = keras.Input((2,), name="features")
    inner = keras.Model(inp, keras.layers.Dense(1)(inp))
    objective = losskit.Objective(
        [
            losskit.Term(ones, weight=schedule, name="ones"),
            losskit.Term(keras.losses.mean_squared_error, weight=0.0, name="mse"),
        ]
    )
    model = losskit.ObjectiveModel(inner, objective)
    model.compile(optimizer="sgd")  # compiled: tf.function on TF, jax.jit on JAX
    assert not model.run_eagerly
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((logs["ones_weight"], logs["loss"]))

    x = np.zeros((12, 2), "float32")
    model.fit(
        {"features": x}, np.zeros((12, 1)), batch_size=2, epochs=2, verbose=0, callbacks=[Record()]
    )
    weights = [w for w, _ in seen]
    expected = [min(t / 8, 1.0) for t in range(12)]
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    # The total (a running mean over the epoch) is built from those weights inside the step.
    losses = [loss for _, loss in seen]
    running = [np.mean(expected[:6][: b + 1]) for b in range(6)]
    running += [np.mean(expected[6:][: b + 1]) for b in range(6)]
    np.testing.assert_allclose(losses, running, atol=1e-6)

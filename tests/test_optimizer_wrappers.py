"""ObjectiveModel under the optimizer options Keras offers around the update: gradient
accumulation, EMA, loss scaling (explicit and via `mixed_float16`). Each trains the same weights
as a plain Keras model compiled with the same loss and the same optimizer, and a scheduled weight
reads the step that reduction rule 6 names (updates applied, shared by one update's micro-batches).
"""

import keras
import numpy as np
import pytest

import losskit
from losskit import ObjectiveModel, Term
from losskit.schedules import Linear

RNG = np.random.default_rng(3)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.normal(size=(32, 1)).astype("float32")
Y01 = (RNG.uniform(size=(32, 1)) > 0.5).astype("float32")


def inner(activation=None):
    keras.utils.set_random_seed(1)
    i = keras.Input((4,))
    return keras.Model(i, keras.layers.Dense(1, activation=activation, name="dense")(i))


def weights_of(model):
    return [keras.ops.convert_to_numpy(v).astype("float32") for v in model.weights]


OPTIMIZERS = {
    "accumulate": lambda: keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2),
    "accumulate_sgd": lambda: keras.optimizers.SGD(0.1, gradient_accumulation_steps=3),
    "ema": lambda: keras.optimizers.Adam(1e-2, use_ema=True, ema_overwrite_frequency=2),
    "ema_accumulate": lambda: keras.optimizers.SGD(
        0.1, use_ema=True, ema_overwrite_frequency=1, gradient_accumulation_steps=2
    ),
    "loss_scale_accumulate": lambda: keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2)
    ),
}

# (the Term's function, the same loss as Keras's compile(loss=...), labels, activation)
LOSSES = {
    "mse_function": (keras.losses.mean_squared_error, "mse", Y, None),
    "huber_losskit": (losskit.losses.Huber(delta=0.5), keras.losses.Huber(0.5), Y, None),
    "bce_class": (keras.losses.BinaryCrossentropy(), "binary_crossentropy", Y01, "sigmoid"),
}


CASES = [
    *[("accumulate", loss) for loss in sorted(LOSSES)],
    ("accumulate_sgd", "huber_losskit"),
    ("ema_accumulate", "mse_function"),
    ("loss_scale_accumulate", "huber_losskit"),
]


@pytest.mark.parametrize("opt, loss", CASES)
def test_trains_as_plain_keras(opt, loss):
    fn, keras_loss, y, activation = LOSSES[loss]
    model = ObjectiveModel(inner(activation), [Term(fn, name="t")])
    model.compile(optimizer=OPTIMIZERS[opt]())
    history = model.fit(X, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    reference = inner(activation)
    reference.compile(optimizer=OPTIMIZERS[opt](), loss=keras_loss)
    expected = reference.fit(X, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(weights_of(model.inner), weights_of(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["t"], expected.history["loss"], rtol=1e-5)


def test_mixed_float16_loss_scale():
    """`mixed_float16` makes Keras wrap the optimizer in a LossScaleOptimizer."""
    keras.config.set_dtype_policy("mixed_float16")
    model = ObjectiveModel(inner(), [Term(keras.losses.mean_squared_error, name="t")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    reference = inner()
    reference.compile(
        optimizer=keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2), loss="mse"
    )
    reference.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(weights_of(model.inner), weights_of(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)  # float16 forward pass


def test_schedule_reads_the_update_count():
    """With `gradient_accumulation_steps=2` the micro-batches 0, 1 read step 0 and 2, 3 step 1:
    the same update as plain Keras with those weights as sample weights."""
    schedule = Linear(1.0, 3.0, steps=2)  # w(0) = 1, w(1) = 2, w(2) = 3
    model = ObjectiveModel(inner(), [Term(keras.losses.mean_squared_error, weight=schedule,
                                          name="t")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))
    history = model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    reference = inner()
    reference.compile(optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
                      loss="mse")
    sample_weight = np.repeat([1.0, 1.0, 2.0, 2.0], 8).astype("float32")
    reference.fit(X, Y, sample_weight=sample_weight, batch_size=8, epochs=1, shuffle=False,
                  verbose=0)
    for got, want in zip(weights_of(model.inner), weights_of(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert history.history["t_weight"] == [pytest.approx(2.0)]  # the last micro-batch's step
    # Evaluation reports the weight the next micro-batch applies (step 2).
    logs = model.evaluate(X, Y, batch_size=32, verbose=0, return_dict=True)
    assert logs["t_weight"] == pytest.approx(3.0)


BALANCERS = {
    "Uncertainty": losskit.balancing.Uncertainty,
    "GradNorm": lambda: losskit.balancing.GradNorm(shared="dense"),
}


@pytest.mark.parametrize("balance", ["Uncertainty", "GradNorm"])
def test_balancer_under_accumulation(balance):
    """A balancer under accumulation: the weights change only on every second micro-batch."""
    keras.utils.set_random_seed(0)
    terms = [
        Term(keras.losses.mean_squared_error, name="a"),
        Term(keras.losses.mean_absolute_error, name="b"),
    ]
    model = ObjectiveModel(inner(), terms, balance=BALANCERS[balance]())
    model.compile(optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))
    before = weights_of(model.inner)
    model.train_on_batch(X[:8], Y[:8])
    for got, want in zip(weights_of(model.inner), before):
        np.testing.assert_array_equal(got, want)
    logs = model.train_on_batch(X[8:16], Y[8:16], return_dict=True)
    assert not np.allclose(weights_of(model.inner)[0], before[0])
    assert all(np.isfinite(v) for v in logs.values())

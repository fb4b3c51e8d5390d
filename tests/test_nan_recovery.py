"""What `nan_policy="raise"` leaves behind (docs/objectives.md, "Non-finite guard"): as Keras's
TerminateOnNaN, the non-finite step's update is applied before the guard sees its logs, so the
model's weights are not finite; the guard runs before every other callback, so a per-batch
`ModelCheckpoint` holds the last finite weights, which `load_weights` restores and training
resumes from."""

import keras
import numpy as np
import pytest

from losskit import ObjectiveModel, Term

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.normal(size=(32, 1)).astype("float32")


def scaled_mse(y_true, y_pred, w):
    return keras.ops.mean(w * (y_true - y_pred) ** 2, axis=-1)


def inner():
    keras.utils.set_random_seed(2)
    i = keras.Input((4,), name="features")
    return keras.Model(i, keras.layers.Dense(1, name="dense")(i))


def as_numpy(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


@pytest.mark.parametrize("bad", ["nan_side_data", "inf_label"])
def test_nan_step_applied_and_checkpoint_restores(bad, tmp_path):
    w = np.ones((32, 1), "float32")
    y = Y.copy()
    if bad == "nan_side_data":
        w[20] = np.nan  # batch 2 of 4 (batch_size 8)
    else:
        y[20] = np.inf
    model = ObjectiveModel(inner(), [Term(scaled_mse, w="x.w", name="t")], nan_policy="raise")
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    path = str(tmp_path / "last.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(path, save_weights_only=True, save_freq=1)
    with pytest.raises(FloatingPointError, match="term 't'.*batch 2 .optimizer step 2"):
        model.fit({"features": X, "w": w}, y, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[checkpoint])
    # The non-finite step was applied (weights not finite), as with Keras's TerminateOnNaN.
    assert not all(np.isfinite(v).all() for v in as_numpy(model.inner))
    # The checkpoint holds the weights after batch 1: plain Keras on the first two batches.
    model.load_weights(path)
    reference = inner()
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    reference.fit(X[:16], Y[:16], batch_size=8, shuffle=False, verbose=0)
    for got, want in zip(as_numpy(model.inner), as_numpy(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    # Training resumes from there on finite data.
    model.fit({"features": X, "w": np.ones_like(w)}, Y, batch_size=8, verbose=0)
    assert all(np.isfinite(v).all() for v in as_numpy(model.inner))

"""The per-sample contract: shape alignment without broadcasting, scalar returns, dtypes."""

import keras
import numpy as np
import pytest
from keras import ops

import losskit


@losskit.loss
def squared(y_true, y_pred, scale=1.0):
    return scale * ops.mean(ops.square(y_pred - y_true), axis=-1)


@losskit.loss
def scalar_mse(y_true, y_pred):
    return ops.mean(ops.square(y_pred - y_true))  # wrong: reduces over the batch


def _columns(n=5):
    rng = np.random.default_rng(0)
    return rng.normal(size=n).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


@pytest.mark.parametrize("flip", [False, True], ids=["(N,)-vs-(N,1)", "(N,1)-vs-(N,)"])
def test_rank_one_and_column_are_aligned_not_broadcast(flip):
    flat, column = _columns()
    y_true, y_pred = (column, flat) if flip else (flat, column)
    per_sample = keras.ops.convert_to_numpy(squared(reduction=None)(y_true, y_pred))
    assert per_sample.shape == (5,)  # broadcasting would give (5, 5)
    np.testing.assert_allclose(per_sample, (flat - column[:, 0]) ** 2, rtol=1e-6)


def test_incompatible_shapes_name_the_loss_and_both_shapes():
    rng = np.random.default_rng(0)
    y_true = rng.normal(size=(4, 3)).astype("float32")
    y_pred = rng.normal(size=(4, 2)).astype("float32")
    with pytest.raises(ValueError, match=r"loss 'squared'.*\(4, 3\).*\(4, 2\)"):
        squared()(y_true, y_pred)
    with pytest.raises(ValueError, match=r"loss 'squared'.*\(4,\).*\(4, 2\)"):
        squared()(y_true[:, 0], y_pred)


def test_scalar_return_is_refused_with_the_loss_name():
    flat, column = _columns()
    with pytest.raises(ValueError, match=r"'scalar_mse'.*returned a scalar.*one value per sample"):
        scalar_mse()(flat, column)


def test_wrong_leading_axis_is_refused():
    @losskit.loss
    def transposed(y_true, y_pred):
        return ops.transpose(ops.square(y_pred - y_true))

    y = np.ones((4, 3), "float32")
    with pytest.raises(ValueError, match=r"loss 'transposed'.*shape \(3, 4\).*4 samples"):
        transposed()(y, y)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_non_floating_predictions_are_refused(dtype):
    y_pred = np.ones((4, 1), dtype=dtype)
    with pytest.raises(ValueError, match=rf"loss 'squared': y_pred must be a floating.*{dtype}"):
        squared()(np.ones((4, 1), "float32"), y_pred)


def test_guards_hold_inside_compiled_training():
    """The checks read static shapes, so they fire when Keras traces the train step."""
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss=squared())
    x = np.ones((8, 3), "float32")
    with pytest.raises(ValueError, match=r"loss 'squared'.*, 3\).*, 2\)"):
        model.fit(x, np.ones((8, 3), "float32"), verbose=0)
    model.compile(optimizer="sgd", loss=scalar_mse())
    with pytest.raises(ValueError, match="returned a scalar"):
        model.fit(x, np.ones((8, 2), "float32"), verbose=0)


def test_column_targets_train_like_keras_mse():
    """(N,) labels with an (N, 1) model output train exactly like Keras's MSE."""
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x @ np.array([1.0, -2.0, 0.5], "float32")
    losses = []
    for loss in (squared(), keras.losses.MeanSquaredError()):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
        model.compile(optimizer="sgd", loss=loss)
        losses.append(model.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0))
    np.testing.assert_allclose(losses[0].history["loss"], losses[1].history["loss"], rtol=1e-6)


def test_two_vectors_are_one_output_per_sample():
    flat, column = _columns()
    per_sample = keras.ops.convert_to_numpy(squared(reduction=None)(flat, column[:, 0]))
    np.testing.assert_allclose(per_sample, (flat - column[:, 0]) ** 2, rtol=1e-6)
    total = squared(reduction="sum")(flat, column[:, 0])
    np.testing.assert_allclose(total, ((flat - column[:, 0]) ** 2).sum(), rtol=1e-6)

"""Quick start: a parametric custom loss and metric that train, save and load with plain Keras.

Run with `python examples/quickstart.py` (any backend: KERAS_BACKEND=tensorflow|jax).
"""

import tempfile
from pathlib import Path

import keras
import numpy as np
from keras import ops

import losskit


@losskit.loss
def huber(y_true, y_pred, delta=1.0):
    """Per-sample Huber loss: quadratic within `delta`, linear beyond."""
    err = ops.abs(y_true - y_pred)
    quad = ops.minimum(err, delta)
    return ops.mean(0.5 * quad**2 + delta * (err - quad), axis=-1)


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 3)).astype("float32")
    y = x @ np.array([1.5, -2.0, 0.5], "float32") + rng.standard_t(2, size=512).astype("float32")

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(16, "relu")(inputs)))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=huber(delta=0.5),
        metrics=[losskit.metrics.regression_accuracy(tolerance=0.5, relative=False)],
    )
    model.fit(x, y, epochs=5, batch_size=32, verbose=2)

    path = Path(tempfile.mkdtemp()) / "quickstart.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe mode, no custom_objects
    print(f"reloaded loss: {type(loaded.loss).__name__}(delta={loaded.loss.delta})")
    print("evaluate before save:", model.evaluate(x, y, return_dict=True, verbose=0))
    print("evaluate after load: ", loaded.evaluate(x, y, return_dict=True, verbose=0))


if __name__ == "__main__":
    main()

"""A check shared by the loss-library tests: a Loss class survives `.keras` save/load."""

import keras
import numpy as np
from keras import ops


def assert_loss_survives_saving(model, cls, params, x, y, tmp_path):
    """Saves `model` (compiled with `cls(**params)`), loads it in safe mode without
    `custom_objects`, and checks the loss class, its non-default parameters, the weights and the
    loss value on the model's predictions. Returns the loaded model."""
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.loss) is cls
    config = loaded.loss.get_config()
    assert {k: config[k] for k in params} == params
    for w, w_loaded in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(w_loaded, w)
    pred = model(x)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded.loss(y, pred)),
        ops.convert_to_numpy(cls(**params)(y, pred)),
        rtol=1e-6,
    )
    return loaded

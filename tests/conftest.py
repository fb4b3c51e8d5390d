import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Property tests stay quick on a 2-core CI machine; compiled backends make each example costly.
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")

BACKEND = keras.backend.backend()


def only_backend(*names):
    """Marks a test as meaningful only under the given Keras backends."""
    return pytest.mark.skipif(BACKEND not in names, reason=f"needs backend {names}")


@pytest.fixture(autouse=True)
def _seed_and_reset():
    np.random.seed(0)
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")

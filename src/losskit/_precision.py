"""The precision rule: losses compute in float32 whatever precision the model runs in.

Keras computes a `compile` loss in float32 under `mixed_float16`/`mixed_bfloat16`; losskit holds
every library function and every `Term` to the same rule, so no batch, sequence or vocabulary sum
is ever accumulated in 16 bits.
"""

import functools

import keras
import numpy as np
from keras import ops

LOW_PRECISION = ("float16", "bfloat16")


def _dtype(x):
    dtype = getattr(x, "dtype", None)
    return None if dtype is None else keras.backend.standardize_dtype(dtype)


def upcast(x, dtype="float32"):
    """`x` in `dtype` if it is a 16-bit floating tensor, else `x` unchanged."""
    return ops.cast(x, dtype) if _dtype(x) in LOW_PRECISION else x


def to_float(x, dtype):
    """`x` in `dtype` if it is a floating tensor of another dtype, else `x` unchanged (integer
    labels and masks keep their dtype)."""
    current = _dtype(x)
    if current is None or "float" not in current or current == dtype:
        return x
    return ops.cast(x, dtype)


def as_tensor(x):
    """NumPy arrays become backend tensors (torch cannot mix them with its tensors); everything
    else passes unchanged."""
    return ops.convert_to_tensor(x) if isinstance(x, np.ndarray) else x


def compute_in_float32(fn):
    """Wraps `fn` so that array arguments reach it as backend tensors and 16-bit floating ones as
    float32 (so its sums and its result are float32). Other arguments pass unchanged."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = [upcast(as_tensor(a)) for a in args]
        kwargs = {k: upcast(as_tensor(v)) for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return wrapper

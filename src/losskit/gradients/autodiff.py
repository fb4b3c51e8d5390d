"""Autodiff of any `keras.ops` function on the active backend, as NumPy arrays."""

import keras
import numpy as np
from keras import ops

from losskit import backend


def is_floating_dtype(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)


def value_and_grad(fn, *inputs):
    """Returns `(fn(*inputs), [d sum(fn) / d input for each input])` as NumPy arrays.

    `fn` maps tensors to a tensor; its output is summed before differentiating (i.e. the upstream
    gradient is all ones). Works under the TensorFlow, JAX and PyTorch backends. Inputs that are
    not floating point (integer labels, masks) are passed through and get `None`.
    """
    inputs = [ops.convert_to_tensor(x) for x in inputs]
    wrt = [i for i, x in enumerate(inputs) if is_floating_dtype(x.dtype)]

    def partial(*diff):
        args = list(inputs)
        for i, x in zip(wrt, diff):
            args[i] = x
        return fn(*args)

    value, grads = backend.value_and_grad(partial, [inputs[i] for i in wrt])
    out = [None] * len(inputs)
    for i, g in zip(wrt, grads):
        out[i] = None if g is None else np.asarray(ops.convert_to_numpy(g))
    return ops.convert_to_numpy(value), out

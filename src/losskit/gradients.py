"""Gradients across backends: autodiff of any `keras.ops` function.

`value_and_grad` is the one place that knows how each backend differentiates; custom gradients and
the gradient checker build on it.
"""

import keras
import numpy as np


def value_and_grad(fn, *inputs):
    """Returns `(fn(*inputs), [d sum(fn) / d input for each input])` as NumPy arrays.

    `fn` maps tensors to a tensor; its output is summed before differentiating (i.e. the upstream
    gradient is all ones). Works under the TensorFlow, JAX and PyTorch backends.
    """
    name = keras.backend.backend()
    inputs = [keras.ops.convert_to_tensor(x) for x in inputs]
    if name == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value = fn(*inputs)
            total = tf.reduce_sum(value)
        grads = tape.gradient(total, inputs)
    elif name == "jax":
        import jax

        def summed(*args):
            out = fn(*args)
            return out.sum(), out

        (_, value), grads = jax.value_and_grad(summed, argnums=tuple(range(len(inputs))), has_aux=True)(
            *inputs
        )
    elif name == "torch":
        import torch

        inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
        value = fn(*inputs)
        grads = torch.autograd.grad(value.sum(), inputs, allow_unused=True)
    else:
        raise NotImplementedError(f"value_and_grad does not support the {name!r} backend")
    grads = [None if g is None else keras.ops.convert_to_numpy(g) for g in grads]
    return keras.ops.convert_to_numpy(value), grads


__all__ = ["value_and_grad"]

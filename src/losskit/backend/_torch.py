"""PyTorch implementations of `losskit.backend`."""

import torch

from losskit import _keras
from losskit.backend import pack_upstream


def replica_context():
    return 1, None


def is_multi_worker(strategy):
    del strategy
    return False


def lgamma(x):
    return torch.lgamma(x)


def sequential_fori_loop(upper, body, init):
    value = init
    for i in range(int(upper)):
        value = body(i, value)
    return value


def float64_scope():
    # Keras maps float64 to float32 in type promotion on torch (`ops.matmul` of two float64
    # tensors returns float32) unless told otherwise.
    return _keras.float64_promotion()


def custom_gradient(inner, diff, constants):
    class _Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            value, rule = inner(xs, constants)
            ctx.rule = rule
            ctx.value = value
            return value

        @staticmethod
        def backward(ctx, *upstream):
            return tuple(ctx.rule(pack_upstream(ctx.value, upstream)))

    return _Function.apply(*diff)


def value_and_grad(fn, inputs):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    value = fn(*inputs)
    grads = torch.autograd.grad(value.sum(), inputs, allow_unused=True) if inputs else []
    return value, list(grads)


def compile_function(fn):
    return fn  # eager; torch.compile costs more than the loops it would serve

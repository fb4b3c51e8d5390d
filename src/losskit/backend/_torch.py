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


def matmul(a, b, dtype):
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return torch.matmul(a.to(dtype), b.to(dtype))


def take(x, start, size, axis=0):
    return x.narrow(axis, int(start), size)


def _recorded(*tensors):
    # Autodiff of the forward pass itself (plain_autodiff): no in-place ops on recorded tensors.
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def add_rows(buffer, start, rows, axis=0):
    start, size = int(start), rows.shape[axis]
    if _recorded(buffer, rows):
        current = buffer.narrow(axis, start, size)
        return set_rows(buffer, start, current + rows.to(buffer.dtype), axis)
    buffer.narrow(axis, start, size).add_(rows.to(buffer.dtype))
    return buffer


def add_matmul(acc, a, b, axis, block):
    del axis, block
    if _recorded(acc, a, b):
        return acc + torch.matmul(a.to(acc.dtype), b.to(acc.dtype))
    return acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def set_rows(buffer, start, rows, axis=0):
    start, size = int(start), rows.shape[axis]
    if _recorded(buffer, rows):
        end = buffer.shape[axis]
        return torch.cat([buffer.narrow(axis, 0, start), rows.to(buffer.dtype),
                          buffer.narrow(axis, start + size, end - start - size)], dim=axis)
    buffer.narrow(axis, start, size).copy_(rows)
    return buffer


def scale(x, factor):
    if _recorded(x):
        return x * factor
    return x.mul_(factor.to(x.dtype) if torch.is_tensor(factor) else factor)


def updates_in_place():
    return True


def term_gradients(values_fn, variables, constants, values=None):
    del constants
    tensors = [v.value for v in variables]
    # The step's own forward graph serves (no second pass); it is kept for the step's backward.
    values = values_fn() if values is None else values
    out = []
    for value in values:
        if not value.requires_grad:
            out.append([torch.zeros_like(t) for t in tensors])
            continue
        grads = torch.autograd.grad(value, tensors, retain_graph=True, allow_unused=True)
        out.append(
            [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(tensors, grads)]
        )
    return out

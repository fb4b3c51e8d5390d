"""Matmul FLOPs of a value-and-gradient computation, counted from what the backend traces or
runs (not from losskit's own bookkeeping):

- JAX: the jaxpr of `jax.value_and_grad`, every `dot_general` (2 x output size x contracted
  size), loop bodies (`scan`) times their trip count, nested jaxprs (custom gradients, `jit`).
- TensorFlow: the graph of a `tf.function(jit_compile=True)` value-and-gradient, every
  `MatMul`/`BatchMatMul*` op; losskit's loops are unrolled in Python for the count (a `While`
  op's trip count is not in the graph), so every iteration's matmuls are ops of the graph.
- torch: a dispatch mode that sees every ATen matmul (`mm`, `addmm`, `addmm_`, `bmm`, ...)
  run by the forward and backward passes.
"""

import math

import keras
import numpy as np


def matmul_flops(fn, inputs, monkeypatch):
    """Matmul FLOPs of `fn(*inputs)` (a scalar) and its gradient w.r.t. every input."""
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_flops(fn, inputs)
    if backend == "tensorflow":
        return _tf_flops(fn, inputs, monkeypatch)
    return _torch_flops(fn, inputs)


def _jax_flops(fn, inputs):
    import jax

    closed = jax.make_jaxpr(jax.value_and_grad(fn, argnums=tuple(range(len(inputs)))))(*inputs)
    return _jaxpr_flops(closed.jaxpr)


def _jaxpr_flops(jaxpr):
    import jax

    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
            continue
        if eqn.primitive.name == "while":
            raise AssertionError("a while loop of unknown trip count: cannot count its matmuls")
        times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for sub in jax.core.jaxprs_in_params(eqn.params):
            total += times * _jaxpr_flops(sub)
    return total


def _tf_flops(fn, inputs, monkeypatch):
    import tensorflow as tf

    from losskit import backend

    def unrolled(upper, body, init):
        value = init
        for i in range(int(upper)):
            value = body(i, value)
        return value

    monkeypatch.setattr(backend._impl(), "sequential_fori_loop", unrolled)

    @tf.function(jit_compile=True)
    def value_and_grad(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = fn(*xs)
        return value, tape.gradient(value, xs)

    graph = value_and_grad.get_concrete_function(
        *[tf.TensorSpec(x.shape, x.dtype) for x in inputs]
    ).graph
    return _tf_graph_flops(graph)


def _tf_graph_flops(graph):
    total = 0
    for op in graph.get_operations():
        if op.type in ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
            a, b = (t.shape.as_list() for t in op.inputs)
            out = op.outputs[0].shape.as_list()
            if op.type == "MatMul":
                contracted = a[0] if op.get_attr("transpose_a") else a[1]
            else:
                contracted = a[-2] if op.get_attr("adj_x") else a[-1]
            total += 2 * math.prod(out) * contracted
        for attr in ("f", "body", "then_branch", "else_branch"):
            try:
                name = op.get_attr(attr).name
            except (ValueError, AttributeError):
                continue
            if attr == "body":
                raise AssertionError("a while loop of unknown trip count: cannot count it")
            total += _tf_graph_flops(graph._get_function(name).graph)
    return total


def _torch_flops(fn, inputs):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    counted = {aten.mm, aten.addmm, aten.addmm_, aten.bmm, aten.baddbmm, aten.baddbmm_,
               aten.matmul}

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            packet = func.overloadpacket
            if packet in counted:
                a, b = (args[1], args[2]) if "add" in packet.__name__ else (args[0], args[1])
                Count.total += 2 * math.prod(a.shape) * b.shape[-1]
            return func(*args, **(kwargs or {}))

    xs = [torch.tensor(np.asarray(x)).requires_grad_(True) if not torch.is_tensor(x)
          else x.detach().clone().requires_grad_(True) for x in inputs]
    with Count():
        value = fn(*xs)
        value.backward()
    return Count.total

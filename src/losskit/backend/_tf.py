"""TensorFlow implementations of `losskit.backend`."""

import contextlib
import math

import tensorflow as tf

# TensorFlow internals, used only here: XLA's dynamic (update-)slice ops, and the query of whether
# the function being traced will be compiled by XLA and whether a tape records an op (no public
# API answers either).
from tensorflow.compiler.tf2xla.python import xla as tf2xla
from tensorflow.python.eager import record
from tensorflow.python.ops import control_flow_util

from losskit.backend import pack_upstream


def integer_bits():
    return 64


def assert_same_shape(message, a, b, drop_last):
    expected = tf.shape(b)[:-1] if drop_last else tf.shape(b)
    check = tf.debugging.assert_equal(tf.shape(a), expected, message=message)
    with tf.control_dependencies([check]):
        return tf.identity(a)


def replica_context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return 1, None
    return ctx.num_replicas_in_sync, ctx


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def lgamma(x):
    return tf.math.lgamma(x)


def sequential_fori_loop(upper, body, init):
    def step(i, value):
        return i + 1, body(i, value)

    _, out = tf.while_loop(lambda i, _: i < upper, step, (0, init), parallel_iterations=1)
    return out


def float64_scope():
    return contextlib.nullcontext()  # TensorFlow computes float64 as asked


def custom_gradient(inner, diff, constants):
    def tf_fn(*xs):
        if tf.executing_eagerly():
            # An eager tape records every op run inside `tf.custom_gradient` and keeps their
            # tensors alive until `gradient()` (a chunked loss would keep every chunk's
            # temporaries); the rule replaces those ops' gradients, so they need no record.
            xs = [tf.stop_gradient(x) for x in xs]
        value, rule = inner(xs, constants)

        def grad(*upstream, variables=None):
            if variables:
                names = ", ".join(v.name for v in variables)
                raise ValueError(
                    "losskit.custom_gradient: the function reads variable(s) "
                    f"[{names}] that are not among its arguments, so its hand-written gradient "
                    "cannot cover them. Pass every trainable tensor (e.g. layer.kernel) as an "
                    "argument and return its gradient from grad_fn."
                )
            return rule(pack_upstream(value, upstream))

        return value, grad

    return tf.custom_gradient(tf_fn)(*diff)


def value_and_grad(fn, inputs):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        value = fn(*inputs)
        total = tf.reduce_sum(value)
    grads = tape.gradient(total, inputs) if inputs else []
    return value, list(grads)


def score_derivatives(fn, score, constants):
    zero = tf.UnconnectedGradients.ZERO  # a Hessian of 0 (piecewise-linear losses), not None
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(score)
        with tf.GradientTape() as inner:
            inner.watch(score)
            total = tf.reduce_sum(fn(score, *constants))
        grad = inner.gradient(total, score, unconnected_gradients=zero)
        sums = [tf.reduce_sum(grad[:, j]) for j in range(score.shape[-1])]
    columns = [
        outer.gradient(s, score, unconnected_gradients=zero)[:, j] for j, s in enumerate(sums)
    ]
    del outer
    return grad, tf.stack(columns, axis=-1)


def compile_function(fn, xla=False):
    graph = tf.function(fn, reduce_retracing=True)
    if not xla:
        return graph
    fused = tf.function(fn, reduce_retracing=True, jit_compile=True)
    state = {"compiled": fused}

    def call(*args):
        try:
            return state["compiled"](*args)
        except Exception:  # noqa: BLE001 - an op XLA cannot compile: the graph decides
            if state["compiled"] is graph:
                raise
            state["compiled"] = graph
            return graph(*args)

    return call


def matmul(a, b, dtype):
    return tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype))


def _in_xla():
    """Whether the ops being built will be compiled by XLA (`tf.function(jit_compile=True)`, also
    in its loops and gradient): `Function.__call__` enters an XLA control-flow context while it
    traces such a function."""
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _starts(x, start, axis):
    start = tf.cast(start, tf.int32)
    return tf.stack([start if d == axis else tf.constant(0) for d in range(len(x.shape))])


def _is_16bit_float(x):
    return x.dtype.is_floating and x.dtype.size == 2


def take(x, start, size, axis=0):
    if _in_xla():
        sizes = [size if d == axis else x.shape[d] for d in range(len(x.shape))]
        if _is_16bit_float(x):
            # As in the JAX backend: XLA:CPU slices 16-bit floats by converting the whole operand
            # to float32, and hoists that copy out of the loop. The barrier ties the operand to
            # the loop index (nothing to hoist), and 16-bit integers (same bits) it slices as
            # they are.
            x, start = tf2xla.optimization_barrier(x, tf.convert_to_tensor(start))
            bits = tf2xla.dynamic_slice(tf.bitcast(x, tf.uint16), _starts(x, start, axis), sizes)
            return tf.bitcast(bits, x.dtype)
        return tf2xla.dynamic_slice(x, _starts(x, start, axis), sizes)
    # A slice along the first axis shares the input's buffer (no copy at all).
    sizes = [size if d == axis else -1 for d in range(len(x.shape))]
    return tf.slice(x, _starts(x, start, axis), sizes)


def _scatter(op, buffer, start, rows, axis):
    # Copies the whole buffer (see `_copies`).
    rows = tf.cast(rows, buffer.dtype)
    if axis:
        buffer, rows = tf.transpose(buffer), tf.transpose(rows)
    indices = (start + tf.range(tf.shape(rows)[0]))[:, None]
    out = op(buffer, indices, rows)
    return tf.transpose(out) if axis else out


def after(tensors):
    return tf.control_dependencies(list(tensors))


def zeros(shape, dtype):
    if _in_xla():
        return tf.zeros(shape, dtype)
    # Filled from a zero of its own that is made by a stateful op: graph optimisations then
    # neither fold the buffer into a constant shared by every call nor merge it with another
    # buffer, so the in-place ops below may write it. (`Empty` itself would do, but a graph
    # copies a 16-bit one.)
    zero = tf.raw_ops.Empty(shape=[], dtype=dtype, init=True)
    return tf.fill(tf.cast(shape, tf.int32), zero)


def _in_place(op, buffer, start, rows, axis):
    """`op` (`InplaceUpdate`/`InplaceAdd`, whose kernels write into their input) on rows
    `start:start + k` of `buffer`, or on its columns (`axis=1`): a row-major `(R, C)` buffer
    reshaped (sharing its memory) to rows of `g = gcd(C, k)` elements holds the columns as
    `R * k / g` such rows. Needs `start` a multiple of `g`, as the blocks of `loop_blocks` are
    (multiples of `k`, or `C - k`). `buffer` must be owned by the caller (made by `zeros`) and
    read afterwards only through the result."""
    if not axis:
        return op(x=buffer, i=start + tf.range(tf.shape(rows)[0]), v=rows)
    (r, c), k = buffer.shape, rows.shape[1]
    g = math.gcd(c, k)
    index = tf.range(r)[:, None] * (c // g) + start // g + tf.range(k // g)[None, :]
    out = op(x=tf.reshape(buffer, [-1, g]), i=tf.reshape(index, [-1]),
             v=tf.reshape(rows, [-1, g]))
    return tf.reshape(out, buffer.shape)


def _copies(buffer, rows, axis):
    # Where the in-place ops cannot go: a tape differentiates the update (`plain_autodiff`; they
    # have no gradient), or columns of unknown size.
    if record.should_record_backprop([buffer, rows]):
        return True
    return bool(axis) and (None in buffer.shape or rows.shape[1] is None)


def set_rows(buffer, start, rows, axis=0):
    rows = tf.cast(rows, buffer.dtype)
    if _in_xla():
        if _is_16bit_float(buffer):
            # XLA:CPU would convert the whole 16-bit buffer to float32 and back on each update.
            bits = tf2xla.dynamic_update_slice(
                tf.bitcast(buffer, tf.uint16), tf.bitcast(rows, tf.uint16),
                _starts(buffer, start, axis),
            )
            return tf.bitcast(bits, buffer.dtype)
        return tf2xla.dynamic_update_slice(buffer, rows, _starts(buffer, start, axis))
    if _copies(buffer, rows, axis):
        return _scatter(tf.tensor_scatter_nd_update, buffer, start, rows, axis)
    return _in_place(tf.raw_ops.InplaceUpdate, buffer, start, rows, axis)


def add_rows(buffer, start, rows, axis=0):
    rows = tf.cast(rows, buffer.dtype)
    if _in_xla():
        starts = _starts(buffer, start, axis)
        current = tf2xla.dynamic_slice(buffer, starts, tf.shape(rows))
        return tf2xla.dynamic_update_slice(buffer, current + rows, starts)
    if _copies(buffer, rows, axis):
        return _scatter(tf.tensor_scatter_nd_add, buffer, start, rows, axis)
    return _in_place(tf.raw_ops.InplaceAdd, buffer, start, rows, axis)


def add_matmul(acc, a, b, axis, block):
    total = acc.shape[axis]
    block = min(block, total)

    def step(i, acc):
        # The last block is shifted back to end at `total`; its rows seen before add 0.
        start = tf.minimum(i * block, total - block)
        fresh = None
        if total % block:
            fresh = tf.cast(start + tf.range(block) >= i * block, acc.dtype)
        if axis == 0:
            part = matmul(take(a, start, block, 0), b, acc.dtype)
        else:
            part = matmul(a, take(b, start, block, 1), acc.dtype)
        if fresh is not None:
            part = part * (fresh[:, None] if axis == 0 else fresh[None, :])
        return add_rows(acc, start, part, axis)

    return sequential_fori_loop(-(-total // block), step, acc)


def scale(x, factor):
    factor = tf.cast(factor, x.dtype)
    if tf.executing_eagerly() and bool(factor == 1):
        return x  # an eager product is a copy (a graph's reuses `x`'s buffer, XLA's folds a 1)
    return x * factor


def updates_in_place():
    # Outside XLA rows and columns are updated in place too (InplaceAdd/InplaceUpdate on buffers
    # from `zeros`), but every elementwise step of a chunk is a buffer of its own: a chunk's
    # logits as large as `hidden` would cost several times that. The vocabulary-tile schedule
    # keeps its tiles an eighth of that, so it is the smaller one there.
    return _in_xla()


def term_gradients(values_fn, variables, constants, values=None):
    del values  # a second forward pass: the step's own is out of reach here
    del constants
    # A tape of its own: the training step's tape is not reachable from `compute_loss`.
    with tf.GradientTape(persistent=True) as tape:
        values = values_fn()
    out = []
    for value in values:
        # A term that does not reach a variable gets None (TF's ZERO option cannot make zeros
        # for Keras variables).
        grads = tape.gradient(value, variables)
        out.append(
            [
                tf.zeros(v.shape, v.dtype) if g is None else tf.stop_gradient(g)
                for v, g in zip(variables, grads)
            ]
        )
    return out


def fused_linear_ce(portable, h, w, b, y, sw, static):
    del portable, h, w, b, y, sw, static
    return None  # the portable form reaches its schedules with the in-place ops above


def is_traced(x):
    """Whether `x`'s value is unknown here: inside a `tf.function` (XLA included), or a
    symbolic tensor."""
    if not tf.executing_eagerly():
        return True
    return tf.is_tensor(x) and tf.is_symbolic_tensor(x)


def sample_weight_of_rank(sample_weight, values):
    if not sample_weight.dtype.is_floating:
        sample_weight = tf.cast(sample_weight, tf.float32)
    rank = len(values.shape)
    target = tf.shape(values)
    shape = tf.shape(sample_weight)
    length = tf.size(shape)
    padded = tf.concat([shape, tf.ones([rank], shape.dtype)], 0)
    kept = tf.minimum(length, rank)
    leading = tf.range(rank) < kept
    fits = tf.logical_and(
        tf.reduce_all(tf.logical_or(tf.logical_not(leading), tf.equal(padded[:rank], target))),
        tf.reduce_all(tf.equal(padded[rank:length], 1)),  # beyond the values' rank: only 1s
    )
    out = tf.where(leading, padded[:rank], tf.ones_like(target))
    return tf.cond(
        fits,
        lambda: tf.reshape(sample_weight, out),
        lambda: tf.fill(tf.ones([rank], tf.int32), tf.constant(float("nan"), sample_weight.dtype)),
    )

"""TensorFlow implementations of `losskit.backend`."""

import contextlib

import tensorflow as tf

from losskit.backend import pack_upstream


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


def compile_function(fn):
    return tf.function(fn, reduce_retracing=True)


def matmul(a, b, dtype):
    return tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype))


def take(x, start, size, axis=0):
    # `start + range(size)`, not `range(start, start + size)`: XLA needs a static size.
    return tf.gather(x, start + tf.range(size), axis=axis)


def _scatter(op, buffer, start, rows, axis):
    # TensorFlow has no in-place update outside XLA: this writes a new buffer (see
    # updates_in_place); a scatter, so that XLA (jit_compile) can compile it.
    rows = tf.cast(rows, buffer.dtype)
    if axis:
        buffer, rows = tf.transpose(buffer), tf.transpose(rows)
    indices = (start + tf.range(tf.shape(rows)[0]))[:, None]
    out = op(buffer, indices, rows)
    return tf.transpose(out) if axis else out


def add_matmul(acc, a, b, axis, block):
    del axis, block  # TensorFlow takes the schedule without running sums (updates_in_place)
    return acc + matmul(a, b, acc.dtype)


def set_rows(buffer, start, rows, axis=0):
    return _scatter(tf.tensor_scatter_nd_update, buffer, start, rows, axis)


def add_rows(buffer, start, rows, axis=0):
    return _scatter(tf.tensor_scatter_nd_add, buffer, start, rows, axis)


def scale(x, factor):
    return x * tf.cast(factor, x.dtype)


def updates_in_place():
    # XLA (jit_compile) updates loop carries in place, but a traced function cannot tell whether
    # it will be compiled with XLA, so TensorFlow always takes the schedule without running sums.
    return False


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

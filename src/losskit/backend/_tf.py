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

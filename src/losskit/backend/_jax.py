"""JAX implementations of `losskit.backend`."""

import contextlib

import jax
import jax.numpy as jnp
import keras

from losskit import _keras


def integer_bits():
    return 64 if jax.config.jax_enable_x64 else 32


def assert_same_shape(message, a, b, drop_last):
    del message, b, drop_last  # shapes are static when tracing: checked already
    return a


def replica_context():
    return 1, None  # DataParallel runs one program over the global batch


def is_multi_worker(strategy):
    del strategy
    return False


def lgamma(x):
    return jax.lax.lgamma(x)


def sequential_fori_loop(upper, body, init):
    return jax.lax.fori_loop(0, upper, body, init)


@contextlib.contextmanager
def float64_scope():
    # 64-bit types need x64 switched on, and Keras maps float64 to float32 under JAX unless told
    # otherwise, so a float64 `sin(x)` would silently run in float32.
    with jax.enable_x64(True), _keras.float64_promotion():
        yield


def custom_gradient(inner, diff, constants):
    # JAX differentiates every argument of a custom gradient and needs a cotangent for each: the
    # constants travel as float32 (exact for integers below 2**24) and get zeros, as do inputs
    # whose rule returns None.
    dtypes = [c.dtype for c in constants]
    n = len(diff)

    def fn(*xs):
        carried = [x.astype(dtype) for x, dtype in zip(xs[n:], dtypes)]
        value, rule = inner(xs[:n], carried)

        def grad(upstream):
            grads = rule(upstream)
            grads = [jnp.zeros_like(x) if g is None else g for x, g in zip(xs[:n], grads)]
            return (*grads, *(jnp.zeros_like(x) for x in xs[n:]))

        return value, grad

    return jax.custom_gradient(fn)(*diff, *(c.astype("float32") for c in constants))


def value_and_grad(fn, inputs):
    if not inputs:
        return fn(), []

    def summed(*args):
        out = fn(*args)
        return out.sum(), out

    argnums = tuple(range(len(inputs)))
    (_, value), grads = jax.value_and_grad(summed, argnums=argnums, has_aux=True)(*inputs)
    return value, list(grads)


def score_derivatives(fn, score, constants):
    def total(x):
        return jnp.sum(fn(x, *constants))

    grad = jax.grad(total)
    k = score.shape[-1]
    try:
        # Forward over reverse: one pass gives the gradient and a Hessian column (1.5x faster
        # than a second reverse pass for Keras's binary cross-entropy at N = 200,000).
        columns = []
        for j in range(k):
            tangent = jnp.zeros_like(score).at[:, j].set(1)
            g, column = jax.jvp(grad, (score,), (tangent,))
            columns.append(column[:, j])
        return g, jnp.stack(columns, axis=-1)
    except TypeError:  # a custom-gradient rule (custom_vjp) has no forward mode
        columns = [
            jax.grad(lambda x, j=j: jnp.sum(grad(x)[:, j]))(score)[:, j] for j in range(k)
        ]
        return grad(score), jnp.stack(columns, axis=-1)


def compile_function(fn, xla=False):
    return jax.jit(fn)  # XLA always


def matmul(a, b, dtype):
    return jnp.matmul(a, b, preferred_element_type=dtype).astype(dtype)


def _is_16bit_float(x):
    return x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating)


def take(x, start, size, axis=0):
    # XLA:CPU upcasts 16-bit floats around slices and dots and hoists loop-invariant conversions,
    # so slicing a block of a bfloat16 weight in a loop would first copy the whole weight to
    # float32. The barrier ties the slice to the loop index (nothing to hoist), and 16-bit floats
    # are sliced as 16-bit integers (same bits), which XLA leaves alone.
    start = jnp.asarray(start)
    x, start = jax.lax.optimization_barrier((x, start))
    starts = _starts(x, start, axis)
    sizes = tuple(size if d == axis else x.shape[d] for d in range(x.ndim))
    if _is_16bit_float(x):
        bits = jax.lax.dynamic_slice(jax.lax.bitcast_convert_type(x, jnp.uint16), starts, sizes)
        return jax.lax.bitcast_convert_type(bits, x.dtype)
    return jax.lax.dynamic_slice(x, starts, sizes)


def _starts(buffer, start, axis):
    start = jnp.asarray(start)
    return tuple(start if d == axis else jnp.zeros((), start.dtype) for d in range(buffer.ndim))


def add_matmul(acc, a, b, axis, block):
    total = acc.shape[axis]
    block = min(block, total)
    count = -(-total // block)

    def step(i, acc):
        # The last block is shifted back to end at `total`; its rows seen before add 0.
        start = jnp.minimum(i * block, total - block)
        fresh = (start + jnp.arange(block)) >= i * block
        if axis == 0:
            part = matmul(take(a, start, block, 0) * fresh[:, None].astype(a.dtype), b, acc.dtype)
        else:
            part = matmul(a, take(b, start, block, 1) * fresh[None, :].astype(b.dtype), acc.dtype)
        return add_rows(acc, start, part, axis)

    return jax.lax.fori_loop(0, count, step, acc)


def add_rows(buffer, start, rows, axis=0):
    starts = _starts(buffer, start, axis)
    current = jax.lax.dynamic_slice(buffer, starts, rows.shape)
    return jax.lax.dynamic_update_slice(buffer, current + rows.astype(buffer.dtype), starts)


def set_rows(buffer, start, rows, axis=0):
    starts = _starts(buffer, start, axis)
    rows = rows.astype(buffer.dtype)
    if _is_16bit_float(buffer):
        # XLA:CPU updates 16-bit float buffers by converting the whole buffer to float32 and
        # back on every call; as 16-bit integers (same bits) the update stays in place.
        bits = jax.lax.dynamic_update_slice(
            jax.lax.bitcast_convert_type(buffer, jnp.uint16),
            jax.lax.bitcast_convert_type(rows, jnp.uint16),
            starts,
        )
        return jax.lax.bitcast_convert_type(bits, buffer.dtype)
    return jax.lax.dynamic_update_slice(buffer, rows, starts)


def scale(x, factor):
    return x * factor.astype(x.dtype)


def updates_in_place():
    return True


def term_gradients(values_fn, variables, constants, values=None):
    del values  # a second forward pass: the step's own is out of reach here
    import keras

    # Inside the JAX trainer's StatelessScope the variables stand for traced values; a nested
    # scope sees only its own mapping, so it maps the differentiated variables to jacrev's
    # arguments and every other variable read to its current (traced) value.
    fixed = [(v, v.value) for v in constants]

    def values(arrays):
        with keras.StatelessScope(state_mapping=[*zip(variables, arrays), *fixed]):
            return jnp.stack([jnp.reshape(v, ()) for v in values_fn()])

    jac = jax.jacrev(values)([v.value for v in variables])  # per variable: (terms, *shape)
    jac = [jax.lax.stop_gradient(j) for j in jac]
    return [[j[k] for j in jac] for k in range(jac[0].shape[0])] if jac else []


def _concrete(*xs):
    # Concrete values (eager JAX, possibly under an eager `grad`), not values traced by a `jit`.
    from jax._src.core import is_concrete  # no public form since jax.core.is_concrete's removal

    return all(is_concrete(x) for x in xs if x is not None)


_COMPILED = {}


def _compiled(portable, static):
    """`(value, value_and_grad)` of `portable` as cached `jax.jit` functions (one per options)."""
    key = (portable, tuple(sorted(static.items())))
    if key not in _COMPILED:
        def value(h, w, b, y, sw):
            return portable(h, w, b, y, sw, **static)

        _COMPILED[key] = (jax.jit(value), jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2))))
    return _COMPILED[key]


def fused_linear_ce(portable, h, w, b, y, sw, static):
    """Eager JAX: the whole loss and its gradients as one cached `jax.jit` call.

    Op by op, the loop of the fused loss runs as a separate XLA computation whose carried
    buffers (the `V x H` weight gradient among them) are copied in and out, and the backward
    pass's scaling copies every gradient: 3.9x the gradients' bytes at N = 4096, H = 512,
    V = 32768 against 1.45x compiled. Here the forward pass computes the value and the gradients
    of a unit upstream in one compiled call (where XLA updates the loop buffers in place), and
    the backward pass returns them as they are when the upstream is 1 (a copy scaled otherwise).
    Under a `jit` (traced inputs) and for per-token losses (any upstream), None: the portable
    form is already compiled, or cannot know its upstream gradient.
    """
    if static["reduction"] == "none" or not _concrete(h, w, b, y, sw):
        return None
    value, value_and_grad = _compiled(portable, static)

    @jax.custom_vjp
    def loss(h, w, b, y, sw):
        return value(h, w, b, y, sw)

    def backward(grads, upstream):
        if not (_concrete(upstream) and float(upstream) == 1.0):
            grads = jax.tree.map(lambda g: g * upstream.astype(g.dtype), grads)
        return (*grads, None, None)  # none to the labels and the per-token weights

    loss.defvjp(value_and_grad, backward)  # the gradients are the residuals
    return loss(h, w, b, y, sw)


def after(tensors):
    del tensors
    return contextlib.nullcontext()  # ops already run in program order


def zeros(shape, dtype):
    return keras.ops.zeros(shape, dtype)


def is_traced(x):
    """Whether `x` is a JAX tracer (inside `jit`, `grad`, `vmap`): its value is not known."""
    return isinstance(x, jax.core.Tracer)


def sample_weight_of_rank(sample_weight, values):
    del values
    return sample_weight  # a traced tensor's rank is always known here

"""The only backend-specific code in losskit, behind small backend-neutral functions.

Everything else in losskit is written with `keras.ops`. Where `keras.ops` has no portable form —
the replica context of `tf.distribute`, `lgamma`, a loop that must run one iteration at a time,
64-bit scopes, autodiff and custom-gradient glue — the module of the active Keras backend
(`_tf`, `_jax`, `_torch`) implements the function below, and only that module imports its
framework. Adding a backend path is adding the function to each of the three modules.
"""

import importlib

import keras

_MODULES = {"tensorflow": "_tf", "jax": "_jax", "torch": "_torch"}


def name():
    return keras.backend.backend()


def _impl():
    backend = name()
    if backend not in _MODULES:
        raise NotImplementedError(
            f"losskit supports the tensorflow, jax and torch Keras backends, not {backend!r}"
        )
    return importlib.import_module(f"losskit.backend.{_MODULES[backend]}")


def is_traced(x):
    """Whether `x` is being traced into a compiled graph (`jax.jit`, `tf.function`, XLA,
    `torch.compile`), so its value cannot be read in Python; False in eager execution. Inputs
    that are not tensors (NumPy arrays) are never traced."""
    return _impl().is_traced(x)


def integer_bits():
    """The widest integer a host value keeps when it becomes a tensor: 32 under JAX without x64
    (`jnp.asarray` narrows int64 to int32, wrapping larger values around), else 64."""
    return _impl().integer_bits()


def assert_same_shape(message, a, b, drop_last=False):
    """`a`, guarded so that computing it fails with `message` unless `a`'s shape equals `b`'s
    (`b`'s without its last axis if `drop_last`), for dimensions unknown while tracing
    (TensorFlow's `tf.function` with an `input_signature` of `None`). JAX and torch always know
    their shapes when tracing, and return `a`; under XLA TensorFlow drops the assertion."""
    return _impl().assert_same_shape(message, a, b, drop_last)


def replica_context():
    """`(replicas in sync, context)` inside a `tf.distribute` replica; `(1, None)` elsewhere.

    JAX `DataParallel` and torch see the global batch inside one program, so they need no
    cross-replica correction.
    """
    return _impl().replica_context()


def all_reduce_sum(context, x):
    """Sum of `x` over the replicas of `context` (`x` itself when `context` is None)."""
    return x if context is None else context.all_reduce("sum", x)


def is_multi_worker(strategy):
    """Whether `strategy` is a `tf.distribute.MultiWorkerMirroredStrategy`."""
    return _impl().is_multi_worker(strategy)


def lgamma(x):
    """`log |Gamma(x)|` elementwise (`keras.ops` has none)."""
    return _impl().lgamma(x)


def sequential_fori_loop(upper, body, init):
    """`keras.ops.fori_loop(0, upper, body, init)` that runs one iteration at a time.

    TensorFlow graphs otherwise run up to 10 iterations ahead, each holding its own
    temporaries (a memory bound for chunked losses becomes ten times that bound).
    """
    return _impl().sequential_fori_loop(upper, body, init)


def float64_scope():
    """A context in which `keras.ops` computes in float64 (JAX needs x64 switched on)."""
    return _impl().float64_scope()


def pack_upstream(value, flat_upstream):
    """The upstream gradient in the structure of `value` (TensorFlow and torch hand it flat)."""
    if not keras.tree.is_nested(value):
        return flat_upstream[0]
    return keras.tree.pack_sequence_as(value, list(flat_upstream))


def custom_gradient(inner, diff, constants):
    """Calls `inner(diff, constants) -> (value, rule)` so that autodiff differentiates `value`
    w.r.t. the tensors `diff` by `rule(upstream) -> [gradient or None per diff tensor]`.

    `constants` (integer labels, masks) get no gradient. They are handed to `inner` rather than
    closed over: JAX cannot differentiate a custom-gradient function that closes over values
    traced by an enclosing `jit`.
    """
    return _impl().custom_gradient(inner, list(diff), list(constants))


def value_and_grad(fn, inputs):
    """`(fn(*inputs), [d sum(fn(*inputs)) / d x for x in inputs])` by the backend's autodiff."""
    return _impl().value_and_grad(fn, inputs)


def score_derivatives(fn, score, constants):
    """`(g, h)`: the gradient and the Hessian diagonal of `fn(score, *constants)` (one value per
    row of `score`, which is `(n, k)`) w.r.t. `score`, each `(n, k)`.

    Rows must be independent (row i's value depends on row i only), so that the gradient of
    the sum is each row's gradient, and column j of the derivative of `g[:, j]` along the
    column-j direction is `d^2 fn_i / d score_ij^2`: one reverse pass for `g`, then one pass per
    column over it (JAX: forward over reverse, falling back to reverse over reverse for a
    custom-gradient rule, which has no forward mode; TensorFlow and torch: reverse over reverse).
    """
    return _impl().score_derivatives(fn, score, list(constants))


def compile_function(fn, xla=False):
    """`fn` compiled for repeated calls on same-shaped inputs (`jax.jit`, `tf.function`), or
    `fn` itself where compiling brings nothing (torch eager). `xla=True`: TensorFlow compiles it
    with XLA (`jit_compile`), falling back to the plain graph for an op XLA cannot compile; an
    element-wise function of many small ops runs about 2x faster fused."""
    return _impl().compile_function(fn, xla)


def matmul(a, b, dtype):
    """`a @ b` accumulated and returned in `dtype` (float32 for 16-bit inputs), without a
    `dtype` copy of the operands where the backend can avoid it (JAX's `preferred_element_type`)."""
    return _impl().matmul(a, b, dtype)


def take(x, start, size, axis=0):
    """`x[start:start + size]` along `axis` inside a loop, without the backend copying all of `x`
    first (XLA:CPU would convert a whole 16-bit weight to float32 once, outside the loop)."""
    return _impl().take(x, start, size, axis)


def add_rows(buffer, start, rows, axis=0):
    """`buffer[start:start + k] += rows` along `axis` (`k = rows.shape[axis]`), in place where
    the backend allows (torch; XLA updates loop-carried buffers in place; TensorFlow outside XLA
    a buffer from `zeros`, with `start` a multiple of `k` or the axis's size minus `k`), so a
    running sum costs no second buffer. The caller reads `buffer` only through the result
    afterwards."""
    return _impl().add_rows(buffer, start, rows, axis)


def add_matmul(acc, a, b, axis, block):
    """`acc += a @ b` (float32 or float64 `acc`) without an `acc`-sized temporary: torch updates
    `acc` in place (`addmm_`); elsewhere the product is added in blocks of `block` rows
    (`axis=0`) or columns (`axis=1`) of `acc`, each updated in place (`add_rows`)."""
    return _impl().add_matmul(acc, a, b, axis, block)


def set_rows(buffer, start, rows, axis=0):
    """`buffer[start:start + k] = rows` along `axis`, in place where the backend allows."""
    return _impl().set_rows(buffer, start, rows, axis)


def scale(x, factor):
    """`x * factor`, in place on torch (the gradient buffers of a fused loss are not reused)."""
    return _impl().scale(x, factor)


def updates_in_place():
    """Whether fused losses keep running sums of whole gradients (their in-place schedule): true
    where `add_rows` and `add_matmul` update in place and a chunk's elementwise temporaries are
    fused or freed as they go (JAX, torch, TensorFlow under XLA). TensorFlow outside XLA updates
    buffers from `zeros` in place too, but keeps every elementwise step of a chunk, so it takes
    the vocabulary-tile schedule."""
    return _impl().updates_in_place()


def after(*tensors):
    """A context whose ops run only once `tensors` are computed. TensorFlow graphs otherwise run
    independent loops at the same time, each holding its temporaries; elsewhere ops already run
    in program order: a no-op."""
    return _impl().after(tensors)


def zeros(shape, dtype):
    """A zero buffer owned by the caller, which `set_rows`/`add_rows`/`add_matmul` may then
    update in place. TensorFlow updates in place outside XLA only buffers made here: graph
    optimisations may turn `keras.ops.zeros` into a constant shared by every call."""
    return _impl().zeros(shape, dtype)


def term_gradients(values_fn, variables, constants=(), values=None):
    """Per-term gradients: `[[d values_fn()[k] / d v for v in variables] for each k]`.

    `values_fn()` returns a list of scalars computed from the Keras `variables` (a second forward
    pass). Called inside a training step; the result carries no gradient itself. `constants` are
    the other Keras variables `values_fn` reads (non-trainable weights, seed states): JAX maps them
    to their values in the step; the other backends read them as they are. `values`, the step's
    own term values, spare torch the second pass (its autograd graph is still there). Gradients of
    values that do not depend on a variable are zeros.
    """
    return _impl().term_gradients(values_fn, list(variables), list(constants), values)


def fused_linear_ce(portable, h, w, b, y, sw, static):
    """The backend's fast path of `fused_linear_cross_entropy` on flattened inputs, or None where
    it has none (then `portable(h, w, b, y, sw, **static)`, the `keras.ops` form, runs).

    `h` `(N, H)`, `w` `(V, H)` (`static["rows"]`) or `(H, V)`, `b` `(V,)` or None, `y` `(N,)`,
    `sw` `(N,)` per-token weights (no gradient) or None;
    `static` holds the hashable options (reduction, ignore_index, z_loss, label_smoothing,
    chunk_size, ...). Returns what `portable` returns, with the same gradients.
    """
    return _impl().fused_linear_ce(portable, h, w, b, y, sw, static)


def rank_unknown(x):
    """Whether `x`'s rank is unknown while tracing: only TensorFlow, whose `tf.function`
    (`reduce_retracing`) relaxes an input that changed rank between calls to an unknown rank (a
    step traced with `(B,)` sample weights, then called with `(B, T)` ones)."""
    return getattr(getattr(x, "shape", None), "rank", 0) is None


def sample_weight_of_rank(sample_weight, values):
    """`sample_weight` of unknown rank (`rank_unknown`) reshaped, when the step runs, to the rank
    of `values`, its own shape padded with trailing 1s. The shape it has then must be what
    `_contract.check_sample_weight` accepts (a leading part of `values`' shape, any trailing 1s
    beyond `values`' rank dropped); otherwise the weights are NaN, since a compiled step cannot
    raise."""
    return _impl().sample_weight_of_rank(sample_weight, values)

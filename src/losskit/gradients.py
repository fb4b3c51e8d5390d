"""Gradients across backends: autodiff, portable custom gradients and a gradient checker.

- `value_and_grad(fn, *inputs)`: autodiff of any `keras.ops` function on the current backend.
- `custom_gradient`: one calling convention for a hand-written gradient on the TensorFlow, JAX and
  PyTorch backends (`keras.ops.custom_gradient` passes different arguments per backend).
- `check_gradients(fn, *inputs)`: compares the gradient training would use with autodiff of the
  plain forward pass and with float64 central finite differences.
"""

import contextlib
import dataclasses
import functools
import threading

import keras
import numpy as np
from keras import ops

# --------------------------------------------------------------------------------------------------
# autodiff


def _is_floating_dtype(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)


def _dtype_of(x):
    dtype = getattr(x, "dtype", None)
    return np.asarray(x).dtype if dtype is None else dtype


def value_and_grad(fn, *inputs):
    """Returns `(fn(*inputs), [d sum(fn) / d input for each input])` as NumPy arrays.

    `fn` maps tensors to a tensor; its output is summed before differentiating (i.e. the upstream
    gradient is all ones). Works under the TensorFlow, JAX and PyTorch backends. Inputs that are
    not floating point (integer labels, masks) are passed through and get `None`.
    """
    name = keras.backend.backend()
    inputs = [ops.convert_to_tensor(x) for x in inputs]
    wrt = [i for i, x in enumerate(inputs) if _is_floating_dtype(x.dtype)]

    def partial(*diff):
        args = list(inputs)
        for i, x in zip(wrt, diff):
            args[i] = x
        return fn(*args)

    diff_inputs = [inputs[i] for i in wrt]
    if name == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(diff_inputs)
            value = partial(*diff_inputs)
            total = tf.reduce_sum(value)
        grads = tape.gradient(total, diff_inputs) if diff_inputs else []
    elif name == "jax":
        import jax

        def summed(*args):
            out = partial(*args)
            return out.sum(), out

        if diff_inputs:
            argnums = tuple(range(len(diff_inputs)))
            (_, value), grads = jax.value_and_grad(summed, argnums=argnums, has_aux=True)(
                *diff_inputs
            )
        else:
            value, grads = partial(), []
    elif name == "torch":
        import torch

        diff_inputs = [x.detach().clone().requires_grad_(True) for x in diff_inputs]
        value = partial(*diff_inputs)
        grads = (
            torch.autograd.grad(value.sum(), diff_inputs, allow_unused=True) if diff_inputs else []
        )
    else:
        raise NotImplementedError(f"value_and_grad does not support the {name!r} backend")
    out = [None] * len(inputs)
    for i, g in zip(wrt, grads):
        out[i] = None if g is None else ops.convert_to_numpy(g)
    return ops.convert_to_numpy(value), out


# --------------------------------------------------------------------------------------------------
# custom gradients

_state = threading.local()


@contextlib.contextmanager
def plain_autodiff():
    """Within this context every `@custom_gradient` function ignores its hand-written gradient and
    is differentiated by plain autodiff of its forward pass. `check_gradients` uses it to obtain the
    reference gradient; it is also handy to debug a suspicious gradient rule in a training loop.
    It acts when a function is traced: a `tf.function`/`jax.jit` step traced before entering the
    context keeps the hand-written rule (build and compile the model inside the context)."""
    previous = getattr(_state, "plain", False)
    _state.plain = True
    try:
        yield
    finally:
        _state.plain = previous


def _plain_active():
    return getattr(_state, "plain", False)


def _flatten(value):
    return keras.tree.flatten(value)


def _upstream_like(value, flat_upstream):
    if not keras.tree.is_nested(value):
        return flat_upstream[0]
    return keras.tree.pack_sequence_as(value, list(flat_upstream))


def _tf_custom_gradient(inner):
    import tensorflow as tf

    def tf_fn(*args):
        value, rule = inner(*args)

        def grad(*upstream, variables=None):
            if variables:
                names = ", ".join(v.name for v in variables)
                raise ValueError(
                    "losskit.custom_gradient: the function reads variable(s) "
                    f"[{names}] that are not among its arguments, so its hand-written gradient "
                    "cannot cover them. Pass every trainable tensor (e.g. layer.kernel) as an "
                    "argument and return its gradient from grad_fn."
                )
            return rule(_upstream_like(value, upstream))

        return value, grad

    return tf.custom_gradient(tf_fn)


def _jax_custom_gradient(inner):
    import jax

    return jax.custom_gradient(inner)


def _torch_custom_gradient(inner):
    import torch

    class _Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            value, rule = inner(*args)
            ctx.rule = rule
            ctx.value = value
            return value

        @staticmethod
        def backward(ctx, *upstream):
            return tuple(ctx.rule(_upstream_like(ctx.value, upstream)))

    return _Function.apply


_BACKENDS = {
    "tensorflow": _tf_custom_gradient,
    "jax": _jax_custom_gradient,
    "torch": _torch_custom_gradient,
}


def _is_tensor_like(value):
    """Arrays, backend tensors and Keras variables are inputs; Python scalars, strings and None
    are constant hyperparameters."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _binder(f):
    """Returns `bind(args, kwargs) -> (values, call)`: the call's arguments in signature order,
    and `call(values)` calling `f` with replaced values. Functions with `*args`/`**kwargs` are
    called positionally."""
    import inspect

    try:
        signature = inspect.signature(f)
    except (TypeError, ValueError):
        signature = None
    variadic = signature is None or any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()
    )

    def bind(args, kwargs):
        if variadic:
            if kwargs:
                raise TypeError(
                    f"losskit.custom_gradient '{f.__name__}' takes *args/**kwargs, so it must be "
                    "called with positional tensors only."
                )
            return list(args), lambda values: f(*values)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        names = list(bound.arguments)

        def call(values):
            bound.arguments.update(zip(names, values))
            return f(*bound.args, **bound.kwargs)

        return list(bound.arguments.values()), call

    return bind


def custom_gradient(f):
    """Decorator: `f(*tensors)` returns `(value, grad_fn)` and `grad_fn(upstream)` returns one
    gradient per input, the same on the TensorFlow, JAX and PyTorch backends.

    ```python
    @losskit.custom_gradient
    def log1pexp(x):
        def grad_fn(upstream):
            return (upstream * keras.ops.sigmoid(x),)   # one gradient per input
        return keras.ops.softplus(x), grad_fn
    ```

    - Inputs are the arguments that are tensors (arrays, backend tensors, Keras variables), passed
      positionally or by keyword (objective terms call functions by parameter name). Python
      scalars, strings and `None` (e.g. `temperature=2.0`) are constant hyperparameters.
    - `upstream` has the structure of `value` (a tensor for a single output). `grad_fn` returns a
      tuple/list with one entry per tensor input, in signature order (or one per parameter, with
      `None` for hyperparameters), each of that input's shape, or `None` for inputs that get no
      gradient (labels, masks). Integer/bool inputs are never differentiated.
    - The result mixes with autodiff: gradients flow through the hand-written rule into whatever
      produced the inputs (e.g. layers below a logistic head), inside `tf.function`, `jax.jit`
      and `Model.fit`. Keras variables passed as arguments are read as tensors; under TensorFlow
      a function that reads a variable it was not given raises a clear error on differentiation.
    - `f.forward` (the value computation alone) and `f.rule` (the undecorated `f`) stay
      reachable; inside `losskit.gradients.plain_autodiff()` the hand-written gradient is bypassed
      and autodiff differentiates the forward pass, which is how `check_gradients` validates it.
    """
    bind = _binder(f)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        if _plain_active():
            return f(*args, **kwargs)[0]
        values, call = bind(args, kwargs)
        tensor_pos = [i for i, v in enumerate(values) if _is_tensor_like(v)]
        values = [ops.convert_to_tensor(v) if i in tensor_pos else v for i, v in enumerate(values)]
        wrt = [i for i in tensor_pos if _is_floating_dtype(values[i].dtype)]
        if not wrt:
            return call(values)[0]

        def inner(*diff):
            full = list(values)
            for i, x in zip(wrt, diff):
                full[i] = x
            value, grad_fn = call(full)

            def rule(upstream):
                grads = grad_fn(upstream)
                if not isinstance(grads, (tuple, list)):
                    grads = (grads,)
                if len(grads) == len(tensor_pos):
                    by_position = dict(zip(tensor_pos, grads))
                elif len(grads) == len(values):
                    by_position = dict(enumerate(grads))
                else:
                    raise ValueError(
                        f"losskit.custom_gradient '{f.__name__}': grad_fn returned "
                        f"{len(grads)} gradient(s) for {len(tensor_pos)} tensor input(s); return "
                        "one per input (None for inputs without a gradient)."
                    )
                out = []
                for i, x in zip(wrt, diff):
                    g = by_position[i]
                    if g is None:
                        # JAX needs a cotangent for every differentiated input; zeros are exact.
                        out.append(None if keras.backend.backend() != "jax" else ops.zeros_like(x))
                    else:
                        out.append(ops.cast(g, x.dtype))
                return tuple(out)

            return value, rule

        backend = keras.backend.backend()
        if backend not in _BACKENDS:
            raise NotImplementedError(f"losskit.custom_gradient does not support {backend!r}")
        return _BACKENDS[backend](inner)(*[values[i] for i in wrt])

    def forward(*args, **kwargs):
        return f(*args, **kwargs)[0]

    wrapper.forward = forward
    wrapper.rule = f
    wrapper.is_custom_gradient = True
    return wrapper


# --------------------------------------------------------------------------------------------------
# gradient checking


@dataclasses.dataclass
class Comparison:
    """The gradient used in training against one reference, for one input."""

    reference: str  # "autodiff" or "finite_differences"
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple  # element where |got - expected| exceeds the tolerance the most
    got: float  # gradient used in training at worst_index
    expected: float  # reference gradient at worst_index
    ok: bool


@dataclasses.dataclass
class InputCheck:
    """The checks of one input of the checked function."""

    position: int
    name: str
    shape: tuple
    checked: bool
    reason: str = ""  # why an input was not checked
    autodiff: Comparison | None = None
    finite_differences: Comparison | None = None

    @property
    def comparisons(self):
        return [c for c in (self.autodiff, self.finite_differences) if c is not None]

    @property
    def ok(self):
        return all(c.ok for c in self.comparisons)

    @property
    def max_abs_error(self):
        return max((c.max_abs_error for c in self.comparisons), default=0.0)

    @property
    def max_rel_error(self):
        return max((c.max_rel_error for c in self.comparisons), default=0.0)

    @property
    def worst_index(self):
        worst = [c for c in self.comparisons if not c.ok] or self.comparisons
        if not worst:
            return None
        return max(worst, key=lambda c: c.max_abs_error).worst_index


@dataclasses.dataclass
class GradientReport:
    """Result of `check_gradients`: `ok`, and per input the max abs/rel error and where the
    gradient differs most. `str(report)` is a readable table."""

    function: str
    inputs: list
    eps: float
    atol: float
    rtol: float

    @property
    def ok(self):
        return all(c.ok for c in self.inputs)

    @property
    def max_abs_error(self):
        """Max abs error per input (over both references); 0.0 for unchecked inputs."""
        return [c.max_abs_error for c in self.inputs]

    @property
    def max_rel_error(self):
        return [c.max_rel_error for c in self.inputs]

    @property
    def worst_index(self):
        return [c.worst_index for c in self.inputs]

    def __bool__(self):
        return self.ok

    def __str__(self):
        lines = [
            f"check_gradients({self.function}): {'OK' if self.ok else 'FAILED'} "
            f"(atol={self.atol:g}, rtol={self.rtol:g}, eps={self.eps:g})"
        ]
        for c in self.inputs:
            head = f"  input {c.position} '{c.name}' {c.shape}"
            if not c.checked:
                lines.append(f"{head}: not checked ({c.reason})")
                continue
            for comp in c.comparisons:
                status = "ok" if comp.ok else "MISMATCH"
                lines.append(
                    f"{head} vs {comp.reference}: {status}, max abs error "
                    f"{comp.max_abs_error:.3g}, max rel error {comp.max_rel_error:.3g}; worst at "
                    f"index {comp.worst_index}: training gradient {comp.got:.8g}, "
                    f"{comp.reference} {comp.expected:.8g}"
                )
        return "\n".join(lines)

    def raise_if_failed(self):
        if not self.ok:
            raise GradientCheckError(str(self))
        return self


class GradientCheckError(AssertionError):
    """Raised by `check_gradients(..., raise_on_error=True)` when a gradient is wrong."""


@contextlib.contextmanager
def _float64():
    """Lets `keras.ops` compute in float64. TensorFlow does by default. Under JAX, 64-bit types
    need `jax.enable_x64`, and Keras's type promotion (`keras.backend.result_type`) maps float64
    to float32 on JAX, so a float64 `sin(x)` would silently run in float32; both are lifted for
    the duration of the check."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax
    from keras.src.backend.common import dtypes

    saved = dtypes.BIT64_TO_BIT32_DTYPE.get("float64")
    dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
    try:
        with jax.enable_x64(True):
            yield
    finally:
        dtypes.BIT64_TO_BIT32_DTYPE["float64"] = saved


def _compiled_if_traceable(fn):
    """`fn`'s plain forward pass, compiled once for the finite-difference loop (2 calls per
    element on same-shaped inputs: eager dispatch dominates there, most of all under JAX), or run
    eagerly when `fn` cannot be traced (e.g. it converts its inputs to NumPy)."""

    def plain(*args):
        with plain_autodiff():
            return fn(*args)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        compiled = jax.jit(plain)
    elif backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(plain, reduce_retracing=True)
    else:
        return plain
    chosen = []

    def forward(*args):
        if not chosen:
            try:
                result = compiled(*args)
                chosen.append(compiled)
                return result
            except Exception:  # noqa: BLE001 - untraceable functions still get checked, eagerly
                chosen.append(plain)
        return chosen[0](*args)

    return forward


def _parameter_names(fn, n):
    import inspect

    target = getattr(fn, "rule", fn)
    try:
        params = [
            p.name
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(n)]


def _compare(reference, got, expected, atol, rtol):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    diff = np.abs(got - expected)
    excess = diff / (atol + rtol * np.abs(expected))
    if diff.size == 0:
        return Comparison(reference, 0.0, 0.0, (), 0.0, 0.0, True)
    flat = int(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)))
    index = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    with np.errstate(divide="ignore", invalid="ignore"):  # inf where the reference is exactly 0
        rel = np.where(diff == 0, 0.0, diff / np.abs(expected))
    finite = np.all(np.isfinite(got)) and np.all(np.isfinite(expected))
    return Comparison(
        reference=reference,
        max_abs_error=float(np.max(diff)),
        max_rel_error=float(np.max(rel)),
        worst_index=index,
        got=float(got[index]),
        expected=float(expected[index]),
        ok=bool(finite and np.all(diff <= atol + rtol * np.abs(expected))),
    )


def _declared_none(fn, inputs):
    """Positions for which a `@custom_gradient` function's grad_fn returns None (labels)."""
    if not getattr(fn, "is_custom_gradient", False):
        return set()
    value, grad_fn = fn.rule(*inputs)
    upstream = keras.tree.map_structure(ops.ones_like, value)
    grads = grad_fn(upstream)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    return {i for i, g in enumerate(grads) if g is None}


def check_gradients(
    fn,
    *inputs,
    wrt=None,
    eps=1e-6,
    atol=1e-6,
    rtol=1e-5,
    dtype="float64",
    seed=0,
    raise_on_error=False,
):
    """Checks the gradient training would use for `fn(*inputs)`.

    Three gradients of `sum(w * fn(*inputs))` are computed, with `w` a fixed random weighting in
    [0.5, 1.5] (so a `grad_fn` that ignores its `upstream` argument is caught):

    1. the **training** gradient: autodiff of `fn`, which uses every hand-written rule of a
       `@losskit.custom_gradient` inside `fn`;
    2. **autodiff** of the forward pass alone: `fn` evaluated within `plain_autodiff()`, where
       every custom-gradient function is differentiated as if it had no custom rule;
    3. float64 **central finite differences**, element by element:
       `(F(x + h e_j) - F(x - h e_j)) / 2h` with `h = eps * max(1, |x_j|)`.

    Both gradients 1 and 2 are evaluated in `dtype` (float64 by default, also under JAX), so any
    mismatch beyond rounding is a wrong rule. The finite-difference error is
    `h^2 |F'''| / 6 + ulp(F) / h`, about 1e-10 for O(1) values with the default `eps=1e-6`, far
    inside the default `atol=1e-6, rtol=1e-5`: a gradient passes where
    `|got - expected| <= atol + rtol * |expected|` for every element. Choose points away from
    kinks (|x| of an abs, the Huber threshold), where finite differences are meaningless, and keep
    inputs small: finite differences cost two evaluations per element.

    Args:
        fn: a function of tensors returning a tensor (per-sample losses, a scalar, ...). Pass a
            loss's function (`Huber.fn` or `losskit.losses.huber`), not a float32 `Loss` instance.
        *inputs: arrays; floating inputs are checked, integer/bool ones passed through.
        wrt: positions of the inputs to check (default: every floating input, except those a
            `@custom_gradient` fn's grad_fn declares `None` for, such as labels).
        eps, atol, rtol: finite-difference step and tolerances (see above).
        dtype: dtype of the training and autodiff gradients (finite differences are float64).
        seed: seed of the random output weighting.
        raise_on_error: raise `GradientCheckError` with the report's text when a check fails.

    Returns:
        `GradientReport` with `ok`, `max_abs_error`, `max_rel_error`, `worst_index` (per input),
        `inputs` (a detailed `InputCheck` per input) and a readable `str()`.
    """
    arrays = [np.asarray(ops.convert_to_numpy(x)) for x in inputs]
    floating = [np.issubdtype(a.dtype, np.floating) for a in arrays]
    names = _parameter_names(fn, len(arrays))
    fn_name = getattr(fn, "__name__", type(fn).__name__)

    with _float64():
        cast = [a.astype(dtype) if f else a for a, f in zip(arrays, floating)]
        f64 = [a.astype(np.float64) if f else a for a, f in zip(arrays, floating)]
        tensors = [ops.convert_to_tensor(a) for a in cast]
        declared = _declared_none(fn, tensors)
        if wrt is None:
            wrt = [i for i, f in enumerate(floating) if f and i not in declared]
        wrt = sorted(int(i) for i in wrt)

        with plain_autodiff():
            value = ops.convert_to_numpy(fn(*[ops.convert_to_tensor(a) for a in f64]))
        if np.asarray(value).dtype != np.float64:
            raise ValueError(
                f"check_gradients: {fn_name} returned {np.asarray(value).dtype} for float64 "
                "inputs, so finite differences would measure rounding noise. Check the plain "
                "function (e.g. `Huber.fn`, `losskit.losses.huber`) rather than a float32 Loss "
                "instance, and avoid hard-coded float32 casts."
            )
        weights = np.random.default_rng(seed).uniform(0.5, 1.5, size=np.shape(value))

        def weighted(*args):
            return ops.multiply(fn(*args), ops.convert_to_tensor(weights.astype(dtype)))

        _, training = value_and_grad(weighted, *cast)
        with plain_autodiff():
            _, autodiff = value_and_grad(weighted, *cast)

        forward = _compiled_if_traceable(fn)

        def total(args):
            out = ops.convert_to_numpy(forward(*[ops.convert_to_tensor(a) for a in args]))
            return float(np.sum(weights * out.astype(np.float64)))

        checks = []
        for i, a in enumerate(arrays):
            check = InputCheck(position=i, name=names[i], shape=tuple(a.shape), checked=False)
            checks.append(check)
            if i not in wrt:
                check.reason = (
                    "not floating point"
                    if not floating[i]
                    else "grad_fn declares no gradient (None)"
                    if i in declared
                    else "not in wrt"
                )
                continue
            if not floating[i]:
                raise ValueError(f"check_gradients: input {i} ('{names[i]}') is not floating point")
            check.checked = True
            got = training[i] if training[i] is not None else np.zeros(a.shape)
            plain = autodiff[i] if autodiff[i] is not None else np.zeros(a.shape)
            check.autodiff = _compare("autodiff", got, plain, atol, rtol)
            fd = np.zeros(a.shape, dtype=np.float64)
            args = list(f64)
            for j in np.ndindex(*a.shape):
                x = f64[i].copy()
                x0 = float(x[j])
                h = eps * max(1.0, abs(x0))
                x[j] = x0 + h
                args[i] = x
                up = total(args)
                step = x[j]
                x[j] = x0 - h
                down = total(args)
                fd[j] = (up - down) / (step - x[j])
            check.finite_differences = _compare("finite_differences", got, fd, atol, rtol)

    report = GradientReport(function=fn_name, inputs=checks, eps=eps, atol=atol, rtol=rtol)
    if raise_on_error:
        report.raise_if_failed()
    return report


__all__ = [
    "GradientCheckError",
    "GradientReport",
    "check_gradients",
    "custom_gradient",
    "plain_autodiff",
    "value_and_grad",
]

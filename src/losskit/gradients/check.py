"""`check_gradients`: the gradient training uses against autodiff of the plain forward pass and
float64 central finite differences."""

import contextlib
import dataclasses
import inspect

import keras
import numpy as np
from keras import ops

from losskit import backend, domains
from losskit.gradients.autodiff import value_and_grad
from losskit.gradients.custom import declared_none_as_nan, plain_autodiff, value_and_rule


@contextlib.contextmanager
def _floatx(dtype):
    """`keras.config.floatx()` set to `dtype` (a floating dtype) inside the context."""
    saved = keras.config.floatx()
    keras.config.set_floatx(str(np.dtype(dtype)))
    try:
        yield
    finally:
        keras.config.set_floatx(saved)


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
        """None for an unchecked input: it has no error, not an error of 0."""
        return max((c.max_abs_error for c in self.comparisons), default=None)

    @property
    def max_rel_error(self):
        return max((c.max_rel_error for c in self.comparisons), default=None)

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
    value_note: str = ""  # where the function's value is NaN or infinite: no gradient is valid

    @property
    def ok(self):
        return not self.value_note and all(c.ok for c in self.inputs)

    @property
    def max_abs_error(self):
        """Max abs error per input (over both references); None for unchecked inputs."""
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
        if self.value_note:
            lines.append(f"  {self.value_note}")
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


def _compiled_if_traceable(fn):
    """`fn`'s plain forward pass, compiled once for the finite-difference loop (2 calls per
    element on same-shaped inputs: eager dispatch dominates there, most of all under JAX), or run
    eagerly when `fn` cannot be traced (e.g. it converts its inputs to NumPy)."""

    def plain(*args):
        with plain_autodiff():
            return fn(*args)

    compiled = backend.compile_function(plain)
    if compiled is plain:
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
    value, grad_fn = value_and_rule(getattr(fn, "__name__", "fn"), fn.rule(*inputs))
    upstream = keras.tree.map_structure(ops.ones_like, value)
    grads = grad_fn(upstream)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    return {i for i, g in enumerate(grads) if g is None}


def _without_declared_gradient(fn, tensors, training):
    """Positions whose training gradient passes through a grad_fn that returns None for it,
    however deep inside `fn` (a plain function calling a `@custom_gradient` one, a wrapper)."""
    with declared_none_as_nan():
        _, marked = value_and_grad(fn, *tensors)
    return {
        i
        for i, (g, m) in enumerate(zip(training, marked))
        if m is not None
        and np.any(np.isnan(m))
        and (g is None or not np.any(np.isnan(g)))  # a NaN of the rule itself is a failure
    }


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

    Each computation runs with `keras.config.floatx()` set to its inputs' dtype, so Python-float
    constants in `fn` (`ops.where(e > 0, alpha, 1.0 - alpha) * e**2`) follow the inputs as they
    do in float32 training. floatx is a process-wide Keras setting: it is restored when the check
    returns or raises, but do not build layers in another thread while a check runs.

    Args:
        fn: a function of tensors returning a tensor (per-sample losses, a scalar, ...). Pass a
            loss's function (`Huber.fn` or `losskit.losses.huber`), not a float32 `Loss` instance.
        *inputs: arrays; floating inputs are checked, integer/bool ones passed through.
        wrt: positions of the inputs to check. By default every floating input except those
            whose gradient in training passes through a `@custom_gradient` grad_fn that returns
            `None` for it (labels), whether `fn` is that function or calls it: training gives
            them no gradient by design, so a difference from autodiff there is no failure.
            Pass `wrt` explicitly to check such an input anyway, or to skip others.
        eps: finite-difference step (see above).
        atol: absolute tolerance (see above).
        rtol: relative tolerance (see above).
        dtype: dtype of the training and autodiff gradients (finite differences are float64).
        seed: seed of the random output weighting.
        raise_on_error: raise `GradientCheckError` with the report's text when a check fails.

    Returns:
        `GradientReport` with `ok`, `max_abs_error`, `max_rel_error`, `worst_index` (per input;
        `None` for inputs not checked),
        `inputs` (a detailed `InputCheck` per input) and a readable `str()`.
    """
    domains.positive.validate("check_gradients", "eps", eps)
    domains.nonnegative.validate("check_gradients", "atol", atol)
    domains.nonnegative.validate("check_gradients", "rtol", rtol)
    arrays = [np.asarray(ops.convert_to_numpy(x)) for x in inputs]
    floating = [np.issubdtype(a.dtype, np.floating) for a in arrays]
    names = _parameter_names(fn, len(arrays))
    fn_name = getattr(fn, "__name__", type(fn).__name__)
    if wrt is not None:
        bad = [i for i in wrt if isinstance(i, bool) or not isinstance(i, (int, np.integer))
               or not 0 <= i < len(arrays)]
        if bad or not len(wrt):
            raise ValueError(
                f"check_gradients({fn_name}): wrt must list positions of its {len(arrays)} "
                f"input(s) (0 to {len(arrays) - 1}), got {list(wrt)!r}: nothing would be checked."
            )
    if not any(floating):
        raise ValueError(
            f"check_gradients({fn_name}): no input to check: none of its {len(arrays)} input(s) "
            "is floating point."
        )

    # Python-float constants in `fn` (`ops.where(e > 0, alpha, 1 - alpha)`) become tensors of
    # `floatx`, so each computation runs with `floatx` set to its inputs' dtype: TensorFlow
    # refuses float32 constants times float64 tensors.
    with backend.float64_scope(), _floatx("float64"):
        cast = [a.astype(dtype) if f else a for a, f in zip(arrays, floating)]
        f64 = [a.astype(np.float64) if f else a for a, f in zip(arrays, floating)]
        tensors = [ops.convert_to_tensor(a) for a in cast]
        with _floatx(dtype):
            declared = _declared_none(fn, tensors)

        with plain_autodiff():
            value = ops.convert_to_numpy(fn(*[ops.convert_to_tensor(a) for a in f64]))
        if np.asarray(value).dtype != np.float64:
            raise ValueError(
                f"check_gradients: {fn_name} returned {np.asarray(value).dtype} for float64 "
                "inputs, so finite differences would measure rounding noise. Check the plain "
                "function (e.g. `Huber.fn`, `losskit.losses.huber`) rather than a float32 Loss "
                "instance, and avoid hard-coded float32 casts."
            )
        value_note = ""
        bad_value = ~np.isfinite(np.asarray(value, dtype=np.float64))
        if bad_value.any():
            first = tuple(int(i) for i in np.argwhere(bad_value)[0])
            value_note = (
                f"function value is {np.asarray(value)[first]} at index {first} "
                f"({int(bad_value.sum())} of {bad_value.size} values NaN or infinite): no "
                "gradient can be checked there. FAILED."
            )
        weights = np.random.default_rng(seed).uniform(0.5, 1.5, size=np.shape(value))

        def weighted(*args):
            return ops.multiply(fn(*args), ops.convert_to_tensor(weights.astype(dtype)))

        with _floatx(dtype):
            _, training = value_and_grad(weighted, *cast)
            if wrt is None:
                declared |= _without_declared_gradient(weighted, cast, training)
                wrt = [i for i, f in enumerate(floating) if f and i not in declared]
            wrt = sorted(int(i) for i in wrt)
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

    if not any(c.checked for c in checks):
        raise ValueError(
            f"check_gradients({fn_name}): no input to check: "
            + "; ".join(f"input {c.position} '{c.name}' {c.reason}" for c in checks)
            + ". Pass wrt= with the positions of floating inputs."
        )
    report = GradientReport(function=fn_name, inputs=checks, eps=eps, atol=atol, rtol=rtol,
                            value_note=value_note)
    if raise_on_error:
        report.raise_if_failed()
    return report



"""`custom_gradient`: one calling convention for a hand-written gradient on every backend
(`keras.ops.custom_gradient` passes different arguments per backend)."""

import contextlib
import functools
import inspect
import threading

from keras import ops

from losskit import backend
from losskit.gradients.autodiff import is_floating_dtype

_state = threading.local()


@contextlib.contextmanager
def _switched_on(flag):
    """Sets the thread-local `flag` for the duration of the context (nesting restores it)."""
    previous = getattr(_state, flag, False)
    setattr(_state, flag, True)
    try:
        yield
    finally:
        setattr(_state, flag, previous)


def _active(flag):
    return getattr(_state, flag, False)


def plain_autodiff():
    """Within this context every `@custom_gradient` function ignores its hand-written gradient and
    is differentiated by plain autodiff of its forward pass. `check_gradients` uses it to obtain the
    reference gradient; it is also handy to debug a suspicious gradient rule in a training loop.
    It acts when a function is traced: a `tf.function`/`jax.jit` step traced before entering the
    context keeps the hand-written rule (build and compile the model inside the context)."""
    return _switched_on("plain")


def in_plain_autodiff():
    """Whether `plain_autodiff()` is active: a function with a backend fast path (which has its
    own gradient) takes its portable `@custom_gradient` form instead, so the check sees it."""
    return _active("plain")


def declared_none_as_nan():
    """Within this context a `None` that a grad_fn returns becomes a NaN gradient, so that
    `check_gradients` can see which of its inputs reach a rule that declares no gradient (NaN
    survives every chain-rule product, where a zero would vanish). Acts at trace time."""
    return _switched_on("none_as_nan")


def is_tensor_like(value):
    """Arrays, backend tensors and Keras variables are inputs; Python scalars, strings and None
    are constant hyperparameters."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _binder(f):
    """Returns `bind(args, kwargs) -> (values, call, names)`: the call's arguments in signature
    order, `call(values)` calling `f` with replaced values, and the arguments' names. Functions
    with `*args`/`**kwargs` are called positionally."""
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
            names = [f"argument {i}" for i in range(len(args))]
            return list(args), lambda values: f(*values), names
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        names = list(bound.arguments)

        def call(values):
            bound.arguments.update(zip(names, values))
            return f(*bound.args, **bound.kwargs)

        return list(bound.arguments.values()), call, names

    return bind


def _same_shape(a, b):
    """Whether static shapes `a` and `b` agree wherever both are known."""
    a, b = tuple(a), tuple(b)
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def value_and_rule(name, result):
    """`(value, grad_fn)` from what a `@custom_gradient` function returned, or a ValueError
    naming it (a `None` or a tensor in place of `grad_fn` would otherwise fail at the first
    backward pass as "'NoneType' object is not callable", naming nothing)."""
    if not (isinstance(result, (tuple, list)) and len(result) == 2 and callable(result[1])):
        got = (f"({type(result[0]).__name__}, {result[1]!r})"
               if isinstance(result, (tuple, list)) and len(result) == 2
               else type(result).__name__)
        raise ValueError(
            f"losskit.custom_gradient '{name}': the function must return (value, grad_fn), "
            f"with grad_fn(upstream) returning one gradient per input; got {got}."
        )
    return result


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
      gradient (labels, masks). Integer/bool inputs are never differentiated; they reach `f` as
      arguments of the differentiated function, so `f` may close over them freely under `jit`.
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
        if _active("plain"):
            return f(*args, **kwargs)[0]
        values, call, names = bind(args, kwargs)
        tensor_pos = [i for i, v in enumerate(values) if is_tensor_like(v)]
        values = [ops.convert_to_tensor(v) if i in tensor_pos else v for i, v in enumerate(values)]
        wrt = [i for i in tensor_pos if is_floating_dtype(values[i].dtype)]
        if not wrt:
            return call(values)[0]
        fixed = [i for i in tensor_pos if i not in wrt]
        none_as_nan = _active("none_as_nan")

        def inner(diff, constants):
            full = list(values)
            for i, x in zip(wrt + fixed, list(diff) + list(constants)):
                full[i] = x
            value, grad_fn = value_and_rule(f.__name__, call(full))

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
                def cast(g, x, name):
                    if g is None:
                        return ops.full_like(x, float("nan")) if none_as_nan else None
                    g = ops.cast(g, x.dtype)
                    if not _same_shape(g.shape, x.shape):
                        # Checked here on every backend: TensorFlow would broadcast the
                        # gradient silently, torch and JAX raise naming neither f nor the input.
                        raise ValueError(
                            f"losskit.custom_gradient '{f.__name__}': grad_fn returned a "
                            f"gradient of shape {tuple(g.shape)} for input '{name}' of shape "
                            f"{tuple(x.shape)}; each gradient must have its input's shape."
                        )
                    return g

                return [cast(by_position[i], x, names[i]) for i, x in zip(wrt, diff)]

            return value, rule

        return backend.custom_gradient(inner, [values[i] for i in wrt], [values[i] for i in fixed])

    def forward(*args, **kwargs):
        return f(*args, **kwargs)[0]

    wrapper.forward = forward
    wrapper.rule = f
    wrapper.is_custom_gradient = True
    return wrapper


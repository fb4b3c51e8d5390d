"""Guards for the per-sample loss contract: dtype, shape alignment, per-sample output.

Every check reads static shapes and dtypes only, so it runs once at trace time and costs nothing
inside a compiled graph.
"""

import keras
import numpy as np
from keras import ops

from losskit import backend


def _dtype_of(x):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    return keras.backend.standardize_dtype(dtype)


def is_floating(x):
    return "float" in _dtype_of(x)


def check_numeric(owner, x, what):
    """Refuses strings and objects, which would otherwise fail inside the backend naming
    nothing."""
    try:
        dtype = _dtype_of(x)
    except (ValueError, TypeError):
        dtype = None
    if dtype is None or not any(k in dtype for k in ("float", "int", "bool")):
        raise TypeError(
            f"{owner}: {what} must be a numeric tensor or array, got "
            f"{type(x).__name__} of dtype {getattr(np.asarray(x), 'dtype', '?')}."
        )


def check_floating(owner, x, what="y_pred"):
    """Refuses integer/bool predictions instead of silently casting them to float."""
    check_numeric(owner, x, what)
    if not is_floating(x):
        raise ValueError(
            f"{owner}: {what} must be a floating-point tensor (probabilities, logits or values), "
            f"got dtype {_dtype_of(x)}. Cast it with keras.ops.cast(x, 'float32') if that is "
            "really what you mean."
        )


def host_input(owner, x, what):
    """`x` as the backend will receive it, checked before any conversion.

    Lists and tuples become NumPy arrays (Python floats in `keras.backend.floatx()`, as Keras
    converts them), so every library function takes what Keras's functions take. Host integers
    (NumPy arrays, lists) must survive the conversion to a tensor: under JAX without x64 int64
    becomes int32, and a label 2**32 + 1 would silently become class 1. Such values raise a
    ValueError naming `owner` and the value, whatever the loss does with them.
    """
    if isinstance(x, (list, tuple)):
        try:
            array = np.asarray(x)
        except ValueError:  # ragged: left to the loss's own checks
            return x
        if array.dtype.kind == "f":
            array = array.astype(keras.backend.floatx())
        x = array
    if not isinstance(x, (np.ndarray, np.generic)) or x.dtype.kind not in "iu" or not x.size:
        return x
    bits = backend.integer_bits()
    if x.dtype.itemsize * 8 <= bits:
        return x
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    outside = (x < low) | (x > high)
    if outside.any():
        bad = np.unique(x[outside])
        shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
        raise ValueError(
            f"{owner}: {what} holds integers outside [{low}, {high}] ({shown}), which the "
            f"{backend.name()} backend would wrap around when it converts them to int{bits} "
            "tensors. Class indices must lie in [0, num_classes); other integers must fit in "
            f"int{bits} (under JAX, enable 64-bit types with jax.config.update('jax_enable_x64', "
            "True))."
        )
    return x


def _shape(x):
    """Static shape of a tensor, array, Python/NumPy number (`()`) or nested list."""
    shape = getattr(x, "shape", None)
    return tuple(np.shape(x)) if shape is None else tuple(shape)


def rank_or_none(x):
    """Rank of a tensor, array, number or nested list; None where TensorFlow does not know it."""
    if backend.rank_unknown(x):
        return None
    return len(_shape(x))


def _compatible(a, b):
    return len(a) == len(b) and all(p is None or q is None or p == q for p, q in zip(a, b))


def align(owner, y_true, y_pred, sparse_labels=False):
    """Aligns `y_true` with `y_pred` the way Keras losses do, but refuses to broadcast.

    Dense losses: `(N,)` against `(N, 1)` (either way round), or two `(N,)` vectors, get a
    trailing axis so that axis -1 is the output axis; any other mismatch raises. Sparse losses
    (integer class indices): `y_true` must have the shape of `y_pred` without its class axis, and
    a trailing axis of 1 on `y_true` is dropped.
    """
    t, p = _shape(y_true), _shape(y_pred)
    if sparse_labels:
        if len(t) == len(p) and t and t[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        message = (
            f"{owner}: labels of shape {t} do not match predictions of shape {p}; "
            f"expected integer class indices of shape {p[:-1]} (or {p[:-1] + (1,)})."
        )
        if not _compatible(_shape(y_true), p[:-1]):
            raise ValueError(message)
        return _at_run_time(message, y_true, y_pred, True), y_pred
    if len(p) == len(t) == 1:
        # A vector is one scalar output per sample; without the trailing axis a function that
        # averages over axis -1 would average over the batch.
        y_true, y_pred = ops.expand_dims(y_true, -1), ops.expand_dims(y_pred, -1)
    elif len(p) == len(t) + 1 and p[-1] == 1:
        y_true = ops.expand_dims(y_true, -1)
    elif len(t) == len(p) + 1 and t[-1] == 1:
        y_pred = ops.expand_dims(y_pred, -1)
    message = (
        f"{owner}: y_true of shape {t} and y_pred of shape {p} are incompatible. "
        "They must have the same shape (a trailing axis of size 1 on either side is aligned); "
        "losskit never broadcasts them against each other."
    )
    if not _compatible(_shape(y_true), _shape(y_pred)):
        raise ValueError(message)
    return _at_run_time(message, y_true, y_pred, False), y_pred


def _at_run_time(message, y_true, y_pred, sparse):
    """Shapes that were compatible only because a dimension is unknown while tracing are checked
    when the graph runs (TensorFlow `tf.function` with `None` dimensions)."""
    known = _shape(y_true) + _shape(y_pred)
    if None not in known or not backend.is_traced(y_pred):
        return y_true
    return backend.assert_same_shape(message, y_true, y_pred, drop_last=sparse)


def check_per_sample(owner, values, batch_size=None):
    """The function must keep the batch axis, so reductions and distribution scale correctly."""
    shape = _shape(values)
    if len(shape) == 0:
        raise ValueError(
            f"{owner}: the function returned a scalar, but it must return one value "
            "per sample (leading axis = batch), e.g. keras.ops.mean(err, axis=-1) instead of "
            "keras.ops.mean(err). Reduction is applied afterwards by Keras rules."
        )
    if batch_size is not None and shape[0] is not None and shape[0] != batch_size:
        raise ValueError(
            f"{owner}: the function returned values of shape {shape}, but the batch has "
            f"{batch_size} samples; the leading axis of the output must be the batch."
        )


def check_sample_weight(owner, sample_weight, values):
    """The shape numeric `sample_weight` (see `shape_sample_weight`) takes to multiply
    `values`: one weight per sample `(B,)` or per position (a leading part of `values`' shape,
    e.g. `(B, T)` for `(B, T)` values), a trailing axis of 1 dropped, as Keras applies weights.
    Anything else raises: it would be broadcast silently. Returns the weights' shape with the
    trailing 1s dropped."""
    shape, target = _shape(sample_weight), _shape(values)
    while len(shape) > 1 and len(shape) > len(target) and shape[-1] == 1:
        shape = shape[:-1]
    fits = len(shape) == 0 or (
        len(shape) <= len(target) and _compatible(shape, target[: len(shape)])
    )
    if not fits:
        raise ValueError(
            f"{owner}: sample_weight of shape {_shape(sample_weight)} does not fit its values "
            f"of shape {target}: give one weight per sample {target[:1]} or per position (a "
            f"leading part of {target}). losskit never broadcasts weights silently."
        )
    return shape


def shape_sample_weight(owner, sample_weight, values):
    """`sample_weight` checked by `check_sample_weight` and shaped to multiply `values`: of their
    rank, with axes of 1 where it gives one weight for all positions. Keras would broadcast `(B,)`
    weights against `(B, T)` values from the right (silently wrong where `B == T`)."""
    sw = sample_weight
    check_numeric(owner, sw, "sample_weight")  # before a backend refuses it naming nothing
    if not isinstance(sw, keras.KerasTensor):
        sw = ops.convert_to_tensor(sw)
    if backend.rank_unknown(sw):  # TensorFlow: known only when the step runs
        return backend.sample_weight_of_rank(sw, values)
    shape = check_sample_weight(owner, sw, values)
    if len(shape) < len(_shape(sw)):  # trailing 1s dropped
        sw = ops.reshape(sw, [-1 if d is None else d for d in shape])
    for _ in range(len(values.shape) - len(shape)):
        sw = ops.expand_dims(sw, -1)
    return sw


def invalid_labels(owner, labels, num_classes, ignore_index=None):
    """The label rule for integer class indices: each label is an integer in `[0, num_classes)`
    or `ignore_index`.

    In eager execution a label outside raises a ValueError naming `owner` and the offending
    values, and the result is None. While `labels` are traced into a compiled graph (`jax.jit`,
    `tf.function`, XLA), where nothing can be raised, the result is a boolean tensor marking the
    invalid labels: the caller gives those samples NaN (`nan_where`), never a clamped or zero
    value, so the same input gives the same answer on every backend.
    """
    if labels is None or num_classes is None or isinstance(labels, keras.KerasTensor):
        return None
    floating = is_floating(labels)
    if backend.is_traced(labels):
        ok = ops.logical_and(labels >= 0, labels < num_classes)
        if floating:
            ok = ops.logical_and(ok, ops.equal(labels, ops.floor(labels)))
        if ignore_index is not None:
            ok = ops.logical_or(ok, ops.equal(labels, ignore_index))
        return ops.logical_not(ok)
    values = ops.convert_to_numpy(labels)
    ok = (values >= 0) & (values < num_classes)
    if floating:
        ok &= values == np.floor(values)
    if ignore_index is not None:
        ok |= values == ignore_index
    if not ok.all():
        bad = np.unique(values[~ok])
        shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
        allowed = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(
            f"{owner}: labels must be integer class indices in [0, {num_classes}){allowed}; "
            f"got {shown} ({int((~ok).sum())} of {ok.size} labels). Inside a compiled graph, "
            "where this cannot raise, such a sample's loss is NaN."
        )
    return None


def nan_where(invalid, values):
    """`values` with NaN where `invalid` (from `invalid_labels`) is true; `values` when None."""
    if invalid is None:
        return values
    while len(invalid.shape) > len(values.shape):  # e.g. per-sequence values of (N, L) labels
        invalid = ops.any(invalid, axis=-1)
    return ops.where(invalid, ops.cast(float("nan"), values.dtype), values)


def nan_if_any(invalid, total):
    """A reduced loss `total`, NaN when any label is invalid (`invalid_labels` in a graph)."""
    if invalid is None:
        return total
    return total + ops.where(ops.any(invalid), ops.cast(float("nan"), total.dtype), 0.0)


def named(error, owner):
    """`error` with `owner` in front of its message: the same type where that type is made from a
    message alone, else a `ValueError` (TensorFlow's `OpError`s take a graph node and an op too,
    and would otherwise reach the user naming no loss); the caller chains the original."""
    if str(error).startswith(owner):
        return error
    try:
        return type(error)(f"{owner}: {error}")
    except Exception:  # noqa: BLE001 - any other constructor
        return ValueError(f"{owner}: {type(error).__name__}: {error}")


def keep_nan(values, *inputs):
    """`values`, all NaN if any of `inputs` holds a NaN: for batch-level computations (mining,
    sorting, pair masks) whose comparisons would otherwise drop a NaN input silently."""
    bad = None
    for x in inputs:
        b = ops.any(ops.isnan(x))
        bad = b if bad is None else ops.logical_or(bad, b)
    return values + ops.where(bad, ops.cast(float("nan"), values.dtype), 0.0)

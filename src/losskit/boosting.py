r"""losskit losses as exact XGBoost, LightGBM and CatBoost objectives (extra `boosting`).

A gradient-boosting library grows each tree from the first and second derivatives of the
per-sample loss :math:`\ell_i(s_i)` with respect to the raw score :math:`s_i` (the margin, before
any link): :math:`g_i = \partial\ell_i/\partial s_i`, :math:`h_i = \partial^2\ell_i/\partial s_i^2`
(Chen & Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016, eq. 3). `objective(loss)`
computes both for the loss object given: in closed form for the common losses
(`losskit._closed_form_derivatives`, as fast as the libraries' built-in objectives), by float64
autodiff on the active Keras backend for every other one; and hands them over in each library's
form. `metric(loss)` evaluates the loss the same way.

```python
obj = losskit.boosting.objective(losskit.losses.Huber(delta=2.0), hessian="gauss_newton")
booster = xgboost.train(params, dtrain, num_boost_round=200, obj=obj)   # (predt, DMatrix)
xgboost.XGBRegressor(objective=obj)                                     # (y_true, y_pred, w)
lightgbm.train({"objective": obj}, dset); lightgbm.LGBMRegressor(objective=obj)
catboost.CatBoostRegressor(loss_function=obj.for_catboost(), eval_metric="RMSE")
```

The libraries' conventions this module takes care of (checked on XGBoost 3.2, LightGBM 4.7,
CatBoost 1.2; docs/boosting.md):

- scores of a `k`-output model arrive as `(n, k)` (XGBoost >= 2, LightGBM >= 4) and the
  derivatives go back in the same shape; one output gives `(n,)`;
- sample weights: none of the libraries applies them to a custom objective's derivatives (the
  XGBoost sklearn wrapper and LightGBM hand them to the objective, `xgboost.train` and CatBoost
  leave them in the data), so the objective multiplies by them, exactly once;
- CatBoost maximises: `calc_ders_range` wants the derivatives of the log-likelihood, i.e.
  :math:`-g` and :math:`-h`.

The loss sees the raw score: a loss that expects probabilities (`from_logits=False`) is refused.
"""

import contextlib
import functools
import inspect
import warnings

import keras
import numpy as np
from keras import ops

from losskit import _closed_form_derivatives, _keras, backend
from losskit.loss import FunctionLoss
from losskit.losses import classification, divergence, regression, segmentation
from losskit.losses._common import FUNCTIONS

HESSIAN_POLICIES = ("exact", "clip", "gauss_newton")
# A Hessian at or below this is next to no curvature for a Newton leaf whose denominator also
# holds XGBoost's `lambda` (1 by default): the step is then -sum(g) / lambda
# (`Objective._first_call_warnings`).
FLAT_HESSIAN = 1e-3
# Negative Hessians within this many epsilons of the largest |h| or |g| are round-off, not
# curvature (autodiff's second derivative cancels terms of the gradient's size).
ROUNDOFF_ULPS = 1024


def objective(loss, *, hessian="exact", min_hessian=1e-6, dtype="float64", derivatives="auto"):
    r"""A custom boosting objective from a losskit or Keras loss.

    Args:
        loss: a `keras.losses.Loss` instance (losskit or Keras), a Loss class (instantiated with
            its defaults; `@losskit.loss` classes included), or a per-sample function
            `fn(y_true, y_pred) -> (n,)`. It is called with `y_pred` the raw score, `(n, 1)` for
            one output or `(n, k)`, and `y_true` the labels: `(n, 1)`; for `k > 1` outputs and
            labels of shape `(n,)`, class indices (one-hot, or as they are for a sparse loss).
        hessian: how the second derivative is formed.

            - `"exact"`: :math:`h = \partial^2 \ell / \partial s^2` as computed. A negative value
              (a non-convex loss such as `cauchy`, `general_robust` with `alpha < 1`) raises a
              `ValueError`: a tree leaf :math:`-\sum g / \sum h` would step uphill.
              A Hessian of 0 where the gradient is not (Huber's or smooth L1's linear tails)
              makes Newton leaves step by :math:`-\sum g / \lambda`; the first call warns when
              that is half the rows or more: use `"gauss_newton"` for such losses.
            - `"clip"`: :math:`\max(h, \text{min\_hessian})`.
            - `"gauss_newton"`: for losses of the residual, :math:`\ell = \rho(e)`, `e = s - y`
              with :math:`\rho` a function of :math:`\tfrac12 e^2`: the generalised Gauss-Newton
              curvature :math:`\rho'(e)/e` (the outer function's curvature dropped;
              Schraudolph 2002; the IRLS weight of Holland & Welsch 1977), positive for every
              robust loss whose influence has the residual's sign, and equal to the exact
              Hessian at `e = 0` (used for :math:`|e| \le 10^{-8}(1 + |y|)`); floored at
              `min_hessian`. One output only.
        min_hessian: the floor of `"clip"` and `"gauss_newton"` (default `1e-6`).
        dtype: the precision of the autodiff, `"float64"` (default; JAX with x64 switched on for
            the call) or `"float32"`, which took 15-40 % less time (benchmarks/boosting.py); the
            libraries store the derivatives in float32 either way. Closed forms run in float64.
        derivatives: `"auto"` (default) takes the closed-form gradient and Hessian of the
            losses boosting uses most, where `loss` is one of them: Keras's and losskit's
            binary, categorical and sparse categorical cross-entropy from logits, mean squared
            error, Huber and log-cosh, with their parameters (`_closed_form_derivatives`; each
            checked against autodiff in the tests). They cost what the libraries' built-in
            objectives cost; autodiff costs 2-15 ms more a round at 200,000 rows, depending on
            the loss and the backend. Every other loss, and `"autodiff"`, uses autodiff.

    Returns an `Objective`: call it as XGBoost or LightGBM calls an objective (native
    `(preds, DMatrix | Dataset)` or scikit-learn `(y_true, y_pred, sample_weight)`), or
    `.gradients(y_true, score, sample_weight)` for the arrays; `.for_catboost()` for CatBoost.
    """
    return Objective(
        loss, hessian=hessian, min_hessian=min_hessian, dtype=dtype, derivatives=derivatives
    )


def metric(loss):
    """The weighted mean of a loss over the raw scores, as each library's evaluation metric.

    `metric(loss)(preds, DMatrix | Dataset)` is XGBoost's `custom_metric` (`(name, value)`) or
    LightGBM's `feval` (`(name, value, False)`), told apart by the dataset's library;
    `.xgboost_sklearn` and `.lightgbm_sklearn` are the scikit-learn forms (`eval_metric=`), and
    `.for_catboost()` CatBoost's `eval_metric=`. The scores must be raw margins: XGBoost and
    LightGBM pass them so when the objective is custom. Lower is better.
    """
    return Metric(loss)


def _is_library(fn):
    """A loss function of Keras or losskit (not the user's own)."""
    return fn in LIBRARY_FUNCTIONS or getattr(fn, "__module__", "").startswith("keras.")


def _is_keras_metric(obj):
    """A Keras metric instance or class, or a function of Keras's metrics modules (Keras's loss
    functions exported as metrics too live in its losses module and are losses)."""
    if isinstance(obj, keras.metrics.Metric) or (
        isinstance(obj, type) and issubclass(obj, keras.metrics.Metric)
    ):
        return True
    fn = _function_and_keywords(obj)[0] if callable(obj) else obj
    return getattr(fn, "__module__", "").startswith("keras.src.metrics")


def _function_and_keywords(fn):
    """`(function, keyword arguments)` of a plain function or a `functools.partial` of one."""
    kwargs = {}
    while isinstance(fn, functools.partial) and not fn.args:
        kwargs = {**fn.keywords, **kwargs}
        fn = fn.func
    return fn, kwargs


def _keyword(function, name, default=None):
    """The value `function = (fn, kwargs)` uses for keyword parameter `name`: given, its
    signature's default, or `default` when `fn` has no such parameter."""
    fn, kwargs = function
    if name in kwargs:
        return kwargs[name]
    try:
        parameter = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):  # a builtin or callable object without a signature
        return default
    return default if parameter is None else parameter.default


# The Keras and losskit losses of the residual s - y, rho(s - y) (what hessian="gauss_newton" and
# the flat-Hessian warning are about). Every other library loss takes logits, classes, margins,
# rankings or directions; a user's own loss is taken as one of the residual unless it has a
# `from_logits`, `log_input` or `logits` parameter or a categorical name.
RESIDUAL = frozenset({
    keras.losses.mean_squared_error, keras.losses.mean_absolute_error,
    keras.losses.mean_absolute_percentage_error, keras.losses.huber, keras.losses.log_cosh,
    *(fn for name, (family, fn) in FUNCTIONS.items()
      if family == "regression" and name != "cosine_similarity"),
})
LIBRARY_FUNCTIONS = frozenset(fn for _, fn in FUNCTIONS.values())

# Per-sample functions whose `y_pred` is a probability (or a positive value) with no option to
# take a raw score: a boosting score would be clipped into their domain, derivatives 0 there.
# Losses with `from_logits` or `log_input` are told apart by that parameter instead.
PROBABILITY_INPUTS = frozenset({
    keras.losses.kl_divergence, keras.losses.poisson, keras.losses.dice, keras.losses.tversky,
    keras.losses.mean_squared_logarithmic_error,
    keras.losses.categorical_generalized_cross_entropy,
    divergence.kl_divergence, divergence.js_divergence, divergence.generalized_kl,
    regression.msle, segmentation.dice, segmentation.tversky, segmentation.focal_tversky,
    segmentation.generalized_dice, classification.weighted_kappa,
})


def _sparse_labels(loss, function, kind):
    """Whether the loss takes integer class indices: a losskit class or function says so
    (`sparse_labels`, `register(shapes="sparse")`); Keras's are named `sparse_...`."""
    if isinstance(loss, FunctionLoss):
        return bool(loss.sparse_labels)
    if function is not None and getattr(function[0], "shapes", None) == "sparse":
        return True
    return kind.lower().startswith(("sparse_", "sparsecategorical"))  # not "sparsemax"


def _per_sample_values(loss, y_true, score):
    """`loss`'s per-sample values (`Loss.call`: no reduction, no cast to its dtype policy), with
    masked positions 0 as Keras's unreduced `__call__` gives them."""
    values = loss.call(y_true, score)
    mask = _keras.get_keras_mask(values)
    return values if mask is None else ops.where(mask, values, ops.zeros_like(values))


class _Loss:
    """A loss resolved to `per_sample(y_true, score) -> (n,)` in float64, with its contracts."""

    def __init__(self, loss, dtype="float64"):
        if dtype not in ("float64", "float32"):
            raise ValueError(
                f"losskit.boosting: dtype must be 'float64' or 'float32', got {dtype!r}"
            )
        self.dtype = dtype
        self.rows_seen = self.rows_independent = False  # check_rows_independent's progress
        if isinstance(loss, type) and issubclass(loss, keras.losses.Loss):
            loss = loss()
        if _is_keras_metric(loss):
            named = _function_and_keywords(loss)[0] if callable(loss) else loss
            name = getattr(named, "__name__", type(loss).__name__)
            raise TypeError(
                f"losskit.boosting: {name} is a Keras metric, not a loss: pass a "
                "keras.losses.Loss or a per-sample function fn(y_true, y_pred)"
            )
        if isinstance(loss, keras.losses.Loss):
            self.name = loss.name
            kind = type(loss).__name__
            # The loss object itself, unreduced: rebuilding it from get_config() would lose the
            # parameters a config leaves out (Keras's Huber drops `delta`).
            self.fn = functools.partial(_per_sample_values, loss)
            function = _keras.wrapped_function(loss)
            if function is None and isinstance(loss, FunctionLoss) and (
                type(loss).call is FunctionLoss.call
            ):
                function = type(loss).fn, dict(loss.params)
            from_logits = loss.get_config().get("from_logits")
        elif callable(loss):
            function = _function_and_keywords(loss)
            self.name = kind = getattr(function[0], "__name__", type(loss).__name__)
            self.fn = loss
            from_logits = None
        else:
            raise TypeError(
                "losskit.boosting: expected a keras.losses.Loss (instance or class) or a "
                f"per-sample function fn(y_true, y_pred), got {loss!r}"
            )
        if function is not None:
            from_logits = _keyword(function, "from_logits", from_logits)
            self._refuse_probability_inputs(function)
        if from_logits is False:
            fix = (f"{kind}(from_logits=True)" if isinstance(loss, keras.losses.Loss)
                   else f"functools.partial({kind}, from_logits=True)")
            raise ValueError(
                f"losskit.boosting: loss '{self.name}' expects probabilities "
                "(from_logits=False), but a boosting library hands the loss the raw score "
                f"(a logit). Use {fix}."
            )
        self.binary_labels = from_logits is not None  # cross-entropy-like: labels in [0, 1]
        self.sparse = _sparse_labels(loss, function, kind)
        # A softmax (or sparsemax, multi-class margin) over classes: one output column would give
        # a constant loss.
        self.categorical = self.sparse or any(
            word in kind.lower() for word in ("categorical", "sparsemax", "multiclass"))
        # A loss of the residual s - y (what hessian="gauss_newton" needs): not one of logits,
        # log-rates, classes or margins.
        self.residual = not (
            from_logits is not None or self.categorical
            or (function is not None and function[0] not in RESIDUAL and (
                _is_library(function[0])
                or any(_keyword(function, key) is not None for key in ("log_input", "logits"))
            ))
        )
        self.closed_form = None if function is None else _closed_form_derivatives.lookup(*function)

    def _refuse_probability_inputs(self, function):
        if _keyword(function, "log_input") is False:
            raise self.error(
                "y_pred is a rate (> 0), but a boosting library hands the loss a raw score of "
                "any sign; pass log_input=True (the score is then the log-rate)"
            )
        if function[0] in PROBABILITY_INPUTS:
            raise self.error(
                "it reads y_pred as probabilities or positive values and has no option to take "
                "a raw score: a boosting score (any real number) would be clipped into its "
                "domain, with derivatives 0 there, and train nothing. Use a loss of logits or "
                "of the residual"
            )

    def error(self, message):
        return ValueError(f"losskit.boosting: loss '{self.name}': {message}")

    def check_rows_independent(self, labels, score):
        """Some rows' values computed one by one equal their values computed together. A loss
        that couples rows (batch statistics, in-batch pairs) would otherwise get a wrong Hessian
        diagonal (the derivative of the summed gradient) and a wrong metric silently. The rows
        are the first of up to four distinct labels and rows spread over the batch: in-batch
        pairs of one label alone may not show the coupling. Run on every call until one had two
        rows or more of two labels or more (a single row, or one label, proves nothing), then
        never again: the libraries call with the same labels every round."""
        if self.rows_independent:
            return
        n = len(score)
        if n < 2 or (self.rows_seen and np.all(labels == labels[:1])):
            return  # no new evidence: a first one-label call was checked already
        _, first = np.unique(labels.reshape(n, -1), axis=0, return_index=True)
        picked = np.unique(np.concatenate([np.sort(first)[:4],
                                           np.linspace(0, n - 1, min(n, 4)).astype(int)]))
        labels, score, rows = labels[picked], score[picked], len(picked)
        self.rows_seen = True
        try:
            together = self.values(labels, score)
            alone = np.concatenate(
                [self.values(labels[i:i + 1], score[i:i + 1]) for i in range(rows)]
            )
        except Exception as err:  # e.g. a loss that needs several rows at once
            raise self.error(
                f"could not evaluate single rows ({err}); boosting needs a per-sample loss whose "
                "row i depends on row i only"
            ) from err
        if together.shape != (rows,) or alone.shape != (rows,):
            raise self.error(
                f"{rows} rows gave values of shape {together.shape} together and "
                f"{alone.shape} one by one, not one value per row; boosting needs a per-sample "
                "loss (a reduction over another axis, e.g. axis=0, couples the rows)"
            )
        if not np.allclose(together, alone, rtol=1e-6, atol=1e-12, equal_nan=True):
            raise self.error(
                "its per-sample values depend on other rows of the batch (row values "
                f"{alone.tolist()} alone, {together.tolist()} together); boosting needs a "
                "per-sample loss whose row i depends on row i only"
            )
        self.rows_independent = len(first) >= 2

    def prepare(self, y_true, score, sample_weight):
        """Checked float64 `(labels, score (n, k), weights or None)` as NumPy arrays."""
        score = np.asarray(score, dtype=np.float64)
        if score.ndim not in (1, 2) or score.shape[0] == 0:
            raise self.error(f"scores must be (n,) or (n, k) with n > 0, got shape {score.shape}")
        n = score.shape[0]
        score2 = score.reshape(n, -1)
        k = score2.shape[1]
        if k == 1 and self.categorical:
            raise self.error(
                "a loss over classes needs one score per class, got one output; set "
                "num_class=k in the library's parameters (XGBoost, LightGBM)"
            )
        y = np.asarray(y_true)
        if y.dtype.kind not in "biuf":
            raise self.error(f"labels must be numbers, got an array of dtype {y.dtype}")
        if y.shape[:1] != (n,):
            raise self.error(f"{y.shape[0] if y.ndim else 'no'} labels for {n} scores")
        if not np.isfinite(np.sum(score2)) and not np.all(np.isfinite(score2)):
            raise self.error("the scores contain NaN or inf")
        if y.ndim == 2 and y.shape == score2.shape and k > 1 and self.sparse:
            raise self.error(
                f"a sparse loss takes class indices of shape ({n},), got labels of shape "
                f"{y.shape}; pass the class indices, or use the non-sparse loss for one-hot "
                "labels"
            )
        if y.ndim == 2 and y.shape == score2.shape:
            labels = y.astype(np.float64)
        elif y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
            y = y.reshape(n)
            if k == 1:
                labels = y.astype(np.float64).reshape(n, 1)
            else:
                classes = y.astype(np.int64)
                fractional = y[classes != y]
                if fractional.size:
                    shown = ", ".join(str(v) for v in np.unique(fractional)[:5].tolist())
                    raise self.error(
                        f"labels of a {k}-output model must be integer class indices in "
                        f"[0, {k}), got non-integer values {shown}"
                    )
                if classes.min() < 0 or classes.max() >= k:
                    raise self.error(
                        f"labels of a {k}-output model must be class indices in [0, {k}), got "
                        f"values in [{y.min()}, {y.max()}]"
                    )
                labels = classes.astype(np.int32) if self.sparse else np.eye(k)[classes]
        else:
            raise self.error(f"labels of shape {y.shape} do not fit scores of shape {score.shape}")
        if labels.dtype.kind == "f" and not np.isfinite(np.sum(labels)) and not np.all(
            np.isfinite(labels)
        ):
            raise self.error("the labels contain NaN or inf")
        if self.binary_labels and k == 1 and (labels.min() < 0 or labels.max() > 1):
            raise self.error(
                f"binary labels must lie in [0, 1], got values in [{labels.min()}, "
                f"{labels.max()}]"
            )
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weight is not None and weight.size == 0:
            weight = None  # XGBoost's DMatrix.get_weight() when no weights were set
        if weight is not None:
            if weight.shape != (n,):
                raise self.error(f"sample_weight must have shape ({n},), got {weight.shape}")
            if not np.all(np.isfinite(weight)) or weight.min() < 0:
                raise self.error("sample_weight must be finite and non-negative")
        return labels, score2, weight

    def scope(self):
        return backend.float64_scope() if self.dtype == "float64" else contextlib.nullcontext()

    def tensors(self, labels, score):
        """`labels, score` as backend tensors in the compute dtype (integer labels kept)."""
        if labels.dtype.kind == "f":
            labels = labels.astype(self.dtype, copy=False)
        return ops.convert_to_tensor(labels), ops.convert_to_tensor(score.astype(self.dtype,
                                                                                 copy=False))

    def values(self, labels, score):
        with self.scope():
            out = self.fn(*self.tensors(labels, score))
            return np.asarray(ops.convert_to_numpy(out), dtype=np.float64)


class Objective:
    """A loss as a custom objective; see `objective`."""

    def __init__(self, loss, *, hessian="exact", min_hessian=1e-6, dtype="float64",
                 derivatives="auto"):
        if derivatives not in ("auto", "autodiff"):
            raise ValueError(
                "losskit.boosting: derivatives must be 'auto' or 'autodiff', got "
                f"{derivatives!r}"
            )
        if hessian not in HESSIAN_POLICIES:
            raise ValueError(
                f"losskit.boosting: hessian must be one of {HESSIAN_POLICIES}, got {hessian!r}"
            )
        if not (np.isfinite(min_hessian) and min_hessian >= 0):
            raise ValueError(
                f"losskit.boosting: min_hessian must be finite and >= 0, got {min_hessian!r}"
            )
        self.loss = _Loss(loss, dtype)
        if hessian == "gauss_newton" and not self.loss.residual:
            raise self.loss.error(
                "hessian='gauss_newton' is the curvature of a loss of the residual "
                "(regression); this loss is not one (it takes logits, classes, margins, rankings "
                "or directions): use hessian='exact' or 'clip'"
            )
        self.closed_form = self.loss.closed_form if derivatives == "auto" else None
        self.hessian = hessian
        self.min_hessian = float(min_hessian)
        self.__name__ = self.loss.name  # XGBoost's sklearn wrapper and logs read it
        self._compiled = {}
        self._first_call_checked = False

    def __repr__(self):
        how = "closed-form" if self.closed_form is not None else "autodiff"
        return (f"<losskit.boosting.objective {self.loss.name}: hessian={self.hessian!r}, "
                f"{how} derivatives>")

    def __deepcopy__(self, memo):
        # LightGBM deep-copies its params (the objective among them) on every `train` call, and
        # scikit-learn clones estimators: the objective is immutable, so the copy is the object
        # itself and keeps its compiled derivative functions (a copy would compile again).
        return self

    def __getstate__(self):
        # scikit-learn clones estimators (deepcopy) and pickles models: the compiled functions
        # (a tf.function holds graphs) are rebuilt on first use instead.
        return {**self.__dict__, "_compiled": {}}

    def _derivative_fn(self, k):
        """The backend-compiled `(labels, score) -> (g, h)` for `k` outputs (traced per shape)."""
        if k not in self._compiled:
            per_sample = self.loss.fn

            def derivatives(labels, score):
                g, h = backend.score_derivatives(lambda s, y: per_sample(y, s), score, [labels])
                # The checks' reductions fused into the compiled call: a NaN or inf in g or h
                # makes the sum non-finite; the smallest h decides the policy's error.
                return g, h, ops.sum(g) + ops.sum(h), ops.min(h)

            self._compiled[k] = backend.compile_function(derivatives, xla=True)
        return self._compiled[k]

    def gradients(self, y_true, score, sample_weight=None):
        """`(g, h)`: the weighted gradient and Hessian diagonal w.r.t. `score`, float64 arrays of
        the scores' shape, with the Hessian policy applied."""
        labels, score2, weight = self.loss.prepare(y_true, score, sample_weight)
        if self.closed_form is not None:
            g, h = self.closed_form(labels, score2)
            total, h_min = np.sum(g) + np.sum(h), np.min(h)
        else:
            g, h, total, h_min = self._autodiff(labels, score2)
        # A non-finite sum may also be an overflow of finite values: then look at each entry.
        bad = None if np.isfinite(total) else ~(np.isfinite(g) & np.isfinite(h))
        if bad is not None and bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise self.loss.error(
                f"gradient or Hessian is not finite at {int(bad.sum())} of {bad.size} entries "
                "(first at row "
                f"{row}: score {score2[row].tolist()}, label {np.asarray(labels[row]).tolist()})"
            )
        h = self._policy(h, g, labels, score2, h_min)
        if not self._first_call_checked:
            self._first_call_checked = True
            self._first_call_warnings(g, h, weight)
        if weight is not None:
            g = g * weight[:, None]
            h = h * weight[:, None]
        shape = np.shape(score)
        return g.reshape(shape), h.reshape(shape)

    def _first_call_warnings(self, g, h, weight, share=0.5):
        """Once per objective, on the first call (every score at the start, often 0):

        - a gradient of 0 at every entry: the loss does not respond to the score (a loss of
          probabilities hidden in a function, a cosine similarity of one output) and the trees
          would not move;
        - under `"exact"`, for a loss of the residual, a Hessian of (about) 0 where the gradient
          is not on half the entries or more: Newton leaves step by -sum(g) / lambda there
          (Huber's or smooth L1's linear tails, log-cosh's far tails, the MAE) and training
          diverges or stalls; the derivatives are right, the policy is what to change.

        Rows of weight 0 do not count."""
        live = np.ones(g.shape, bool) if weight is None else np.broadcast_to(
            weight[:, None] > 0, g.shape)
        moving = live & (g != 0)
        count = int(np.count_nonzero(moving))
        owner = f"losskit.boosting: loss '{self.loss.name}'"
        if count == 0 and live.any():
            warnings.warn(
                f"{owner}: the gradient is 0 at every entry of the first call: the loss does not "
                "respond to the raw score here (a loss of probabilities or of several outputs "
                "given one?), and the trees will not move.",
                UserWarning,
                stacklevel=4,
            )
            return
        if self.hessian != "exact" or not self.loss.residual:
            return
        flat = int(np.count_nonzero(moving & (h <= FLAT_HESSIAN)))
        if flat and flat >= share * count:
            warnings.warn(
                f"{owner}: the exact Hessian is about 0 (<= {FLAT_HESSIAN}) at {flat} of {count} "
                "entries whose gradient is not (a linear part of the loss, or a far tail): "
                "Newton leaves there step by -sum(g) / lambda, and training can diverge or "
                "stall. Pass hessian='gauss_newton' (the curvature rho'(e) / e of a loss of the "
                "residual).",
                UserWarning,
                stacklevel=4,
            )

    def _autodiff(self, labels, score):
        """`(g, h, sum(g) + sum(h), min(h))` by the backend's autodiff."""
        self.loss.check_rows_independent(labels, score)
        with self.loss.scope():
            g, h, total, h_min = self._derivative_fn(score.shape[1])(
                *self.loss.tensors(labels, score)
            )
            g = np.asarray(ops.convert_to_numpy(g), dtype=np.float64)
            h = np.asarray(ops.convert_to_numpy(h), dtype=np.float64)
            return g, h, float(ops.convert_to_numpy(total)), float(ops.convert_to_numpy(h_min))

    def _policy(self, h, g, labels, score, h_min):
        if self.hessian == "exact":
            if h_min < 0:
                # Round-off of a convex loss's Hessian (float32 autodiff of a tail that is 1e-11
                # came out -2e-8) is not non-convexity: negatives within it count as 0.
                scale = max(float(np.max(np.abs(h))), float(np.max(np.abs(g))))
                # Closed forms run in float64; autodiff in the loss's dtype.
                dtype = "float64" if self.closed_form is not None else self.loss.dtype
                roundoff = ROUNDOFF_ULPS * np.finfo(dtype).eps * scale
                if h_min >= -roundoff:
                    return np.maximum(h, 0.0)
                negative = h < -roundoff
                raise self.loss.error(
                    f"the exact Hessian is negative at {int(negative.sum())} of {h.size} entries "
                    f"(min {h.min():.3g}): the loss is not convex there. Pass "
                    "hessian='clip' or hessian='gauss_newton' (losskit.boosting.objective)."
                )
            return h
        if self.hessian == "clip":
            return np.maximum(h, self.min_hessian)
        if score.shape[1] != 1 or labels.shape != score.shape:
            raise self.loss.error(
                "hessian='gauss_newton' needs one output and a real-valued target (a loss of "
                "the residual); use hessian='clip' here"
            )
        residual = score - labels
        near = np.abs(residual) <= 1e-8 * (1.0 + np.abs(labels))
        secant = g / np.where(near, 1.0, residual)
        return np.maximum(np.where(near, h, secant), self.min_hessian)

    def __call__(self, a, b, sample_weight=None):
        """Native `(preds, DMatrix | Dataset)` (XGBoost `obj=`, LightGBM `params["objective"]`)
        or scikit-learn `(y_true, y_pred, sample_weight)` (both libraries' `objective=`)."""
        if hasattr(b, "get_label"):  # a DMatrix or a LightGBM Dataset: weights live in it
            return self.gradients(b.get_label(), a, b.get_weight())
        return self.gradients(a, b, sample_weight)

    def for_catboost(self):
        """This objective as CatBoost's `loss_function=` object (derivatives of the
        log-likelihood: :math:`-g`, :math:`-h`)."""
        return CatBoostObjective(self)


class CatBoostObjective:
    """CatBoost's custom objective protocol (`calc_ders_range`, `calc_ders_multi`)."""

    def __init__(self, objective):
        self.objective = objective

    def calc_ders_range(self, approxes, targets, weights):
        g, h = self.objective.gradients(
            np.asarray(targets, dtype=np.float64), np.asarray(approxes, dtype=np.float64),
            None if weights is None else np.asarray(weights, dtype=np.float64),
        )
        return list(zip((-g).tolist(), (-h).tolist()))

    def calc_ders_multi(self, approx, target, weight):
        g, h = self.objective.gradients(
            np.asarray([target], dtype=np.float64), np.asarray([approx], dtype=np.float64),
            None if weight is None else np.asarray([weight], dtype=np.float64),
        )
        return (-g[0]).tolist(), np.diag(-h[0]).tolist()


def _metric_value(metric, y_true, y_pred, sample_weight=None):
    return metric.value(y_true, y_pred, sample_weight)


class Metric:
    """A loss as an evaluation metric; see `metric`."""

    def __init__(self, loss):
        self.loss = _Loss(loss)
        self.__name__ = self.loss.name

    def value(self, y_true, score, sample_weight=None):
        """The (weighted) mean per-sample loss at the raw scores."""
        labels, score2, weight = self.loss.prepare(y_true, score, sample_weight)
        self.loss.check_rows_independent(labels, score2)
        values = self.loss.values(labels, score2)
        if weight is None:
            return float(values.mean())
        total = np.sum(weight)
        if total == 0:
            raise self.loss.error("the sample weights sum to 0: the weighted mean is undefined")
        return float(np.sum(values * weight) / total)

    def __call__(self, preds, data):
        value = self.value(data.get_label(), preds, data.get_weight())
        if type(data).__module__.startswith("lightgbm"):
            return self.loss.name, value, False
        return self.loss.name, value

    @property
    def xgboost_sklearn(self):
        """XGBoost scikit-learn `eval_metric=`: `fn(y_true, y_pred, sample_weight=None)` -> the
        value, named after the loss (XGBoost logs the function's `__name__`); it pickles with
        the model, which keeps it in its parameters."""
        fn = functools.partial(_metric_value, self)
        fn.__name__ = self.loss.name
        return fn

    def lightgbm_sklearn(self, y_true, y_pred, weight=None):
        """LightGBM scikit-learn `eval_metric=`: `(name, value, is_higher_better)`."""
        return self.loss.name, self.value(y_true, y_pred, weight), False

    def for_catboost(self):
        """This metric as CatBoost's `eval_metric=` object."""
        return CatBoostMetric(self)


class CatBoostMetric:
    """CatBoost's custom metric protocol: weighted sum and weight, then their ratio."""

    def __init__(self, metric):
        self.metric = metric

    def is_max_optimal(self):
        return False

    def evaluate(self, approxes, target, weight):
        score = np.stack([np.asarray(a, dtype=np.float64) for a in approxes], axis=-1)
        m = self.metric
        labels, score2, w = m.loss.prepare(np.asarray(target), score[:, 0] if len(approxes) == 1
                                           else score, None if weight is None else weight)
        values = m.loss.values(labels, score2)
        w = np.ones_like(values) if w is None else w
        return float(np.sum(values * w)), float(np.sum(w))

    def get_final_error(self, error, weight):
        return error / weight if weight else 0.0

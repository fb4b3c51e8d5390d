"""Smooth losses written with |x|, max(x, 0) or `where`: autodiff's derivatives at the branch
point (a logit of 0, a residual of 0) are the true ones.

Autodiff takes abs'(0) = relu'(0) = 0 on TensorFlow and torch (JAX picks a side), so a smooth
loss whose formula combines such pieces can get a wrong gradient or Hessian exactly where a
zero-initialised output layer, or boosting's first round (every margin 0), evaluates it. Checked
for every registered loss of logits (`from_logits=True`) and every smooth regression loss: the
gradient and Hessian diagonal by the backend's autodiff (`losskit.boosting`, float64) against
central finite differences of the loss value, at the branch point and beside it.
"""

import inspect

import numpy as np
import pytest

from losskit import boosting
from losskit.losses import _common

K = 3
CLASS_OF = {cls.fn: cls for _, cls in _common.CLASSES.values()}
FUNCTIONS = {name: fn for name, (_, fn) in _common.FUNCTIONS.items()}

# Every registered loss with `from_logits`, and how its labels look.
LOGIT_LOSSES = {
    "binary_crossentropy": ("binary", {"pos_weight": 2.0, "label_smoothing": 0.1}),
    "bernoulli_nll": ("binary", {}),
    "focal": ("binary", {"gamma": 2.0, "alpha": 0.25}),
    "focal-categorical": ("classes", {"mode": "categorical", "gamma": 2.0}),
    "categorical_crossentropy": ("classes", {"label_smoothing": 0.1}),
    "sparse_categorical_crossentropy": ("classes", {}),
    "poly1": ("classes", {}),
    "generalized_cross_entropy": ("classes", {"q": 0.7}),
}
# Regression losses that are not differentiable at a zero residual, by definition.
NOT_SMOOTH = {"mae", "mape", "pinball", "msle", "cosine_similarity"}
REGRESSION = {
    **{name: {} for name, (fam, _) in _common.FUNCTIONS.items()
       if fam == "regression" and name not in NOT_SMOOTH},
    "general_robust-0": {"alpha": 0.0},
    "general_robust-half": {"alpha": 0.5},
    "general_robust--inf": {"alpha": float("-inf")},
    "general_robust-3": {"alpha": 3.0},
    "huber-2": {"delta": 2.0},
    # The default epsilon (1e-3) bends over a residual of 1e-3: too sharp for a 1e-4 step.
    "charbonnier": {"epsilon": 0.1},
    "smooth_l1-half": {"beta": 0.5},
}


def test_every_logit_loss_is_listed():
    with_logits = {name for name, fn in FUNCTIONS.items()
                   if "from_logits" in inspect.signature(fn).parameters}
    assert with_logits == {name.split("-")[0] for name in LOGIT_LOSSES}


def _loss(name, kwargs):
    cls = CLASS_OF[FUNCTIONS[name.split("-")[0]]]
    return cls(**kwargs)


def _finite_differences(obj, labels, score, step=1e-4):
    """Per-row gradient and Hessian diagonal of the float64 per-sample values."""
    loss = obj.loss
    labels, score, _ = loss.prepare(labels, score, None)
    f0 = loss.values(labels, score)
    g, h = np.zeros_like(score), np.zeros_like(score)
    for j in range(score.shape[1]):
        shift = np.zeros_like(score)
        shift[:, j] = step
        up, down = loss.values(labels, score + shift), loss.values(labels, score - shift)
        g[:, j] = (up - down) / (2 * step)
        h[:, j] = (up - 2 * f0 + down) / step**2
    return g, h


def _check(loss, labels, score):
    obj = boosting.objective(loss, derivatives="autodiff")
    prepared, score2, _ = obj.loss.prepare(labels, score, None)
    g, h, _, _ = obj._autodiff(prepared, score2)  # before any Hessian policy: may be negative
    g_fd, h_fd = _finite_differences(obj, labels, score)
    np.testing.assert_allclose(g, g_fd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, h_fd, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LOGIT_LOSSES))
def test_logit_losses_at_logit_zero(name):
    kind, kwargs = LOGIT_LOSSES[name]
    loss = _loss(name, {"from_logits": True, **kwargs})
    rng = np.random.default_rng(0)
    n = 12
    if kind == "binary":
        labels = np.array([0.0, 1.0, 0.3] * 4)
        score = np.zeros(n)
        score[6:] = rng.uniform(-0.5, 0.5, n - 6)
    else:
        labels = np.arange(n) % K
        score = np.zeros((n, K))
        score[6:] = rng.uniform(-0.5, 0.5, (n - 6, K))
        score[3, 1] = 0.0  # a zero logit beside non-zero ones
    _check(loss, labels, score)


@pytest.mark.parametrize("name", sorted(REGRESSION))
def test_regression_losses_at_zero_residual(name):
    loss = _loss(name, REGRESSION[name])
    rng = np.random.default_rng(1)
    labels = rng.normal(size=10)
    score = labels.copy()  # residual exactly 0
    score[5:] += rng.uniform(-0.4, 0.4, 5)
    _check(loss, labels, score)

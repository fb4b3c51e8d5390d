"""Gradient aggregators: balancers whose update is a function of the per-term gradients, the rows
of the Jacobian `J` (`(m, n)`: `m` terms, `n` trainable weights of the inner model, flattened).

Each computes weights `w = weights(G)` from the Gramian `G = J J^T` and updates along
`d = direction(J) = J^T w` (TorchJD's "Gramian-weighted aggregators"). `direction(jacobian)` is
public and pure, so it can be checked alone; training computes the same `(d, w)` through
`_aggregate` and follows `d` through a zero-valued surrogate (`_surrogate`). `<term>_weight`
logs `w_t` (times the schedule weight `c_t`: the rows of `J` are the gradients of `c_t L_t`), so
the update is `sum_t w_t c_t grad L_t`; `loss` logs `sum_t w_t c_t L_t`. Evaluation uses the last
training step's weights (1 before the first step).

Like TorchJD, the defaults combine with the *mean* preference `1/m`: the update has the scale of
the mean gradient, not of the sum an unbalanced model follows (with SGD, multiply the learning
rate by `m` to compare; Adam is insensitive to it).

Checked against TorchJD 0.18's aggregators of the same names on random, conflicting and
degenerate Jacobians (tests/test_balancing_parity.py).
"""

import math

from keras import ops

from losskit.balancing import _qp
from losskit.balancing._base import Balancer, _number, _register, _state
from losskit.balancing._gradient_based import _surrogate


def _jacobian(balancer, jacobian):
    jacobian = ops.convert_to_tensor(jacobian)
    if len(jacobian.shape) != 2:
        raise ValueError(
            f"{balancer}: direction expects an (m, n) Jacobian (one row per term), got shape "
            f"{tuple(jacobian.shape)}"
        )
    _qp.check_terms(balancer, jacobian.shape[0])
    return jacobian


class _Aggregator(Balancer):
    """Shared training path: the Jacobian of the scheduled terms w.r.t. the inner model's
    trainable weights, `(d, w) = _aggregate(J)`, and the surrogate that makes `d` the update."""

    def weights(self, gramian):
        raise NotImplementedError

    def direction(self, jacobian):
        """The update direction `J^T w` (`(n,)`) of an `(m, n)` Jacobian; all NaN if `J` has a
        NaN or infinite entry (on every backend)."""
        return self._aggregate(_jacobian(type(self).__name__, jacobian))[0]

    def _aggregate(self, jacobian):
        jacobian = ops.cast(jacobian, "float32")
        gramian = ops.matmul(jacobian, ops.transpose(jacobian))
        # A NaN or infinite gradient (a NaN batch) makes the Gramian non-finite, on which `eigh`
        # fails (TF, torch) or returns NaN (JAX). Solve on a finite stand-in and return NaN
        # weights instead: the update and the logged loss are then NaN on every backend, as
        # without a balancer, and `nan_policy="raise"` names the term.
        finite = ops.all(ops.isfinite(gramian))
        m = gramian.shape[0]
        w = self.weights(ops.where(finite, gramian, ops.eye(m, dtype=gramian.dtype)))
        w = ops.where(finite, w, ops.full_like(w, float("nan")))
        return ops.matmul(w, jacobian), w

    def bind(self, model):
        k = len(model.objective.terms)
        _qp.check_terms(type(self).__name__, k)
        self.last = _state(model, f"{type(self).__name__.lower()}_weights", (k,), "ones")

    def apply(self, step):
        variables = step.model.inner.trainable_variables
        w = ops.copy(ops.cast(self.last.value, "float32"))
        if step.training and variables:
            grads = step.gradients(variables)
            jacobian = ops.stack(
                [
                    ops.concatenate([ops.reshape(step.schedule[n] * g, (-1,)) for g in grads[n]])
                    for n in step.names
                ]
            )
            d, w = self._aggregate(jacobian)
            w = ops.stop_gradient(w)
            self.last.assign(w)
        weights = {n: w[i] for i, n in enumerate(step.names)}
        total = step.weighted_total(weights)
        if not step.training or not variables:
            return total, weights
        direction, start = [], 0
        for v in variables:
            size = math.prod(v.shape)
            direction.append(ops.reshape(d[start : start + size], v.shape))
            start += size
        return ops.stop_gradient(total) + _surrogate(step, variables, direction), weights


def _eps(name, key, value):
    return _number(name, key, value, 0.0)


class _DualConeAggregator(_Aggregator):
    """`UPGrad` and `DualProj`: box-constrained problems on the trace-normalised, regularised
    Gramian `G' = G / trace(G) + reg_eps I` (TorchJD's defaults for `norm_eps`, `reg_eps`)."""

    def __init__(self, norm_eps=1e-4, reg_eps=1e-4):
        self.norm_eps = _eps(type(self).__name__, "norm_eps", norm_eps)
        self.reg_eps = _eps(type(self).__name__, "reg_eps", reg_eps)

    def _regularized(self, gramian):
        m = gramian.shape[0]
        return _qp.normalize(gramian, self.norm_eps) + self.reg_eps * ops.eye(m)

    def get_config(self):
        return {"norm_eps": self.norm_eps, "reg_eps": self.reg_eps}


@_register
class UPGrad(_DualConeAggregator):
    """Unconflicting Projection of Gradients (Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", 2024, arXiv:2406.16232), TorchJD's recommended aggregator.

    Each gradient `g_i` (row of `J`) is projected onto the dual cone `{x : J x >= 0}` of all the
    gradients (the closest vector conflicting with none), and the projections are averaged:
    `d = (1/m) sum_i pi_J(g_i)`. In weights (the paper's Proposition 1): with
    `G' = G / trace(G) + reg_eps I` (`G'` = 0 + `reg_eps I` if `trace(G) < norm_eps`),

        v_i = argmin_v  v^T G' v   s.t.  v >= e_i / m,        w = sum_i v_i,    d = J^T w.

    The `m` box-constrained quadratic programs are solved exactly by enumerating active sets
    (`_qp.box_qp`). `norm_eps` and `reg_eps` are TorchJD's defaults (its `QuadprogProjector`);
    `reg_eps` keeps the problem strictly convex when gradients are linearly dependent.
    """

    def weights(self, gramian):
        m = gramian.shape[0]
        return ops.sum(_qp.box_qp(self._regularized(gramian), ops.eye(m) / m), axis=0)


@_register
class DualProj(_DualConeAggregator):
    """The mean gradient projected onto the dual cone of the gradients (Lopez-Paz & Ranzato,
    "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, Eq. 11; as an aggregator in
    Quinton & Rey 2024): the vector closest to `mean_i g_i` that conflicts with no `g_i`.
    With `G'` as in `UPGrad`,

        w = argmin_v  v^T G' v   s.t.  v >= 1 / m,        d = J^T w.

    `norm_eps`, `reg_eps`: TorchJD's defaults.
    """

    def weights(self, gramian):
        m = gramian.shape[0]
        return _qp.box_qp(self._regularized(gramian), ops.ones((1, m)) / m)[0]


@_register
class MGDA(_Aggregator):
    """Multiple-Gradient Descent (Désidéri, "Multiple-gradient descent algorithm (MGDA) for
    multiobjective optimization", C. R. Math. 2012; for deep multi-task learning Sener & Koltun,
    "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018): the minimum-norm point
    of the convex hull of the gradients,

        w = argmin_{w >= 0, sum w = 1}  w^T G w,        d = J^T w,

    solved exactly over all supports (`_qp.simplex_qp_solver`, on `G / trace(G)`). Sener & Koltun
    (and TorchJD's `MGDA`) approximate it with Frank-Wolfe (`epsilon=1e-3`, `max_iters=100`);
    this solves it exactly, so it equals TorchJD's result when Frank-Wolfe has converged
    (tested with `epsilon=1e-12`).
    """

    def weights(self, gramian):
        m = gramian.shape[0]
        g = _qp.normalize(gramian, 1e-30)
        return _qp.simplex_qp_solver(g)(ops.zeros((m,)))


@_register
class CAGrad(_Aggregator):
    """Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021, Algorithm 1):
    the update maximising the worst term's improvement within a ball around the mean gradient
    `g_0`, `max_d min_i <g_i, d>  s.t.  |d - g_0| <= c |g_0|`. Its dual: with `G' = G/trace(G)`
    (0 if `trace(G) < norm_eps`), `b = G' 1/m`, `r = c sqrt(1^T G' 1) / m` (`= c |g_0|`),

        w* = argmin_{w >= 0, sum w = 1}  b^T w + r sqrt(w^T G' w),
        weights = 1/m + (r / |g_w*|) w*    (0 if |g_w*| = sqrt(w*^T G' w*) < norm_eps),

    and `d = J^T weights = g_0 + r g_w / |g_w|` (TorchJD's `CAGrad(c, norm_eps=1e-4)`, which
    solves the dual with cvxpy). Here: `sqrt(q) = min_{s > 0} q/(2s) + s/2` turns the dual into
    `min_s h(s)`, `h(s) = min_w b^T w + r (w^T G' w / (2s) + s/2)`, convex in `s`, whose inner
    problem is a simplex QP solved exactly; `s* = |g_w(s*)|` (where `h'(s) = 0`) is found by 30
    bisection steps on the sign of `s^2 - w(s)^T G' w(s)`.

    Args:
        c: the ball's radius relative to `|g_0|` (`>= 0`; the paper uses 0.4 to 0.5; 0 is the
            mean gradient).
        norm_eps: TorchJD's default.
    """

    _STEPS = 30

    def __init__(self, c=0.4, norm_eps=1e-4):
        self.c = _number("CAGrad", "c", c, 0.0)
        self.norm_eps = _eps("CAGrad", "norm_eps", norm_eps)

    def weights(self, gramian):
        m = gramian.shape[0]
        g = _qp.normalize(gramian, self.norm_eps)
        b = ops.sum(g, axis=1) / m
        r = self.c * ops.sqrt(ops.maximum(ops.sum(g), 0.0)) / m
        solve = _qp.simplex_qp_solver(g)
        if self.c == 0:  # the linear program: the term whose gradient least agrees with g_0
            w = ops.one_hot(ops.argmin(b), m)
        else:
            r_safe = ops.maximum(r, 1e-30)

            def bisect(_, bounds):
                lo, hi = bounds[0], bounds[1]
                s = 0.5 * (lo + hi)
                w = solve(s / r_safe * b)
                below = s * s < ops.sum(ops.matmul(g, w) * w)  # h'(s) < 0: s* is above s
                return ops.stack([ops.where(below, s, lo), ops.where(below, hi, s)])

            hi = ops.sqrt(ops.max(ops.diagonal(g))) + 1e-12
            bounds = ops.fori_loop(0, self._STEPS, bisect, ops.stack([0.0 * hi, hi]))
            w = solve(0.5 * (bounds[0] + bounds[1]) / r_safe * b)
        norm = ops.sqrt(ops.maximum(ops.sum(ops.matmul(g, w) * w), 0.0))
        out = 1.0 / m + r / ops.maximum(norm, 1e-30) * w
        return ops.where(norm >= self.norm_eps, out, ops.zeros_like(out))

    def get_config(self):
        return {"c": self.c, "norm_eps": self.norm_eps}


@_register
class IMTLG(_Aggregator):
    """Impartial Multi-Task Learning, gradient part (Liu et al., "Towards Impartial Multi-task
    Learning", ICLR 2021), in the generalisation of Quinton & Rey 2024 (TorchJD's `IMTLG`) that
    allows linearly dependent gradients: the update has equal projections onto every unit
    gradient `g_i / |g_i|`,

        v = pinv(G) sqrt(diag(G)),      w = v / sum(v)   (0 if sum(v) ~ 0),     d = J^T w.

    `pinv` through `eigh` of `G / trace(G)`, treating eigenvalues below `m * 1e-6 * max` as zero
    (TorchJD: `torch.linalg.pinv`, `m * eps` of the dtype); `sum(v) ~ 0` is `|sum(v)| < 1e-12`
    on the normalised Gramian (TorchJD: on `G`).
    """

    def weights(self, gramian):
        trace = ops.maximum(ops.trace(gramian), 1e-30)
        g = gramian / trace
        v = ops.matmul(_qp.pinv_sym(g), ops.sqrt(ops.maximum(ops.diagonal(g), 0.0)))
        total = ops.sum(v)
        return ops.where(ops.abs(total) < 1e-12, ops.zeros_like(v), v / total)


@_register
class AlignedMTL(_Aggregator):
    """Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment
    for Multi-Task Learning", CVPR 2023, Algorithm 1): the gradients are made orthogonal and of
    equal norm (a condition number of 1) before averaging. With `G = V diag(lambda) V^T`, keeping
    the `R` eigenvalues above `m * 1e-6 * lambda_max` (TorchJD: `m * eps` of the dtype),

        B = sqrt(sigma) V_R diag(lambda_R)^(-1/2) V_R^T,     w = B 1/m,     d = J^T w,

    with `sigma` the smallest kept eigenvalue (`scale_mode="min"`, the paper and TorchJD's
    default), their median (`"median"`; the lower middle one for an even count, as
    `torch.median`) or their mean (`"rmse"`). `B = I` if `G = 0`.
    """

    _MODES = ("min", "median", "rmse")

    def __init__(self, scale_mode="min"):
        if scale_mode not in self._MODES:
            raise ValueError(
                f"AlignedMTL: scale_mode must be one of {self._MODES}, got {scale_mode!r}"
            )
        self.scale_mode = scale_mode

    def weights(self, gramian):
        m = gramian.shape[0]
        g = gramian / ops.maximum(ops.trace(gramian), 1e-30)
        values, vectors = ops.eigh(g)
        keep = values > m * _qp._RANK_RTOL * ops.max(values)
        count = ops.sum(ops.cast(keep, "int32"))
        if self.scale_mode == "min":
            sigma = ops.min(ops.where(keep, values, 2.0))
        elif self.scale_mode == "rmse":
            kept = ops.maximum(ops.cast(count, "float32"), 1.0)
            sigma = ops.sum(ops.where(keep, values, 0.0)) / kept
        else:  # ascending order, the dropped ones first: the lower median is at m - R + (R-1)//2
            ordered = ops.sort(ops.where(keep, values, -1.0))
            index = m - count + (count - 1) // 2
            sigma = ops.sum(ordered * ops.one_hot(index, m))
        inv_sqrt = ops.where(keep, 1.0 / ops.sqrt(ops.where(keep, values, 1.0)), 0.0)
        b = ops.sqrt(ops.maximum(sigma, 0.0)) * ops.matmul(
            vectors * inv_sqrt[None, :], ops.transpose(vectors)
        )
        b = ops.where(count > 0, b, ops.eye(m))
        return ops.sum(b, axis=1) / m

    def get_config(self):
        return {"scale_mode": self.scale_mode}

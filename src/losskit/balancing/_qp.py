"""The small problems the gradient aggregators solve over the `(m, m)` Gramian `G = J J^T` of the
`m` per-term gradients: quadratic programs on a box and on the simplex, solved exactly by
enumerating their active sets (`2^m` candidates; `m` is the number of terms), and a symmetric
pseudo-inverse. Everything is `keras.ops` with shapes fixed by `m`, so it runs inside the
compiled training step on every backend; no solver dependency.

Why enumeration: a convex QP's solution satisfies the linear KKT equations of its active set, so
solving those equations for every active set and keeping the feasible candidate of least
objective is exact up to rounding (one step of iterative refinement, `x += P (b - K x)`, takes
the float32 error of an ill-conditioned system, e.g. UPGrad's `G + 1e-4 I` for equal gradients,
from ~1e-5 to ~1e-8 of the gradients' norm); no iteration count or tolerance to tune. Every
equation system here is symmetric; it is solved through `eigh` (a pseudo-inverse), which,
unlike an LU solve, neither fails on a singular system (a zero gradient, two equal gradients)
nor differs between backends in how it fails: a candidate from a singular system is simply
infeasible or no better than the solution.
"""

import itertools

import numpy as np
from keras import ops

MAX_TERMS = 10  # 2^10 candidate active sets of 10 x 10 systems; beyond that the cost explodes
_RANK_RTOL = 1e-6  # eigenvalues below m * this * the largest count as 0 (float32 rounding ~1e-7)
_FEASIBLE = 1e-5  # candidates violating a constraint by more than this (relative) are rejected
_BIG = 1e30


def check_terms(balancer, m):
    if m > MAX_TERMS:
        raise ValueError(
            f"{balancer}: solves its quadratic program exactly over all 2^m active sets, which "
            f"supports at most {MAX_TERMS} terms; the objective has {m}."
        )


def subsets(m, empty):
    """All subsets of `range(m)` as a `(2^m [- 1], m)` float32 0/1 matrix."""
    rows = [s for s in itertools.product([0.0, 1.0], repeat=m) if empty or any(s)]
    return np.array(rows, dtype="float32")


def normalize(gramian, eps):
    """`G / trace(G)`, or zeros where `trace(G) < eps` (TorchJD's `normalize`): the aggregators'
    weights do not change with the gradients' scale, and the problems below are then well
    scaled whatever the loss magnitudes."""
    trace = ops.trace(gramian)
    return ops.where(trace < eps, ops.zeros_like(gramian), gramian / ops.maximum(trace, 1e-30))


def pinv_sym(matrices, rtol=_RANK_RTOL):
    """Pseudo-inverse of (a batch of) symmetric matrices through `eigh`; eigenvalues below
    `n * rtol * max|eigenvalue|` count as zero."""
    values, vectors = ops.eigh(matrices)
    n = matrices.shape[-1]
    cut = n * rtol * ops.max(ops.abs(values), axis=-1, keepdims=True)
    inverse = ops.where(ops.abs(values) > cut, 1.0 / ops.where(values == 0, 1.0, values), 0.0)
    return ops.matmul(vectors * ops.expand_dims(inverse, -2), ops.swapaxes(vectors, -1, -2))


def _pick(candidates, violation, objective, scale):
    """The feasible candidate of least objective (`candidates`: `(k, ..., m)`, reduced over the
    first axis); the least violating one if rounding left none feasible."""
    score = ops.where(violation <= _FEASIBLE * scale, objective, _BIG + violation)
    best = ops.one_hot(ops.argmin(score, axis=0), candidates.shape[0], axis=0)  # (k, ...)
    return ops.sum(candidates * ops.expand_dims(best, -1), axis=0)


def box_qp(a, u):
    """`argmin_v v^T A v  s.t.  v >= u` for each row of `u` (`(p, m)`), `A` `(m, m)` positive
    definite. For a free set F (mask `s`), `v_F` solves `A_FF v_F = -A_FA u_A` and `v_A = u_A`."""
    m = a.shape[0]
    s = ops.convert_to_tensor(subsets(m, empty=True))  # (k, m)
    eye = ops.eye(m, dtype=a.dtype)
    system = s[:, :, None] * s[:, None, :] * a + (1.0 - s)[:, :, None] * eye  # (k, m, m)
    inverse = pinv_sym(system)
    fixed = (1.0 - s)[:, None, :] * u  # (k, p, m): the active constraints' values
    rhs = fixed - s[:, None, :] * ops.matmul(fixed, a)
    v = ops.einsum("kij,kpj->kpi", inverse, rhs)
    v = v + ops.einsum("kij,kpj->kpi", inverse, rhs - ops.einsum("kij,kpj->kpi", system, v))
    violation = ops.sum(ops.maximum(u - v, 0.0), axis=-1)  # (k, p)
    objective = ops.sum(ops.matmul(v, a) * v, axis=-1)
    return _pick(v, violation, objective, ops.max(ops.abs(u)) + 1e-30)


def simplex_qp_solver(q):
    """A function `beta -> argmin_w beta^T w + w^T Q w / 2  s.t.  w >= 0, sum(w) = 1`. For a
    support S (mask `s`): `[[Q_SS, 1], [1^T, 0]] [w_S; -mu] = [-beta_S; 1]`, the rest 0. The
    systems do not depend on `beta`, so they are inverted once for every `beta` asked."""
    m = q.shape[0]
    s = ops.convert_to_tensor(subsets(m, empty=False))  # (k, m)
    k = s.shape[0]
    eye = ops.eye(m, dtype=q.dtype)
    top = s[:, :, None] * s[:, None, :] * q + (1.0 - s)[:, :, None] * eye
    top = ops.concatenate([top, s[:, :, None]], axis=2)  # (k, m, m + 1)
    bottom = ops.concatenate([s, ops.zeros((k, 1), q.dtype)], axis=1)[:, None, :]
    system = ops.concatenate([top, bottom], axis=1)  # (k, m + 1, m + 1)
    inverse = pinv_sym(system)

    def solve(beta):
        rhs = ops.concatenate([-s * beta, ops.ones((k, 1), q.dtype)], axis=1)
        x = ops.einsum("kij,kj->ki", inverse, rhs)
        x = x + ops.einsum("kij,kj->ki", inverse, rhs - ops.einsum("kij,kj->ki", system, x))
        w = x[:, :m] * s
        violation = ops.sum(ops.maximum(-w, 0.0), axis=-1) + ops.abs(ops.sum(w, axis=-1) - 1.0)
        objective = ops.sum(w * beta, axis=-1) + 0.5 * ops.sum(ops.matmul(w, q) * w, axis=-1)
        w = _pick(w, violation, objective, 1.0)
        w = ops.maximum(w, 0.0)
        return w / ops.sum(w)

    return solve

r"""Divergences between distributions over the last axis: `kl_divergence`, `js_divergence`,
`generalized_kl` (for unnormalised measures; its own `log_input` switch, not `input_type`).

`p` and `q` have the same shape `(N, ..., K)`; the result has shape `(N, ...)` (the class axis
reduced). `input_type` says what both tensors hold:

- `"probabilities"` (default, Keras's convention): entries in [0, 1] summing to 1. Terms with
  :math:`p_k = 0` contribute exactly 0 (:math:`0 \log 0 = 0`); `q` is clipped below at
  `keras.config.epsilon()` in the KL, so :math:`q_k = 0 < p_k` gives a large finite value
  instead of :math:`+\infty` (as `keras.losses.kl_divergence` does).
- `"log_probabilities"`: log-probabilities (e.g. `log_softmax` outputs).
- `"logits"`: unnormalised scores; normalised with `log_softmax`, exact for any finite logit.
"""

import math

from keras import ops

from losskit import domains as dom
from losskit.losses._common import epsilon, family, loss_class, public, register, safe_log

_INPUT_TYPES = ("probabilities", "log_probabilities", "logits")


def _log_and_probs(x, input_type):
    """(log-probabilities, probabilities) of log-probability or logit inputs."""
    log_x = ops.log_softmax(x, axis=-1) if input_type == "logits" else x
    return log_x, ops.exp(log_x)


@register(domains=dict(input_type=dom.one_of(*_INPUT_TYPES)))
def kl_divergence(p, q, input_type="probabilities"):
    r"""Kullback-Leibler divergence :math:`\mathrm{KL}(p \,\|\, q) = \sum_k p_k (\log p_k -
    \log q_k) \ge 0`, zero iff :math:`p = q`.

    Reference: Kullback & Leibler, "On Information and Sufficiency", Ann. Math. Stat. 1951.
    Keras: `keras.losses.kl_divergence(p, q)` (probabilities); optax:
    `optax.losses.kl_divergence(log_q, p)`; torch: `F.kl_div(log_q, p, reduction="none").sum(-1)`.
    """
    p = ops.cast(p, q.dtype)
    if input_type == "probabilities":
        log_q = ops.log(ops.clip(q, epsilon(), 1.0))
        return ops.sum(p * (safe_log(p) - log_q), axis=-1)
    log_p, probs_p = _log_and_probs(p, input_type)
    log_q, _ = _log_and_probs(q, input_type)
    return ops.sum(probs_p * (log_p - log_q), axis=-1)


@register(domains=dict(input_type=dom.one_of(*_INPUT_TYPES)))
def js_divergence(p, q, input_type="probabilities"):
    r"""Jensen-Shannon divergence :math:`\tfrac12 \mathrm{KL}(p \,\|\, m) + \tfrac12
    \mathrm{KL}(q \,\|\, m)`, :math:`m = \tfrac12 (p + q)`: symmetric, in :math:`[0, \log 2]`,
    finite even where the supports differ (no clipping needed). For logits,
    :math:`\log m = \operatorname{logaddexp}(\log p, \log q) - \log 2`.

    Reference: J. Lin, "Divergence Measures Based on the Shannon Entropy", IEEE Trans. Inf. Theory
    1991. No Keras/optax/torch built-in.
    """
    p = ops.cast(p, q.dtype)
    if input_type == "probabilities":
        log_m = safe_log(0.5 * (p + q))
        kl_pm = ops.sum(p * (safe_log(p) - log_m), axis=-1)
        kl_qm = ops.sum(q * (safe_log(q) - log_m), axis=-1)
    else:
        log_p, probs_p = _log_and_probs(p, input_type)
        log_q, probs_q = _log_and_probs(q, input_type)
        log_m = ops.logaddexp(log_p, log_q) - math.log(2.0)
        kl_pm = ops.sum(probs_p * (log_p - log_m), axis=-1)
        kl_qm = ops.sum(probs_q * (log_q - log_m), axis=-1)
    return 0.5 * (kl_pm + kl_qm)


@register(domains=dict(log_input=dom.boolean))
def generalized_kl(p, q, log_input=False):
    r"""Generalized KL divergence between non-negative, unnormalised measures :math:`p, q`
    (I-divergence): :math:`\sum_k \left(p_k \log\frac{p_k}{q_k} - p_k + q_k\right) \ge 0`, zero iff
    :math:`p = q`; equals `kl_divergence` when both sum to 1. :math:`0 \log 0 = 0`; `q` is clipped
    below at `keras.config.epsilon()`. With ``log_input=True``, `q` holds
    :math:`\log q` (any real number) and the term is :math:`p(\log p - \log q) - p + e^{\log q}`.

    Reference: I. Csiszár, "Why least squares and maximum entropy?", Ann. Statist. 1991; Lee &
    Seung, "Algorithms for non-negative matrix factorization", NeurIPS 2000.
    optax: `optax.losses.generalized_kl_divergence(log_q, p)`; torch:
    `F.poisson_nll_loss`-like, no direct equivalent.
    """
    p = ops.cast(p, q.dtype)
    if log_input:
        log_q, q_values = q, ops.exp(q)
    else:
        q_values = ops.maximum(q, epsilon())  # clipped in both places: the term stays >= 0
        log_q = ops.log(q_values)
    return ops.sum(p * (safe_log(p) - log_q) - p + q_values, axis=-1)


KLDivergence = loss_class(kl_divergence, "KLDivergence")
JSDivergence = loss_class(js_divergence, "JSDivergence")
GeneralizedKL = loss_class(generalized_kl, "GeneralizedKL")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

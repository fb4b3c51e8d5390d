r"""Knowledge distillation: `distillation_kl`."""

from keras import ops

from losskit import domains as dom
from losskit.losses._common import family, loss_class, public, register


@register(domains=dict(temperature=dom.positive))
def distillation_kl(teacher_logits, student_logits, temperature=2.0):
    r"""Hinton distillation loss: the KL divergence between the temperature-softened teacher and
    student distributions, scaled by :math:`T^2` so its gradient magnitude does not depend on
    :math:`T`:

    .. math:: T^2\, \mathrm{KL}\!\left(\operatorname{softmax}(t/T) \,\|\,
              \operatorname{softmax}(s/T)\right)
              = T^2 \sum_k p^T_k \left(\log p^T_k - \log q^T_k\right)

    computed with `log_softmax` (exact for any finite logits). A -inf logit (a masked class) of
    the teacher adds 0; one of the student where the teacher's is finite gives +inf.
    Shape `(N, ..., K)` -> `(N, ...)`.
    The teacher is typically side data (`Term(distillation_kl, teacher_logits="x.teacher",
    student_logits="pred")`); no gradient is stopped here.

    Reference: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    NIPS Deep Learning Workshop 2015, §2.
    """
    t = float(temperature)
    teacher_logits = ops.cast(teacher_logits, student_logits.dtype)
    log_p = ops.log_softmax(teacher_logits / t, axis=-1)
    log_q = ops.log_softmax(student_logits / t, axis=-1)
    p = ops.exp(log_p)
    # 0 log 0 = 0: a class the teacher masks (-inf logit) adds nothing, with a 0 gradient.
    return (t * t) * ops.sum(p * ops.where(p > 0, log_p - log_q, 0.0), axis=-1)


DistillationKL = loss_class(distillation_kl, "DistillationKL")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

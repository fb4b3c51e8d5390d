"""Loss balancing for `ObjectiveModel(..., balance=...)`: weights that the training sets.

A balancer turns the terms' values of a step into the total that is differentiated, and reports
the weight it applied to each term (logged as `<term>_weight`). A term's schedule weight
multiplies the balancer's weight: `applied_t = schedule_t(step) * balancer_t`.

- `Uncertainty()`: learned log-variances (model weights, trained by the optimizer).
- `DWA(temperature)`: the ratio of the last two epochs' mean term losses.
- `PCGrad()`: weights 1; the update is the sum of per-term gradients projected off conflicts.
  Needs per-term gradients w.r.t. every trainable weight of the inner model.
- `GradNorm(alpha, shared)`: weights updated so that the terms' gradient norms on a shared
  layer follow their relative training rates. Needs per-term gradients w.r.t. that layer.
- `FAMO(learning_rate, gamma)`: softmax weights whose logits follow the change of the log-losses.
- `RLW(seed)`: random weights `K softmax(N(0, I))`, drawn every step.
- `GradNormScale(shared)`: each term's gradient scaled to the mean gradient norm.
- Gradient aggregators `UPGrad()`, `DualProj()`, `MGDA()`, `CAGrad(c)`, `IMTLG()`,
  `AlignedMTL()`: the update `J^T w` with weights `w` from the Gramian of the per-term gradients;
  each has a pure `direction(jacobian)`. Need per-term gradients w.r.t. every inner weight.

Per-term gradients come from `losskit.backend.term_gradients`: a second forward pass and one
backward pass per term on TensorFlow and JAX (JAX: one `jacrev`), the step's own graph on torch.
"""

from losskit.balancing._aggregators import IMTLG, MGDA, AlignedMTL, CAGrad, DualProj, UPGrad
from losskit.balancing._base import Balancer, get
from losskit.balancing._gradient_based import GradNorm, GradNormScale, PCGrad
from losskit.balancing._loss_based import DWA, FAMO, RLW, Uncertainty
from losskit.balancing._step import Step, combine

# Saved configs name a balancer's module; this keeps it `losskit.balancing`, as before the
# balancers moved into submodules, so saved `.keras` files are the same whichever version wrote
# them (loading resolves the registered name `losskit>Name` first).
for _cls in (
    Uncertainty, DWA, PCGrad, GradNorm, FAMO, RLW, GradNormScale,
    UPGrad, DualProj, MGDA, CAGrad, IMTLG, AlignedMTL,
):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "Balancer", "Step", "Uncertainty", "DWA", "PCGrad", "GradNorm", "FAMO", "RLW",
    "GradNormScale", "UPGrad", "DualProj", "MGDA", "CAGrad", "IMTLG", "AlignedMTL", "get",
    "combine",
]

"""Per-step overhead of loss balancing: each balancer against the unbalanced ObjectiveModel.

The MLP and three-term objective of `overhead.py` (Huber + an MSE to side data + an activation
penalty on the tapped layer `hidden`) trained with `fit`, timed in interleaved rounds (one epoch
of `--steps` steps each) under:

- `unbalanced`: `ObjectiveModel(inner, objective)`, the baseline;
- `log_grad_norms`: the same with `log_grad_norms=True` (per-term gradients, all weights);
- `uncertainty`, `dwa`: `Uncertainty()`, `DWA()` (a few scalar operations);
- `pcgrad`: `PCGrad()` (per-term gradients w.r.t. every weight, projections);
- `gradnorm`: `GradNorm(shared="hidden")` (per-term gradients w.r.t. one layer);
- `famo`, `rlw`: `FAMO()`, `RLW()` (a few scalar operations; no per-term gradients);
- `gradnormscale`: `GradNormScale()` (per-term gradients w.r.t. every weight, their norms);
- `upgrad`, `dualproj`, `mgda`, `cagrad`, `imtlg`, `alignedmtl`: the gradient aggregators
  (per-term gradients w.r.t. every weight, the Jacobian's 3 x 3 Gramian, its small problem).

Reported: seconds per step and the ratio to the baseline, measured in the same process.

    python benchmarks/balancing.py [--quick] [--backends tensorflow jax torch]
"""

import sys

import common
from overhead import build_mlp


def child(args):

    import numpy as np

    import losskit
    from losskit import balancing

    batch, features = 256, 32
    steps = 5 if args.quick else args.steps
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, features)).astype("float32")
    y = (x[:, :1] * 2 + np.sin(x[:, 1:2]) + rng.normal(size=(len(x), 1)) * 0.1).astype("float32")
    teacher = (y + rng.normal(size=y.shape) * 0.05).astype("float32")
    inputs = {"features": x, "teacher": teacher}

    def terms():
        return losskit.Objective(
            [
                losskit.Term(losskit.losses.huber, name="huber"),
                losskit.Term(
                    losskit.losses.mse, y_true="x.teacher", y_pred="pred", weight=0.5,
                    name="distill",
                ),
                losskit.Term(
                    losskit.losses.activation_l2, a="layer.hidden", weight=1e-3, name="act"
                ),
            ]
        )

    setups = {
        "unbalanced": {},
        "log_grad_norms": {"log_grad_norms": True},
        "uncertainty": {"balance": balancing.Uncertainty()},
        "dwa": {"balance": balancing.DWA()},
        "pcgrad": {"balance": balancing.PCGrad()},
        "gradnorm": {"balance": balancing.GradNorm(shared="hidden")},
        "famo": {"balance": balancing.FAMO()},
        "rlw": {"balance": balancing.RLW()},
        "gradnormscale": {"balance": balancing.GradNormScale()},
        **{
            cls.__name__.lower(): {"balance": cls()}
            for cls in (
                balancing.UPGrad, balancing.DualProj, balancing.MGDA, balancing.CAGrad,
                balancing.IMTLG, balancing.AlignedMTL,
            )
        },
    }
    thunks = {}
    for name, kwargs in setups.items():
        model = losskit.ObjectiveModel(build_mlp(features, 0), terms(), **kwargs)
        model.compile(optimizer="adam")

        def epoch(model=model):
            model.fit(inputs, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)

        thunks[name] = epoch
    common.save_step_times(
        "balancing", args.backend, thunks, "unbalanced", batch, steps, args.repeats
    )


def main():
    args = common.parse_args(
        __doc__.splitlines()[0],
        steps=dict(type=int, default=100, help="steps per measurement"),
        default_backends=common.ALL_BACKENDS,
    )
    if args.backend:
        return child(args)
    common.run_per_backend("balancing", __file__, sys.argv[1:], backends=args.backends)


if __name__ == "__main__":
    main()

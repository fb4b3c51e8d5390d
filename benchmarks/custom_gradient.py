"""Hand-written vs autodiff gradient: the logistic NLL head of `losskit.losses.logistic_nll`.

`logistic_nll(y, x, w, b) = softplus(x w + b) - y (x w + b)` carries the analytic gradient
`(sigmoid(z) - y) * [w, x, 1]` through `losskit.custom_gradient`. The baseline is autodiff of the
very same forward pass (traced inside `losskit.gradients.plain_autodiff()`). Forward + backward
w.r.t. inputs, kernel and bias, compiled, interleaved rounds; also `logistic_nll_logits` (the
per-element form on a 1M-element logit tensor) against its own autodiff.

    python benchmarks/custom_gradient.py [--quick]
"""

import sys

import common


def child(args):
    import keras
    import numpy as np
    from keras import ops

    from losskit.gradients import plain_autodiff
    from losskit.losses import logistic_nll, logistic_nll_logits

    rng = np.random.default_rng(0)
    n, d = (512, 8) if args.quick else (2**16, 16)
    head = common.to_device(
        rng.integers(0, 2, n).astype("float32"),
        rng.normal(size=(n, d)).astype("float32"),
        rng.normal(size=(d, 1)).astype("float32"),
        np.zeros(1, "float32"),
    )
    rows = 64 if args.quick else 2**14
    logits = common.to_device(
        rng.integers(0, 2, (rows, 64)).astype("float32"),
        rng.normal(size=(rows, 64)).astype("float32"),
    )

    def autodiff(fn):
        def plain(*a):
            with plain_autodiff():  # read at trace time: the compiled graph has no custom rule
                return fn(*a)

        return plain

    problems = {
        "logistic_nll_head": (logistic_nll, head, (1, 2, 3)),
        "logistic_nll_logits": (logistic_nll_logits, logits, (1,)),
    }
    result = {"shapes": {"head_N_D": [n, d], "logits": [rows, 64]}, "cases": {}}
    for name, (fn, inputs, wrt) in problems.items():
        steps = {
            variant: common.compile_fn(
                common.value_and_grads(lambda *a, f=f: ops.mean(f(*a)), wrt)
            )
            for variant, f in (("custom", fn), ("autodiff", autodiff(fn)))
        }
        outs = {v: s(*inputs) for v, s in steps.items()}
        grad_diff = max(
            float(np.max(np.abs(ops.convert_to_numpy(a) - ops.convert_to_numpy(b))))
            for a, b in zip(outs["custom"][1], outs["autodiff"][1])
        )

        def thunk(s, inputs=inputs):
            def run():
                for _ in range(args.inner):
                    out = s(*inputs)
                return common.block(out)

            return run

        timing = common.interleaved({v: thunk(s) for v, s in steps.items()}, repeats=args.repeats)
        entry = {
            "ratio_custom_to_autodiff": common.ratios(timing, "autodiff")["custom"],
            "seconds_per_call": {v: t["median_s"] / args.inner for v, t in timing.items()},
            "grad_max_abs_diff": grad_diff,
        }
        result["cases"][name] = entry
        print(
            f"{keras.backend.backend():10s} {name:22s} custom/autodiff "
            f"{entry['ratio_custom_to_autodiff']['ratio']:.3f}  grad diff {grad_diff:.1e}",
            flush=True,
        )
    common.save_child("custom_gradient", args.backend, result)


def main():
    args = common.parse_args(
        __doc__.splitlines()[0], inner=dict(type=int, default=10, help="calls per measurement")
    )
    if args.backend:
        return child(args)
    common.run_per_backend(
        "custom_gradient", __file__, sys.argv[1:], backends=args.backends
    )


if __name__ == "__main__":
    main()

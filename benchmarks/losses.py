"""Library losses vs their Keras built-ins: compiled forward + backward time and bandwidth.

For each losskit loss with a Keras equivalent, `grad(mean(loss(y_true, y_pred)))` w.r.t. `y_pred`
on 2**20-element batches is compiled (`tf.function(jit_compile=True)` / `jax.jit`) and timed
against the built-in in interleaved rounds. Target (issue 7): ratio <= 1.0.

Achieved bandwidth = bytes that must move (read y_true and y_pred, write the gradient) / time,
next to `np.copyto` of the same number of bytes in the same run: element-wise losses cannot beat a
copy, so `fraction_of_copy` says how close a loss is to the memory limit. (Transcendental-heavy
losses are compute-bound on CPU and stay well below it.) No optax comparison: optax is not a
losskit dependency.

    python benchmarks/losses.py [--quick]
"""

import sys

import common

ELEMENTS = 2**20


def cases(quick):
    """`name -> (losskit fn, keras fn, input builder)`; both fns map (y_true, y_pred) -> (N,)."""
    import keras
    import numpy as np

    import losskit.losses as L

    k = keras.losses
    size = 2**12 if quick else ELEMENTS
    rng = np.random.default_rng(0)
    rows, classes = size // 128, 128

    def regression():
        return rng.normal(size=(size // 64, 64)), rng.normal(size=(size // 64, 64))

    def onehot_logits():
        return np.eye(classes)[rng.integers(0, classes, rows)], rng.normal(size=(rows, classes))

    def sparse_logits():
        return rng.integers(0, classes, rows), rng.normal(size=(rows, classes))

    def binary_logits():
        return rng.integers(0, 2, (size // 64, 64)), rng.normal(size=(size // 64, 64))

    def binary_probs():
        return rng.integers(0, 2, (size // 64, 64)), rng.uniform(0.01, 0.99, (size // 64, 64))

    def distributions():
        p, q = rng.uniform(0.1, 1, (rows, classes)), rng.uniform(0.1, 1, (rows, classes))
        return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)

    def hinge_scores():  # positive scores: Keras's hinge equals Crammer-Singer's there
        return np.eye(classes)[rng.integers(0, classes, rows)], rng.uniform(0, 1, (rows, classes))

    def counts():
        return rng.poisson(3.0, (size // 64, 64)), rng.uniform(0.5, 5, (size // 64, 64))

    def masks():
        return rng.integers(0, 2, (size // 4096, 64, 64)), rng.uniform(0, 1, (size // 4096, 64, 64))

    axes = (1, 2)
    return {
        "mse": (L.mse, k.mean_squared_error, regression),
        "mae": (L.mae, k.mean_absolute_error, regression),
        "huber": (L.huber, k.huber, regression),
        "log_cosh": (L.log_cosh, k.log_cosh, regression),
        "categorical_crossentropy_logits": (
            lambda y, p: L.categorical_crossentropy(y, p, from_logits=True),
            lambda y, p: k.categorical_crossentropy(y, p, from_logits=True),
            onehot_logits,
        ),
        "sparse_categorical_crossentropy_logits": (
            lambda y, p: L.sparse_categorical_crossentropy(y, p, from_logits=True),
            lambda y, p: k.sparse_categorical_crossentropy(y, p, from_logits=True),
            sparse_logits,
        ),
        "binary_crossentropy_logits": (
            lambda y, p: L.binary_crossentropy(y, p, from_logits=True),
            lambda y, p: k.binary_crossentropy(y, p, from_logits=True),
            binary_logits,
        ),
        "binary_crossentropy_probs": (L.binary_crossentropy, k.binary_crossentropy, binary_probs),
        "focal_binary": (L.focal, k.binary_focal_crossentropy, binary_probs),
        "multiclass_hinge": (L.multiclass_hinge, k.categorical_hinge, hinge_scores),
        "kl_divergence": (L.kl_divergence, k.kl_divergence, distributions),
        "poisson_nll": (L.poisson_nll, k.poisson, counts),
        "dice": (
            lambda y, p: L.dice(y, p, smooth=0.0),
            lambda y, p: k.dice(y, p, axis=axes),
            masks,
        ),
        "tversky": (
            lambda y, p: L.tversky(y, p, alpha=0.5, beta=0.5, smooth=0.0),
            lambda y, p: k.tversky(y, p, alpha=0.5, beta=0.5, axis=axes),
            masks,
        ),
    }


def child(args):
    import keras
    import numpy as np
    from keras import ops

    elements = 2**12 if args.quick else ELEMENTS
    results = {"elements": elements, "inner_calls": args.inner, "cases": {}}
    copy_cache = {}
    for name, (ours, builtin, make) in cases(args.quick).items():
        if args.only and name not in args.only:
            continue
        y_true, y_pred = make()
        y_true = y_true.astype("int32" if y_true.dtype.kind == "i" else "float32")
        y_pred = y_pred.astype("float32")
        inputs = common.to_device(y_true, y_pred)

        def step(fn):
            grad = common.value_and_grads(lambda y, p: ops.mean(fn(y, p)), (1,))
            return common.compile_fn(grad)

        steps = {"losskit": step(ours), "keras": step(builtin)}
        values = {n: float(ops.convert_to_numpy(s(*inputs)[0])) for n, s in steps.items()}
        grads = {n: ops.convert_to_numpy(s(*inputs)[1][0]) for n, s in steps.items()}

        def thunk(s, inputs=inputs):
            def run():
                for _ in range(args.inner):
                    out = s(*inputs)
                return common.block(out)

            return run

        timing = common.interleaved(
            {n: thunk(s) for n, s in steps.items()}, repeats=args.repeats
        )
        moved = y_true.nbytes + 2 * y_pred.nbytes  # read both inputs, write the gradient
        if moved not in copy_cache:
            copy_cache[moved] = common.numpy_copy_bandwidth(moved // 2)
        per_call = {n: t["median_s"] / args.inner for n, t in timing.items()}
        entry = {
            "ratio": common.ratios(timing, "keras")["losskit"],
            "seconds_per_call": per_call,
            "bytes_moved": moved,
            "gb_per_s": {n: moved / t / 1e9 for n, t in per_call.items()},
            "numpy_copy_gb_per_s": copy_cache[moved],
            "values": values,
            "value_rel_diff": abs(values["losskit"] - values["keras"]) / abs(values["keras"]),
            "grad_max_abs_diff": float(np.max(np.abs(grads["losskit"] - grads["keras"]))),
        }
        entry["fraction_of_copy"] = {
            n: g / copy_cache[moved] for n, g in entry["gb_per_s"].items()
        }
        results["cases"][name] = entry
        print(
            f"{keras.backend.backend():10s} {name:40s} ratio {entry['ratio']['ratio']:.3f}  "
            f"losskit {per_call['losskit'] * 1e3:.3f} ms  keras {per_call['keras'] * 1e3:.3f} ms  "
            f"{entry['fraction_of_copy']['losskit']:.2f}x copy bw  "
            f"dv {entry['value_rel_diff']:.1e} dg {entry['grad_max_abs_diff']:.1e}",
            flush=True,
        )
    common.save_child("losses", args.backend, results)


def main():
    args = common.parse_args(
        __doc__.splitlines()[0],
        inner=dict(type=int, default=10, help="calls per timed measurement"),
        only=dict(nargs="*", help="case names to run"),
    )
    if args.backend:
        return child(args)
    common.run_per_backend(
        "losses", __file__, sys.argv[1:], backends=args.backends
    )


if __name__ == "__main__":
    main()

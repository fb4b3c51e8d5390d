"""Fused linear cross-entropy vs the naive `keras.ops` head + cross-entropy: peak memory and time.

Forward + backward (gradients w.r.t. hidden, weight and bias) of a language-model head at N = 8192
tokens, H = 1024, V = 32768, float32, where the naive logits alone take 1 GiB. Targets (issue 7):
peak extra memory <= 1/8 of naive, time <= 1.3x naive on CPU.

Peak extra memory of a call = resident high-water mark during the call minus resident size before
it (the kernel's mark is reset before every call). The children run with
`MALLOC_MMAP_THRESHOLD_=65536`, so buffers freed by one call leave the resident set instead of
being recycled silently by the next one.

    python benchmarks/fused_ce.py            # both backends, full size
    python benchmarks/fused_ce.py --quick    # tiny sizes
"""

import sys

import common


def naive_loss(hidden, weight, bias, labels):
    from keras import ops

    logits = ops.matmul(hidden, ops.transpose(weight)) + bias
    ce = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return ops.mean(ce)


def fused_loss(hidden, weight, bias, labels, reduction="mean"):
    from losskit.losses.fused import fused_linear_cross_entropy

    loss = fused_linear_cross_entropy(hidden, weight, labels, bias=bias, reduction=reduction)
    return loss if reduction == "mean" else ops_mean(loss)


def ops_mean(x):
    from keras import ops

    return ops.mean(x)


def child(args):
    import keras
    import numpy as np

    n, h, v = (300, 64, 1000) if args.quick else (args.tokens, args.hidden, args.vocab)
    rng = np.random.default_rng(0)
    inputs = common.to_device(
        rng.normal(size=(n, h)).astype("float32"),
        (rng.normal(size=(v, h)) / np.sqrt(h)).astype("float32"),
        np.zeros(v, "float32"),
        rng.integers(0, v, size=n).astype("int32"),
    )
    losses = {
        "naive": naive_loss,
        "fused": fused_loss,
        "fused_per_token": lambda *a: fused_loss(*a, reduction="none"),
    }
    modes = {"jit": True}
    if keras.backend.backend() == "tensorflow" and not args.jit_only:
        modes["graph"] = False  # Keras's default on a CPU-only TensorFlow: jit_compile off
    result = {"shape": {"N": n, "H": h, "V": v}, "naive_logits_mib": n * v * 4 / 2**20, "modes": {}}
    for mode, jit in modes.items():
        steps = {
            name: common.compile_fn(common.value_and_grads(fn, (0, 1, 2)), jit=jit)
            for name, fn in losses.items()
            if name in args.candidates
        }
        thunks = {name: (lambda s=s: s(*inputs)) for name, s in steps.items()}
        check = {name: keras.ops.convert_to_numpy(s(*inputs)[0]) for name, s in steps.items()}
        timing = common.interleaved(thunks, repeats=args.repeats, memory=True)
        naive_peak = timing["naive"]["peak_extra_mib"]
        for name, r in common.ratios(timing, "naive").items():
            timing[name].update(r)
            timing[name]["memory_ratio"] = timing[name]["peak_extra_mib"] / naive_peak
            timing[name]["loss"] = float(check[name])
        result["modes"][mode] = timing
        print(mode, {k: (round(t["ratio"], 3), round(t["memory_ratio"], 3), round(t["median_s"], 2),
                         round(t["peak_extra_mib"])) for k, t in timing.items()}, flush=True)
    common.save_child("fused_ce", args.backend, result)


def main():
    args = common.parse_args(
        __doc__.splitlines()[0],
        tokens=dict(type=int, default=8192),
        hidden=dict(type=int, default=1024),
        vocab=dict(type=int, default=32768),
        candidates=dict(nargs="+", default=["naive", "fused", "fused_per_token"]),
        jit_only=dict(action="store_true", help="skip TensorFlow's non-XLA graph mode"),
    )
    if args.backend:
        return child(args)
    common.run_per_backend(
        "fused_ce", __file__, sys.argv[1:], env={"MALLOC_MMAP_THRESHOLD_": "65536"}
    )


if __name__ == "__main__":
    main()

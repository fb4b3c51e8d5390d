"""Fused linear cross-entropy vs the naive `keras.ops` head + cross-entropy: peak memory and time.

Forward + backward (gradients w.r.t. hidden, weight and bias) of a language-model head at N = 8192
tokens, H = 1024, V = 32768, float32, where the naive logits alone take 1 GiB. Targets (issue 7):
peak extra memory <= 1/8 of naive, time <= 1.3x naive on CPU.

- Time: one process per backend, candidates interleaved over `--repeats` rounds (median).
- Memory: a fresh process per (backend, compile mode, candidate) makes the inputs, compiles the
  step (JAX: ahead of time; TensorFlow: traced ahead, but XLA compiles on the first call, so
  its compiler's memory is included in `jit` mode), then runs it once: peak extra memory = resident
  high-water mark during the call minus the resident size just before it. A fresh process
  matters: TensorFlow keeps freed buffers resident, so a second call in the same process would
  reuse them unseen.

Compile modes: `jit` (`tf.function(jit_compile=True)` / `jax.jit`) and, under TensorFlow, `graph`
(`tf.function` without XLA, which is what `Model.fit` uses on a CPU-only TensorFlow). TensorFlow
runs `graph` only by default, to keep `make bench` under 15 minutes on 2 cores; add
`--tf-modes graph jit` for XLA too.

    python benchmarks/fused_ce.py                 # both backends, full size
    python benchmarks/fused_ce.py --quick         # tiny sizes
    python benchmarks/fused_ce.py --candidates naive fused fused_per_token --tf-modes graph jit
"""

import json
import os
import subprocess
import sys

import common


def naive_loss(hidden, weight, bias, labels):
    from keras import ops

    logits = ops.matmul(hidden, ops.transpose(weight)) + bias
    return ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def fused_loss(hidden, weight, bias, labels):
    from losskit.losses import fused_linear_cross_entropy

    return fused_linear_cross_entropy(hidden, weight, labels, bias=bias)


def fused_per_token_loss(hidden, weight, bias, labels):
    from keras import ops

    from losskit.losses import fused_linear_cross_entropy

    return ops.mean(fused_linear_cross_entropy(hidden, weight, labels, bias=bias, reduction="none"))


LOSSES = {"naive": naive_loss, "fused": fused_loss, "fused_per_token": fused_per_token_loss}


def setup(args):
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
    modes = {"jit": True}
    if keras.backend.backend() == "tensorflow":
        modes = {mode: mode == "jit" for mode in args.tf_modes}
    return (n, h, v), inputs, modes


def step_fn(name, jit):
    return common.compile_fn(common.value_and_grads(LOSSES[name], (0, 1, 2)), jit=jit)


def probe(args):
    """One call of one candidate in this fresh process; prints its peak extra memory as JSON."""
    import gc

    import keras

    import losskit.losses  # noqa: F401 -- imported before the measurement, not during it

    _, inputs, modes = setup(args)
    step = step_fn(args.probe, modes[args.probe_mode])
    if keras.backend.backend() == "jax":
        step = step.lower(*inputs).compile()  # compile outside the measured call
    else:
        step.get_concrete_function(*inputs)  # trace outside it (XLA still compiles in the call)
    gc.collect()
    before = common.reset_peak_rss()
    out = common.block(step(*inputs))
    peak = common.peak_rss()
    loss = float(keras.ops.convert_to_numpy(out[0]))
    print(json.dumps({"peak_extra_mib": (peak - before) / 2**20, "rss_before_mib": before / 2**20,
                      "loss": loss}))


def child(args):
    (n, h, v), inputs, modes = setup(args)
    result = {"shape": {"N": n, "H": h, "V": v}, "naive_logits_mib": n * v * 4 / 2**20, "modes": {}}
    for mode, jit in modes.items():
        steps = {name: step_fn(name, jit) for name in args.candidates}
        timing = common.interleaved(
            {name: (lambda s=s: s(*inputs)) for name, s in steps.items()}, repeats=args.repeats
        )
        for name, r in common.ratios(timing, "naive").items():
            timing[name].update(r)
            timing[name].update(measure_memory(args, name, mode))
        naive_peak = timing["naive"]["peak_extra_mib"]
        for r in timing.values():
            r["memory_ratio"] = r["peak_extra_mib"] / naive_peak
        result["modes"][mode] = timing
        for name, r in timing.items():
            print(f"{args.backend:10s} {mode:5s} {name:16s} {r['median_s']:8.3f} s  "
                  f"time ratio {r['ratio']:.3f}  peak extra {r['peak_extra_mib']:8.1f} MiB  "
                  f"memory ratio {r['memory_ratio']:.3f}", flush=True)
    common.save_child("fused_ce", args.backend, result)


def measure_memory(args, name, mode):
    argv = [a for a in sys.argv[1:]]
    cmd = [sys.executable, __file__, *argv, "--probe", name, "--probe-mode", mode]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    args = common.parse_args(
        __doc__.splitlines()[0],
        tokens=dict(type=int, default=8192),
        hidden=dict(type=int, default=1024),
        vocab=dict(type=int, default=32768),
        candidates=dict(nargs="+", default=["naive", "fused"], choices=list(LOSSES)),
        tf_modes=dict(
            nargs="+", default=["graph"], choices=["graph", "jit"],
            help="TensorFlow compile modes; jit (XLA, ~27 s a call here) is left out of make bench",
        ),
        probe=dict(choices=list(LOSSES), help="internal: measure one candidate's memory"),
        probe_mode=dict(choices=["jit", "graph"], help="internal: its compile mode"),
    )
    if args.probe:
        return probe(args)
    if args.backend:
        return child(args)
    common.run_per_backend(
        "fused_ce", __file__, sys.argv[1:], backends=args.backends
    )


if __name__ == "__main__":
    main()

"""Fused linear cross-entropy vs the naive `keras.ops` head + cross-entropy: time, memory, accuracy.

Forward + backward (gradients w.r.t. hidden, weight and bias) of a language-model head, float32 and
bfloat16. Targets (issues 10 and 12, CPU proxies of the GPU targets):

- time <= 1.0x the naive jit at N = 4096..8192 (`--part time`, JAX `jax.jit`, H = 1024,
  V = 32768; candidates interleaved over `--repeats` rounds, median);
- XLA's compiled `temp_size_in_bytes` <= 1.0x the bytes of the gradients returned, float32 and
  bfloat16, at N = 8192, H = 1024, V = 32768 (`--part compiled`, compile only, JAX);
- the same bound in every execution mode (`--part modes`): peak extra memory of one call, in a
  fresh process per (backend, mode, dtype, candidate), against the gradients' bytes; the first
  call (`over_grads`, one-time costs included) and a second one (`warm_over_grads`); TF eager
  `GradientTape`, `tf.function`, `tf.function(jit_compile=True)`, JAX eager and jit, torch eager;
  N = 4096, H = 512, V = 32768; also the first call in a process that has made one tiny call
  (N = 256, H = 64, V = 2048) of the same candidate (`after_tiny_call_over_grads`: the
  libraries' one-time set-up paid, the loss's own memory at this size). Resident memory (the
  kernel's high-water mark reset just before the call), except under TensorFlow: its
  allocator's own peak (its pool reuses freed memory the resident size cannot see;
  `rss_peak_extra_mib` is recorded too), and compiled TF functions are called once before
  (compilation and graph optimisation are not the call);
- bfloat16 accuracy at full size (`--part precision`): the loss vs a float64 computation on the
  same rounded inputs.

    python benchmarks/fused_ce.py                       # all parts, full size (~15 min idle)
    python benchmarks/fused_ce.py --quick               # tiny sizes, to check the script
    python benchmarks/fused_ce.py --parts compiled precision
    python benchmarks/fused_ce.py --parts time --sweep --backends jax   # every shape (hours)
    python benchmarks/fused_ce.py --parts time --sweep --sweep-limit 3 --backends jax
    python benchmarks/fused_ce.py --parts time --sweep --shapes 2048,512,128256 --backends jax \
        --candidates naive fused fused_liger_chunk fused_chunk_256

`--sweep` times N in {2048, 8192} x H in {512, 1024, 2048} x V in {32768, 128256} (issue 21),
into `results/fused_ce_sweep.json`, each shape with the load average before and after and the
default chunk (`fused_chunk`); `--shapes N,H,V ...` times those instead, and a sweep keeps the
shapes of earlier runs it did not time.
`--candidates naive fused torch_linear_ce --backends torch` adds PyTorch's own
`torch.nn.functional.linear_cross_entropy` (2.13+, chunking opted in).
"""

import json
import os
import subprocess
import sys

import common

MODES = {"tensorflow": ["eager", "graph", "jit"], "jax": ["eager", "jit"], "torch": ["eager"]}


def naive_loss(hidden, weight, bias, labels):
    """Materialised float32 logits (as a mixed-precision Keras model computes its loss)."""
    from keras import ops

    logits = ops.cast(ops.matmul(hidden, ops.transpose(weight)), "float32")
    logits = logits + ops.cast(bias, "float32")
    return ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def fused_loss(hidden, weight, bias, labels):
    from losskit.losses import fused_linear_cross_entropy

    return fused_linear_cross_entropy(hidden, weight, labels, bias=bias)


def fused_per_token_loss(hidden, weight, bias, labels):
    from keras import ops

    from losskit.losses import fused_linear_cross_entropy

    return ops.mean(fused_linear_cross_entropy(hidden, weight, labels, bias=bias, reduction="none"))


def fused_chunk_256_loss(hidden, weight, bias, labels):
    """The in-place schedule with 256-token chunks (the default: 64 tokens at N = 4096, H = 512,
    V = 32768, as issue 12's memory bound allows), to see what chunk size costs in time."""
    from losskit.losses import fused_linear_cross_entropy

    return fused_linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=256)


def fused_liger_chunk_loss(hidden, weight, bias, labels):
    """The in-place schedule with Liger-Kernel's chunk rule alone (a chunk's logits about as
    large as `hidden`), the default before chunks were also sized from the memory bound."""
    import math

    from losskit.losses import fused_linear_cross_entropy

    n, h = hidden.shape
    chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(n / math.ceil(weight.shape[0] / h)))))
    return fused_linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=chunk)


def torch_linear_ce_loss(hidden, weight, bias, labels):
    """PyTorch's own `torch.nn.functional.linear_cross_entropy` (2.13+), chunking opted in."""
    import torch

    functional = torch.nn.functional
    if not hasattr(functional, "linear_cross_entropy"):
        raise RuntimeError(f"torch {torch.__version__} has no linear_cross_entropy (2.13+)")
    return functional.linear_cross_entropy(hidden, weight, labels.long(), linear_bias=bias,
                                           options=torch.nn.LinearCrossEntropyOptions())


LOSSES = {"naive": naive_loss, "fused": fused_loss, "fused_per_token": fused_per_token_loss,
          "fused_chunk_256": fused_chunk_256_loss, "fused_liger_chunk": fused_liger_chunk_loss,
          "torch_linear_ce": torch_linear_ce_loss}
# A candidate that exists on one backend only.
ONLY_ON = {"torch_linear_ce": "torch"}


def make_inputs(n, h, v, dtype, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = (
        rng.normal(size=(n, h)).astype("float32"),
        (rng.normal(size=(v, h)) / np.sqrt(h)).astype("float32"),
        np.zeros(v, "float32"),
        rng.integers(0, v, size=n).astype("int32"),
    )
    from keras import ops

    tensors = common.to_device(*arrays)
    return [ops.cast(t, dtype) if i < 3 else t for i, t in enumerate(tensors)]


def grad_bytes(n, h, v, dtype):
    return (n * h + v * h + v) * (4 if dtype == "float32" else 2)


def step_fn(name, mode):
    return common.compile_fn(common.value_and_grads(LOSSES[name], (0, 1, 2)), jit=mode == "jit",
                             mode=mode)


# ------------------------------------------------------------------------------- parts (children)


SWEEP = [(n, h, v) for v in (32768, 128256) for h in (512, 1024, 2048) for n in (2048, 8192)]


def time_shapes(args):
    """`--sweep`: every benchmarked shape (smallest work first; `--sweep-limit` keeps the
    first k); otherwise `--time-tokens` at `--hidden`, `--vocab`."""
    if args.sweep and args.shapes:
        return [tuple(int(x) for x in shape.split(",")) for shape in args.shapes]
    if args.sweep:
        shapes = sorted(SWEEP, key=lambda s: s[0] * s[1] * s[2])
        return shapes[:args.sweep_limit] if args.sweep_limit else shapes
    return [(n, args.hidden, args.vocab) for n in args.time_tokens]


def part_time(args):
    import keras

    from losskit.losses._fused_head import token_chunk

    backend = keras.backend.backend()
    result = {}
    for n, hidden, vocab in time_shapes(args):
        inputs = make_inputs(n, hidden, vocab, "float32")
        mode = "jit" if backend != "torch" else "eager"
        names = [c for c in args.candidates if ONLY_ON.get(c, backend) == backend]
        steps = {name: step_fn(name, mode) for name in names}
        load_before = os.getloadavg()
        timing = common.interleaved(
            {name: (lambda s=s, x=inputs: s(*x)) for name, s in steps.items()}, repeats=args.repeats
        )
        for name, r in common.ratios(timing, "naive").items():
            timing[name].update(r)
            print(f"time {backend} {mode} N={n} H={hidden} V={vocab} {name:16s} "
                  f"{timing[name]['median_s']:.3f} s ratio {r['ratio']:.3f}", flush=True)
        key = f"N={n}" if not args.sweep else f"N={n},H={hidden},V={vocab}"
        result[key] = {"shape": [n, hidden, vocab], "mode": mode, "timing": timing,
                       "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                       "fused_chunk": token_chunk(n, hidden, vocab, None)}
    return result


def part_compiled(args):
    import jax

    result = {}
    n, h, v = args.tokens, args.hidden, args.vocab
    for dtype in ("float32", "bfloat16"):
        inputs = make_inputs(n, h, v, dtype)
        for name in args.candidates:
            step = jax.jit(common.value_and_grads(LOSSES[name], (0, 1, 2)))
            memory = step.lower(*inputs).compile().memory_analysis()
            out = grad_bytes(n, h, v, dtype)
            row = {"temp_bytes": memory.temp_size_in_bytes, "grad_bytes": out,
                   "temp_over_grads": memory.temp_size_in_bytes / out}
            result[f"{dtype}/{name}"] = row
            print(f"compiled jax {dtype} {name:16s} temp {row['temp_bytes'] / 2**20:8.1f} MiB "
                  f"= {row['temp_over_grads']:.3f} x gradients", flush=True)
    return result


def part_precision(args):
    """bf16 loss vs float64 on the same rounded inputs, float64 computed in token chunks."""
    import numpy as np
    from keras import ops

    n, h, v = args.tokens, args.hidden, args.vocab
    hidden, weight, bias, labels = make_inputs(n, h, v, "bfloat16", seed=1)
    got = float(ops.convert_to_numpy(fused_loss(hidden, weight, bias, labels)))
    h64, w64, b64 = (ops.convert_to_numpy(ops.cast(x, "float32")).astype("float64")
                     for x in (hidden, weight, bias))
    y = ops.convert_to_numpy(labels)
    total = 0.0
    for i in range(0, n, 512):
        z = h64[i:i + 512] @ w64.T + b64
        m = z.max(-1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(-1))
        total += (lse - z[np.arange(len(z)), y[i:i + 512]]).sum()
    want = total / n
    row = {"fused_bf16": got, "float64": want, "relative_error": abs(got - want) / abs(want)}
    print(f"precision bf16 loss {got:.6f} vs float64 {want:.6f}: rel {row['relative_error']:.2e}")
    return row


def probe(args):
    """One call of one candidate in this fresh process; prints its peak extra memory as JSON."""
    import gc

    import keras

    import losskit.losses  # noqa: F401 -- imported before the measurement, not during it

    n, h, v = args.mode_shape
    inputs = make_inputs(n, h, v, args.probe_dtype)
    step = step_fn(args.probe, args.probe_mode)
    if args.probe_warm:
        # The libraries' one-time set-up (thread pools, kernels), paid on a tiny call of the
        # same candidate at another size, so that the first call below is the loss's own.
        tiny = make_inputs(256, 64, 2048, args.probe_dtype, seed=3)
        common.block(step_fn(args.probe, args.probe_mode)(*tiny))
    tf_pool = None
    if keras.backend.backend() == "jax" and args.probe_mode == "jit":
        step = step.lower(*inputs).compile()
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if args.probe_mode != "eager":
            # A first call: TensorFlow compiles (XLA) and optimises (Grappler) a function when
            # it first runs it, so the measured call is the step itself, without the compiler.
            common.block(step(*inputs))
        # TensorFlow's CPU allocator (oneDNN's pool) keeps freed memory and reuses it, so the
        # resident size misses a call's buffers that fit in memory freed before (the inputs'
        # float32 originals, a first call). Its own peak counts every tensor and XLA buffer.
        tf_pool = tf.config.experimental
    gc.collect()
    if tf_pool:
        tf_pool.reset_memory_stats("CPU:0")
        pool_before = tf_pool.get_memory_info("CPU:0")["current"]
    before = common.reset_peak_rss()
    out = common.block(step(*inputs))
    peak = common.peak_rss()
    loss = float(keras.ops.convert_to_numpy(keras.ops.cast(out[0], "float32")))
    row = {"peak_extra_mib": (peak - before) / 2**20, "loss": loss}
    if tf_pool:
        row["rss_peak_extra_mib"] = row["peak_extra_mib"]
        row["peak_extra_mib"] = (tf_pool.get_memory_info("CPU:0")["peak"] - pool_before) / 2**20
        row["measure"] = "tensorflow allocator peak"
    # A second call: the steady state of a training loop, without the first call's one-time
    # costs (XLA compiling inside eager JAX and TF-XLA calls, BLAS and thread-pool set-up).
    del out
    gc.collect()
    if tf_pool:
        tf_pool.reset_memory_stats("CPU:0")
        pool_before = tf_pool.get_memory_info("CPU:0")["current"]
    before = common.reset_peak_rss()
    common.block(step(*inputs))
    warm = common.peak_rss() - before
    if tf_pool:
        warm = tf_pool.get_memory_info("CPU:0")["peak"] - pool_before
    row["warm_peak_extra_mib"] = warm / 2**20
    print(json.dumps(row))


def _probe_row(run):
    if run.returncode:
        return {"error": run.stderr.strip().splitlines()[-1][:300]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def part_modes(args):
    import keras

    backend = keras.backend.backend()
    n, h, v = args.mode_shape
    result = {}
    for mode in MODES[backend]:
        for dtype in args.mode_dtypes:
            for name in args.candidates:
                cmd = [sys.executable, __file__, *sys.argv[1:], "--backend", backend,
                       "--probe", name, "--probe-mode", mode, "--probe-dtype", dtype]
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
                row = _probe_row(subprocess.run(cmd, env=env, capture_output=True, text=True))
                if "error" not in row:
                    warmed = _probe_row(subprocess.run([*cmd, "--probe-warm"], env=env,
                                                       capture_output=True, text=True))
                    out = grad_bytes(n, h, v, dtype) / 2**20
                    row["over_grads"] = row["peak_extra_mib"] / out
                    row["warm_over_grads"] = row["warm_peak_extra_mib"] / out
                    if "error" in warmed:
                        row["after_tiny_call_error"] = warmed["error"]
                    else:
                        row["after_tiny_call_peak_extra_mib"] = warmed["peak_extra_mib"]
                        row["after_tiny_call_over_grads"] = warmed["peak_extra_mib"] / out
                result[f"{mode}/{dtype}/{name}"] = row
                print(f"modes {backend} {mode:6s} {dtype:8s} {name:16s} {row}", flush=True)
    return result


def child(args):
    import keras

    backend = keras.backend.backend()
    result = {"shape": {"N": args.tokens, "H": args.hidden, "V": args.vocab},
              "mode_shape": args.mode_shape}
    parts = {"time": part_time, "compiled": part_compiled, "precision": part_precision,
             "modes": part_modes}
    for part in args.parts:
        if part in ("compiled", "precision") and backend != "jax":
            continue  # XLA's analysis is read through JAX; the precision check needs one backend
        result[part] = parts[part](args)
    earlier = common.RESULTS / f"{result_name(args)}.{backend}.json"
    if args.sweep and "time" in result and earlier.exists():
        # A sweep of some shapes keeps the others' earlier timings (each with its load).
        result["time"] = {**json.loads(earlier.read_text()).get("time", {}), **result["time"]}
    common.save_child(result_name(args), backend, result)


def result_name(args):
    """A sweep's results apart (`fused_ce_sweep`), beside the full run's `fused_ce`."""
    return "fused_ce_sweep" if args.sweep else "fused_ce"


def main():
    args = common.parse_args(
        __doc__.splitlines()[0],
        default_backends=("jax", "tensorflow", "torch"),
        tokens=dict(type=int, default=8192),
        hidden=dict(type=int, default=1024),
        vocab=dict(type=int, default=32768),
        time_tokens=dict(type=int, nargs="+", default=[4096, 8192]),
        sweep=dict(action="store_true", help="--part time over every benchmarked shape: "
                   "H in {512, 1024, 2048}, N in {2048, 8192}, V in {32768, 128256}"),
        sweep_limit=dict(type=int, default=0, help="with --sweep: only the k smallest shapes"),
        shapes=dict(nargs="+", default=[], help="with --sweep: these N,H,V shapes instead"),
        mode_shape=dict(type=int, nargs=3, default=[4096, 512, 32768]),
        mode_dtypes=dict(nargs="+", default=["float32", "bfloat16"]),
        parts=dict(nargs="+", default=["compiled", "precision", "time", "modes"],
                   choices=["compiled", "precision", "time", "modes"]),
        candidates=dict(nargs="+", default=["naive", "fused"], choices=list(LOSSES)),
        probe=dict(choices=list(LOSSES), help="internal: measure one candidate's memory"),
        probe_mode=dict(choices=["eager", "graph", "jit"], help="internal: its execution mode"),
        probe_dtype=dict(choices=["float32", "bfloat16"], help="internal: its dtype"),
        probe_warm=dict(action="store_true", help="internal: a tiny call of it first"),
    )
    if args.quick:
        args.tokens, args.hidden, args.vocab = 512, 64, 2048
        args.time_tokens, args.mode_shape = [256, 512], [512, 64, 2048]
    if args.probe:
        return probe(args)
    if args.backend:
        return child(args)
    argv = [a for a in sys.argv[1:]]
    common.run_per_backend(result_name(args), __file__, argv, backends=args.backends)


if __name__ == "__main__":
    main()

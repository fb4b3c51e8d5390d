"""Fused linear cross-entropy on a GPU: losskit vs naive JAX, Liger-Kernel, Cut CE, naive torch.

One run reproduces the table of issue 12: two real output heads in bfloat16 at N = 8192 tokens,

- Gemma-2-2B: H = 2304, V = 256000
- Llama-3-8B: H = 4096, V = 128256

and, per head, forward + backward (gradients w.r.t. hidden and weight) of

- `losskit`: `losskit.losses.fused_linear_cross_entropy` under Keras's JAX backend, `jax.jit`;
- `naive_jax`: `hidden @ weight.T` in float32, `jax.jit`;
- `liger`: Liger-Kernel's `LigerFusedLinearCrossEntropyLoss` (if `liger_kernel` imports);
- `cce`: Cut Cross-Entropy's `linear_cross_entropy` (if `cut_cross_entropy` imports);
- `torch_lce`: PyTorch's own `torch.nn.functional.linear_cross_entropy` (2.13+), chunking opted
  in with `torch.nn.LinearCrossEntropyOptions()` (skipped on an older torch);
- `naive_torch`: `torch.nn.functional.cross_entropy(hidden @ weight.T .float())` (if a CUDA torch
  imports).

Columns: median time of a forward + backward call (`--repeats` calls after a warm-up) and the extra
peak device memory above the inputs (JAX: the device's `peak_bytes_in_use` minus the bytes in use
before the call, in a fresh process per candidate, since JAX cannot reset its peak; torch:
`max_memory_allocated` after `reset_peak_memory_stats`). Candidates whose package is missing are
reported as skipped. Nothing here runs in the test suite, and nothing runs without a GPU unless
`--quick` (tiny sizes, to check the script on a CPU).

    python benchmarks/fused_ce_gpu.py            # on a GPU machine with jax[cuda] and torch
    python benchmarks/fused_ce_gpu.py --quick    # smoke test anywhere
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEADS = {"gemma2_2b": (2304, 256000), "llama3_8b": (4096, 128256)}
JAX_CANDIDATES = ("losskit", "naive_jax")
TORCH_CANDIDATES = ("liger", "cce", "torch_lce", "naive_torch")
RESULTS = Path(__file__).resolve().parent / "results"


def shapes(args):
    if args.quick:
        return {name: (256, 64, 1000 + 7 * i) for i, name in enumerate(HEADS)}
    return {name: (args.tokens, h, v) for name, (h, v) in HEADS.items()}


def inputs_numpy(n, h, v, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, h)).astype("float32")
    weight = (rng.normal(size=(v, h)) / np.sqrt(h)).astype("float32")
    labels = rng.integers(0, v, size=n).astype("int32")
    return hidden, weight, labels


def timed(call, finish, repeats):
    """Median seconds of `finish(call())` (`finish` waits for the device)."""
    finish(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        finish(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -------------------------------------------------------------------------------- JAX candidates


def run_jax(name, n, h, v, args):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    if device.platform == "cpu" and not args.quick:
        return {"skipped": "no GPU visible to JAX"}
    hidden, weight, labels = inputs_numpy(n, h, v)
    hidden = jax.device_put(jnp.asarray(hidden, jnp.bfloat16))
    weight = jax.device_put(jnp.asarray(weight, jnp.bfloat16))
    labels = jax.device_put(jnp.asarray(labels))

    if name == "losskit":
        from losskit.losses import fused_linear_cross_entropy

        def loss(hd, w, y):
            return fused_linear_cross_entropy(hd, w, y)
    else:

        def loss(hd, w, y):
            logits = jnp.matmul(hd, w.T, preferred_element_type=jnp.float32)
            lse = jax.nn.logsumexp(logits, axis=-1)
            return jnp.mean(lse - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(hidden, weight, labels)
    step = step.compile()
    stats = device.memory_stats() or {}
    before = stats.get("bytes_in_use", 0)
    out = jax.block_until_ready(step(hidden, weight, labels))
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use", 0)
    seconds = timed(lambda: step(hidden, weight, labels), jax.block_until_ready, args.repeats)
    return {"time_s": seconds, "peak_extra_mib": (peak - before) / 2**20 if stats else None,
            "loss": float(out[0]), "device": str(device)}


# ------------------------------------------------------------------------------ torch candidates


def run_torch(name, n, h, v, args):
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        return {"skipped": "no CUDA device visible to torch"}
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16
    try:
        if name == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()

            def loss(hd, w, y):
                return liger(w, hd, y)
        elif name == "cce":
            from cut_cross_entropy import linear_cross_entropy

            def loss(hd, w, y):
                return linear_cross_entropy(hd, w, y)
        elif name == "torch_lce":
            if not hasattr(torch.nn.functional, "linear_cross_entropy"):
                return {"skipped": f"torch {torch.__version__} has no linear_cross_entropy"}
            options = torch.nn.LinearCrossEntropyOptions()

            def loss(hd, w, y):
                return torch.nn.functional.linear_cross_entropy(hd, w, y, options=options)
        else:

            def loss(hd, w, y):
                return torch.nn.functional.cross_entropy((hd @ w.T).float(), y)
    except ImportError as error:
        return {"skipped": f"{type(error).__name__}: {error}"}
    hidden, weight, labels = inputs_numpy(n, h, v)
    hidden = torch.tensor(hidden, dtype=dtype, device=device, requires_grad=True)
    weight = torch.tensor(weight, dtype=dtype, device=device, requires_grad=True)
    labels = torch.tensor(labels, dtype=torch.long, device=device)

    def call():
        value = loss(hidden, weight, labels)
        grads = torch.autograd.grad(value, (hidden, weight))
        return value, grads

    def sync(_=None):
        if cuda:
            torch.cuda.synchronize()

    try:
        call()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        value, _ = call()
        sync()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
        seconds = timed(call, sync, args.repeats)
    except Exception as error:  # e.g. a Triton kernel on a CPU-only smoke run
        return {"skipped": f"{type(error).__name__}: {str(error)[:200]}"}
    return {"time_s": seconds, "peak_extra_mib": peak, "loss": float(value), "device": device}


# --------------------------------------------------------------------------------- orchestration


def child(args):
    n, h, v = shapes(args)[args.head]
    runner = run_jax if args.candidate in JAX_CANDIDATES else run_torch
    print(json.dumps(runner(args.candidate, n, h, v, args)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, any device")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--candidates", nargs="+", default=[*JAX_CANDIDATES, *TORCH_CANDIDATES])
    parser.add_argument("--head", help="internal: run one candidate on one head")
    parser.add_argument("--candidate", help="internal")
    args = parser.parse_args()
    if args.candidate:
        return child(args)
    table = {}
    for head in args.heads:
        n, h, v = shapes(args)[head]
        table[head] = {"N": n, "H": h, "V": v}
        for candidate in args.candidates:
            # A fresh process per cell: JAX cannot reset its peak-memory counter, and the two
            # frameworks should not share a device allocator.
            env = {**os.environ, "KERAS_BACKEND": "jax" if candidate in JAX_CANDIDATES
                   else "torch"}
            cmd = [sys.executable, __file__, *sys.argv[1:], "--head", head,
                   "--candidate", candidate]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode:
                lines = run.stderr.strip().splitlines() or ["failed"]
                row = {"skipped": lines[-1][:300]}
            else:
                row = json.loads(run.stdout.strip().splitlines()[-1])
            table[head][candidate] = row
            print(f"{head:10s} {candidate:12s} {row}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "fused_ce_gpu.quick.json" if args.quick else "fused_ce_gpu.json"
    (RESULTS / name).write_text(json.dumps(table, indent=2) + "\n")
    print_table(table)


def print_table(table):
    print("\n| head | N×H×V | candidate | fwd+bwd ms | extra peak MiB |")
    print("|---|---|---|---|---|")
    for head, cells in table.items():
        shape = f"{cells['N']}×{cells['H']}×{cells['V']}"
        for candidate, row in cells.items():
            if not isinstance(row, dict):
                continue
            if "skipped" in row:
                print(f"| {head} | {shape} | {candidate} | skipped: {row['skipped']} | |")
                continue
            peak = "n/a" if row["peak_extra_mib"] is None else f"{row['peak_extra_mib']:.0f}"
            print(f"| {head} | {shape} | {candidate} | {row['time_s'] * 1e3:.1f} | {peak} |")


if __name__ == "__main__":
    main()

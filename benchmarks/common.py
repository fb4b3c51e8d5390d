"""Shared benchmark harness: compiled gradients per backend, interleaved timing, peak memory, JSON.

Every benchmark reports *ratios* to a baseline measured in the same process and the same rounds:
each round runs every candidate once, in an order that rotates between rounds, so a slow spell of
a shared machine hits all candidates alike. The median over rounds is reported.

A script run without `--backend` re-runs itself once per backend in a fresh subprocess with
`KERAS_BACKEND` set (the backend is fixed at import), then merges their JSON.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("tensorflow", "jax")  # the default set; torch is opt-in per script
ALL_BACKENDS = BACKENDS + ("torch",)


def parse_args(description, **extra):
    """`--backend` (child mode), `--quick` (tiny sizes), `--repeats`, plus script options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backend", choices=ALL_BACKENDS, help="run in this process (child mode)")
    parser.add_argument(
        "--backends", nargs="+", choices=ALL_BACKENDS,
        default=list(extra.pop("default_backends", BACKENDS)),
        help="backends to (re)run; the others' latest results are merged in",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    for flag, kwargs in extra.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", **kwargs)
    return parser.parse_args()


def run_per_backend(name, script, argv, env=None, backends=BACKENDS):
    """Runs `script --backend B` for each of `backends` in a fresh process; merges the results of
    every backend (earlier runs for the others) into `results/{name}.json`."""
    merged = {"benchmark": name, "machine": machine(), "backends": {}}
    for backend in ALL_BACKENDS:
        if backend not in backends:
            path = RESULTS / f"{name}.{backend}.json"
            if path.exists():
                merged["backends"][backend] = json.loads(path.read_text())
            continue
        child_env = {**os.environ, **(env or {}), "KERAS_BACKEND": backend}
        child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cmd = [sys.executable, str(script), "--backend", backend, *argv]
        print(f"[{name}] {backend} ...", flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, env=child_env, check=True)
        child = json.loads((RESULTS / f"{name}.{backend}.json").read_text())
        merged["backends"][backend] = child
        print(f"[{name}] {backend} done in {time.perf_counter() - start:.0f} s", flush=True)
    save(name, merged)
    return merged


def save(name, data):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def save_child(name, backend, data):
    return save(f"{name}.{backend}", {"versions": versions(), "machine_at_end": machine(), **data})


def machine():
    """What the numbers were measured on, including how busy it was."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(),
    }


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def versions():
    import keras

    out = {"keras": keras.__version__, "backend": keras.backend.backend()}
    for module in ("tensorflow", "jax", "numpy"):
        if module in sys.modules:
            out[module] = sys.modules[module].__version__
    return out


# ---------------------------------------------------------------- compiled functions per backend


def compile_fn(fn, jit=True, mode=None):
    """`fn` compiled by the backend: `tf.function(jit_compile=jit)` or `jax.jit`; `mode="eager"`
    (and torch) leaves it uncompiled."""
    import keras

    if mode == "eager" or keras.backend.backend() == "torch":
        return fn
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit)
    import jax

    return jax.jit(fn)


def value_and_grads(fn, argnums):
    """`(*args) -> (fn(*args), grads w.r.t. args[argnums])`, uncompiled; `fn` returns a scalar."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        def vg(*args):
            watched = [args[i] for i in argnums]
            with tf.GradientTape() as tape:
                tape.watch(watched)
                value = fn(*args)
            return value, tape.gradient(value, watched)

        return vg
    if keras.backend.backend() == "torch":
        import torch

        def vg_torch(*args):
            args = list(args)
            for i in argnums:
                args[i] = args[i].detach().requires_grad_(True)
            value = fn(*args)
            return value.detach(), torch.autograd.grad(value, [args[i] for i in argnums])

        return vg_torch
    import jax

    return jax.value_and_grad(fn, argnums=tuple(argnums))


def to_device(*arrays):
    """NumPy arrays -> backend tensors (outside the timed region)."""
    from keras import ops

    return [ops.convert_to_tensor(a) for a in arrays]


def block(out):
    """Waits until every tensor in `out` is computed (JAX dispatches asynchronously)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.block_until_ready(out)
    return out  # TensorFlow CPU returns computed tensors


# ---------------------------------------------------------------- timing and memory


def interleaved(candidates, repeats=5, warmup=1, memory=False):
    """Times `{name: thunk}`: `warmup` calls each (compilation), then `repeats` rounds.

    Each round calls every thunk once, starting from a different candidate each round. Returns
    `{name: {"median_s", "times_s", and with memory=True "peak_extra_mib"}}`, where the peak extra
    memory of a call is the process's resident high-water mark during the call minus its resident
    size before it (the kernel's peak is reset before each call).
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            block(candidates[name]())
    times = {name: [] for name in names}
    peaks = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            gc.collect()
            before = reset_peak_rss() if memory else 0
            start = time.perf_counter()
            out = block(candidates[name]())
            times[name].append(time.perf_counter() - start)
            if memory:
                peaks[name].append((peak_rss() - before) / 2**20)
            del out
    result = {}
    for name in names:
        result[name] = {"median_s": statistics.median(times[name]), "times_s": times[name]}
        if memory:
            result[name]["peak_extra_mib"] = statistics.median(peaks[name])
            result[name]["peak_extra_mib_max"] = max(peaks[name])
    return result


def ratios(result, baseline):
    """Median time of each candidate divided by the baseline's (and per-round ratio spread)."""
    base = result[baseline]["times_s"]
    out = {}
    for name, r in result.items():
        per_round = [t / b for t, b in zip(r["times_s"], base)]
        out[name] = {
            "ratio": r["median_s"] / result[baseline]["median_s"],
            "ratio_per_round_min_max": [min(per_round), max(per_round)],
        }
    return out


def save_step_times(name, backend, thunks, baseline, batch, steps, repeats):
    """Times `thunks` (each one `fit` epoch of `steps` steps) in interleaved rounds, prints
    milliseconds per step and the ratio to `baseline`, and saves the child's result."""
    import keras

    start = time.perf_counter()
    timing = interleaved(thunks, repeats=repeats, warmup=1)
    result = {
        "batch_size": batch,
        "steps_per_measurement": steps,
        "seconds_per_step": {n: t["median_s"] / steps for n, t in timing.items()},
        "ratios": ratios(timing, baseline),
        "raw": timing,
        "wall_s": time.perf_counter() - start,
    }
    for n, r in result["ratios"].items():
        print(
            f"{keras.backend.backend():10s} {n:18s} {result['seconds_per_step'][n] * 1e3:7.3f} "
            f"ms/step  ratio {r['ratio']:.3f}  rounds {r['ratio_per_round_min_max']}",
            flush=True,
        )
    save_child(name, backend, result)


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss():
    """Resets the kernel's resident high-water mark (Linux >= 4.0); returns the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_rss():
    return _status("VmHWM")


def numpy_copy_bandwidth(nbytes, repeats=5):
    """GB/s of `np.copyto` over `nbytes` (read + write counted): the element-wise speed limit."""
    import numpy as np

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times) / 1e9

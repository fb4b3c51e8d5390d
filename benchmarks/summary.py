"""Prints Markdown tables of benchmarks/results/*.json (the tables of docs/benchmarks.md)."""

import json

from common import RESULTS


def load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def spread(r):
    lo, hi = r["ratio_per_round_min_max"]
    return f"{r['ratio']:.2f} ({lo:.2f}-{hi:.2f})"


def overhead(data):
    rows = []
    for backend, res in data["backends"].items():
        for name, r in res["ratios"].items():
            rows.append([backend, name, f"{res['seconds_per_step'][name] * 1e3:.2f}", spread(r)])
    return table(["backend", "set-up", "ms / step", "ratio to keras_huber (round min-max)"], rows)


def losses(data):
    rows = []
    for backend, res in data["backends"].items():
        for name, c in res["cases"].items():
            t = c["seconds_per_call"]
            rows.append(
                [
                    backend,
                    name,
                    f"{t['losskit'] * 1e3:.2f}",
                    f"{t['keras'] * 1e3:.2f}",
                    spread(c["ratio"]),
                    f"{c['gb_per_s']['losskit']:.1f} / {c['numpy_copy_gb_per_s']:.1f}",
                    f"{c['fraction_of_copy']['losskit']:.2f}",
                ]
            )
    header = ["backend", "loss", "losskit ms", "Keras ms", "ratio (min-max)",
              "losskit GB/s / copy GB/s", "fraction of copy"]
    return table(header, rows)


def custom_gradient(data):
    rows = []
    for backend, res in data["backends"].items():
        for name, c in res["cases"].items():
            t = c["seconds_per_call"]
            rows.append([backend, name, f"{t['custom'] * 1e3:.3f}", f"{t['autodiff'] * 1e3:.3f}",
                         spread(c["ratio_custom_to_autodiff"]), f"{c['grad_max_abs_diff']:.1e}"])
    header = ["backend", "case", "custom ms", "autodiff ms", "custom / autodiff", "max |grad diff|"]
    return table(header, rows)


def fused_ce(data):
    """Three tables: XLA's compiled temporaries, time, and peak memory per execution mode."""
    out = []
    for backend, res in data["backends"].items():
        if "compiled" in res:
            shape = "×".join(str(res["shape"][k]) for k in "NHV")
            rows = [[backend, shape, key, f"{r['temp_bytes'] / 2**20:.1f}",
                     f"{r['grad_bytes'] / 2**20:.1f}", f"{r['temp_over_grads']:.3f}"]
                    for key, r in res["compiled"].items()]
            out.append(table(["backend", "N×H×V", "dtype/method", "XLA temp MiB",
                              "gradients MiB", "temp / gradients"], rows))
        if "precision" in res:
            p = res["precision"]
            out.append(f"bf16 loss {p['fused_bf16']:.6f} vs float64 {p['float64']:.6f}: "
                       f"relative error {p['relative_error']:.1e}")
    rows = []
    for backend, res in data["backends"].items():
        for part in res.get("time", {}).values():
            for name, r in part["timing"].items():
                rows.append([backend, part["mode"], "×".join(map(str, part["shape"])), name,
                             f"{r['median_s']:.2f}", spread(r)])
    if rows:
        out.append(table(["backend", "mode", "N×H×V", "method", "s (fwd+bwd)",
                          "time ratio (min-max)"], rows))
    rows = []
    for backend, res in data["backends"].items():
        for key, r in res.get("modes", {}).items():
            mode, dtype, name = key.split("/")
            if "error" in r:
                rows.append([backend, mode, dtype, name, "error", r["error"][:60]])
                continue
            rows.append([backend, mode, dtype, name, f"{r['peak_extra_mib']:.0f}",
                         f"{r['over_grads']:.2f}"])
    if rows:
        out.append(table(["backend", "mode", "dtype", "method", "peak extra MiB",
                          "peak extra / gradients"], rows))
    return "\n\n".join(out)


def main():
    for name, render in [("overhead", overhead), ("losses", losses),
                         ("custom_gradient", custom_gradient), ("fused_ce", fused_ce)]:
        data = load(name)
        if data is None:
            continue
        m = data["machine"]
        ends = []
        for backend, res in data["backends"].items():
            end = res.get("machine_at_end") or res.get("started")
            if end:
                ends.append(f"{backend} {end['date_utc'][11:16]} UTC, "
                            f"load {end['load_average_1_5_15'][0]:.1f}")
        print(f"### {name}\n\n{m['processor']}, {m['cpu_count']} cores. Finished: "
              + "; ".join(ends) + " (1-minute load average on 2 cores)\n")
        print(render(data) + "\n")


if __name__ == "__main__":
    main()

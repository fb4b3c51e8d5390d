"""Recipe reports: `OUT/NAME/result.json` per recipe and one self-contained `OUT/index.html`.

`run_recipe` runs one recipe module (see `losskit.recipes`), adds the bookkeeping every result
carries (recipe name, wall time, library versions) and writes the JSON; `write_index` collects all
results under `OUT` into one HTML page (tables + PNGs referenced by relative links, no network).
"""

import dataclasses
import datetime
import html
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from losskit import recipes


def versions():
    """Versions of Python, losskit, Keras (and its backend) and the scientific stack."""
    import importlib

    import keras

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras_backend": keras.backend.backend(),
    }
    for module in ("losskit", "keras", "tensorflow", "jax", "torch", "numpy", "sklearn",
                   "matplotlib", "mlxtend"):
        try:
            out[module] = importlib.import_module(module).__version__
        except Exception:  # not installed (e.g. torch): leave it out
            continue
    return out


def to_jsonable(obj):
    """Recursively converts NumPy scalars/arrays, paths and dataclasses to JSON types; NaN and Inf
    become ``null`` (strict JSON has no NaN)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def run_recipe(name, config, strict_options=True):
    """Runs recipe `name` with a `RecipeConfig` whose `out_dir` is the *root* output folder.

    The recipe writes into ``out_dir / name``; the returned result (also written to
    ``out_dir / name / result.json``) holds the recipe's own output plus ``recipe``, ``summary``,
    ``wall_time_s``, ``finished`` (UTC) and ``versions``. Options the recipe does not declare
    raise `recipes.RecipeError` (or are dropped with ``strict_options=False``).
    """
    module = recipes.load(name)
    options = recipes.options_for(module, config.options, strict=strict_options)
    root = Path(config.out_dir)
    recipe_dir = root / name
    recipe_dir.mkdir(parents=True, exist_ok=True)
    recipe_config = dataclasses.replace(config, out_dir=recipe_dir, options=options)
    start = time.perf_counter()
    result = module.run(recipe_config)
    wall = time.perf_counter() - start
    result = dict(result)
    result.setdefault("config", {})
    result.setdefault("checks", {})  # docs/recipes.md promises the key, even with no checks
    result["config"] = {
        "quick": config.quick,
        "seeds": config.seeds,
        "epochs": config.epochs,
        "options": options,
        **result["config"],
    }
    full = {
        "recipe": name,
        "summary": getattr(module, "SUMMARY", ""),
        **result,
        "wall_time_s": wall,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    full = to_jsonable(full)
    (recipe_dir / "result.json").write_text(json.dumps(full, indent=2) + "\n")
    return full


def load_results(out_dir):
    """All ``OUT/*/result.json`` as a list, in `losskit list` order, then any others by name."""
    root = Path(out_dir)
    order = {name: i for i, name in enumerate(recipes.RECIPES)}
    found = []
    for path in sorted(root.glob("*/result.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    found.sort(key=lambda r: (order.get(r.get("recipe"), len(order)), str(r.get("recipe"))))
    return found


def format_cell(summary, digits=4):
    """``mean ± std`` (n seeds) for a metric summary dict, or the raw value for a scalar."""
    if isinstance(summary, dict) and "mean" in summary:
        if summary["mean"] is None:
            return "n/a"
        n = len(summary.get("values") or [])
        text = f"{summary['mean']:.{digits}g} ± {summary.get('std') or 0:.2g}"
        return text + (f" (n={n})" if n else "")
    if isinstance(summary, float):
        return f"{summary:.{digits}g}"
    return str(summary)


def metrics_table(metrics):
    """Rows ``[arm, cell, cell, ...]`` and the header for a ``{arm: {metric: summary}}`` dict."""
    columns = list(dict.fromkeys(m for arm in metrics.values() for m in arm))
    rows = [
        [arm] + [format_cell(values.get(m, "")) for m in columns] for arm, values in metrics.items()
    ]
    return ["arm"] + columns, rows


def text_table(header, rows):
    """A plain-text table for the terminal."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(lines)


def _html_table(header, rows):
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-top: 1px solid #ccc; padding-top: 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; } td:not(:first-child) { font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
.meta { color: #666; font-size: 0.88em; } .ok { color: #070; } .fail { color: #b00; }
details { margin: 0.5em 0; } pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
"""


def _checks_html(checks):
    """Renders ``{name: {"ok": bool, ...}}`` (or plain values) as a table with pass/fail marks."""
    rows = []
    for name, check in checks.items():
        if isinstance(check, dict):
            ok = check.get("ok")
            mark = "" if ok is None else ("✔ ok" if ok else "✘ FAILED")
            detail = ", ".join(
                f"{k}={format_cell(v)}" for k, v in check.items() if k not in ("ok", "description")
            )
            desc = check.get("description", "")
            rows.append((name, mark, desc, detail, ok))
        else:
            rows.append((name, "", "", format_cell(check), None))
    esc = html.escape
    body = "".join(
        f"<tr><td>{esc(n)}</td><td class='{'ok' if ok else 'fail' if ok is False else ''}'>"
        f"{esc(m)}</td><td>{esc(d)}</td><td>{esc(x)}</td></tr>"
        for n, m, d, x, ok in rows
    )
    return (
        "<table><thead><tr><th>check</th><th>result</th><th>what</th><th>values</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def write_index(out_dir, results=None):
    """Writes ``OUT/index.html`` for every result under `out_dir`; returns its path."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    results = load_results(root) if results is None else results
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>losskit recipes</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>losskit recipes</h1>",
        "<p class='meta'>Metrics are mean ± std over seeds (n = number of seeds). "
        "Each recipe's full numbers, per-seed values and per-epoch histories are in its "
        "<code>result.json</code>.</p>",
    ]
    if results:
        toc = "".join(
            f"<li><a href='#{esc(r['recipe'])}'>{esc(r['recipe'])}</a> — "
            f"{esc(r.get('summary', ''))}"
            f" ({r.get('wall_time_s', 0):.0f} s)</li>"
            for r in results
        )
        parts.append(f"<ul>{toc}</ul>")
    else:
        parts.append("<p>No results yet: run <code>losskit run all</code>.</p>")
    for r in results:
        name = r["recipe"]
        parts.append(f"<h2 id='{esc(name)}'>{esc(name)}</h2>")
        if r.get("summary"):
            parts.append(f"<p>{esc(r['summary'])}</p>")
        cfg = r.get("config", {})
        parts.append(
            f"<p class='meta'>seeds: {esc(str(r.get('seeds', '')))} · wall time "
            f"{r.get('wall_time_s', 0):.1f} s · backend "
            f"{esc(str(r.get('versions', {}).get('keras_backend', '?')))} · "
            f"finished {esc(str(r.get('finished', '')))} · "
            f"<a href='{esc(name)}/result.json'>result.json</a></p>"
        )
        if r.get("metrics"):
            header, rows = metrics_table(r["metrics"])
            parts.append(_html_table(header, rows))
        if r.get("checks"):
            parts.append(_checks_html(r["checks"]))
        for note in r.get("notes", []):
            parts.append(f"<p>{esc(str(note))}</p>")
        for plot in r.get("plots", []):
            parts.append(f"<img src='{esc(name)}/{esc(plot)}' alt='{esc(name)}: {esc(plot)}'>")
        parts.append(
            "<details><summary>configuration and versions</summary><pre>"
            + esc(json.dumps({"config": cfg, "versions": r.get("versions", {})}, indent=2))
            + "</pre></details>"
        )
    parts.append("</body></html>\n")
    path = root / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


__all__ = ["load_results", "run_recipe", "text_table", "metrics_table", "versions", "write_index"]

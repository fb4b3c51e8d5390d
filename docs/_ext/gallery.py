"""The gallery page, generated at build time from the recipes' committed outputs.

`docs/gallery/<recipe>/` holds what a full `losskit run all` wrote for that recipe (its
`result.json` and PNG plots; the command is in `docs/gallery/README.md`). For each recipe, in
`losskit list` order, the page shows the question (the recipe module's docstring), the result
table (mean ± std over seeds, per arm) and the plots. Nothing is imported from losskit, so
building the site needs no backend; a recipe without committed outputs fails the build.
"""

import ast
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES_INIT = ROOT / "src" / "losskit" / "recipes" / "__init__.py"


def recipes():
    """`{name: module file}` from `losskit.recipes.RECIPES`, read without importing losskit."""
    tree = ast.parse(RECIPES_INIT.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "RECIPES":
            mapping = ast.literal_eval(node.value)
            return {
                name: ROOT / "src" / Path(*module.split(".")).with_suffix(".py")
                for name, module in mapping.items()
            }
    raise RuntimeError(f"{RECIPES_INIT}: no RECIPES mapping")


def question(module_file):
    """The recipe's docstring: its title line, and its setting (every paragraph but the closing
    "Copy this file ..." invitation)."""
    doc = ast.get_docstring(ast.parse(module_file.read_text())) or ""
    paragraphs = [p.strip().replace("``", "`") for p in doc.split("\n\n") if p.strip()]
    body = []
    for p in paragraphs[1:]:
        if p.startswith("Copy this file"):
            continue
        body += [p if p.startswith("- ") else p.replace("\n", " "), ""]
    return paragraphs[0].replace("\n", " "), body


def cell(summary):
    if isinstance(summary, dict) and "mean" in summary:
        if summary["mean"] is None or not math.isfinite(summary["mean"]):
            return "n/a"
        n = len(summary.get("values") or [])
        return f"{summary['mean']:.4g} ± {summary.get('std') or 0:.2g}" + (f" (n={n})" if n else "")
    if isinstance(summary, float):
        return f"{summary:.4g}"
    return str(summary)


def table(metrics):
    columns = list(dict.fromkeys(m for arm in metrics.values() for m in arm))
    lines = ["| arm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for arm, values in metrics.items():
        lines.append(f"| `{arm}` | " + " | ".join(cell(values.get(m, "")) for m in columns) + " |")
    return lines


def older_run(name, title, body, images_dir):
    """A recipe whose full-run outputs are not committed yet: its plots of an earlier full run
    (docs/images/<recipe>_*.png, the ones docs/recipes.md shows) and where its numbers are."""
    plots = sorted(images_dir.glob(f"{name}_*.png"))
    if not plots:
        raise FileNotFoundError(f"gallery: recipe {name!r} has no committed outputs at all")
    out = [f"## `{name}`", "", f"**{title}**", "", *body, ""]
    out += [f"*Plots of an earlier full run; its result table is in [Recipes](recipes.md) "
            f"(no `result.json` committed under `docs/gallery/{name}/` yet).*", ""]
    return out + [f"![{name}: {p.stem}](images/{p.name})" for p in plots] + [""]


def render(gallery_dir):
    """The gallery page's Markdown; `gallery_dir` is docs/gallery/."""
    out = [
        "# Gallery",
        "",
        "Each recipe's question, its result over seeds and its plots, generated when the site is "
        "built from the outputs of one full run committed under `docs/gallery/` "
        "(the command and machine: [below](#how-these-outputs-were-made)). "
        "What each recipe does, in detail: [Recipes](recipes.md).",
        "",
    ]
    for name, module_file in recipes().items():
        folder = gallery_dir / name
        result_file = folder / "result.json"
        title, body = question(module_file)
        if not result_file.exists():
            out += older_run(name, title, body, gallery_dir.parent / "images")
            continue
        result = json.loads(result_file.read_text())
        config = result.get("config", {})
        seeds = len(result.get("seeds") or []) or config.get("seeds")
        out += [f"## `{name}`", "", f"**{title}**", "", *body, ""]
        out += table(result["metrics"]) + [""]
        facts = [f"{seeds} seeds" if seeds else None,
                 f"{result['wall_time_s'] / 60:.1f} min" if "wall_time_s" in result else None,
                 "Keras " + result.get("versions", {}).get("keras", "?"),
                 "backend " + result.get("versions", {}).get("keras_backend", "?")]
        out += ["*" + ", ".join(f for f in facts if f) + ".*", ""]
        for note in result.get("notes") or []:
            out += [f"- {note}"]
        out += [""]
        for plot in result.get("plots") or []:
            if not (folder / plot).exists():
                raise FileNotFoundError(f"gallery: {name}'s plot {plot} is not committed")
            out += [f"![{name}: {Path(plot).stem}](gallery/{name}/{plot})", ""]
    out += ["## How these outputs were made", "", (gallery_dir / "README.md").read_text()]
    return "\n".join(out)


def import_run(runs_dir, gallery_dir):
    """Copies each recipe's outputs of a full run into docs/gallery/: its PNG plots and its
    result.json without the per-epoch history (the plots show it; it is most of the file)."""
    for name in recipes():
        result_file = Path(runs_dir) / name / "result.json"
        if not result_file.exists():
            print(f"{name}: no {result_file}, skipped")
            continue
        result = json.loads(result_file.read_text())
        if result.get("config", {}).get("quick"):
            raise SystemExit(f"{result_file}: a --quick run; the gallery shows full runs")
        result.pop("history", None)
        target = Path(gallery_dir) / name
        target.mkdir(parents=True, exist_ok=True)
        (target / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        for plot in result.get("plots") or []:
            (target / plot).write_bytes((result_file.parent / plot).read_bytes())
        print(f"{name}: result.json and {len(result.get('plots') or [])} plots -> {target}")


if __name__ == "__main__":
    import sys

    import_run(sys.argv[1] if len(sys.argv) > 1 else "runs", ROOT / "docs" / "gallery")

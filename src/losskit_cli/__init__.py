"""The `losskit` command's front end: argument parsing, `--help` and `list` without a backend.

Importing anything under `losskit` imports Keras and its backend (seconds, and a traceback when
`~/.keras/keras.json` names a backend that is not installed), so the console script enters here:
`--help`, argument errors and `losskit list` read the recipe table and each recipe's `SUMMARY`
from the source files (`ast`, nothing imported), and only `run` and `report` import
`losskit.recipes.cli`, which does the work.
"""

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path


def _recipes_dir():
    # find_spec of a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec("losskit")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("losskit: the losskit package is not installed next to losskit_cli")
    return Path(list(spec.submodule_search_locations)[0]) / "recipes"


def _assigned(path, name):
    """The literal value assigned to `name` at module level in the file `path`."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return None


def recipe_table():
    """`{command-line name: (module, summary)}` in `losskit list` order, read from source."""
    folder = _recipes_dir()
    table = {}
    for name, module in _assigned(folder / "__init__.py", "RECIPES").items():
        path = folder / f"{module.rsplit('.', 1)[-1]}.py"
        summary = _assigned(path, "SUMMARY") if path.exists() else None
        table[name] = (module, summary or "")
    return table


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _key_value(text):
    """``KEY=VALUE``; VALUE is parsed as JSON if possible (numbers, true/false, null), else a
    string. Each recipe then checks the value against its option's type and domain."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"option name {key!r} is not an identifier")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _out_dir(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder name, got an empty string")
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return text


def build_parser():
    parser = argparse.ArgumentParser(
        prog="losskit",
        description="Run losskit's custom-loss recipes on real data and write reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,run,report}")
    sub.add_parser("list", help="list the recipes")
    run = sub.add_parser("run", help="run one recipe (or 'all') and write its report")
    run.add_argument("name", help="recipe name from `losskit list`, or 'all'")
    run.add_argument("--quick", action="store_true", help="small, fast settings (smoke test)")
    run.add_argument("--seeds", type=_positive_int, help="number of seeds per arm (>= 1)")
    run.add_argument("--epochs", type=_positive_int, help="training epochs per run (>= 1)")
    run.add_argument("--out", type=_out_dir, default="runs",
                     help="output folder (default: runs/)")
    run.add_argument(
        "--verbose", type=int, choices=(0, 1, 2), default=None,
        help="Keras fit verbosity: 1 = progress bar per epoch, 2 = one line per epoch, "
        "0 = silent (default: 1 on a terminal, 2 when the output is redirected)",
    )
    run.add_argument(
        "--dataset",
        help="the recipe's dataset option (image-cross-entropy: mnist or cifar10 [online]; "
        "vae-annealing: mnist or digits)",
    )
    run.add_argument("--backbone", help="image-cross-entropy: 'cnn' (default) or 'vgg16'")
    run.add_argument(
        "--option", "-o", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
        help="recipe-specific option (repeatable), e.g. -o corruption=0.2 -o batch_size=32; "
        "checked against the option's type and domain",
    )
    report = sub.add_parser("report", help="rebuild OUT/index.html from existing results")
    report.add_argument("--out", type=_out_dir, default="runs",
                        help="output folder (default: runs/)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "list":
        table = recipe_table()
        width = max(len(n) for n in table)
        for name, (_, summary) in table.items():
            print(f"{name.ljust(width)}  {summary}")
        return 0
    from losskit.recipes import cli  # imports Keras and the backend

    return cli.dispatch(args)


if __name__ == "__main__":
    sys.exit(main())

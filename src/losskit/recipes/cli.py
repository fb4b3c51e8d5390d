"""The `losskit` command.

    losskit list
    losskit run NAME|all [--quick] [--seeds N] [--epochs N] [--out DIR] [--verbose {0,1,2}]
                         [--dataset D] [--backbone B] [--option KEY=VALUE ...]
    losskit report [--out DIR]

`run` writes ``OUT/NAME/result.json`` and PNG plots per recipe and ``OUT/index.html`` for all of
them (default ``OUT`` is ``runs/``). Keras prints its own per-epoch progress (a progress bar on a
terminal, one line per epoch when the output goes to a file or pipe); each recipe adds one
progress line per run.
"""

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from losskit import recipes


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _key_value(text):
    """``KEY=VALUE``; VALUE is parsed as JSON if possible (numbers, true/false), else a string."""
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
    run.add_argument("--seeds", type=_positive_int, help="number of seeds per arm")
    run.add_argument("--epochs", type=_positive_int, help="training epochs per run")
    run.add_argument("--out", default="runs", help="output folder (default: runs/)")
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
        help="recipe-specific option (repeatable), e.g. -o corruption=0.2 -o delta=1.5",
    )
    report = sub.add_parser("report", help="rebuild OUT/index.html from existing results")
    report.add_argument("--out", default="runs", help="output folder (default: runs/)")
    return parser


def _summary(name):
    try:
        return getattr(recipes.load(name), "SUMMARY", "")
    except ImportError as err:  # a recipe module not written or not importable yet
        return f"(unavailable: {err})"


def _unknown(name):
    names = ", ".join(recipes.RECIPES)
    return f"losskit: unknown recipe {name!r}. Available: {names}, or 'all' (see `losskit list`)."


def _print_result(result):
    from losskit.recipes.report import metrics_table, text_table

    if result.get("metrics"):
        header, rows = metrics_table(result["metrics"])
        print(text_table(header, rows))
    for name, check in (result.get("checks") or {}).items():
        ok = check.get("ok") if isinstance(check, dict) else None
        mark = "ok" if ok else "FAILED" if ok is False else ""
        print(f"  check {name}: {mark}")


def run_command(args):
    from losskit.recipes import common, report

    names = list(recipes.RECIPES) if args.name == "all" else [args.name]
    options = dict(args.option)
    if args.dataset is not None:
        options["dataset"] = args.dataset
    if args.backbone is not None:
        options["backbone"] = args.backbone
    out = Path(args.out)
    verbose = common.fit_verbosity() if args.verbose is None else args.verbose
    failures = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        print(f"=== [{i}/{len(names)}] {name} ===", flush=True)
        config = recipes.RecipeConfig(
            out_dir=out, quick=args.quick, seeds=args.seeds, epochs=args.epochs,
            verbose=verbose, options=options,
        )
        try:
            result = report.run_recipe(name, config, strict_options=args.name != "all")
        except recipes.RecipeError as err:
            # A bad option (e.g. --dataset nope) is the user's to fix: say so plainly.
            failures.append(name)
            print(f"losskit: {err}", file=sys.stderr)
            continue
        except Exception:
            failures.append(name)
            traceback.print_exc()
            print(f"losskit: {name} failed (traceback above)", file=sys.stderr)
            continue
        _print_result(result)
        print(f"{name}: {result['wall_time_s']:.1f} s -> {out / name / 'result.json'}", flush=True)
    index = report.write_index(out)
    print(f"report: {index}  (total {time.perf_counter() - start:.1f} s)")
    if failures:
        print(f"losskit: failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        width = max(len(n) for n in recipes.RECIPES)
        for name in recipes.RECIPES:
            print(f"{name.ljust(width)}  {_summary(name)}")
        return 0
    if args.command == "report":
        from losskit.recipes import report

        if not report.load_results(args.out):
            print(
                f"losskit: nothing to report in {args.out}: no */result.json there. "
                f"Run `losskit run NAME --out {args.out}` first.",
                file=sys.stderr,
            )
            return 1
        print(report.write_index(args.out))
        return 0
    if args.name != "all" and args.name not in recipes.RECIPES:
        print(_unknown(args.name), file=sys.stderr)
        return 2
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())

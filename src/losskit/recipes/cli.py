"""The `losskit` command (parsed, listed and helped by `losskit_cli`, which imports no backend).

    losskit list
    losskit run NAME|all [--quick] [--seeds N] [--epochs N] [--out DIR] [--verbose {0,1,2}]
                         [--dataset D] [--backbone B] [--option KEY=VALUE ...]
    losskit report [--out DIR]

`run` writes ``OUT/NAME/result.json`` and PNG plots per recipe and ``OUT/index.html`` for all of
them (default ``OUT`` is ``runs/``). Keras prints its own per-epoch progress (a progress bar on a
terminal, one line per epoch when the output goes to a file or pipe); each recipe adds one
progress line per run.
"""

import sys
import time
import traceback
from pathlib import Path

from losskit import recipes
from losskit_cli import build_parser, main  # noqa: F401 - the command's entry point and parser


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
    # Every option value is checked before anything runs: a rejected value stops the command
    # with its one-line error, no run and no report (under `run all` too).
    strict = args.name != "all"
    for name in names:
        try:
            recipes.options_for(recipes.load(name), options, strict=strict)
        except recipes.RecipeError as err:
            print(f"losskit: {err}", file=sys.stderr)
            return 1
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
            result = report.run_recipe(name, config, strict_options=strict)
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
    if len(failures) < len(names):  # a report only when something ran to the end
        index = report.write_index(out)
        print(f"report: {index}  (total {time.perf_counter() - start:.1f} s)")
    if failures:
        print(f"losskit: failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def dispatch(args):
    """Runs the parsed `run` or `report` command (`losskit_cli.main` parses and lists)."""
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
    if args.name == "all":
        unknown = recipes.undeclared_options(dict(args.option))
        if unknown:
            print(f"losskit: {unknown}", file=sys.stderr)
            return 2
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())

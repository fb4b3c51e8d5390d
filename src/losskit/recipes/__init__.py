"""Runnable recipes: classic custom-loss workflows reproduced on real data.

Each recipe is one module exposing

- `NAME` (the command-line name, e.g. ``"airfoil-huber"``), `SUMMARY` (one line), and
- `run(config: RecipeConfig) -> dict`, which trains, writes its PNG plots into `config.out_dir`
  and returns the JSON-able result: ``{"config": ..., "seeds": [...], "metrics": {arm: {metric:
  {"mean", "std", "values"}}}, "history": {...}, "plots": [file names], "notes": [...]}``.

Shared helpers (seeding, splits, mean/std/values summaries, history capture, the progress bar over
seeds/runs, plotting) live in `losskit.recipes.common`; data loaders in `losskit.recipes.datasets`.

`losskit.recipes.report` adds the recipe name, wall time and library versions, writes
``OUT/NAME/result.json`` and the ``OUT/index.html`` page.
"""

import dataclasses
import importlib
import math
from pathlib import Path

# Command-line name -> module; order is the order of `losskit list` and `losskit run all`.
RECIPES = {
    "airfoil-huber": "losskit.recipes.airfoil_huber",
    "credit-custom-gradient": "losskit.recipes.credit_custom_gradient",
    "cancer-distillation": "losskit.recipes.cancer_distillation",
    "image-cross-entropy": "losskit.recipes.image_cross_entropy",
    "vae-annealing": "losskit.recipes.vae_annealing",
    "multitask-balancing": "losskit.recipes.multitask_balancing",
    "boosting": "losskit.recipes.boosting",  # needs the boosting extra
}


@dataclasses.dataclass
class RecipeConfig:
    out_dir: Path
    quick: bool = False
    seeds: int | None = None  # None: the recipe's default (smaller in quick mode)
    epochs: int | None = None  # None: the recipe's default (smaller in quick mode)
    verbose: int = 1  # Keras fit verbosity: 1 shows Keras's own progress bar
    options: dict = dataclasses.field(default_factory=dict)  # recipe-specific, e.g. dataset


def load(name):
    """Imports the recipe module for a command-line name."""
    if name not in RECIPES:
        raise KeyError(name)
    return importlib.import_module(RECIPES[name])


class RecipeError(ValueError):
    """A bad recipe setting (unknown dataset, out-of-range option, ...).

    The command line prints its message without a traceback and exits non-zero.
    """


def options_for(module, options, strict=True):
    """The recipe's options: its `OPTIONS` defaults (an optional module-level dict) updated by the
    user's `options`. With `strict`, a key the recipe does not declare raises `RecipeError`; without
    it (``losskit run all``) such keys are dropped. Recipes without `OPTIONS` get `options` as is.
    """
    declared = getattr(module, "OPTIONS", None)
    if declared is None:
        return dict(options)
    unknown = sorted(set(options) - set(declared))
    if unknown and strict:
        known = ", ".join(sorted(declared)) or "none"
        raise RecipeError(
            f"{module.NAME}: unknown option(s) {', '.join(unknown)}; this recipe takes: {known}"
        )
    given = {k: _typed(module.NAME, k, v, declared[k]) for k, v in options.items() if k in declared}
    return {**declared, **given}


def _typed(recipe, key, value, default):
    """`value` checked against the type of its default, so that `-o delta=abc` is a one-line
    error here rather than a traceback from deep inside training. A `None` default takes
    anything; a string default takes anything (the recipe checks its names)."""
    def bad(kind):
        return RecipeError(f"{recipe}: option {key} must be {kind}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if isinstance(default, int):
            if not float(value).is_integer():
                raise bad("an integer")
            return int(value)
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    return value

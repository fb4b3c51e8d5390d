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
    it (``losskit run all``, which first refuses keys no recipe declares) such keys are dropped.
    Recipes without `OPTIONS` get `options` as is. Values are checked by `_typed`.
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


def undeclared_options(options):
    """For ``losskit run all``: a message naming the `options` that no recipe declares (each
    recipe drops the others' options), or None."""
    declared = set()
    for name in RECIPES:
        declared |= set(getattr(load(name), "OPTIONS", None) or {})
    unknown = sorted(set(options) - declared)
    if not unknown:
        return None
    return (f"unknown option(s) {', '.join(unknown)}: no recipe takes them; the recipes take: "
            f"{', '.join(sorted(declared))}")


# The domain of each recipe option, by name (an option means the same in every recipe):
# (kind, low, high, low open, high open). `kind` "int" or "float"; None bounds are unbounded.
# An option with a None default may also be None (the recipe's default).
DOMAINS = {
    "batch_size": ("int", 1, None, False, False),
    "hidden": ("int", 1, None, False, False),
    "latent_units": ("int", 1, None, False, False),
    "latent_dim": ("int", 1, None, False, False),
    "passes_per_epoch": ("int", 1, None, False, False),
    "train_size": ("int", 1, None, False, False),
    "test_size": ("int", 1, None, False, False),
    "n_train": ("int", 2, None, False, False),
    "max_depth": ("int", 1, None, False, False),
    "threads": ("int", 1, None, False, False),
    "learning_rate": ("float", 0, None, True, False),
    "delta": ("float", 0, None, True, False),
    "tolerance": ("float", 0, None, True, False),
    "teacher_length_scale": ("float", 0, None, True, False),
    "dwa_temperature": ("float", 0, None, True, False),
    "kl_weight": ("float", 0, None, False, False),
    "gradnorm_alpha": ("float", 0, None, False, False),
    "active_threshold": ("float", 0, None, False, False),
    "spike_low_db": ("float", 0, None, False, False),
    "spike_high_db": ("float", 0, None, False, False),
    "corruption": ("float", 0, 1, False, True),
    "anneal_fraction": ("float", 0, 1, True, False),
    "cagrad_c": ("float", 0, None, False, False),
    "famo_learning_rate": ("float", 0, None, True, False),
    "famo_gamma": ("float", 0, None, False, False),
}


def _domain_text(kind, low, high, low_open, high_open):
    noun = "an integer" if kind == "int" else "a finite number"
    if high is None:
        return f"{noun} {'>' if low_open else '>='} {low}"
    return f"{noun} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _typed(recipe, key, value, default):
    """`value` checked against the type of its default and the option's domain (`DOMAINS`),
    so that `-o delta=abc` or `-o batch_size=0` is a one-line error here rather than a
    traceback from deep inside training, or a value Keras silently replaces."""
    def bad(kind):
        return RecipeError(f"{recipe}: option {key} must be {kind}, got {value!r}")

    domain = DOMAINS.get(key)
    if domain is not None:
        if value is None and default is None:
            return None
        kind, low, high, low_open, high_open = domain
        text = _domain_text(*domain) + (" (or null for the default)" if default is None else "")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(text)
        if not math.isfinite(value) or (kind == "int" and not float(value).is_integer()):
            raise bad(text)
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise bad(text)
        return int(value) if kind == "int" else float(value)
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
    if default is not None and value is not None and not isinstance(value, str):
        raise bad("a string")
    return value

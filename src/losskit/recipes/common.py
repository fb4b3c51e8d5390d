"""Small helpers shared by the recipes: seeds, splits, metric summaries, history capture, progress.

Everything here is plain NumPy/Keras so a recipe stays readable when copied: the helpers only
remove bookkeeping (seeding every RNG, mean/std over seeds, turning a `History` into JSON).
"""

import math
import sys
import time

import keras
import numpy as np

# --- configuration --------------------------------------------------------------------------------


def resolve(value, quick, quick_default, full_default):
    """`value` if the user gave one (`--seeds`, `--epochs`), else the recipe's mode default."""
    if value is not None:
        return int(value)
    return quick_default if quick else full_default


def seed_list(config, quick_default, full_default):
    """The seeds a recipe runs: ``[0, 1, ..., n-1]`` with n from `config.seeds` or the defaults."""
    return list(range(resolve(config.seeds, config.quick, quick_default, full_default)))


def n_epochs(config, quick_default, full_default):
    """Number of epochs from `config.epochs` or the recipe's mode default."""
    return resolve(config.epochs, config.quick, quick_default, full_default)


def fit_verbosity(stream=None):
    """`fit(verbose=...)` for output to `stream` (stdout): Keras's progress bar (1) on a terminal,
    one line per epoch (2) otherwise, since the bar's carriage returns and backspaces would fill a
    redirected log with thousands of partial lines."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return 1 if isatty is not None and isatty() else 2


def set_seed(seed):
    """Seeds Python, NumPy and the backend, so two runs with one seed start from the same weights
    and see the same shuffles."""
    keras.utils.set_random_seed(int(seed))


def jit_compile():
    """`jit_compile` for `Model.compile` on small recipe models: XLA's compile time dominates tiny
    CPU runs under TensorFlow (plain `tf.function` graphs start faster); JAX always jits."""
    return False if keras.backend.backend() == "tensorflow" else "auto"


# --- data -----------------------------------------------------------------------------------------


def split_indices(n, test_fraction=0.2, seed=0, stratify=None):
    """A fixed random `(train_idx, test_idx)` split of `n` rows (stratified by labels if given)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(
        np.arange(n), test_size=test_fraction, random_state=seed, stratify=stratify
    )


def standardize(train, *others):
    """Standardises columns with the *training* mean/std only (no test-set leakage)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple(((a - mean) / std).astype("float32") for a in (train, *others))


# --- metrics and histories ------------------------------------------------------------------------


def summarize(values):
    """``{"mean", "std", "values"}`` of per-seed values (population std, NaN-aware -> JSON null)."""
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype="float64")
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "values": [None if not np.isfinite(v) else float(v) for v in arr],
    }


def summarize_runs(runs):
    """``{arm: [{metric: value} per seed]}`` -> ``{arm: {metric: summarize(values)}}``."""
    out = {}
    for arm, per_seed in runs.items():
        names = list(dict.fromkeys(k for record in per_seed for k in record))
        out[arm] = {k: summarize([record.get(k) for record in per_seed]) for k in names}
    return out


def history_dict(history):
    """A Keras `History` (or its `.history` dict) as ``{metric: [float per epoch]}``."""
    hist = getattr(history, "history", history)
    return {
        k: [float(v) for v in np.asarray(vals, dtype="float64").ravel()] for k, vals in hist.items()
    }


def summarize_histories(histories):
    """A list of per-seed history dicts -> ``{metric: {"mean": [...], "std": [...], "values":
    [[...] per seed]}}`` (epoch-wise over seeds; runs of unequal length are cut to the shortest)."""
    out = {}
    names = list(dict.fromkeys(k for h in histories for k in h))
    for k in names:
        seqs = [h[k] for h in histories if k in h]
        length = min(len(s) for s in seqs)
        arr = np.asarray([s[:length] for s in seqs], dtype="float64")
        with np.errstate(invalid="ignore"):
            out[k] = {
                "mean": [_nan_to_none(v) for v in np.nanmean(arr, axis=0)] if length else [],
                "std": [_nan_to_none(v) for v in np.nanstd(arr, axis=0)] if length else [],
                "values": [[_nan_to_none(v) for v in s] for s in seqs],
            }
    return out


def _nan_to_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def format_summary(summary, digits=4):
    """``"0.1234 ± 0.0056"`` for a `summarize` dict."""
    if summary.get("mean") is None:
        return "n/a"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


# --- progress -------------------------------------------------------------------------------------


class Progress:
    """One text progress bar over a recipe's runs (seeds x arms), printed one line per run so it
    interleaves cleanly with Keras's own per-epoch bar. No dependencies.

    >>> bar = Progress(6, "airfoil-huber")
    >>> for seed in seeds:
    ...     for arm in arms:
    ...         bar.start(f"seed {seed} · {arm}")
    ...         ...  # train
    ...         bar.done()
    """

    def __init__(self, total, label, width=24, stream=None):
        self.total = max(int(total), 1)
        self.label = label
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.t0 = time.perf_counter()

    def _line(self, what, suffix=""):
        filled = int(round(self.width * self.count / self.total))
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.t0
        eta = ""
        if 0 < self.count < self.total:
            eta = f", ETA {elapsed / self.count * (self.total - self.count):.0f}s"
        return (
            f"[{self.label}] |{bar}| {self.count}/{self.total} runs  {what}"
            f"  ({elapsed:.0f}s{eta}){suffix}"
        )

    def start(self, what):
        """Announces the run about to start."""
        self._what = what
        print(self._line(f"-> {what}"), file=self.stream, flush=True)

    def done(self, note=""):
        """Marks the current run finished (optionally with a short result note)."""
        self.count += 1
        suffix = f"  {note}" if note else ""
        line = self._line(f"done {getattr(self, '_what', '')}", suffix)
        print(line, file=self.stream, flush=True)


# --- plots ----------------------------------------------------------------------------------------


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_dir, filename):
    """Saves `fig` as PNG in `out_dir`, closes it, returns the file name (for result["plots"])."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(str(out_dir / filename), dpi=100)
    plt.close(fig)
    return filename


def plot_curves(ax, history_summary, key, label, **style):
    """Draws the mean curve of `history_summary[key]` with a ±1 std band over seeds."""
    if key not in history_summary:
        return
    mean = np.asarray([np.nan if v is None else v for v in history_summary[key]["mean"]], float)
    std = np.asarray([np.nan if v is None else v for v in history_summary[key]["std"]], float)
    epochs = np.arange(1, len(mean) + 1)
    (line,) = ax.plot(epochs, mean, label=label, **style)
    if len(history_summary[key]["values"]) > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)


__all__ = [
    "Progress",
    "format_summary",
    "history_dict",
    "jit_compile",
    "n_epochs",
    "plot_curves",
    "pyplot",
    "resolve",
    "save_figure",
    "seed_list",
    "set_seed",
    "split_indices",
    "standardize",
    "summarize",
    "summarize_histories",
    "summarize_runs",
]

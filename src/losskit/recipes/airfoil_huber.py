"""Robust regression on NASA airfoil self-noise: MSE vs MAE vs Huber, with corrupted labels.

The setting (SEEDS.md, workflow B): predict the scaled sound pressure level (dB) of an airfoil from
5 physical inputs. A fraction of the *training* labels is corrupted by large positive spikes (think
of a microphone glitch adding 20-40 dB); the test labels stay clean. MSE chases the spikes, MAE
ignores them but learns slowly near the optimum, Huber is quadratic for small errors and linear
for large ones. We train the same small MLP with

- ``mse``, ``mae`` (Keras built-ins),
- ``losskit_huber``: ``losskit.losses.Huber(delta=...)``, a `@losskit.loss` function loss,
- ``keras_huber``: ``keras.losses.Huber(delta=...)``,

over several seeds (each seed picks which rows are corrupted, the initial weights and the
shuffling) and report clean-test RMSE, MAE and `losskit.metrics.regression_accuracy`. With one
seed, the losskit and Keras Huber runs start from identical weights and see identical batches,
so their training curves must coincide: the recipe measures and reports the largest difference.

Copy this file to start your own robust-regression experiment.
"""

import keras
import numpy as np

import losskit
from losskit import gradients, losses
from losskit.recipes import RecipeError, common, datasets

NAME = "airfoil-huber"
SUMMARY = "Airfoil self-noise with corrupted labels: MSE vs MAE vs losskit Huber vs Keras Huber"

# Recipe options (`losskit run airfoil-huber -o corruption=0.2 -o delta=0.5`).
OPTIONS = {
    "corruption": 0.1,  # fraction of training labels replaced by label + spike
    "spike_low_db": 20.0,  # spike size ~ U(low, high) dB, added to the true label
    "spike_high_db": 40.0,
    "delta": 1.0,  # Huber threshold, in robust standard deviations of the target (~7 dB)
    "batch_size": 64,
    "learning_rate": 3e-3,
    "tolerance": 0.02,  # regression_accuracy: |pred - true| <= 2% of the true level (~2.5 dB)
}

ARMS = ("mse", "mae", "losskit_huber", "keras_huber")


def make_loss(arm, delta):
    """The Keras loss object of one arm."""
    if arm == "mse":
        return keras.losses.MeanSquaredError()
    if arm == "mae":
        return keras.losses.MeanAbsoluteError()
    if arm == "losskit_huber":
        return losses.Huber(delta=delta)
    if arm == "keras_huber":
        return keras.losses.Huber(delta=delta)
    raise RecipeError(f"{NAME}: unknown arm {arm!r}")


def build_model():
    """5 inputs -> 64 -> 64 -> 1; small enough to train in seconds on a CPU."""
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def prepare_data(corruption, spike_low_db, spike_high_db, seed):
    """Fixed 80/20 split, standardised features; training labels corrupted (seeded), test clean.

    Targets are scaled with the median and the MAD of the (corrupted) training labels: a robust
    scale, so the outliers do not set the units and `delta` means the same for every seed.
    """
    X, y = datasets.load_airfoil()
    train, test = common.split_indices(len(y), test_fraction=0.2, seed=0)  # fixed split
    X_train, X_test = common.standardize(X[train], X[test])
    y_train, y_test = y[train].copy(), y[test].copy()

    rng = np.random.default_rng(seed)
    n_bad = int(round(corruption * len(y_train)))
    bad = rng.choice(len(y_train), size=n_bad, replace=False)
    y_train[bad] += rng.uniform(spike_low_db, spike_high_db, size=n_bad)

    center = np.median(y_train)
    scale = 1.4826 * np.median(np.abs(y_train - center))  # MAD -> std for Gaussian data
    return {
        "X_train": X_train,
        "y_train": ((y_train - center) / scale).astype("float32"),
        "X_test": X_test,
        "y_test": ((y_test - center) / scale).astype("float32"),
        "y_test_db": y_test,
        "center": center,
        "scale": scale,
        "n_corrupted": n_bad,
    }


def train_arm(arm, data, seed, epochs, options, verbose):
    """Trains one arm from seed `seed`; returns (metrics, history, test predictions in dB)."""
    common.set_seed(seed)  # same seed -> same initial weights and batch order for every arm
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(options["learning_rate"]),
        loss=make_loss(arm, options["delta"]),
        metrics=[keras.metrics.RootMeanSquaredError(name="rmse")],
        jit_compile=common.jit_compile(),
    )
    history = model.fit(
        data["X_train"],
        data["y_train"],
        batch_size=options["batch_size"],
        epochs=epochs,
        # Clean test labels, for monitoring only (no early stopping, no model selection).
        validation_data=(data["X_test"], data["y_test"]),
        verbose=verbose,
    )
    history = common.history_dict(history)
    history["val_rmse_db"] = [v * data["scale"] for v in history["val_rmse"]]

    # A direct call: no new predict function to trace for each run's fresh model.
    pred = keras.ops.convert_to_numpy(model(data["X_test"], training=False))[:, 0]
    pred_db = pred * data["scale"] + data["center"]
    true_db = data["y_test_db"]
    accuracy = losskit.metrics.regression_accuracy(tolerance=options["tolerance"], relative=True)
    accuracy.update_state(true_db[:, None], pred_db[:, None])
    metrics = {
        "test_rmse_db": float(np.sqrt(np.mean((pred_db - true_db) ** 2))),
        "test_mae_db": float(np.mean(np.abs(pred_db - true_db))),
        "test_regression_accuracy": float(accuracy.result()),
    }
    return metrics, history, pred_db


def compare_huber_step(data, delta, seed=0):
    """Value and gradient of both Huber losses for one untrained model on the training batch:
    what one optimizer step sees. They agree to float32 round-off."""
    common.set_seed(seed)
    pred = build_model()(data["X_train"])
    y = data["y_train"][:, None]
    ours_value, (ours_grad,) = gradients.value_and_grad(
        lambda p: losses.Huber(delta=delta)(y, p), pred)
    keras_value, (keras_grad,) = gradients.value_and_grad(
        lambda p: keras.losses.Huber(delta=delta)(y, p), pred)
    value_diff = float(abs(ours_value - keras_value))
    grad_diff = float(np.max(np.abs(ours_grad - keras_grad)))
    return {
        "description": f"losskit vs Keras Huber on the {len(y)} (corrupted) training labels: "
        "loss value and gradient with respect to the predictions",
        "abs_value_diff": value_diff,
        "max_abs_gradient_diff": grad_diff,
        "ok": value_diff <= 1e-6 * max(1.0, abs(float(keras_value))) and grad_diff <= 1e-7,
    }


def compare_huber(histories, predictions):
    """Differences between the losskit and Keras Huber runs of each seed.

    Both compute the same function, but not with the same float32 operations (losskit's branch-free
    ``0.5 q^2 + delta (|e| - q)`` vs Keras's ``where``), so a gradient may differ in its last bit.
    Over hundreds of steps such round-off can grow, as between two GPUs: we report the first epoch
    where the curves part by more than 1e-5 (relative) and call the curves the same when they stay
    within 1% of each other.
    """
    loss_rel, pred_abs, parted = 0.0, 0.0, []
    for a, b in zip(histories["losskit_huber"], histories["keras_huber"]):
        a, b = np.asarray(a["loss"]), np.asarray(b["loss"])
        rel = np.abs(a - b) / np.abs(b)
        loss_rel = max(loss_rel, float(rel.max()))
        apart = np.flatnonzero(rel > 1e-5)
        parted.append(int(apart[0]) + 1 if apart.size else None)
    for a, b in zip(predictions["losskit_huber"], predictions["keras_huber"]):
        pred_abs = max(pred_abs, float(np.max(np.abs(a - b))))
    return {
        "description": "losskit Huber vs Keras Huber trained from the same seed: per-epoch "
        "training loss and final test predictions",
        "max_rel_loss_diff": loss_rel,
        "first_epoch_apart_by_1e-5_per_seed": parted,
        "max_abs_prediction_diff_db": pred_abs,
        "ok": loss_rel < 1e-2,
    }


def plot(out_dir, summaries, predictions, data, delta):
    plt = common.pyplot()
    files = []

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    common.plot_curves(ax1, summaries["losskit_huber"], "loss", "losskit Huber", lw=3, alpha=0.6)
    common.plot_curves(ax1, summaries["keras_huber"], "loss", "Keras Huber", ls="--", color="k")
    ax1.set(xlabel="epoch", ylabel=f"training Huber loss (delta={delta})",
            title="losskit Huber == Keras Huber (same seeds)")
    ax1.legend()
    for arm in ARMS:
        common.plot_curves(ax2, summaries[arm], "val_rmse_db", arm)
    ax2.set(xlabel="epoch", ylabel="clean test RMSE [dB]", title="Clean test error (mean ± std)")
    ax2.set_yscale("log")
    ax2.legend()
    files.append(common.save_figure(fig, out_dir, "loss_curves.png"))

    fig, axes = plt.subplots(1, len(ARMS), figsize=(4 * len(ARMS), 4), sharex=True, sharey=True)
    true_db = data["y_test_db"]
    lo, hi = true_db.min() - 3, true_db.max() + 3
    for ax, arm in zip(axes, ARMS):
        pred = predictions[arm][0]
        rmse = np.sqrt(np.mean((pred - true_db) ** 2))
        ax.scatter(true_db, pred, s=6, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(title=f"{arm}: RMSE {rmse:.2f} dB", xlabel="true level [dB]", xlim=(lo, hi),
               ylim=(lo, hi))
    axes[0].set_ylabel("predicted level [dB]")
    files.append(common.save_figure(fig, out_dir, "pred_vs_true.png"))
    return files


def run(config):
    """Runs every arm over the seeds; see the module docstring."""
    options = {**OPTIONS, **config.options}
    if not 0.0 <= float(options["corruption"]) < 1.0:
        raise RecipeError(f"{NAME}: corruption must be in [0, 1), got {options['corruption']}")
    if float(options["delta"]) <= 0:
        raise RecipeError(f"{NAME}: delta must be positive, got {options['delta']}")
    seeds = common.seed_list(config, quick_default=2, full_default=5)
    epochs = common.n_epochs(config, quick_default=8, full_default=60)
    config.out_dir.mkdir(parents=True, exist_ok=True)

    runs = {arm: [] for arm in ARMS}
    histories = {arm: [] for arm in ARMS}
    predictions = {arm: [] for arm in ARMS}
    bar = common.Progress(len(seeds) * len(ARMS), NAME)
    data = None
    for seed in seeds:
        data = prepare_data(options["corruption"], options["spike_low_db"],
                            options["spike_high_db"], seed)
        for arm in ARMS:
            bar.start(f"seed {seed} · {arm}")
            metrics, history, pred = train_arm(arm, data, seed, epochs, options, config.verbose)
            runs[arm].append(metrics)
            histories[arm].append(history)
            predictions[arm].append(pred)
            bar.done(f"test RMSE {metrics['test_rmse_db']:.2f} dB")

    summaries = {arm: common.summarize_histories(histories[arm]) for arm in ARMS}
    metrics = common.summarize_runs(runs)
    check = compare_huber(histories, predictions)
    step_check = compare_huber_step(data, options["delta"])
    ranking = sorted(ARMS, key=lambda a: metrics[a]["test_rmse_db"]["mean"])
    n_train = len(data["y_train"])
    notes = [
        f"{data['n_corrupted']} of {n_train} training labels ({options['corruption']:.0%})"
        f" corrupted by +U({options['spike_low_db']:g}, {options['spike_high_db']:g}) dB spikes; "
        f"test labels clean. {len(seeds)} seeds x {epochs} epochs per arm.",
        "Clean test RMSE, best first: "
        + ", ".join(
            f"{a} {common.format_summary(metrics[a]['test_rmse_db'], 2)} dB" for a in ranking
        ),
        "losskit Huber vs Keras Huber: one step's loss differs by "
        f"{step_check['abs_value_diff']:.2g} and its gradient by at most "
        f"{step_check['max_abs_gradient_diff']:.2g}; trained from "
        f"the same seed, the per-epoch training losses differ by at most "
        f"{check['max_rel_loss_diff']:.2g} (relative); epoch where they first part by > 1e-5 per "
        f"seed: {check['first_epoch_apart_by_1e-5_per_seed']} (None: never).",
    ]
    return {
        "config": {"seeds": len(seeds), "epochs": epochs, "options": options, "arms": list(ARMS)},
        "seeds": seeds,
        "metrics": metrics,
        "checks": {"huber_same_step": step_check, "huber_curves_match": check},
        "history": summaries,
        "plots": plot(config.out_dir, summaries, predictions, data, options["delta"]),
        "notes": notes,
    }

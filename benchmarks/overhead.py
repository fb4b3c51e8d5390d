"""Overhead of losskit in a training step: plain Keras vs losskit losses and objectives.

A small MLP on synthetic regression data is trained with `fit` (Keras's default compilation for the
backend) under four set-ups, timed in interleaved rounds (one epoch of `--steps` steps each):

- `keras_huber`: `model.compile(loss=keras.losses.Huber())`, the baseline;
- `losskit_huber`: `model.compile(loss=losskit.losses.Huber())`;
- `objective_1_term`: `ObjectiveModel` with the same single Huber term;
- `objective_3_terms`: Huber + an MSE to side data (`x.teacher`, never seen by the model) + an
  activation penalty on a tapped hidden layer (`layer.hidden`).

Reported: seconds per step and the ratio to the baseline (target <= 1.03 for the first two
set-ups; the three-term objective does more work by design).

    python benchmarks/overhead.py [--quick]
"""

import sys

import common


def build_mlp(features, seed):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,), name="features")
    h = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def child(args):

    import keras
    import numpy as np

    import losskit

    batch, features = 256, 32
    steps = 5 if args.quick else args.steps
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, features)).astype("float32")
    y = (x[:, :1] * 2 + np.sin(x[:, 1:2]) + rng.normal(size=(len(x), 1)) * 0.1).astype("float32")
    teacher = (y + rng.normal(size=y.shape) * 0.05).astype("float32")

    def plain(loss):
        model = build_mlp(features, 0)
        model.compile(optimizer="adam", loss=loss)
        return model, x, y

    def objective(terms, side_data=False):
        model = losskit.ObjectiveModel(build_mlp(features, 0), losskit.Objective(terms))
        model.compile(optimizer="adam")
        # The single term gets the baseline's very inputs; side data is the 3-term set-up's.
        return model, {"features": x, "teacher": teacher} if side_data else x, y

    huber = losskit.Term(losskit.losses.huber, name="huber")
    setups = {
        "keras_huber": lambda: plain(keras.losses.Huber()),
        "losskit_huber": lambda: plain(losskit.losses.Huber()),
        "objective_1_term": lambda: objective([huber]),
        "objective_3_terms": lambda: objective(
            [
                huber,
                losskit.Term(
                    losskit.losses.mse, y_true="x.teacher", y_pred="pred", weight=0.5,
                    name="distill",
                ),
                losskit.Term(
                    losskit.losses.activation_l2, a="layer.hidden", weight=1e-3, name="act"
                ),
            ],
            side_data=True,
        ),
    }
    thunks = {}
    for name, make in setups.items():
        model, inputs, targets = make()

        def epoch(model=model, inputs=inputs, targets=targets):
            model.fit(inputs, targets, batch_size=batch, epochs=1, shuffle=False, verbose=0)

        thunks[name] = epoch
    common.save_step_times(
        "overhead", args.backend, thunks, "keras_huber", batch, steps, args.repeats
    )


def main():
    args = common.parse_args(
        __doc__.splitlines()[0], steps=dict(type=int, default=200, help="steps per measurement")
    )
    if args.backend:
        return child(args)
    common.run_per_backend(
        "overhead", __file__, sys.argv[1:], backends=args.backends
    )


if __name__ == "__main__":
    main()

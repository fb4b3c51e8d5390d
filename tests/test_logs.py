"""`ObjectiveModel` logs are one evaluation over the data, and every entry point gives them.

The references are NumPy computations over the whole data set at once (the model's own
predictions, with a learning rate of 0 so that training steps leave the model unchanged):
token-level terms average over all kept positions, per-sample terms over samples with their
sample weights; `loss` is the sum of the logged contributions.
"""

import importlib.util

import keras
import numpy as np
import pytest
from keras import ops

from losskit import ObjectiveModel, Term
from losskit.balancing import Uncertainty

RNG = np.random.default_rng(3)
N, T, F, V = 19, 5, 3, 4  # 19 samples: batches of 8 leave an uneven last batch of 3
IGNORE = -1
X = RNG.normal(size=(N, T, F)).astype("float32")
LABELS = RNG.integers(0, V, size=(N, T)).astype("int32")
# Uneven ignored positions per sample, so batch sizes and kept counts disagree.
LABELS[RNG.uniform(size=(N, T)) < np.linspace(0.0, 0.9, N)[:, None]] = IGNORE
LABELS[0, 0] = 1  # every sample before the last batch keeps something
SW = RNG.uniform(0.2, 2.0, size=N).astype("float32")


@keras.saving.register_keras_serializable(package="losskit_tests")
def token_ce(y_true, y_pred):
    return keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=True, ignore_class=IGNORE
    )


@keras.saving.register_keras_serializable(package="losskit_tests")
def energy(a):
    return ops.mean(ops.square(a), axis=(1, 2))


def token_model(log_grad_norms=False, balance=None, regularizer=None):
    keras.utils.set_random_seed(1)
    inp = keras.Input((T, F), name="features")
    out = keras.layers.Dense(V, name="head", kernel_regularizer=regularizer)(inp)
    net = keras.Model(inp, out, name="tokens")
    model = ObjectiveModel(
        net,
        [Term(token_ce, name="ce"), Term(energy, a="pred", weight=0.1, name="energy")],
        log_grad_norms=log_grad_norms,
        balance=balance,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    return model


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference(model, sample_weight=None):
    """Each term evaluated once on all the data (NumPy)."""
    logits = ops.convert_to_numpy(model.predict({"features": X}, verbose=0, batch_size=N))
    w = np.ones(N) if sample_weight is None else sample_weight.astype("float64")
    kept = LABELS != IGNORE
    nll = -np.take_along_axis(_log_softmax(logits.astype("float64")),
                              np.where(kept, LABELS, 0)[..., None], -1)[..., 0]
    ce = (nll * w[:, None] * kept).sum() / kept.sum()
    en = (w * (logits.astype("float64") ** 2).mean(axis=(1, 2))).sum() / N
    return {"ce": ce, "energy": en}


def _close(logs, expected, rtol=2e-5, kind=""):
    for name, value in expected.items():
        np.testing.assert_allclose(float(logs[name]), value, rtol=rtol, err_msg=f"{kind} {name}")


def test_evaluate_and_history_are_the_terms_over_the_whole_data():
    model = token_model()  # unweighted: test_uncertainty_regularizer_is_logged_and_in_loss
    expected = reference(model, SW)
    logs = model.evaluate({"features": X}, LABELS, sample_weight=SW, batch_size=8, verbose=0,
                          return_dict=True)
    _close(logs, expected)
    history = model.fit({"features": X}, LABELS, sample_weight=SW, batch_size=8, epochs=1,
                        verbose=0).history
    _close({k: v[-1] for k, v in history.items()}, expected)
    # The batch-size weighting the logs used to have differs from the kept-position mean here.
    sizes = [8, 8, 3]
    kept = [(LABELS[i:i + 8] != IGNORE).sum() for i in (0, 8, 16)]
    assert len(set(np.array(kept) / np.array(sizes))) > 1


def test_loss_is_the_sum_of_the_logged_contributions():
    model = token_model(regularizer=keras.regularizers.L2(0.05))
    logs = model.evaluate({"features": X}, LABELS, batch_size=8, verbose=0, return_dict=True)
    kernel = ops.convert_to_numpy(model.inner.get_layer("head").kernel)
    np.testing.assert_allclose(logs["regularization_loss"], 0.05 * (kernel**2).sum(), rtol=1e-5)
    total = logs["ce"] + 0.1 * logs["energy"] + logs["regularization_loss"]
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-6)


def test_uncertainty_regularizer_is_logged_and_in_loss():
    model = token_model(balance=Uncertainty())
    log_var = np.array([0.3, -0.7], "float32")
    model.balance.log_var.assign(log_var)
    logs = model.evaluate({"features": X}, LABELS, batch_size=8, verbose=0, return_dict=True)
    expected = reference(model)
    _close(logs, expected)
    weights = {"ce": np.exp(-0.3), "energy": 0.1 * np.exp(0.7)}
    _close(logs, {f"{k}_weight": v for k, v in weights.items()}, rtol=1e-6)
    np.testing.assert_allclose(logs["uncertainty_regularizer"], 0.3 + 0.1 * -0.7, rtol=1e-5)
    total = sum(weights[k] * logs[k] for k in weights) + logs["uncertainty_regularizer"]
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-6)
    assert "regularization_loss" not in logs  # logged only when the inner model has losses


def test_grad_norm_survives_save_and_load(tmp_path):
    model = token_model(log_grad_norms=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    history = model.fit({"features": X}, LABELS, batch_size=N, epochs=1, verbose=0).history
    assert history["ce_grad_norm"][-1] > 0
    before = model.evaluate({"features": X}, LABELS, verbose=0, return_dict=True)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = loaded.evaluate({"features": X}, LABELS, verbose=0, return_dict=True)
    for name in ("ce_grad_norm", "energy_grad_norm"):
        np.testing.assert_allclose(after[name], history[name][-1], rtol=1e-6)
        np.testing.assert_allclose(after[name], before[name], rtol=1e-6)


# ----- every entry point gives the same logs ------------------------------------------------


@keras.saving.register_keras_serializable(package="losskit_tests")
def teach(y_pred, teacher):
    return ops.mean((teacher - y_pred) ** 2, axis=-1)  # plain operators: NumPy would fail on torch


@keras.saving.register_keras_serializable(package="losskit_tests")
def shifted(y_true, y_pred, offset):
    return ops.mean(ops.abs(y_true - y_pred + offset), axis=-1)


M = 10
XS = RNG.normal(size=(M, 3)).astype("float32")
TEACHER = RNG.normal(size=(M, 1)).astype("float32")
YA = RNG.normal(size=(M, 1)).astype("float32")
YB = RNG.normal(size=(M, 1)).astype("float32")
SWS = RNG.uniform(0.5, 1.5, size=M).astype("float32")
FEATURES = {"features": XS, "teacher": TEACHER}
LABELS_DICT = {"a": YA, "b": YB}


def side_model():
    keras.utils.set_random_seed(2)
    inp = keras.Input((3,), name="features")
    net = keras.Model(inp, keras.layers.Dense(1, name="out")(inp), name="student")
    model = ObjectiveModel(net, [
        Term(keras.losses.mean_squared_error, y_true="y.a", name="mse"),
        Term(shifted, y_true="y.b", offset="x.teacher", weight=0.5, name="shifted"),
        Term(teach, teacher="x.teacher", weight=2.0, name="teach"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    return model


@pytest.fixture(scope="module")
def side():
    """One side-data model for the tests below: its learning rate is 0, so no test changes it,
    and they share its compiled steps."""
    return side_model()


def side_reference(model):
    pred = ops.convert_to_numpy(model.inner(XS)).astype("float64")
    w = SWS.astype("float64")
    values = {
        "mse": (w * ((YA - pred) ** 2)[:, 0]).sum() / M,
        "shifted": (w * np.abs(YB - pred + TEACHER)[:, 0]).sum() / M,
        "teach": (w * ((TEACHER - pred) ** 2)[:, 0]).sum() / M,
    }
    values["loss"] = values["mse"] + 0.5 * values["shifted"] + 2.0 * values["teach"]
    return values


def _generator(batch):
    for i in range(0, M, batch):
        yield ({k: v[i:i + batch] for k, v in FEATURES.items()},
               {k: v[i:i + batch] for k, v in LABELS_DICT.items()}, SWS[i:i + batch])


class _Sequence(keras.utils.PyDataset):
    def __init__(self, batch):
        super().__init__()
        self.batches = list(_generator(batch))

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def _inputs(kind, batch=4):
    """`(args, kwargs)` for fit/evaluate with data of `kind`, batches of `batch` (uneven)."""
    if kind == "arrays":
        return (FEATURES, LABELS_DICT), {"sample_weight": SWS, "batch_size": batch}
    if kind == "tf.data":
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((FEATURES, LABELS_DICT, SWS)).batch(batch)
        return (data,), {}
    if kind == "generator":
        return (_generator(batch),), {}
    return (_Sequence(batch),), {}


KINDS = ["arrays", "generator", "PyDataset"]
if importlib.util.find_spec("tensorflow") is not None:
    KINDS.append("tf.data")


def test_fit_and_evaluate_on_every_input_kind(side):
    # One model for every kind (learning rate 0: fit leaves it as the reference saw it), so the
    # kinds share its compiled steps: the same batch shapes.
    model = side
    expected = side_reference(model)
    for kind in KINDS:
        args, kwargs = _inputs(kind)
        history = model.fit(*args, **kwargs, epochs=1, verbose=0).history
        _close({k: v[-1] for k, v in history.items()}, expected, kind=f"fit {kind}")
        args, kwargs = _inputs(kind)  # a generator is spent
        logs = model.evaluate(*args, **kwargs, verbose=0, return_dict=True)
        _close(logs, expected, kind=f"evaluate {kind}")


def test_on_batch_entry_points_take_side_data(side):
    model = side
    expected = side_reference(model)
    for method in ("train_on_batch", "test_on_batch"):
        logs = getattr(model, method)(FEATURES, LABELS_DICT, sample_weight=SWS, return_dict=True)
        _close(logs, expected)


def test_dict_sample_weights_follow_the_label_key_each_term_reads(side):
    model = side
    logs = model.evaluate(FEATURES, LABELS_DICT, sample_weight={"a": SWS, "b": 2 * SWS},
                          verbose=0, return_dict=True)
    expected = side_reference(model)
    expected["shifted"] *= 2  # reads y.b; "teach" reads no label key and takes y.a's
    expected["loss"] = expected["mse"] + 0.5 * expected["shifted"] + 2.0 * expected["teach"]
    _close(logs, expected)


@keras.saving.register_keras_serializable(package="losskit_tests")
def both_labels(a, b, y_pred):
    return ops.mean(ops.square(a + b - y_pred), axis=-1)


def test_a_term_reading_two_label_keys_takes_one_sample_weight_array():
    # Keras copies one array to every label key; this used to raise "ambiguous".
    keras.utils.set_random_seed(2)
    inp = keras.Input((3,), name="features")
    net = keras.Model(inp, keras.layers.Dense(1)(inp))
    model = ObjectiveModel(net, [Term(both_labels, a="y.a", b="y.b", name="both")])
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    pred = ops.convert_to_numpy(net(XS)).astype("float64")
    expected = (SWS * ((YA + YB - pred) ** 2)[:, 0]).sum() / M
    logs = model.evaluate(FEATURES, LABELS_DICT, sample_weight=SWS, batch_size=4, verbose=0,
                          return_dict=True)
    _close(logs, {"both": expected, "loss": expected})
    logs = model.evaluate(FEATURES, LABELS_DICT, sample_weight={"a": SWS, "b": 2 * SWS},
                          verbose=0, return_dict=True)
    _close(logs, {"both": expected})  # the first label key it reads: y.a


def test_predict_needs_no_side_data_and_no_labels(side):
    model = side
    expected = ops.convert_to_numpy(model.inner(XS))
    for data in (FEATURES, {"features": XS}):
        np.testing.assert_allclose(model.predict(data, verbose=0, batch_size=3), expected,
                                   rtol=1e-6)
        np.testing.assert_allclose(ops.convert_to_numpy(model.predict_on_batch(data)), expected,
                                   rtol=1e-6)


def test_hand_written_loop_takes_numpy_side_data(side):
    model = side
    pred = model.inner(XS)
    total, values = model.objective(FEATURES, LABELS_DICT, pred, sample_weight=SWS)
    expected = side_reference(model)
    np.testing.assert_allclose(ops.convert_to_numpy(total), expected.pop("loss"), rtol=2e-5)
    _close({k: ops.convert_to_numpy(v) for k, v in values.items()}, expected)


@pytest.mark.parametrize("method", ["evaluate", "fit", "train_on_batch", "test_on_batch"])
def test_every_step_entry_point_before_compile_says_so(method):
    inp = keras.Input((3,), name="features")
    model = ObjectiveModel(keras.Model(inp, keras.layers.Dense(1)(inp)),
                           [Term(keras.losses.mean_squared_error, name="mse")])
    with pytest.raises(ValueError, match=r"ObjectiveModel .*compile\(optimizer=") as info:
        getattr(model, method)({"features": XS}, YA)
    assert method in str(info.value)

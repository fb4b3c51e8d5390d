"""credit-custom-gradient in quick mode: custom gradient == autodiff on a real batch, weights
reported each epoch, sklearn baseline, and the Logistic layer saves/loads."""

import json

import keras
import numpy as np
import pytest

import losskit
from losskit.recipes import RecipeConfig, report
from losskit.recipes import credit_custom_gradient as recipe


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = RecipeConfig(out_dir=out, quick=True, seeds=2, epochs=3, verbose=0)
    return out, report.run_recipe("credit-custom-gradient", config)


def test_result_json_holds_the_metrics(result):
    out, _ = result
    res = json.loads((out / "credit-custom-gradient" / "result.json").read_text())
    ours = res["metrics"]["keras_custom_gradient"]
    base = res["metrics"]["sklearn_logistic_regression"]
    for metric in ("test_accuracy", "test_roc_auc", "test_nll"):
        assert len(ours[metric]["values"]) == 2
        assert base[metric]["mean"] is not None
    assert 0.5 < base["test_roc_auc"]["mean"] <= 1.0  # a real signal in the data
    assert 0.0 <= ours["test_roc_auc"]["mean"] <= 1.0
    assert len(res["history"]["keras_custom_gradient"]["nll"]["mean"]) == 3  # term logged by name
    # the callback reported every layer's weights at each epoch
    log = res["weights_per_epoch"]["seed_0"]
    assert len(log) == 3
    assert set(log[0]) == {"latent.kernel", "latent.bias", "logistic.kernel", "logistic.bias"}
    assert len(log[0]["latent.kernel"]) == 24 * 4 and len(log[0]["logistic.kernel"]) == 4
    assert log[0]["logistic.kernel"] != log[-1]["logistic.kernel"]  # training moved them
    assert (out / "credit-custom-gradient" / "training.png").exists()


def test_custom_gradient_equals_autodiff_on_real_batch(result):
    _, res = result
    for name in ("head_gradient", "end_to_end_gradient"):
        check = res["checks"][name]
        assert check["ok"], check["report"]
        assert check["max_abs_error"] < 1e-6


def test_dense_layer_gets_autodiff_gradient_through_the_head():
    """Training through `Term(..., inputs={"inputs": "layer.latent"},
    kernel="var.logistic.kernel")` gives the same step as a hand-written GradientTape-free
    reference: plain autodiff of the NLL."""
    X, y, _, _ = recipe.load_split()
    X, y = X[:100], y[:100].astype("float32")
    keras.utils.set_random_seed(0)
    inner = recipe.build_model(24, 4)
    before = [np.array(v) for v in inner.trainable_variables]
    model = losskit.ObjectiveModel(inner, recipe.make_objective())
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(X, y, batch_size=100, epochs=1, shuffle=False, verbose=0)
    after = [np.array(v) for v in inner.trainable_variables]

    Wd, bd, k, b = before  # reference: the plain-autodiff gradient of the mean NLL
    def mean_nll(Wd, bd, k, b):
        with losskit.gradients.plain_autodiff():
            h = keras.ops.matmul(X, Wd) + bd
            return keras.ops.mean(losskit.losses.logistic_nll(y, h, k, b))
    _, grads = losskit.gradients.value_and_grad(mean_nll, Wd, bd, k, b)
    for w0, w1, g in zip(before, after, grads):
        assert np.abs(g).max() > 0  # every layer, the dense one included, gets a gradient
        np.testing.assert_allclose(w1, w0 - 0.1 * g, rtol=1e-4, atol=1e-6)


def test_logistic_layer_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    inner = recipe.build_model(24, 4)
    x = np.random.default_rng(0).normal(size=(5, 24)).astype("float32")
    layer = inner.get_layer("logistic")
    assert layer.get_config()["name"] == "logistic"
    path = tmp_path / "credit.keras"
    inner.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("logistic"), recipe.Logistic)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), inner.predict(x, verbose=0),
                               rtol=1e-6)

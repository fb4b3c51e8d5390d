"""image-cross-entropy in quick mode: custom CE == Keras CE in value and training curve, the naive
formula breaks at p = 0, and the CIFAR-10 + VGG16 path runs with patched loaders."""

import json

import keras
import numpy as np
import pytest

from losskit import losses
from losskit.recipes import RecipeConfig, RecipeError, report
from losskit.recipes import image_cross_entropy as recipe


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = RecipeConfig(out_dir=out, quick=True, seeds=2, epochs=2, verbose=0,
                          options={"train_size": 400, "test_size": 200})
    return out, report.run_recipe("image-cross-entropy", config)


def test_result_json_holds_the_metrics(result):
    out, _ = result
    res = json.loads((out / "image-cross-entropy" / "result.json").read_text())
    assert set(res["metrics"]) == {"losskit_ce", "keras_ce"}
    for arm in res["metrics"].values():
        assert len(arm["test_accuracy"]["values"]) == 2
        assert arm["test_accuracy"]["mean"] > 0.2  # learns something in 2 short epochs
    assert res["config"]["options"]["dataset"] == "mnist"
    assert res["config"]["options"]["backbone"] == "cnn"
    for plot in res["plots"]:
        assert (out / "image-cross-entropy" / plot).exists()


def test_values_agree_to_1e6(result):
    _, res = result
    assert res["checks"]["values_match"]["ok"]
    assert res["checks"]["values_match"]["max_abs_diff"] <= 1e-6
    # and independently here, on fresh random probabilities
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(10, 0.3), size=256).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 256)]
    ours = keras.ops.convert_to_numpy(losses.categorical_crossentropy(y, p))
    theirs = keras.ops.convert_to_numpy(keras.losses.categorical_crossentropy(y, p))
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_training_curves_match(result):
    _, res = result
    ours, theirs = res["history"]["losskit_ce"], res["history"]["keras_ce"]
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        for a, b in zip(ours[key]["values"], theirs[key]["values"]):
            np.testing.assert_allclose(a, b, rtol=1e-4)
    assert res["checks"]["training_curves_match"]["ok"]


def test_naive_formula_breaks_at_zero_probability(result):
    _, res = result
    naive = res["checks"]["naive_breaks_at_zero"]
    assert naive["naive"] == ["nan", "inf"]
    assert all(np.isfinite(naive["losskit"]))
    y = np.array([[0.0, 1.0]], "float32")
    p = np.array([[1.0, 0.0]], "float32")
    assert not np.isfinite(keras.ops.convert_to_numpy(recipe.naive_categorical_crossentropy(y, p)))
    assert np.isfinite(keras.ops.convert_to_numpy(losses.categorical_crossentropy(y, p)))


def test_cifar10_vgg16_path_with_patched_loader(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)

    def fake_load_data():
        return ((rng.integers(0, 256, (48, 32, 32, 3), dtype="uint8"),
                 rng.integers(0, 10, (48, 1))),
                (rng.integers(0, 256, (16, 32, 32, 3), dtype="uint8"),
                 rng.integers(0, 10, (16, 1))))

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", fake_load_data)
    config = RecipeConfig(out_dir=tmp_path, quick=True, seeds=1, epochs=1, verbose=0,
                          options={"dataset": "cifar10", "backbone": "vgg16", "weights": None,
                                   "batch_size": 16})
    res = report.run_recipe("image-cross-entropy", config)
    assert res["config"]["options"]["backbone"] == "vgg16"
    assert "48 train / 16 test" in res["notes"][0]
    assert res["checks"]["training_curves_match"]["ok"]
    assert set(res["metrics"]) == {"losskit_ce", "keras_ce"}

    model = recipe.build_vgg16((32, 32, 3), weights=None)
    vgg = model.get_layer("vgg16")
    assert not vgg.trainable and vgg.trainable_weights == []  # the base stays frozen
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [
        4096, 4096, 10]


def test_bad_combinations(tmp_path):
    with pytest.raises(RecipeError, match="cifar10"):
        recipe.run(RecipeConfig(out_dir=tmp_path, quick=True, options={"backbone": "vgg16"}))
    with pytest.raises(RecipeError, match="dataset"):
        recipe.run(RecipeConfig(out_dir=tmp_path, quick=True, options={"dataset": "imagenet"}))

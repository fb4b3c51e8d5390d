"""airfoil-huber in quick mode: metrics written, losskit Huber == Keras Huber curve by curve."""

import json

import numpy as np
import pytest

from losskit.recipes import RecipeConfig, RecipeError, airfoil_huber, report


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = RecipeConfig(out_dir=out, quick=True, seeds=2, epochs=4, verbose=0)
    return out, report.run_recipe("airfoil-huber", config)


def test_result_json_holds_the_metrics(result):
    out, res = result
    on_disk = json.loads((out / "airfoil-huber" / "result.json").read_text())
    assert on_disk["recipe"] == "airfoil-huber" and on_disk["seeds"] == [0, 1]
    assert set(on_disk["metrics"]) == {"mse", "mae", "losskit_huber", "keras_huber"}
    for arm in on_disk["metrics"].values():
        for metric in ("test_rmse_db", "test_mae_db", "test_regression_accuracy"):
            summary = arm[metric]
            assert len(summary["values"]) == 2
            assert summary["mean"] == pytest.approx(np.mean(summary["values"]))
            assert summary["std"] == pytest.approx(np.std(summary["values"]))
    assert 0.0 <= on_disk["metrics"]["mse"]["test_regression_accuracy"]["mean"] <= 1.0
    assert on_disk["config"]["options"]["corruption"] == 0.1  # default: 10% corrupted labels
    assert len(on_disk["history"]["mse"]["loss"]["mean"]) == 4
    for plot in on_disk["plots"]:
        assert (out / "airfoil-huber" / plot).stat().st_size > 1000


def test_losskit_and_keras_huber_train_identically(result):
    _, res = result
    ours, theirs = res["history"]["losskit_huber"], res["history"]["keras_huber"]
    for key in ("loss", "val_loss", "val_rmse"):
        for a, b in zip(ours[key]["values"], theirs[key]["values"]):
            np.testing.assert_allclose(a, b, rtol=1e-4)
    np.testing.assert_allclose(
        res["metrics"]["losskit_huber"]["test_rmse_db"]["values"],
        res["metrics"]["keras_huber"]["test_rmse_db"]["values"], rtol=1e-4,
    )
    assert res["checks"]["huber_curves_match"]["ok"]
    step = res["checks"]["huber_same_step"]  # one step: same value and gradient
    assert step["ok"] and step["abs_value_diff"] <= 1e-6 and step["max_abs_gradient_diff"] <= 1e-7


def test_corruption_touches_training_labels_only():
    clean = airfoil_huber.prepare_data(0.0, 20.0, 40.0, seed=0)
    dirty = airfoil_huber.prepare_data(0.1, 20.0, 40.0, seed=0)
    assert dirty["n_corrupted"] == round(0.1 * len(dirty["y_train"]))
    np.testing.assert_array_equal(clean["y_test_db"], dirty["y_test_db"])
    raw_clean = clean["y_train"] * clean["scale"] + clean["center"]
    raw_dirty = dirty["y_train"] * dirty["scale"] + dirty["center"]
    jump = raw_dirty - raw_clean
    changed = np.abs(jump) > 1e-3
    assert changed.sum() == dirty["n_corrupted"]
    assert jump[changed].min() >= 20.0 - 1e-3 and jump[changed].max() <= 40.0 + 1e-3


def test_bad_option(tmp_path):
    with pytest.raises(RecipeError, match="corruption"):
        airfoil_huber.run(RecipeConfig(out_dir=tmp_path, quick=True, options={"corruption": 2}))

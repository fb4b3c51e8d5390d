"""boosting recipe in quick mode: the neural recipes' losses trained by XGBoost and LightGBM."""

import json

import pytest

from losskit.recipes import RecipeConfig, RecipeError, report

pytest.importorskip("xgboost", reason="needs the boosting extra (xgboost)")
pytest.importorskip("lightgbm", reason="needs the boosting extra (lightgbm)")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = RecipeConfig(out_dir=out, quick=True, seeds=2, epochs=10, verbose=0)
    return out, report.run_recipe("boosting", config)


def test_result_json_holds_every_arm(result):
    out, _ = result
    res = json.loads((out / "boosting" / "result.json").read_text())
    assert set(res["metrics"]) == {
        "airfoil_xgboost_mse", "airfoil_xgboost_huber", "airfoil_lightgbm_mse",
        "airfoil_lightgbm_huber", "credit_xgboost_logistic_nll", "credit_lightgbm_logistic_nll",
    }
    for arm, metrics in res["metrics"].items():
        key = "test_rmse_db" if arm.startswith("airfoil") else "test_roc_auc"
        assert len(metrics[key]["values"]) == 2
    # Boosting learns: airfoil levels spread ~7 dB; credit AUC well above chance.
    assert res["metrics"]["airfoil_xgboost_huber"]["test_rmse_db"]["mean"] < 7.0
    assert res["metrics"]["credit_xgboost_logistic_nll"]["test_roc_auc"]["mean"] > 0.65
    curve = res["history"]["airfoil_lightgbm_huber"]["val_rmse_db"]["mean"]
    assert len(curve) == len(res["config"]["checkpoints"]) and curve[-1] < curve[0]
    assert (out / "boosting" / "boosting.png").exists()


def test_custom_logistic_nll_equals_the_builtin_objective(result):
    _, res = result
    check = res["checks"]["logistic_nll_equals_builtin"]
    assert check["ok"], check
    for library in ("xgboost", "lightgbm"):
        assert check[library]["max_abs_margin_diff"] <= 1e-5


def test_bad_option_is_a_recipe_error(tmp_path):
    config = RecipeConfig(out_dir=tmp_path, quick=True, options={"delta": -1.0}, verbose=0)
    with pytest.raises(RecipeError, match=r"delta must be a finite number > 0, got -1.0"):
        report.run_recipe("boosting", config)


def test_without_the_extra_the_recipe_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if not installed
    config = RecipeConfig(out_dir=tmp_path, quick=True, verbose=0)
    with pytest.raises(RecipeError, match=r"needs the boosting extra.*losskit\[boosting\]"):
        report.run_recipe("boosting", config)

"""The cancer-distillation recipe: data, teacher, KL term, ECE, and a quick end-to-end run."""

import numpy as np
import pytest
from keras import ops

from losskit.recipes import RecipeConfig, RecipeError
from losskit.recipes import cancer_distillation as recipe

STUDENTS = ("student_bce", "student_bce_kl")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("cancer")
    res = recipe.run(RecipeConfig(out_dir=out, quick=True, verbose=0))
    return out, res


def test_few_shot_split_is_stratified_and_disjoint():
    for seed in range(5):
        data = recipe.prepare_data(seed, n_train=5)
        assert data["X_train"].shape == (5, 30) and data["X_test"].shape == (564, 30)
        assert set(data["y_train"]) == {0, 1}  # both classes, whatever the seed
        # 212 of 569 rows are malignant (label 1 after our relabelling).
        assert data["y_train"].sum() + data["y_test"].sum() == 212
        # Standardised with the training rows only: they have mean 0 and std 1 per column.
        np.testing.assert_allclose(data["X_train"].mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(data["X_train"].std(axis=0), 1.0, atol=1e-4)


def test_teacher_probabilities_are_valid_and_favour_the_training_labels():
    data = recipe.prepare_data(0, n_train=5)
    on_train, on_test = recipe.teacher_probabilities(data, 0)
    assert on_train.shape == (5,) and on_test.shape == (564,)
    for p in (on_train, on_test):
        assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    # The GP fitted on these rows leans towards each row's own label.
    assert np.all((on_train > 0.5) == (data["y_train"] == 1))
    # The default length scale is scikit-learn's default kernel (the original article's teacher).
    from sklearn.gaussian_process import GaussianProcessClassifier

    default = GaussianProcessClassifier().fit(data["X_train"], data["y_train"])
    np.testing.assert_allclose(on_test, default.predict_proba(data["X_test"])[:, 1], atol=1e-6)
    # A longer length scale reaches the test rows: a more confident, better teacher there.
    _, wider = recipe.teacher_probabilities(data, 0, length_scale=5.5)
    assert np.abs(wider - 0.5).mean() > np.abs(on_test - 0.5).mean()


def test_bernoulli_kl_matches_closed_form_and_is_zero_on_agreement():
    s = np.array([[0.1], [0.5], [0.9], [0.99]], "float32")
    t = np.array([0.3, 0.5, 0.6, 0.01], "float32")  # the teacher arrives as (batch,)
    expected = s[:, 0] * np.log(s[:, 0] / t) + (1 - s[:, 0]) * np.log((1 - s[:, 0]) / (1 - t))
    got = ops.convert_to_numpy(recipe.bernoulli_kl(s, t))
    assert got.shape == (4,)
    np.testing.assert_allclose(got, np.abs(expected), rtol=1e-4, atol=1e-6)
    same = ops.convert_to_numpy(recipe.bernoulli_kl(s, s[:, 0]))
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_expected_calibration_error():
    y = np.array([1, 1, 0, 0, 1])
    # Every prediction is certain and right: calibrated.
    assert recipe.expected_calibration_error(y, y.astype(float)) == 0.0
    # Confidence 0.8 for all, 4 of 5 right: calibrated too.
    p = np.array([0.8, 0.8, 0.2, 0.2, 0.2])
    assert recipe.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    # Confidence 0.9 for all, 3 of 5 right: ECE = |0.6 - 0.9|.
    p = np.array([0.9, 0.9, 0.1, 0.9, 0.1])
    assert recipe.expected_calibration_error(y, p) == pytest.approx(0.3)


def test_bad_options_raise_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="kl_weight"):
        recipe.run(RecipeConfig(out_dir=tmp_path, quick=True, verbose=0,
                                options={"kl_weight": -1.0}))
    with pytest.raises(RecipeError, match="teacher_length_scale"):
        recipe.run(RecipeConfig(out_dir=tmp_path, quick=True, verbose=0,
                                options={"teacher_length_scale": 0}))


def test_quick_run_reports_every_arm_per_seed(result):
    _, res = result
    n = len(res["seeds"])
    assert n >= 2
    assert set(res["metrics"]) == set(recipe.ARMS)
    for arm in recipe.ARMS:
        for metric in ("accuracy", "f1", "ece", "confidence"):
            summary = res["metrics"][arm][metric]
            assert len(summary["values"]) == n
            assert all(0.0 <= v <= 1.0 for v in summary["values"])
            assert summary["mean"] == pytest.approx(np.mean(summary["values"]))
            assert summary["std"] == pytest.approx(np.std(summary["values"]))
    # The students learn something from 5 rows: better than always predicting benign (0.63).
    assert res["metrics"]["student_bce"]["accuracy"]["mean"] > 0.7
    for metric in ("accuracy", "f1", "ece", "log_loss"):
        c = res["comparison"][metric]
        assert c["distilled_higher"] + c["distilled_lower"] + c["ties"] == n
    assert all(len(p) == 5 for p in res["teacher_train_probabilities"])
    assert any("Paired over seeds" in note for note in res["notes"])


def test_distillation_pulls_the_student_towards_the_uncertain_teacher(result):
    _, res = result
    teacher_conf = [np.maximum(p, 1 - np.asarray(p)).mean() for p in
                    res["teacher_train_probabilities"]]
    assert max(teacher_conf) < 0.8  # a 5-row GP is far from certain
    bce = res["metrics"]["student_bce"]["confidence"]["values"]
    kl = res["metrics"]["student_bce_kl"]["confidence"]["values"]
    assert all(a < b for a, b in zip(kl, bce)), (kl, bce)


def test_history_logs_each_term_and_the_total_is_their_weighted_sum(result):
    _, res = result
    hist = {arm: res["history"][arm] for arm in STUDENTS}
    epochs = res["config"]["epochs"]
    assert {"loss", "bce", "distill", "val_bce", "val_distill", "val_accuracy"} <= set(
        hist["student_bce_kl"])
    assert "distill" not in hist["student_bce"] and "bce" in hist["student_bce"]
    w = res["config"]["options"]["kl_weight"]
    for values_loss, values_bce, values_kl in zip(
        hist["student_bce_kl"]["loss"]["values"],
        hist["student_bce_kl"]["bce"]["values"],
        hist["student_bce_kl"]["distill"]["values"],
    ):
        assert len(values_loss) == epochs
        assert all(v >= 0 for v in values_kl)  # |KL|
        np.testing.assert_allclose(values_loss, np.add(values_bce, np.multiply(w, values_kl)),
                                   rtol=1e-4)
    np.testing.assert_allclose(hist["student_bce"]["loss"]["mean"],
                               hist["student_bce"]["bce"]["mean"], rtol=1e-5)


def test_plots_are_written(result):
    out, res = result
    assert res["plots"] == ["probabilities.png", "per_seed.png"]
    for name in res["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

"""The multitask-balancing recipe: term routing on a tiny batch, and a quick run of every arm."""

import json

import keras
import numpy as np
import pytest

import losskit
from losskit.recipes import RecipeConfig, RecipeError
from losskit.recipes import multitask_balancing as recipe


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("multitask")
    res = recipe.run(RecipeConfig(out_dir=out, quick=True, verbose=0))
    return out, res


def _softplus(v):
    return np.logaddexp(0.0, v)


def test_objective_routes_each_term_to_its_own_tensors():
    model, encoder, decoder = recipe.build_model(6, latent_dim=2, hidden=5, seed=0)
    # z_log_var = -30 everywhere: the sampled z equals z_mean to ~3e-7, so the NumPy reference
    # below can decode z_mean, and KL gets a large, distinctive value.
    layer = model.get_layer("z_log_var")
    layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
    layer.bias.assign(np.full(layer.bias.shape, -30.0, "float32"))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(7, 6)).astype("float32")
    y = rng.integers(0, 10, size=7).astype("int32")

    logits, z_mean, z_log_var = (keras.ops.convert_to_numpy(t) for t in encoder(x))
    pixel_logits = keras.ops.convert_to_numpy(decoder(z_mean))
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    expected = {
        "ce": -np.mean(log_probs[np.arange(7), y]),
        "recon": np.mean(np.sum(x * _softplus(-pixel_logits) + (1 - x) * _softplus(pixel_logits),
                                axis=-1)),
        "kl": np.mean(0.5 * np.sum(z_mean**2 + np.exp(z_log_var) - 1 - z_log_var, axis=-1)),
    }
    # Distinct values, so a term routed to another term's tensors could not pass.
    assert len({round(float(v), 3) for v in expected.values()}) == 3

    weights = recipe.hand_tuned(6)
    objective_model = losskit.ObjectiveModel(model, recipe.make_objective(weights))
    objective_model.compile(optimizer="sgd")
    logs = objective_model.evaluate({"pixels": x}, y, batch_size=7, verbose=0, return_dict=True)
    for term in recipe.TERMS:
        assert logs[term] == pytest.approx(expected[term], rel=1e-4), term
        assert logs[f"{term}_weight"] == pytest.approx(weights[term])
    assert logs["loss"] == pytest.approx(sum(weights[t] * expected[t] for t in recipe.TERMS),
                                         rel=1e-4)


def test_hand_tuned_weights_put_recon_on_a_per_pixel_scale():
    assert recipe.hand_tuned(784) == {"ce": 1.0, "recon": 1 / 784, "kl": 1 / 784}


def test_bad_options_raise_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="dataset"):
        recipe.run(RecipeConfig(out_dir=tmp_path, quick=True, verbose=0,
                                options={"dataset": "cifar"}))
    with pytest.raises(RecipeError, match="train_size"):
        recipe.run(RecipeConfig(out_dir=tmp_path, quick=True, verbose=0,
                                options={"train_size": 3}))


def test_quick_run_reports_finite_json_ready_metrics_for_every_arm(result):
    _, res = result
    assert res["config"]["options"]["dataset"] == "digits"
    assert set(res["metrics"]) == set(recipe.ARMS)
    n = len(res["seeds"])
    for arm in recipe.ARMS:
        m = res["metrics"][arm]
        for metric in ("accuracy", "recon", "kl", "step_ms", "step_ratio"):
            values = m[metric]["values"]
            assert len(values) == n and all(v is not None and np.isfinite(v) for v in values)
        assert all(0.1 < v <= 1 for v in m["accuracy"]["values"])  # above chance (10 classes)
        assert all(0 < v < 64 * np.log(2) * 1.2 for v in m["recon"]["values"])  # 64 pixels
        assert all(v >= 0 for v in m["kl"]["values"])
        assert all(v > 0 for v in m["step_ms"]["values"])
        assert all(v > 0 for v in m["step_ratio"]["values"])
    np.testing.assert_allclose(res["metrics"]["equal"]["step_ratio"]["values"], 1.0)
    json.dumps(res["metrics"], allow_nan=False)
    json.dumps(res["history"], allow_nan=False)


def test_history_logs_every_term_and_its_weight(result):
    _, res = result
    epochs = res["config"]["epochs"]
    for arm in recipe.ARMS:
        hist = res["history"][arm]
        for term in recipe.TERMS:
            for key in (term, f"{term}_weight"):
                assert all(len(v) == epochs for v in hist[key]["values"]), (arm, key)
        recon = np.asarray(hist["recon"]["mean"])
        assert recon[-1] < recon[0], arm  # every arm trains the decoder
    np.testing.assert_allclose(res["history"]["equal"]["recon_weight"]["mean"], 1.0)
    np.testing.assert_allclose(res["history"]["hand_tuned"]["recon_weight"]["mean"], 1 / 64)
    np.testing.assert_allclose(res["history"]["pcgrad"]["ce_weight"]["mean"], 1.0)
    # DWA: weights 1 in the first two epochs, then K softmax of the loss ratios.
    dwa = np.asarray([res["history"]["dwa"][f"{t}_weight"]["mean"] for t in recipe.TERMS])
    np.testing.assert_allclose(dwa[:, :2], 1.0)
    assert np.max(np.abs(dwa[:, 2] - 1.0)) > 1e-3
    # GradNorm, Uncertainty, FAMO and GradNormScale move their weights from the initial 1 within
    # the first epoch; RLW draws new ones every step.
    for arm in ("gradnorm", "uncertainty", "famo", "gradnormscale", "rlw"):
        first = [res["history"][arm][f"{t}_weight"]["mean"][0] for t in recipe.TERMS]
        assert np.max(np.abs(np.subtract(first, 1.0))) > 1e-3, arm


def test_checks_pass(result):
    _, res = result
    assert set(res["checks"]) == {"every_arm_finite", "dwa_weights_sum_to_3",
                                  "gradnorm_weights_sum_to_3", "rlw_weights_sum_to_3",
                                  "equal_loss_is_weighted_sum", "hand_tuned_loss_is_weighted_sum"}
    for name, check in res["checks"].items():
        assert check["ok"] is True, (name, check)


def test_plots_are_written(result):
    out, res = result
    assert res["plots"] == ["weights.png", "accuracy_vs_recon.png"]
    for name in res["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000

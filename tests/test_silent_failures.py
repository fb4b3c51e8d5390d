"""Issue 11, "no silent failures": bad arguments are refused at construction, masked (-inf)
logits give finite values and gradients, limits are implemented, the command line fails loudly
and check_gradients reports no false failures."""

import math

import numpy as np
import pytest
from keras import ops

import losskit
from losskit import schedules
from losskit.gradients import value_and_grad
from losskit.losses import classification, distillation, regression

NEG_INF = float("-inf")

# ---------------------------------------------------------------------------------------------
# 5. Arguments checked at construction


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: schedules.Linear(0, 1, steps=0), ValueError, r"Linear: steps must be >= 1"),
        (lambda: schedules.Cosine(0, 1, steps=-5), ValueError, r"Cosine: steps must be >= 1"),
        (lambda: schedules.Linear(0, 1, steps=2.5), TypeError, r"Linear: steps must be an int"),
        (lambda: schedules.Linear(0, 1, steps="10"), TypeError, r"Linear: steps must be an int"),
        (lambda: schedules.Cosine(0, 1, 10, delay=-1), ValueError, r"Cosine: delay must be >= 0"),
        (lambda: schedules.Linear("0", 1, 10), TypeError, r"Linear: parameter 'start' must"),
        (lambda: schedules.Linear(0, math.nan, 10), ValueError, r"'end' must be a finite.*got nan"),
        (lambda: schedules.Sigmoid(rate=0.0), ValueError, r"Sigmoid: parameter 'rate' must"),
        (lambda: schedules.Sigmoid(rate=-0.1), ValueError, r"Sigmoid: parameter 'rate' must"),
        (lambda: schedules.Sigmoid(midpoint="5"), TypeError, r"Sigmoid: parameter 'midpoint'"),
        (lambda: schedules.Cyclical(period=0), ValueError, r"Cyclical: period must be >= 1"),
        (lambda: schedules.Cyclical(period=4.5), TypeError, r"Cyclical: period must be an int"),
        (lambda: schedules.Cyclical(10, ratio=1.5), ValueError, r"'ratio' must be .* \(0, 1\]"),
        (lambda: schedules.Cyclical(10, cycles=0), ValueError, r"Cyclical: cycles must be >= 1"),
        (lambda: schedules.Constant("1.0"), TypeError, r"Constant: parameter 'value'"),
        (lambda: schedules.Constant(True), TypeError, r"Constant: parameter 'value'"),
    ],
)
def test_schedules_refuse_meaningless_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_schedules_still_accept_valid_arguments():
    assert float(ops.convert_to_numpy(schedules.Linear(0, 1, steps=np.int64(4))(2))) == 0.5
    assert schedules.Linear(0, 1, steps=1e3).get_config()["steps"] == 1000
    assert float(ops.convert_to_numpy(schedules.Constant(np.float32(0.25))(7))) == 0.25
    assert schedules.Cyclical(period=3, cycles=1).get_config()["cycles"] == 1


@pytest.mark.parametrize(
    "cls, key, value",
    [
        (losskit.losses.Huber, "delta", "2.0"),
        (losskit.losses.Focal, "gamma", "2"),
        (losskit.losses.Triplet, "margin", [1.0]),
        (losskit.losses.InfoNCE, "temperature", None),
        (losskit.losses.BinaryCrossentropy, "label_smoothing", True),
    ],
)
def test_numeric_loss_parameters_refuse_non_numbers(cls, key, value):
    with pytest.raises(TypeError, match=rf"{cls.__name__}: parameter '{key}' must be a number"):
        cls(**{key: value})


def test_numeric_loss_parameters_accept_numbers():
    assert losskit.losses.Huber(delta=2).delta == 2
    assert losskit.losses.Huber(delta=np.float32(1.5)).delta == 1.5
    assert losskit.losses.GeneralRobust(alpha=float("-inf")).alpha == float("-inf")
    assert losskit.losses.Focal(alpha=0.25, mode="categorical").alpha == 0.25  # None default
    assert losskit.losses.Triplet(mining="batch_hard").mining == "batch_hard"


def test_every_library_loss_constructs_with_its_defaults():
    for name, cls in losskit.losses.CLASSES.items():
        loss = cls(**dict(cls.defaults))
        assert type(loss).__name__ == name


# ---------------------------------------------------------------------------------------------
# 6. Masked (-inf) logits

LOGITS = np.array([[2.0, NEG_INF, 0.5, -1.0], [NEG_INF, 1.0, NEG_INF, 3.0]], "float32")
LABELS = np.array([0, 3])
ONEHOT = np.eye(4, dtype="float32")[LABELS]
KEEP = np.isfinite(LOGITS)


def _log_softmax_unmasked(z):
    """log softmax over the unmasked classes only (masked ones: -inf), in float64."""
    z = np.where(KEEP, z.astype(np.float64), -np.inf)
    m = np.max(z, -1, keepdims=True)
    return z - m - np.log(np.sum(np.exp(z - m), -1, keepdims=True))


def _assert_finite_grad_zero_at_masked(fn, *inputs, wrt=-1):
    value, grads = value_and_grad(fn, *inputs)
    grad = grads[wrt]
    assert np.all(np.isfinite(value)), value
    assert np.all(np.isfinite(grad)), grad
    np.testing.assert_array_equal(grad[~KEEP], 0.0)
    return value, grad


def test_categorical_crossentropy_masked_logits():
    log_p = _log_softmax_unmasked(LOGITS)
    expected = -log_p[np.arange(2), LABELS]
    value, grad = _assert_finite_grad_zero_at_masked(
        lambda y, z: classification.categorical_crossentropy(y, z, from_logits=True),
        ONEHOT, LOGITS,
    )
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(grad[KEEP], (np.exp(log_p) - ONEHOT)[KEEP], atol=1e-6)


def test_sparse_categorical_crossentropy_masked_logits():
    log_p = _log_softmax_unmasked(LOGITS)
    value, grad = _assert_finite_grad_zero_at_masked(
        lambda y, z: classification.sparse_categorical_crossentropy(y, z, from_logits=True),
        LABELS, LOGITS,
    )
    np.testing.assert_allclose(value, -log_p[np.arange(2), LABELS], rtol=1e-6)
    np.testing.assert_allclose(grad[KEEP], (np.exp(log_p) - ONEHOT)[KEEP], atol=1e-6)
    loss = losskit.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(loss(LABELS, LOGITS))), -log_p[np.arange(2), LABELS].mean(),
        rtol=1e-6,
    )


def test_focal_and_poly1_masked_logits():
    log_p = _log_softmax_unmasked(LOGITS)
    p = np.exp(log_p)
    lp_t, p_t = log_p[np.arange(2), LABELS], p[np.arange(2), LABELS]
    value, _ = _assert_finite_grad_zero_at_masked(
        lambda y, z: classification.focal(y, z, gamma=2.0, from_logits=True, mode="categorical"),
        ONEHOT, LOGITS,
    )
    np.testing.assert_allclose(value, -((1 - p_t) ** 2) * lp_t, rtol=1e-5)
    value, _ = _assert_finite_grad_zero_at_masked(
        lambda y, z: classification.poly1(y, z, epsilon=1.0, from_logits=True), ONEHOT, LOGITS
    )
    np.testing.assert_allclose(value, -lp_t + (1 - p_t), rtol=1e-5)


def _sparsemax_loss_reference(z, y):
    """Martins & Astudillo eq. (18) on the unmasked classes only."""
    out = []
    for zi, yi, keep in zip(z.astype(np.float64), y.astype(np.float64), KEEP):
        zk, yk = zi[keep], yi[keep]
        s = np.sort(zk)[::-1]
        k = np.arange(1, len(s) + 1)
        size = np.max(k[1 + k * s > np.cumsum(s)])
        tau = (np.sum(s[:size]) - 1) / size
        support = zk > tau
        out.append(-yk @ zk + 0.5 * np.sum(zk[support] ** 2 - tau**2) + 0.5 * yk @ yk)
    return np.array(out)


def test_sparsemax_loss_masked_logits():
    value, grad = _assert_finite_grad_zero_at_masked(
        classification.sparsemax_loss, ONEHOT, LOGITS
    )
    np.testing.assert_allclose(value, _sparsemax_loss_reference(LOGITS, ONEHOT), rtol=1e-5)
    # grad = sparsemax(z) - y: here sparsemax puts all mass on the top class of each row
    expected = np.array([[1, 0, 0, 0], [0, 0, 0, 1]], "float32") - ONEHOT
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_distillation_kl_masked_logits():
    student = np.array([[0.3, NEG_INF, -0.2, 1.0], [NEG_INF, 0.1, NEG_INF, 0.7]], "float32")
    teacher = LOGITS
    t = 2.0
    log_p = _log_softmax_unmasked(teacher / t)
    log_q = _log_softmax_unmasked(student / t)
    p = np.exp(log_p)
    diff = np.where(KEEP, log_p, 0.0) - np.where(KEEP, log_q, 0.0)
    expected = t * t * np.sum(p * diff, -1)
    value, grads = value_and_grad(
        lambda a, b: distillation.distillation_kl(a, b, temperature=t), teacher, student
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for grad in grads:
        assert np.all(np.isfinite(grad)), grad
        np.testing.assert_array_equal(grad[~KEEP], 0.0)


@pytest.mark.parametrize(
    "fn",
    [
        lambda y, z: classification.categorical_crossentropy(y, z, from_logits=True),
        lambda y, z: classification.sparse_categorical_crossentropy(
            ops.argmax(y, -1), z, from_logits=True
        ),
        lambda y, z: classification.focal(y, z, from_logits=True, mode="categorical"),
        lambda y, z: classification.poly1(y, z, from_logits=True),
        classification.sparsemax_loss,
        lambda y, z: distillation.distillation_kl(ops.where(y > 0, 0.0, -1.0), z),
    ],
    ids=["cce", "sparse_cce", "focal", "poly1", "sparsemax", "distillation_kl"],
)
def test_masked_target_is_infinite(fn):
    z = np.array([[NEG_INF, 1.0, 0.0], [0.5, 1.0, 0.0]], "float32")
    y = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], "float32")
    value = ops.convert_to_numpy(fn(y, z))
    assert value[0] == np.inf, value
    assert np.isfinite(value[1]), value


# ---------------------------------------------------------------------------------------------
# 7. general_robust(alpha=inf)


def test_general_robust_alpha_plus_infinity():
    y_true = np.zeros((3, 2), "float32")
    y_pred = np.array([[0.1, -0.5], [1.0, 2.0], [-3.0, 0.0]], "float32")
    scale = 1.5
    x = (y_true - y_pred).astype(np.float64) / scale
    expected = np.mean(np.expm1(0.5 * x**2), -1)
    value = ops.convert_to_numpy(regression.general_robust(y_true, y_pred, alpha=np.inf,
                                                           scale=scale))
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    near = ops.convert_to_numpy(regression.general_robust(y_true, y_pred, alpha=1e4, scale=scale))
    np.testing.assert_allclose(near, expected, rtol=1e-3)
    loss = losskit.losses.GeneralRobust(alpha=float("inf"), scale=scale)
    assert np.isclose(float(ops.convert_to_numpy(loss(y_true, y_pred))), expected.mean())


# ---------------------------------------------------------------------------------------------
# 10b. check_gradients: labels without a declared gradient are not failures


@losskit.custom_gradient
def _logistic_with_label(y_true, logits):
    value = ops.softplus(logits) - y_true * logits

    def grad_fn(upstream):
        return None, upstream * (ops.sigmoid(logits) - y_true)

    return value, grad_fn


def _calls_custom(y_true, logits):
    return 2.0 * _logistic_with_label(y_true, logits)


def _float_labels():
    rng = np.random.default_rng(1)
    return rng.uniform(0.1, 0.9, (6,)), rng.normal(size=(6,))


@pytest.mark.parametrize("fn", [_calls_custom, losskit.losses.logistic_nll],
                         ids=["calls_custom_gradient", "logistic_nll"])
def test_check_gradients_skips_labels_without_declared_gradient(fn):
    y, z = _float_labels()
    if fn is losskit.losses.logistic_nll:
        rng = np.random.default_rng(2)
        inputs = (y, rng.normal(size=(6, 3)), rng.normal(size=(3, 1)), rng.normal(size=(1,)))
    else:
        inputs = (y, z)
    report = losskit.check_gradients(fn, *inputs)
    assert report.ok, str(report)
    assert not report.inputs[0].checked
    assert "grad_fn declares no gradient" in str(report)
    assert report.max_abs_error[0] is None
    assert report.max_rel_error[0] is None
    assert report.worst_index[0] is None
    assert all(e < 1e-6 for e in report.max_abs_error[1:])


def test_check_gradients_wrt_still_checks_a_label():
    y, z = _float_labels()
    report = losskit.check_gradients(_calls_custom, y, z, wrt=[0, 1])
    assert not report.ok
    assert report.inputs[0].checked and report.inputs[1].checked
    assert "input 0 'y_true' (6,) vs autodiff: MISMATCH" in str(report)
    assert report.max_abs_error[0] > 0.1


@losskit.custom_gradient
def _zero_label_gradient(y_true, logits):
    value = ops.softplus(logits) - y_true * logits

    def grad_fn(upstream):  # claims a gradient for y_true, and gets it wrong
        return ops.zeros_like(y_true), upstream * (ops.sigmoid(logits) - y_true)

    return value, grad_fn


def test_check_gradients_still_catches_a_wrong_label_gradient():
    y, z = _float_labels()
    report = losskit.check_gradients(lambda a, b: 2.0 * _zero_label_gradient(a, b), y, z)
    assert not report.ok
    assert report.inputs[0].checked
    assert "input 0 'a' (6,) vs autodiff: MISMATCH" in str(report)


# ---------------------------------------------------------------------------------------------
# 9. The command line


@pytest.fixture
def bare_recipe(monkeypatch):
    """`bare-recipe`: records its config and returns a result without `checks`."""
    import sys
    import types

    from losskit import recipes

    module = types.ModuleType("losskit_test_bare_recipe")
    module.NAME, module.SUMMARY = "bare-recipe", "a recipe without checks"
    module.OPTIONS = {"scale": 1.0, "hidden": 4, "plot": True, "dataset": "mnist"}
    module.calls = []

    def run(config):
        module.calls.append(config)
        return {"seeds": [0], "metrics": {}, "history": {}, "plots": [], "notes": []}

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(recipes, "RECIPES", {"bare-recipe": module.__name__})
    return module


@pytest.mark.parametrize(
    "option, message",
    [
        ("scale=abc", "bare-recipe: option scale must be a number, got 'abc'"),
        ("scale=NaN", "bare-recipe: option scale must be a finite number, got nan"),
        ("hidden=2.5", "bare-recipe: option hidden must be an integer >= 1, got 2.5"),
        ("hidden=true", "bare-recipe: option hidden must be an integer >= 1, got True"),
        ("plot=1", "bare-recipe: option plot must be true or false, got 1"),
    ],
)
def test_cli_bad_option_value_is_a_one_line_error(bare_recipe, tmp_path, capsys, option, message):
    from losskit.recipes import cli

    code = cli.main(["run", "bare-recipe", "--out", str(tmp_path), "-o", option])
    err = capsys.readouterr().err
    assert code != 0
    assert err.splitlines()[0] == f"losskit: {message}"
    assert "Traceback" not in err
    assert not bare_recipe.calls


def test_cli_bad_option_value_of_a_real_recipe(tmp_path, capsys):
    from losskit.recipes import cli

    code = cli.main(["run", "airfoil-huber", "--out", str(tmp_path), "-o", "delta=abc"])
    err = capsys.readouterr().err
    assert code != 0
    assert "losskit: airfoil-huber: option delta must be a finite number > 0, got 'abc'" in err
    assert "Traceback" not in err


def test_cli_good_option_values_are_converted(bare_recipe, tmp_path, capsys):
    from losskit.recipes import cli

    argv = ["run", "bare-recipe", "--out", str(tmp_path), "-o", "scale=2", "-o", "hidden=8.0",
            "-o", "plot=false", "-o", "dataset=digits"]
    assert cli.main(argv) == 0
    (config,) = bare_recipe.calls
    assert config.options == {"scale": 2.0, "hidden": 8, "plot": False, "dataset": "digits"}
    assert isinstance(config.options["hidden"], int)


def test_cli_report_on_a_missing_folder_fails(tmp_path, capsys):
    from losskit.recipes import cli

    missing = tmp_path / "missing"
    assert cli.main(["report", "--out", str(missing)]) != 0
    err = capsys.readouterr().err
    assert "nothing to report" in err and str(missing) in err
    assert not missing.exists()
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", "--out", str(tmp_path / "empty")]) != 0
    assert "nothing to report" in capsys.readouterr().err


def test_cli_writes_no_progress_bars_into_a_redirected_log(bare_recipe, tmp_path, capsys):
    import io

    from losskit.recipes import cli, common

    # capsys replaces stdout with a non-terminal, as `losskit run ... > log` does
    assert cli.main(["run", "bare-recipe", "--out", str(tmp_path)]) == 0
    assert cli.main(["run", "bare-recipe", "--out", str(tmp_path), "--verbose", "1"]) == 0
    assert [c.verbose for c in bare_recipe.calls] == [2, 1]  # an explicit choice is kept

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert common.fit_verbosity(Terminal()) == 1
    assert common.fit_verbosity(io.StringIO()) == 2


def test_every_result_json_has_checks(bare_recipe, tmp_path, capsys):
    import json

    from losskit.recipes import cli

    assert cli.main(["run", "bare-recipe", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bare-recipe" / "result.json").read_text())
    assert result["checks"] == {}

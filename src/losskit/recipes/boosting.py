"""One loss, every learner: the neural recipes' losses as XGBoost and LightGBM objectives.

Needs the `boosting` extra (``pip install "losskit[boosting]"``: xgboost, lightgbm, catboost).

Two tabular problems of the other recipes, now learned by gradient-boosted trees whose objective
is the same losskit loss object (`losskit.boosting.objective`, exact gradient and Hessian by
autodiff):

- **airfoil** (as `airfoil-huber`: the same split, the same label corruption per seed, the same
  robust target scale): `losses.MSE()` vs `losses.Huber(delta=...)`, clean-test RMSE in dB;
- **credit** (as `credit-custom-gradient`: the same split): the logistic NLL with its analytic
  gradient (`losses.logistic_nll_logits`, a `@custom_gradient` loss; the Hessian differentiates
  the declared gradient), test accuracy / ROC AUC / NLL. The recipe also checks that its margins
  equal XGBoost's and LightGBM's own logistic objective, round for round.

Each (library, loss) arm trains over the seeds (airfoil: the seed picks the corrupted rows;
credit: row and column subsampling), and the clean test error is recorded along the rounds.
"""

import numpy as np

import losskit
from losskit import boosting, losses
from losskit.recipes import RecipeError, airfoil_huber, common, credit_custom_gradient

NAME = "boosting"
SUMMARY = "Airfoil (Huber vs MSE) and German credit (logistic NLL) with XGBoost and LightGBM"

OPTIONS = {
    "corruption": 0.1,  # airfoil: as airfoil-huber
    "spike_low_db": 20.0,
    "spike_high_db": 40.0,
    "delta": 1.0,  # Huber threshold in robust standard deviations of the target, as airfoil-huber
    "learning_rate": 0.05,
    "max_depth": 4,  # XGBoost; LightGBM takes 2**max_depth leaves
    "threads": 1,
}

LIBRARIES = ("xgboost", "lightgbm")
AIRFOIL_LOSSES = ("mse", "huber")


def _require_libraries():
    try:
        import lightgbm  # noqa: F401
        import xgboost  # noqa: F401
    except ImportError as err:
        raise RecipeError(
            f"{NAME}: needs the boosting extra (pip install \"losskit[boosting]\"): {err}"
        ) from None


def _params(library, options, seed, subsample):
    if library == "xgboost":
        return {"max_depth": options["max_depth"], "eta": options["learning_rate"],
                "tree_method": "hist", "nthread": options["threads"], "seed": seed,
                "subsample": subsample, "colsample_bytree": subsample,
                "disable_default_eval_metric": 1}
    return {"num_leaves": 2 ** options["max_depth"], "learning_rate": options["learning_rate"],
            "num_threads": options["threads"], "seed": seed, "verbose": -1,
            "deterministic": True, "bagging_fraction": subsample, "bagging_freq": 1,
            "feature_fraction": subsample, "boost_from_average": False, "min_data_in_leaf": 10}


def train(library, objective, X, y, rounds, params):
    """Boosts `rounds` trees with a custom (callable) or built-in (string) objective from a raw
    score of 0; returns `margins(X, n_rounds) -> raw scores after the first n_rounds trees`."""
    if library == "xgboost":
        import xgboost as xgb

        dtrain = xgb.DMatrix(X, label=y, base_margin=np.zeros(len(y)))
        if isinstance(objective, str):
            params = {**params, "objective": objective}
            objective = None
        booster = xgb.train(params, dtrain, rounds, obj=objective)

        def margins(X_new, n):
            data = xgb.DMatrix(X_new, base_margin=np.zeros(len(X_new)))
            return booster.predict(data, output_margin=True, iteration_range=(0, n))

        return margins
    import lightgbm as lgb

    dset = lgb.Dataset(X, label=y, params={"verbose": -1})
    booster = lgb.train({**params, "objective": objective}, dset, rounds)
    return lambda X_new, n: booster.predict(X_new, raw_score=True, num_iteration=n)


def _checkpoints(rounds):
    return sorted({max(1, int(round(rounds * f / 20))) for f in range(1, 21)})


def airfoil_loss(name, delta):
    if name == "mse":
        return losses.MSE()
    if name == "huber":
        return losses.Huber(delta=delta)
    raise RecipeError(f"{NAME}: unknown airfoil loss {name!r}")


def run_airfoil(seeds, rounds, options, bar):
    runs, curves = {}, {}
    # One objective per loss, reused by every seed and library (compiled once per data shape).
    objectives = {name: boosting.objective(airfoil_loss(name, options["delta"]))
                  for name in AIRFOIL_LOSSES}
    for seed in seeds:
        data = airfoil_huber.prepare_data(options["corruption"], options["spike_low_db"],
                                          options["spike_high_db"], seed)
        true_db = data["y_test_db"]
        accuracy = losskit.metrics.regression_accuracy(tolerance=0.02, relative=True)
        for library in LIBRARIES:
            for name in AIRFOIL_LOSSES:
                arm = f"airfoil_{library}_{name}"
                bar.start(f"seed {seed} · {arm}")
                margins = train(library, objectives[name], data["X_train"], data["y_train"], rounds,
                                _params(library, options, seed, 1.0))
                curve = []
                for n in _checkpoints(rounds):
                    pred_db = margins(data["X_test"], n) * data["scale"] + data["center"]
                    curve.append(float(np.sqrt(np.mean((pred_db - true_db) ** 2))))
                accuracy.reset_state()
                accuracy.update_state(true_db[:, None], pred_db[:, None])
                metrics = {
                    "test_rmse_db": curve[-1],
                    "test_mae_db": float(np.mean(np.abs(pred_db - true_db))),
                    "test_regression_accuracy": float(accuracy.result()),
                }
                runs.setdefault(arm, []).append(metrics)
                curves.setdefault(arm, []).append({"val_rmse_db": curve})
                bar.done(f"test RMSE {metrics['test_rmse_db']:.2f} dB")
    return runs, curves, data


def run_credit(seeds, rounds, options, bar, obj):
    X_train, y_train, X_test, y_test = credit_custom_gradient.load_split()
    runs, curves = {}, {}
    for seed in seeds:
        for library in LIBRARIES:
            arm = f"credit_{library}_logistic_nll"
            bar.start(f"seed {seed} · {arm}")
            margins = train(library, obj, X_train, y_train.astype(float), rounds,
                            _params(library, options, seed, 0.8))
            curve = []
            for n in _checkpoints(rounds):
                probability = 1 / (1 + np.exp(-margins(X_test, n)))
                curve.append(credit_custom_gradient.scores(y_test, probability)["test_nll"])
            metrics = credit_custom_gradient.scores(y_test, probability)
            runs.setdefault(arm, []).append(metrics)
            curves.setdefault(arm, []).append({"val_nll": curve})
            bar.done(f"test AUC {metrics['test_roc_auc']:.3f}")
    return runs, curves, (X_train, y_train)


def builtin_check(X, y, rounds, options, obj):
    """Max |margin| difference, custom logistic NLL vs the library's own logistic objective
    (no subsampling, raw score 0 at the start): float32 round-off only."""
    out = {}
    for library, builtin in (("xgboost", "binary:logistic"), ("lightgbm", "binary")):
        params = _params(library, options, 0, 1.0)
        ours = train(library, obj, X, y, rounds, params)
        theirs = train(library, builtin, X, y, rounds, params)
        diff = np.abs(ours(X, rounds) - theirs(X, rounds))
        out[library] = {"max_abs_margin_diff": float(diff.max()),
                        "max_abs_margin": float(np.abs(theirs(X, rounds)).max())}
    return {
        "description": f"German credit training set, {rounds} rounds: margins of "
        "objective(logistic_nll_logits) vs the built-in logistic objective",
        **out,
        "ok": all(v["max_abs_margin_diff"] <= 1e-5 * max(1.0, v["max_abs_margin"])
                  for v in out.values()),
    }


def plot(out_dir, summaries, rounds):
    plt = common.pyplot()
    x = _checkpoints(rounds)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, summary in summaries.items():
        key, ax = ("val_rmse_db", ax1) if arm.startswith("airfoil") else ("val_nll", ax2)
        mean = np.asarray(summary[key]["mean"], dtype=float)
        std = np.asarray(summary[key]["std"], dtype=float)
        style = "-" if "xgboost" in arm else "--"
        label = arm.split("_", 1)[1]
        ax.plot(x, mean, style, label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax1.set(xlabel="boosting round", ylabel="clean test RMSE [dB]",
            title="Airfoil, 10% corrupted labels: Huber vs MSE")
    ax1.legend()
    ax2.set(xlabel="boosting round", ylabel="test NLL",
            title="German credit: logistic NLL (custom gradient)")
    ax2.legend()
    return [common.save_figure(fig, out_dir, "boosting.png")]


def run(config):
    _require_libraries()
    options = {**OPTIONS, **config.options}
    if not 0.0 <= float(options["corruption"]) < 1.0:
        raise RecipeError(f"{NAME}: corruption must be in [0, 1), got {options['corruption']}")
    for key in ("delta", "learning_rate"):
        if float(options[key]) <= 0:
            raise RecipeError(f"{NAME}: {key} must be positive, got {options[key]}")
    if int(options["max_depth"]) < 1 or int(options["threads"]) < 1:
        raise RecipeError(f"{NAME}: max_depth and threads must be at least 1")
    seeds = common.seed_list(config, quick_default=1, full_default=5)
    # `epochs` = boosting rounds here.
    rounds = common.n_epochs(config, quick_default=20, full_default=300)
    config.out_dir.mkdir(parents=True, exist_ok=True)

    bar = common.Progress(len(seeds) * (len(LIBRARIES) * len(AIRFOIL_LOSSES) + len(LIBRARIES)),
                          NAME)
    runs, curves, airfoil_data = run_airfoil(seeds, rounds, options, bar)
    nll = boosting.objective(losses.logistic_nll_logits)  # the credit recipe's loss, as logits
    credit_runs, credit_curves, (X_credit, y_credit) = run_credit(seeds, rounds, options, bar, nll)
    runs.update(credit_runs)
    curves.update(credit_curves)
    check = builtin_check(X_credit, y_credit.astype(float), min(rounds, 20), options, nll)

    metrics = common.summarize_runs(runs)
    summaries = {arm: common.summarize_histories(h) for arm, h in curves.items()}
    fmt = common.format_summary
    notes = [
        f"{len(seeds)} seed(s) x {rounds} rounds, learning rate {options['learning_rate']}, depth "
        f"{options['max_depth']} (LightGBM {2 ** options['max_depth']} leaves), one thread; "
        "every objective is losskit.boosting.objective(<the neural recipes' loss>).",
        f"Airfoil ({airfoil_data['n_corrupted']} of {len(airfoil_data['y_train'])} training "
        f"labels corrupted), clean test RMSE: "
        + ", ".join(f"{arm[8:]} {fmt(metrics[arm]['test_rmse_db'], 2)} dB"
                    for arm in metrics if arm.startswith("airfoil")),
        "German credit, logistic NLL (custom gradient): "
        + ", ".join(f"{arm[7:].split('_')[0]} accuracy {fmt(metrics[arm]['test_accuracy'], 3)}, "
                    f"ROC AUC {fmt(metrics[arm]['test_roc_auc'], 3)}"
                    for arm in metrics if arm.startswith("credit")),
        "Margins vs the built-in logistic objective: XGBoost max diff "
        f"{check['xgboost']['max_abs_margin_diff']:.2g}, LightGBM "
        f"{check['lightgbm']['max_abs_margin_diff']:.2g}.",
    ]
    return {
        "config": {"seeds": len(seeds), "rounds": rounds, "options": options,
                   "arms": list(metrics), "checkpoints": _checkpoints(rounds)},
        "seeds": seeds,
        "metrics": metrics,
        "checks": {"logistic_nll_equals_builtin": check},
        "history": summaries,
        "plots": plot(config.out_dir, summaries, rounds),
        "notes": notes,
    }

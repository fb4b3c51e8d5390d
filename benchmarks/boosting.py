"""Per-round cost of a losskit loss as a boosting objective, against the library's own objective.

Binary classification at N = 200,000 rows x 20 features: `xgboost.train` (hist, depth 6) and
`lightgbm.train` (31 leaves), each with its built-in logistic objective (`binary:logistic`,
`binary`) and with `losskit.boosting.objective(BinaryCrossentropy(from_logits=True))`, the same
trees. Also timed alone: the objective's derivative computation on N scores (checks, gradient and
Hessian, weights). Timed in interleaved rounds (median); each measurement trains `--rounds`
boosting rounds, on one thread (`--threads`: OpenMP threads spin on a busy shared machine and
swamp the comparison).

Three ways to the derivatives are timed: the default (`derivatives="auto"`: this loss has a
closed form, float64 NumPy), and autodiff on the backend (`derivatives="autodiff"`, the path of
every loss without a closed form) in float64 and in float32 (`_autodiff`, `_autodiff_f32`); and
the same logistic objective written in NumPy with no checks (`xgboost_numpy`, `lightgbm_numpy`),
the floor any Python custom objective pays for the library's callback path. Derivatives alone,
by autodiff, for three regression losses without a closed form (`derivatives_autodiff_huber`,
`_cauchy`, `_pseudo_huber`): what other losses cost per round.

Targets (issue 22): custom / built-in <= 1.3 per round, derivatives <= 10 % of a custom round.

    python benchmarks/boosting.py [--quick] [--backends tensorflow jax torch]
"""

import sys

import common


def child(args):
    import time

    import keras
    import lightgbm as lgb
    import numpy as np
    import xgboost as xgb

    import losskit
    from losskit import boosting

    n = 5_000 if args.quick else args.rows
    rounds = 3 if args.quick else args.rounds
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 20)).astype(np.float32)
    logit = X[:, 0] - X[:, 1] ** 2 + 0.5 * X[:, 2] * X[:, 3] + rng.normal(size=n)
    y = (logit > 0).astype(np.float32)
    dtrain = xgb.DMatrix(X, label=y, base_margin=np.zeros(n), nthread=args.threads)
    dset = lgb.Dataset(X, label=y, params={"verbose": -1, "num_threads": args.threads})
    dset.construct()
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    objectives = {
        "": boosting.objective(loss),
        "_autodiff": boosting.objective(loss, derivatives="autodiff"),
        "_autodiff_f32": boosting.objective(loss, derivatives="autodiff", dtype="float32"),
    }
    assert objectives[""].closed_form is not None
    xgb_params = {"max_depth": 6, "eta": 0.1, "tree_method": "hist", "nthread": args.threads,
                  "seed": 0}
    lgb_params = {"num_leaves": 31, "learning_rate": 0.1, "verbose": -1, "seed": 0,
                  "num_threads": args.threads}
    scores = rng.normal(size=n)

    def numpy_logistic(predt, data):
        # The floor of any Python objective: the closed form in NumPy, no autodiff, no checks.
        p = 1.0 / (1.0 + np.exp(-predt))
        return p - data.get_label(), p * (1.0 - p)

    thunks = {
        "xgboost_builtin": lambda: xgb.train(
            {**xgb_params, "objective": "binary:logistic"}, dtrain, rounds),
        "lightgbm_builtin": lambda: lgb.train(
            {**lgb_params, "objective": "binary", "boost_from_average": False}, dset, rounds),
        "xgboost_numpy": lambda: xgb.train(
            {**xgb_params, "disable_default_eval_metric": 1}, dtrain, rounds, obj=numpy_logistic),
        "lightgbm_numpy": lambda: lgb.train({**lgb_params, "objective": numpy_logistic}, dset,
                                            rounds),
    }
    for tag, obj in objectives.items():
        thunks[f"xgboost_losskit{tag}"] = lambda obj=obj: xgb.train(
            {**xgb_params, "disable_default_eval_metric": 1}, dtrain, rounds, obj=obj)
        thunks[f"lightgbm_losskit{tag}"] = lambda obj=obj: lgb.train(
            {**lgb_params, "objective": obj}, dset, rounds)
        # One derivative computation per round: `rounds` of them, as the trainings above do.
        thunks[f"derivatives{tag}"] = lambda obj=obj: [
            obj.gradients(y, scores) for _ in range(rounds)]
    # The autodiff path of regression losses without a closed form (derivatives alone).
    targets = rng.normal(size=n)
    for name, other in {
        "huber": boosting.objective(losskit.losses.Huber(delta=1.0), derivatives="autodiff"),
        "cauchy": boosting.objective(losskit.losses.Cauchy(), hessian="clip"),
        "pseudo_huber": boosting.objective(losskit.losses.GeneralRobust(alpha=1.0)),
    }.items():
        assert other.closed_form is None
        thunks[f"derivatives_autodiff_{name}"] = lambda obj=other: [
            obj.gradients(targets, scores) for _ in range(rounds)]
    start = time.perf_counter()
    timing = common.interleaved(thunks, repeats=2 if args.quick else args.repeats, warmup=1)
    per_round = {name: t["median_s"] / rounds for name, t in timing.items()}
    result = {
        "rows": n, "features": X.shape[1], "rounds_per_measurement": rounds,
        "threads": args.threads,
        "seconds_per_round": per_round,
        "ratio_custom_to_builtin": {
            f"{lib}{tag}": per_round[f"{lib}_losskit{tag}"] / per_round[f"{lib}_builtin"]
            for lib in ("xgboost", "lightgbm") for tag in objectives
        },
        # What the library's custom-objective path costs with the cheapest possible objective.
        "ratio_numpy_objective_to_builtin": {
            lib: per_round[f"{lib}_numpy"] / per_round[f"{lib}_builtin"]
            for lib in ("xgboost", "lightgbm")
        },
        "derivative_share_of_custom_round": {
            f"{lib}{tag}": per_round[f"derivatives{tag}"] / per_round[f"{lib}_losskit{tag}"]
            for lib in ("xgboost", "lightgbm") for tag in objectives
        },
        "versions_boosting": {"xgboost": xgb.__version__, "lightgbm": lgb.__version__},
        "raw": timing,
        "wall_s": time.perf_counter() - start,
    }
    backend = keras.backend.backend()
    for name, seconds in per_round.items():
        print(f"{backend:10s} {name:28s} {seconds * 1e3:8.2f} ms/round", flush=True)
    for lib in result["ratio_custom_to_builtin"]:
        print(f"{backend:10s} {lib:22s} custom/builtin "
              f"{result['ratio_custom_to_builtin'][lib]:.3f}  derivative share "
              f"{result['derivative_share_of_custom_round'][lib]:.3f}", flush=True)
    common.save_child("boosting", args.backend, result)


def main():
    args = common.parse_args(
        __doc__.splitlines()[0],
        rows={"type": int, "default": 200_000},
        rounds={"type": int, "default": 10},
        threads={"type": int, "default": 1},
        default_backends=common.ALL_BACKENDS,
    )
    if args.backend:
        child(args)
    else:
        # One thread everywhere: on a shared 2-core machine, OpenMP / Eigen thread pools spin
        # against other processes (torch's derivatives ran 30x slower with 2 threads).
        env = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
               "TF_NUM_INTEROP_THREADS": "1",
               "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
        common.run_per_backend("boosting", __file__, sys.argv[1:], env=env,
                               backends=args.backends)


if __name__ == "__main__":
    main()

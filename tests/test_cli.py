"""The `losskit` command: listing, argument errors, and a run writing result.json + index.html.

Runs use a tiny fake recipe module, so these tests exercise the command and the reports without
training anything (the real recipes have their own tests).
"""

import json
import sys
import types

import pytest

from losskit import recipes
from losskit.recipes import cli


@pytest.fixture
def fake_recipe(monkeypatch):
    """Registers `fake-recipe`, which records its config and writes one plot."""
    module = types.ModuleType("losskit_test_fake_recipe")
    module.NAME = "fake-recipe"
    module.SUMMARY = "a recipe for tests"
    module.OPTIONS = {"dataset": "mnist", "scale": 1.0}
    module.calls = []

    def run(config):
        module.calls.append(config)
        (config.out_dir / "plot.png").write_bytes(b"\x89PNG fake")
        return {
            "config": {"seeds": config.seeds or 2},
            "seeds": [0, 1],
            "metrics": {"arm": {"rmse": {"mean": 1.5, "std": 0.5, "values": [1.0, 2.0]}}},
            "history": {"arm": {"loss": {"mean": [2.0, float("nan")], "std": [0, 0],
                                         "values": [[2.0, float("nan")]]}}},
            "checks": {"same": {"ok": True, "max_abs_diff": 0.0}},
            "plots": ["plot.png"],
            "notes": ["a <note> & more"],
        }

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(recipes, "RECIPES", {"fake-recipe": module.__name__})
    return module


def test_list_names_every_recipe(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("airfoil-huber", "credit-custom-gradient", "cancer-distillation",
                 "image-cross-entropy", "vae-annealing", "multitask-balancing", "boosting"):
        assert name in out


def test_unknown_recipe_exits_nonzero_with_help(capsys, tmp_path):
    code = cli.main(["run", "nope", "--out", str(tmp_path)])
    assert code != 0
    err = capsys.readouterr().err
    assert "unknown recipe 'nope'" in err
    assert "airfoil-huber" in err and "losskit list" in err
    assert not (tmp_path / "index.html").exists()


def test_console_script_exit_code(tmp_path):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "losskit.recipes.cli", "run", "nope", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "unknown recipe 'nope'" in proc.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "airfoil-huber", "--seeds", "0"], "positive integer"),
        (["run", "airfoil-huber", "--epochs", "two"], "positive integer"),
        (["run", "airfoil-huber", "--verbose", "5"], "invalid choice"),
        (["run", "airfoil-huber", "-o", "novalue"], "KEY=VALUE"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_options_exit_nonzero(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code != 0
    assert message in capsys.readouterr().err


def test_run_writes_result_and_index(fake_recipe, tmp_path, capsys):
    code = cli.main(["run", "fake-recipe", "--quick", "--seeds", "3", "--epochs", "2",
                     "--out", str(tmp_path), "--verbose", "0", "-o", "scale=2.5",
                     "--dataset", "cifar10"])
    assert code == 0
    (config,) = fake_recipe.calls
    assert config.quick and config.seeds == 3 and config.epochs == 2 and config.verbose == 0
    assert config.out_dir == tmp_path / "fake-recipe"
    assert config.options == {"dataset": "cifar10", "scale": 2.5}

    result = json.loads((tmp_path / "fake-recipe" / "result.json").read_text())
    assert result["recipe"] == "fake-recipe"
    assert result["metrics"]["arm"]["rmse"]["values"] == [1.0, 2.0]
    assert result["history"]["arm"]["loss"]["mean"] == [2.0, None]  # NaN -> null, strict JSON
    assert result["wall_time_s"] >= 0
    assert result["versions"]["keras"] and result["versions"]["keras_backend"]
    assert result["config"]["options"]["scale"] == 2.5

    page = (tmp_path / "index.html").read_text()
    assert "fake-recipe" in page and "1.5 ± 0.5" in page
    assert "src='fake-recipe/plot.png'" in page
    assert "a &lt;note&gt; &amp; more" in page  # escaped
    out = capsys.readouterr().out
    assert "rmse" in out and "index.html" in out


def test_unknown_recipe_option_is_a_clear_error(fake_recipe, tmp_path, capsys):
    code = cli.main(["run", "fake-recipe", "--out", str(tmp_path), "-o", "scael=2"])
    assert code != 0
    err = capsys.readouterr().err
    assert "unknown option(s) scael" in err and "scale" in err
    assert "Traceback" not in err
    assert not fake_recipe.calls


def test_run_all_continues_after_a_failure(fake_recipe, monkeypatch, tmp_path, capsys):
    broken = types.ModuleType("losskit_test_broken_recipe")
    broken.NAME, broken.SUMMARY = "broken", "fails"

    def run(config):
        raise RuntimeError("boom")

    broken.run = run
    monkeypatch.setitem(sys.modules, broken.__name__, broken)
    monkeypatch.setattr(recipes, "RECIPES", {"broken": broken.__name__,
                                             "fake-recipe": fake_recipe.__name__})
    # An option no recipe declares is refused before anything runs.
    assert cli.main(["run", "all", "--out", str(tmp_path), "-o", "other=1"]) == 2
    assert "unknown option(s) other: no recipe takes them" in capsys.readouterr().err
    assert not fake_recipe.calls and not (tmp_path / "index.html").exists()
    # One that some recipe declares goes to those recipes; the run continues past a failure.
    code = cli.main(["run", "all", "--out", str(tmp_path), "-o", "scale=2"])
    assert code == 1
    assert "failed: broken" in capsys.readouterr().err
    assert (tmp_path / "fake-recipe" / "result.json").exists()
    assert fake_recipe.calls[0].options == {"dataset": "mnist", "scale": 2.0}
    assert "fake-recipe" in (tmp_path / "index.html").read_text()


@pytest.mark.parametrize(
    "option, message",
    [
        ("batch_size=0", "batch_size must be an integer >= 1, got 0"),
        ("batch_size=2.5", "batch_size must be an integer >= 1"),
        ("batch_size=true", "batch_size must be an integer >= 1"),
        ("learning_rate=0", "learning_rate must be a finite number > 0"),
        ("learning_rate=NaN", "learning_rate must be a finite number > 0"),
        ("corruption=1", "corruption must be a finite number in [0, 1)"),
        ("delta=abc", "delta must be a finite number > 0"),
        ("tolerance=-1", "tolerance must be a finite number > 0"),
        ("spike_low_db=null", "spike_low_db must be a finite number >= 0"),
    ],
)
def test_recipe_options_are_checked_against_their_domain(option, message, capsys, tmp_path):
    code = cli.main(["run", "airfoil-huber", "--out", str(tmp_path), "-o", option])
    assert code != 0
    out, err = capsys.readouterr()
    assert "airfoil-huber: option" in err and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "airfoil-huber").exists()
    assert "report:" not in out and not (tmp_path / "index.html").exists()


def test_every_declared_numeric_option_has_a_domain():
    for name in recipes.RECIPES:
        module = recipes.load(name)
        for key, default in module.OPTIONS.items():
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            if numeric or key.endswith("_size"):
                assert key in recipes.DOMAINS, f"{name}: option {key} has no domain"
                # The default itself is in the domain.
                assert recipes._typed(name, key, default, default) == default


def test_optional_size_takes_null_or_a_positive_integer():
    module = types.SimpleNamespace(NAME="r", OPTIONS={"train_size": None})
    assert recipes.options_for(module, {"train_size": None}) == {"train_size": None}
    assert recipes.options_for(module, {"train_size": 40}) == {"train_size": 40}
    for bad in (0, "abc", 1.5):
        with pytest.raises(recipes.RecipeError, match="train_size must be an integer >= 1"):
            recipes.options_for(module, {"train_size": bad})


@pytest.mark.parametrize("command", [["report"], ["run", "airfoil-huber"]])
def test_out_that_is_a_file_is_refused(command, tmp_path, capsys):
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(SystemExit):
        cli.main([*command, "--out", str(file)])
    assert "is not a folder" in capsys.readouterr().err


_NO_BACKEND = """
import sys, time
start = time.perf_counter()
import losskit_cli
try:
    code = losskit_cli.main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
sys.stderr.write(f"seconds={time.perf_counter() - start:.3f}\\n")
heavy = sorted(m for m in ("keras", "tensorflow", "jax", "torch", "losskit") if m in sys.modules)
assert not heavy, heavy
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["run", "--help"], ["run"]])
def test_help_and_list_import_no_backend(argv, tmp_path):
    import os
    import subprocess

    # A keras.json naming a backend that is not installed, and the same in the environment.
    home = tmp_path / "home"
    (home / ".keras").mkdir(parents=True)
    (home / ".keras" / "keras.json").write_text('{"backend": "nonexistent"}')
    env = {**os.environ, "KERAS_BACKEND": "nonexistent", "KERAS_HOME": str(home / ".keras"),
           "HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", _NO_BACKEND, *argv], capture_output=True,
                          text=True, timeout=120, env=env)
    assert "seconds=" in proc.stderr, proc.stderr
    if argv == ["run"]:  # an argument error: a usage message, no traceback
        assert proc.returncode == 2 and "required: name" in proc.stderr
        assert "Traceback" not in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    if argv == ["list"]:
        for name in recipes.RECIPES:
            assert name in proc.stdout
            assert recipes.load(name).SUMMARY in proc.stdout  # read from source, not imported
    else:
        assert "usage: losskit" in proc.stdout


@pytest.mark.parametrize("name", ["fake-recipe", "all"])
def test_rejected_option_runs_nothing_and_reports_nothing(fake_recipe, name, tmp_path, capsys):
    code = cli.main(["run", name, "--quick", "--out", str(tmp_path), "-o", "scale=abc"])
    assert code == 1
    out, err = capsys.readouterr()
    assert "fake-recipe: option scale must be a number, got 'abc'" in err
    assert "report:" not in out and not (tmp_path / "index.html").exists()
    assert not fake_recipe.calls


def test_no_report_when_every_recipe_fails(fake_recipe, tmp_path, capsys):
    def refuse(config):
        raise recipes.RecipeError("fake-recipe: unknown dataset 'nope'")

    fake_recipe.run = refuse
    assert cli.main(["run", "fake-recipe", "--out", str(tmp_path), "--dataset", "nope"]) == 1
    out, err = capsys.readouterr()
    assert "unknown dataset 'nope'" in err and "failed: fake-recipe" in err
    assert "report:" not in out and not (tmp_path / "index.html").exists()

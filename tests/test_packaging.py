"""The core installs beside any one backend: its wheel requires keras and numpy only, and the
library imports and runs with the other two backends (and the recipes' packages) unimportable."""

import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import BACKEND, only_backend

ROOT = Path(__file__).resolve().parents[1]
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
# scipy: jax needs it itself. The boosting libraries: losskit.boosting needs none of them.
APP_ONLY = ("sklearn", "matplotlib", "mlxtend", "keras_hub", "xgboost", "lightgbm", "catboost")


@only_backend("tensorflow")  # one build is enough; the wheel does not depend on the backend
def test_wheel_requires_keras_and_numpy_only(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("losskit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]  # fmt: skip
    core = sorted(r.split(">")[0].split("<")[0].split("=")[0] for r in requires if "extra" not in r)
    assert core == ["keras", "numpy"], requires
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines()
              if line.startswith("Provides-Extra:")}  # fmt: skip
    assert {"tensorflow", "jax", "torch", "recipes", "boosting", "dev", "keras-hub"} <= extras


BLOCKER = """
import sys
BLOCKED = set(sys.argv[1].split(","))
for name in BLOCKED:  # as if not installed: import raises, importlib.util.find_spec gives None
    sys.modules[name] = None
import numpy as np, keras, losskit, losskit.integrations
from keras import ops
x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
y = (x[:, :1] > 0).astype("float32")
for name, fn in losskit.losses.ALL.items():
    assert callable(fn), name
value = losskit.losses.Huber(delta=2.0)(y, x[:, :1])
inputs = keras.Input((4,), name="features")
inner = keras.Model(inputs, keras.layers.Dense(1, name="out")(inputs))
objective = losskit.Objective([losskit.Term(losskit.losses.binary_crossentropy, from_logits=True)])
model = losskit.ObjectiveModel(inner, objective)
model.compile(optimizer="sgd")
model.fit({"features": x}, y, epochs=1, verbose=0)
nll = losskit.losses.logistic_nll
report = losskit.check_gradients(nll, y[:, 0], x[:, :2], x[:2, :1], x[0, :1])
assert report.ok, str(report)
g, h = losskit.boosting.objective(losskit.losses.Huber()).gradients(y[:, 0], x[:, 0])
assert g.shape == h.shape == (8,)
loaded = [m for m in BLOCKED if sys.modules.get(m) is not None]
assert not loaded, loaded
print("ok", keras.backend.backend(), float(ops.convert_to_numpy(value)))
"""


def test_library_works_with_only_this_backend_installed():
    others = [m for b, m in BACKEND_MODULES.items() if b != BACKEND]
    env = {**os.environ, "KERAS_BACKEND": BACKEND}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join([*others, *APP_ONLY])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"ok {BACKEND}")


@pytest.mark.parametrize("module", ["losskit.recipes.cli", "losskit.recipes.report"])
def test_the_core_never_imports_the_app(module):
    core = [p for p in (ROOT / "src" / "losskit").rglob("*.py") if "recipes" not in p.parts]
    for path in core:
        assert "losskit.recipes" not in path.read_text(), path
        assert "from losskit import recipes" not in path.read_text(), path
    assert module.startswith("losskit.recipes")


def test_the_core_never_imports_keras_hub(monkeypatch):
    integration = ROOT / "src" / "losskit" / "integrations" / "keras_hub.py"
    for path in (ROOT / "src" / "losskit").rglob("*.py"):
        if path != integration:
            assert "import keras_hub" not in path.read_text(), path
    # Without keras-hub, the integration says which extra to install.
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    monkeypatch.delitem(sys.modules, "losskit.integrations.keras_hub", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'losskit\[keras-hub\]'"):
        importlib.import_module("losskit.integrations.keras_hub")

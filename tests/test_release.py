"""The release users would get: `python -m build` makes a wheel and an sdist that `twine check`
accepts, and the wheel, installed into a fresh virtual environment with one backend, runs.

No network: the build uses this environment's setuptools (`--no-isolation`), the wheel is
installed with `--no-deps --no-index`, and the fresh environment sees, through a `.pth` line, a
folder of links to this environment's installed packages except TensorFlow, torch and losskit
itself: keras, numpy and JAX are there as a user's would be, the other backends are not installed,
and losskit can come only from the wheel. Runs once (under the JAX backend): the artefacts do
not depend on the backend.
"""

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import only_backend

import losskit

ROOT = Path(__file__).resolve().parents[1]
# Left out of the fresh environment: the other backends (and their own packages) and the
# development install of losskit.
NOT_INSTALLED = ("tensorflow", "tensorboard", "tf_keras", "torch", "functorch", "triton",
                 "losskit", "__editable__", "_losskit")

EXAMPLE = """
import importlib.metadata, pathlib, sys
import numpy as np, keras, losskit
assert "tensorflow" not in sys.modules and "torch" not in sys.modules
assert pathlib.Path(losskit.__file__).is_relative_to(pathlib.Path(sys.prefix)), losskit.__file__
assert losskit.__version__ == importlib.metadata.version("losskit"), losskit.__version__
x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
y = x.sum(-1, keepdims=True)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss=losskit.losses.Huber(delta=2.5))
model.fit(x, y, epochs=1, verbose=0)
model.save("m.keras")
assert keras.saving.load_model("m.keras").loss.delta == 2.5
print("ok", keras.backend.backend(), losskit.__version__)
"""


def _run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _build(out):
    """`python -m build` from this checkout into `out`, with no network."""
    pytest.importorskip("build", reason="the `docs` extra installs `build`")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    (wheel,) = out.glob("losskit-*.whl")
    (sdist,) = out.glob("losskit-*.tar.gz")
    return wheel, sdist


@only_backend("jax")
def test_wheel_and_sdist_pass_twine_and_the_wheel_runs_in_a_fresh_venv(tmp_path):
    wheel, sdist = _build(tmp_path / "dist")
    assert wheel.name == f"losskit-{losskit.__version__}-py3-none-any.whl"
    twine = Path(sys.executable).with_name("twine")
    _run([str(twine), "check", "--strict", str(wheel), str(sdist)])

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "losskit/recipes/data/DATA.md" in names  # shipped data travels with the wheel
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]
    with tarfile.open(sdist) as archive:
        members = {Path(n).relative_to(sdist.name.removesuffix(".tar.gz")).as_posix()
                   for n in archive.getnames() if "/" in n}  # fmt: skip
    assert {"pyproject.toml", "README.md", "src/losskit/__init__.py"} <= members

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                .stdout.strip())  # fmt: skip
    packages = tmp_path / "packages"
    packages.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.lower().startswith(NOT_INSTALLED):
            (packages / entry.name).symlink_to(entry)
    (site / "dev_packages.pth").write_text(f"{packages}\n")
    # Without PYTHONPATH: a source checkout on it would look like an installed losskit.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["KERAS_BACKEND"] = "jax"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)], env=env)  # fmt: skip
    result = _run([str(python), "-c", EXAMPLE], cwd=tmp_path, env=env)
    assert result.stdout.split() == ["ok", "jax", losskit.__version__]
    listed = _run([str(venv / "bin" / "losskit"), "list"], env=env)
    assert "airfoil-huber" in listed.stdout

"""The site's API reference covers every public name, and its math conversion is right.

`make docs` builds the site strictly (a broken link or a formula that does not render fails);
these tests check what a strict build cannot see: that every public module has an API page and
every name a module exports is on it with a docstring (mkdocstrings skips undocumented ones).
"""

import importlib
import re
import sys
from pathlib import Path

import pytest
from conftest import only_backend

import losskit

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
griffe = pytest.importorskip("griffe", reason="the `docs` extra installs griffe")
griffe_math = importlib.import_module("griffe_math")


def documented_modules():
    """`{module: page}` for each `::: losskit.x` in docs/api/."""
    found = {}
    for page in API.rglob("*.md"):
        for target in re.findall(r"^::: (\S+)", page.read_text(), re.M):
            found[target] = page
    return found


def public_modules():
    names = {"losskit"}
    names |= {f"losskit.{n}" for n in losskit.__all__
              if type(getattr(losskit, n)).__name__ == "module"}  # fmt: skip
    names |= {f"losskit.losses.{family}" for family in losskit.losses.FAMILIES}
    # Modules of optional extras, which the core does not import: public wherever they exist.
    src = ROOT / "src" / "losskit"
    names |= {f"losskit.{p.stem}" for p in [src / "boosting.py"] if p.exists()}
    names |= {f"losskit.integrations.{p.stem}" for p in (src / "integrations").glob("[!_]*.py")}
    return names


def test_every_public_module_has_an_api_page():
    missing = public_modules() - set(documented_modules())
    assert not missing, f"no docs/api page for {sorted(missing)}: add `::: <module>` in one"


@only_backend("jax")  # static analysis of the sources: the same on every backend
def test_every_exported_name_is_on_its_page_with_a_docstring():
    loader = griffe.GriffeLoader(
        search_paths=[str(ROOT / "src")],
        extensions=griffe.load_extensions(griffe_math.RstMath),
    )
    package = loader.load("losskit")
    loader.resolve_aliases(implicit=False, external=False)
    undocumented = []
    for module_name in documented_modules():
        if module_name == "losskit":
            continue  # its page lists the top-level names explicitly, checked below
        obj = package.get_member(module_name.removeprefix("losskit."))
        try:
            names = getattr(importlib.import_module(module_name), "__all__", [])
        except ImportError:  # an optional extra that is not installed: the static __all__
            names = [str(n) for n in (obj.exports or [])]
        for name in names:
            if name in ("FUNCTIONS", "CLASSES"):
                continue  # registries, documented by the package docstring
            member = obj.members.get(name)
            if member is None or not (member.docstring and member.docstring.value.strip()):
                undocumented.append(f"{module_name}.{name}")
    assert not undocumented, undocumented
    top = (API / "losskit.md").read_text()
    top_names = [n for n in losskit.__all__ if type(getattr(losskit, n)).__name__ != "module"]
    assert not [n for n in top_names if f"- {n}\n" not in top]


def test_rst_math_becomes_arithmatex():
    text = "Huber: :math:`\\tfrac12 e^2` for `x`.\n\n    .. math:: a = b\n       + c\n\n    After."
    out = griffe_math.rst_math_to_arithmatex(text)
    assert "\\(\\tfrac12 e^2\\)" in out
    assert "    \\[\n    a = b + c\n    \\]" in out
    assert ":math:" not in out and ".. math::" not in out and out.endswith("    After.")


def test_math_that_would_not_render_is_refused():
    hooks = importlib.import_module("hooks")
    convert = importlib.import_module("latex2mathml.converter").convert
    good = r"\rho(e) = \frac{|\alpha - 2|}{\alpha}\left[\left(\frac{(e/c)^2}{|\alpha-2|} + 1\right)^{\alpha/2} - 1\right]"  # noqa: E501
    assert hooks._problem(good, convert(good)) is None
    assert hooks._problem(r"\frac{a", convert(r"\frac{a")) == "unbalanced braces"
    assert hooks._problem(r"\foo x", convert(r"\foo x")) == r"unknown command \foo"


def test_api_pages_show_each_library_loss_declared_domains():
    # Written into the docstring at import time (losses._common.register), so the griffe
    # extension reads it from the imported function rather than from the source.
    section = griffe_math.runtime_domains("losskit.losses.regression.huber")
    assert section.startswith(griffe_math.DOMAINS) and "`delta`: a number >= 0" in section
    assert griffe_math.runtime_domains("losskit.schedules.Linear") is None

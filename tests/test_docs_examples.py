"""Every ```python block of README.md and docs/*.md runs, on each backend.

A page's blocks run in order in one namespace (a later block may use an earlier one's names),
in a temporary directory. A block that is a fragment on purpose (it uses a `model` or data the
page does not build) is preceded by a line `<!-- fragment: why -->` and is skipped; the test
checks that each skip names its reason.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
FRAGMENT = re.compile(r"<!-- fragment: \S.*-->\s*$")


def blocks(path):
    """`(line, code, is_fragment)` for each python block of `path`."""
    text = path.read_text()
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text.count("\n", 0, match.start()) + 2
        yield line, match[1], bool(FRAGMENT.search(before)) or "<!-- fragment" in before


@pytest.mark.parametrize("page", [p for p in PAGES if "```python" in p.read_text()],
                         ids=lambda p: p.name)
def test_page_examples_run(page, tmp_path, monkeypatch):
    found = list(blocks(page))
    runnable = [(line, code) for line, code, fragment in found if not fragment]
    if not runnable:
        pytest.skip(f"{page.name}: no runnable python block ({len(found)} fragments)")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    for line, code in runnable:
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.name}, block at line {line} fails: {err!r}") from err


def test_fragments_say_why():
    for page in PAGES:
        text = page.read_text()
        for marker in re.findall(r"<!-- fragment.*?-->", text):
            assert FRAGMENT.search(marker), f"{page.name}: {marker!r} names no reason"


def test_blocks_are_found():
    # The fence pattern must see the blocks: README has several.
    assert len(list(blocks(ROOT / "README.md"))) >= 3

"""MkDocs hooks: math rendered to MathML at build time, and a build that fails on what would not
render.

`pymdownx.arithmatex` (generic mode) leaves each formula as `\\(...\\)` / `\\[...\\]` inside a
`span`/`div` of class `arithmatex`; `latex2mathml` (pure Python) turns it into MathML, which
browsers display natively: no JavaScript, no CDN, the site works offline. A formula
`latex2mathml` cannot convert, or reStructuredText math left unconverted, fails the build.
"""

import html
import re
import sys
from pathlib import Path
from xml.etree import ElementTree

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])'
    r"\s*</(?P=tag)>",
    re.S,
)
LEFTOVER = re.compile(r":math:`|\.\. math::|\\\(|\\\[")


# MathML elements and the number of children each must have.
ARITY = {"mfrac": 2, "msup": 2, "msub": 2, "msubsup": 3, "mover": 2, "munder": 2,
         "munderover": 3, "mroot": 2}


def _problem(tex, mathml):
    """Why `mathml` is not a faithful rendering of `tex`, or None. latex2mathml is lenient: an
    unknown command becomes the text `\\foo` and a missing brace a fraction with one part."""
    depth = 0
    for char in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return "unbalanced braces"
    if depth:
        return "unbalanced braces"
    for element in ElementTree.fromstring(mathml).iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag in ARITY and len(element) != ARITY[tag]:
            return f"<{tag}> with {len(element)} parts instead of {ARITY[tag]}"
        if tag in ("mi", "mo", "mtext") and (element.text or "").startswith("\\"):
            return f"unknown command {element.text}"
    return None


def _to_mathml(match, page):
    tex = html.unescape(match["inline"] if match["inline"] is not None else match["block"])
    display = "block" if match["block"] is not None else "inline"
    try:
        mathml = convert(tex.strip(), display=display)
        problem = _problem(tex, mathml)
    except Exception as err:  # latex2mathml raises several exception types
        problem = str(err) or type(err).__name__
    if problem:
        raise PluginError(f"{page.file.src_uri}: cannot render math {tex!r}: {problem}")
    return f'<span class="math math-{display}">{mathml}</span>'


def on_page_content(html_text, page, **kwargs):
    rendered = MATH.sub(lambda m: _to_mathml(m, page), html_text)
    text_only = re.sub(r"<(pre|code)\b.*?</\1>", "", rendered, flags=re.S)
    leftover = LEFTOVER.search(text_only)
    if leftover:
        near = text_only[max(leftover.start() - 80, 0) : leftover.end() + 80]
        raise PluginError(f"{page.file.src_uri}: math left unrendered near {near!r}")
    return rendered


def on_config(config, **kwargs):
    """Fills the nav's "API reference" entry with every page under docs/api/: adding a module's
    page is adding one file, `docs/api/<module>.md` containing `::: losskit.<module>`."""
    docs = Path(config["docs_dir"])

    def title(page):  # api/losses/regression.md -> losskit.losses.regression
        parts = page.relative_to(docs / "api").with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "index" else parts
        return ".".join(("losskit", *parts)) if parts != ("losskit",) else "losskit"

    def pages(folder):
        first = ("index.md", "losskit.md")
        files = sorted(folder.glob("*.md"), key=lambda p: (p.name not in first, p.name))
        entries = [{title(p): str(p.relative_to(docs))} for p in files]
        for sub in sorted(d for d in folder.iterdir() if d.is_dir()):
            entries.append({title(sub / "index.md"): pages(sub)})
        return entries

    for i, item in enumerate(config["nav"]):
        if isinstance(item, dict) and item.get("API reference") == "api/":
            config["nav"][i] = {"API reference": pages(docs / "api")}
    return config


def on_page_markdown(markdown, page, config, **kwargs):
    """gallery.md is generated from the recipes' committed outputs (docs/_ext/gallery.py)."""
    if page.file.src_uri != "gallery.md":
        return markdown
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import gallery
    finally:
        sys.path.pop(0)
    try:
        return gallery.render(Path(config["docs_dir"]) / "gallery")
    except (OSError, KeyError, ValueError) as err:
        raise PluginError(f"gallery.md: {err}") from err

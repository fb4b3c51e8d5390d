"""A griffe extension: the docstrings' reStructuredText math becomes arithmatex math.

losskit's docstrings are Markdown with two reStructuredText math forms, `:math:`X`` inline and
`.. math:: X` as a block (continued by more-indented lines). Both are rewritten to `\\(X\\)` and
`\\[X\\]`, which `pymdownx.arithmatex` keeps verbatim and `docs/_ext/hooks.py` turns into MathML.
"""

import re

import griffe

INLINE = re.compile(r":math:`([^`]+)`")
BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")


def rst_math_to_arithmatex(text):
    """`text` with every `:math:` role and `.. math::` directive written as arithmatex math."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        m = BLOCK.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, body = m["indent"], [m["first"].strip()]
        i += 1
        # The directive's content: the following lines indented deeper than `.. math::`.
        while i < len(lines) and lines[i].strip() and (
            len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            body.append(lines[i].strip())
            i += 1
        formula = " ".join(b for b in body if b)
        out.extend(["", f"{indent}\\[", f"{indent}{formula}", f"{indent}\\]", ""])
    return INLINE.sub(lambda m: f"\\({m[1]}\\)", "\n".join(out))


class RstMath(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = rst_math_to_arithmatex(obj.docstring.value)

"""A griffe extension: the docstrings' reStructuredText math becomes arithmatex math.

losskit's docstrings are Markdown with two reStructuredText math forms, `:math:`X`` inline and
`.. math:: X` as a block (continued by more-indented lines). Both are rewritten to `\\(X\\)` and
`\\[X\\]`, which `pymdownx.arithmatex` keeps verbatim and `docs/_ext/hooks.py` turns into MathML.
"""

import importlib
import inspect
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


LOSS_CLASS = re.compile(r"^loss_class\(\s*(\w+)\s*,")


def loss_class_docstring(attribute):
    """A docstring for `Name = loss_class(fn, "Name", ...)`: the class form of a library loss,
    made at import time, which static analysis sees as an undocumented attribute."""
    match = LOSS_CLASS.match(str(attribute.value or ""))
    if not match:
        return None
    fn = match[1]
    return (
        f"The Keras `Loss` class of [`{fn}`][{attribute.parent.path}.{fn}]: "
        f"`{attribute.name}(**params, reduction=\"sum_over_batch_size\", name=None)` takes "
        f"`{fn}`'s parameters as keywords, keeps them in its config (`.keras` save/load "
        f"restores them) and is registered as `losskit.losses>{attribute.name}`."
    )


DOMAINS = "Parameter domains ("


def runtime_domains(path):
    """The "Parameter domains" section `losskit.losses._common.register` appends to a library
    loss's docstring at import time (from its declared domains), which static analysis cannot
    see; None for anything else."""
    module, _, name = path.rpartition(".")
    try:
        doc = inspect.getdoc(getattr(importlib.import_module(module), name)) or ""
    except (ImportError, AttributeError):
        return None
    start = doc.find(DOMAINS)
    return doc[start:] if start >= 0 else None


class RstMath(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.is_function and obj.path.startswith("losskit.losses.") and obj.docstring:
            section = runtime_domains(obj.path)
            if section and DOMAINS not in obj.docstring.value:
                obj.docstring.value = f"{obj.docstring.value}\n\n{section}"
        if obj.docstring is None and obj.is_attribute:
            text = loss_class_docstring(obj)
            if text:
                obj.docstring = griffe.Docstring(text, parent=obj)
                obj.labels.discard("module-attribute")
                obj.labels.add("class")
        if obj.docstring is not None:
            obj.docstring.value = rst_math_to_arithmatex(obj.docstring.value)

"""Parameter domains: what each parameter of a loss may be, declared once next to its definition.

A domain is a small object that checks a value and describes itself. Library losses declare theirs
in `@register(domains=...)`; `@losskit.loss` users do the same:

```python
from losskit import domains

@losskit.loss(domains={"delta": domains.positive, "mode": domains.one_of("a", "b")})
def my_huber(y_true, y_pred, delta=1.0, mode="a"):
    ...

my_huber(delta=-1.0)   # ValueError: loss 'my_huber': parameter delta=-1.0 is not in its domain: > 0
```

The declaration is enforced when the Loss class is constructed and when a library function is
called (before any tensor work), and listed under "Parameter domains" in the docstring. A wrong
type raises `TypeError`, a value of the right type outside the domain `ValueError`; both name the
loss, the parameter, the value and the domain. Numbers are Python or NumPy ints and floats
(never bools or strings) and must be finite unless the domain says otherwise. A tensor or Keras
variable given as a number (e.g. a scheduled value) is checked for a numeric dtype only: its value
is not known before the computation runs.
"""

import inspect
import math
import numbers

import numpy as np

__all__ = [
    "Domain",
    "boolean",
    "finite",
    "integer",
    "interval",
    "nonnegative",
    "nonnegative_integer",
    "one_of",
    "optional",
    "positive",
    "positive_integer",
    "probability",
]


class Domain:
    """A set of allowed values: `check(value)` returns an error message (or None), `text`
    describes the set in the form the docstrings and error messages show."""

    def __init__(self, text, check):
        self.text = text
        self._check = check

    def error(self, value):
        """`None` if `value` is in the domain, else `(exception type, reason)`."""
        return self._check(value)

    def validate(self, owner, name, value):
        """Raises `TypeError`/`ValueError` naming `owner`, the parameter, the value and the
        domain when `value` is outside it."""
        problem = self._check(value)
        if problem is not None:
            kind, reason = problem
            got = f"{value!r} ({type(value).__name__})" if kind is TypeError else repr(value)
            if kind is ValueError and reason:
                got += f" ({reason})"
            raise kind(f"{owner}: parameter '{name}' must be {self.text}, got {got}.")

    def __repr__(self):
        return f"Domain({self.text!r})"


def _is_tensor(value):
    return hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(
        value, (np.generic, np.ndarray)
    )


def _number(value, integral=False, allow_inf=False):
    """`(problem, float value)`: the type/finiteness check shared by the numeric domains."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        if _is_tensor(value):
            dtype = str(getattr(value.dtype, "name", value.dtype))
            if "float" in dtype or "int" in dtype:
                return None, None  # a tensor's value is unknown before the computation runs
        kind = "an integer" if integral else "a number"
        return (TypeError, f"must be {kind}, got {type(value).__name__}"), None
    if integral and not isinstance(value, numbers.Integral):
        return (TypeError, f"must be an integer, got {type(value).__name__}"), None
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        return (ValueError, "not finite"), None
    return None, value


def interval(low=None, high=None, *, low_closed=True, high_closed=True, integral=False,
             infinite=False):
    """Finite numbers (integers if `integral`) between `low` and `high`; None means unbounded.
    `infinite=True` admits -inf and +inf too (within the bounds), never NaN."""
    if low is not None and high is not None:
        text = f"in {'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
    elif low is not None:
        text = f"{'>=' if low_closed else '>'} {low}"
    elif high is not None:
        text = f"{'<=' if high_closed else '<'} {high}"
    else:
        text = ""
    kind = "an integer" if integral else ("a number" if text else "a finite number")
    if infinite:
        kind = "a number (inf allowed, not NaN)"
    text = f"{kind} {text}".strip()

    def check(value):
        problem, x = _number(value, integral, infinite)
        if problem is not None or x is None:
            return problem
        if low is not None and (x < low or (x == low and not low_closed)):
            return ValueError, None
        if high is not None and (x > high or (x == high and not high_closed)):
            return ValueError, None
        return None

    return Domain(text, check)


def one_of(*values):
    """One of the given values (strings, usually)."""
    text = "one of " + ", ".join(repr(v) for v in values)

    def check(value):
        if any(v is value or (type(v) is type(value) and v == value) for v in values):
            return None
        types = {type(v) for v in values}
        return (ValueError if type(value) in types else TypeError), None

    return Domain(text, check)


def optional(domain):
    """None, or a value in `domain`."""

    def check(value):
        return None if value is None else domain.error(value)

    return Domain(f"None or {domain.text}", check)


def _boolean(value):
    if isinstance(value, (bool, np.bool_)):
        return None
    return TypeError, f"must be True or False, got {type(value).__name__}"


boolean = Domain("True or False", _boolean)
"""True or False (a Python or NumPy bool)."""
finite = interval()
"""Any finite number."""
positive = interval(0, low_closed=False)
"""A finite number > 0 (e.g. Huber's `delta`)."""
nonnegative = interval(0)
"""A finite number >= 0 (e.g. a z-loss weight)."""
probability = interval(0, 1)
"""A number in [0, 1]."""
integer = interval(integral=True)
"""A whole number (e.g. `ignore_index`)."""
positive_integer = interval(1, integral=True)
"""A whole number >= 1 (e.g. a chunk size)."""
nonnegative_integer = interval(0, integral=True)
"""A whole number >= 0."""


def validate(owner, declared, values):
    """Checks each `values[name]` against `declared[name]` (names without a domain pass)."""
    for name, domain in declared.items():
        if name in values:
            domain.validate(owner, name, values[name])


def docstring(doc, declared):
    """`doc` with a "Parameter domains" section listing `declared`, for the API reference."""
    if not declared:
        return doc
    body = ["Parameter domains (checked when the loss is built or called):", ""]
    body += [f"- `{name}`: {domain.text}" for name, domain in declared.items()]
    doc = (doc or "").rstrip()
    indent = _indent(doc)
    section = "\n".join(indent + line if line else "" for line in body)
    return f"{doc}\n\n{section}"


def _indent(doc):
    """The indentation of a docstring's body (its lines after the first)."""
    widths = [len(line) - len(line.lstrip()) for line in doc.split("\n")[1:] if line.strip()]
    return " " * min(widths) if widths else ""


def declare(fn, domains):
    """`domains` checked against `fn`'s parameters: a dict `{parameter: Domain}`."""
    declared = dict(domains or {})
    if not declared:
        return declared
    params = inspect.signature(fn).parameters
    name = getattr(fn, "__name__", fn)
    for key, domain in declared.items():
        if key not in params:
            raise TypeError(f"'{name}': a domain is declared for {key!r}, not a parameter.")
        if not isinstance(domain, Domain):
            raise TypeError(
                f"'{name}': the domain of {key!r} must be a losskit.domains.Domain (e.g. "
                f"losskit.domains.positive), got {domain!r}."
            )
    return declared

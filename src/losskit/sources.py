"""Source strings: which tensor of a training step a term's parameter receives.

| source | tensor |
|---|---|
| `"y"`, `"y.<key>"` | the labels, or one entry of a dict of labels |
| `"pred"`, `"pred.<key>"` | the model output, or one entry of a dict of outputs |
| `"x"`, `"x.<key>"` | the features, or one entry of the feature dict (inputs or side data) |
| `"layer.<name>"` | the output of layer `<name>` (tapped in the same forward pass) |
| `"var.<layer>.<variable>"` | the current value of a layer variable (`"var.logistic.kernel"`) |

A string is parsed once, by `Term`, into a `Source`; everything else reads its fields.
"""

KINDS = ("y", "pred", "x", "layer", "var")
FORMS = (
    "'y', 'y.<key>', 'pred', 'pred.<key>', 'x', 'x.<key>', 'layer.<name>', "
    "'var.<layer>.<variable>'"
)


class Source(str):
    """A parsed source string. It is the string itself (it compares, prints and serializes as
    one) with its parts: `kind` (one of `KINDS`) and `key` (None for `"y"`, `"pred"`, `"x"`; the
    layer name for `"layer"`; `"<layer>.<variable>"` for `"var"`). Made by `parse`."""

    kind: str
    key: str | None

    @property
    def layer(self):
        """The layer a `"layer"` or `"var"` source reads."""
        return self.key.partition(".")[0] if self.kind in ("layer", "var") else None

    @property
    def variable(self):
        """The variable name of a `"var"` source."""
        return self.key.partition(".")[2] if self.kind == "var" else None


def _make(text, kind, key):
    source = Source(text)
    source.kind, source.key = kind, key
    return source


def parse(text):
    """The `Source` of `text`, or None if `text` is not a valid source string."""
    if isinstance(text, Source):
        return text
    if not isinstance(text, str):
        return None
    kind, dot, key = text.partition(".")
    if kind not in KINDS:
        return None
    if not dot:
        return _make(text, kind, None) if kind in ("y", "pred", "x") else None
    if not key:
        return None
    if kind == "var":
        layer, _, variable = key.partition(".")
        if not (layer and variable):
            return None
    return _make(text, kind, key)

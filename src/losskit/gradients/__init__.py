"""Gradients across backends, one module per responsibility.

- `autodiff.value_and_grad(fn, *inputs)`: autodiff of any `keras.ops` function.
- `custom.custom_gradient`: one calling convention for a hand-written gradient on every backend;
  `custom.plain_autodiff()` switches hand-written rules off.
- `check.check_gradients(fn, *inputs)`: compares the gradient training would use with autodiff of
  the plain forward pass and with float64 central finite differences.
"""

from losskit.gradients.autodiff import value_and_grad
from losskit.gradients.check import (
    GradientCheckError,
    GradientReport,
    check_gradients,
)
from losskit.gradients.custom import custom_gradient, in_plain_autodiff, plain_autodiff

__all__ = [
    "GradientCheckError",
    "GradientReport",
    "check_gradients",
    "custom_gradient",
    "in_plain_autodiff",
    "plain_autodiff",
    "value_and_grad",
]

"""losskit: custom loss functions as first-class citizens in Keras 3."""

from losskit import balancing, boosting, domains, gradients, losses, metrics, schedules, sources
from losskit.gradients import check_gradients, custom_gradient
from losskit.loss import FunctionLoss, loss
from losskit.metric import FunctionMetric, metric
from losskit.model import ObjectiveModel
from losskit.objective import Objective
from losskit.term import Term

# The one place the version is written: pyproject.toml reads it (setuptools `attr:`).
__version__ = "0.1.0"

__all__ = [
    "balancing",
    "boosting",
    "FunctionLoss",
    "FunctionMetric",
    "check_gradients",
    "custom_gradient",
    "domains",
    "gradients",
    "loss",
    "losses",
    "metric",
    "metrics",
    "Objective",
    "ObjectiveModel",
    "schedules",
    "sources",
    "Term",
]

"""The losskit loss library: every loss as a function and as a Keras Loss class.

```python
losskit.losses.huber(y_true, y_pred, delta=2.0)        # per-sample values, shape (N,)
model.compile(loss=losskit.losses.Huber(delta=2.0))    # a registered, saveable keras Loss
losskit.Term(losskit.losses.kl_divergence, p="x.teacher", q="pred")
```

Each family module defines `FUNCTIONS` (its loss functions) and `CLASSES` (its Loss classes) and
lists both in `__all__`. Adding a family is one line below: `from losskit.losses.NAME import *`.
`ALL` maps every loss function's name to the function, `CLASSES` every Loss class's name to the
class, `FAMILIES` each family (module) name to its function names.
"""

import sys as _sys

from losskit.losses.classification import *  # noqa: F403
from losskit.losses.distillation import *  # noqa: F403
from losskit.losses.divergence import *  # noqa: F403
from losskit.losses.fused import *  # noqa: F403
from losskit.losses.generative import *  # noqa: F403
from losskit.losses.metric_learning import *  # noqa: F403
from losskit.losses.probabilistic import *  # noqa: F403
from losskit.losses.regression import *  # noqa: F403
from losskit.losses.regularizers import *  # noqa: F403
from losskit.losses.segmentation import *  # noqa: F403

ALL = {}
CLASSES = {}
FAMILIES = {}
for _name, _module in list(_sys.modules.items()):
    if _name.startswith(__name__ + ".") and hasattr(_module, "FUNCTIONS"):
        _family = _name.rsplit(".", 1)[-1]
        FAMILIES[_family] = tuple(f.__name__ for f in _module.FUNCTIONS)
        ALL.update({f.__name__: f for f in _module.FUNCTIONS})
        CLASSES.update({c.__name__: c for c in getattr(_module, "CLASSES", ())})
del FUNCTIONS  # noqa: F821 -- each family's own tuple; use ALL

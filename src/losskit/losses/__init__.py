"""The losskit loss library: every loss as a function and as a Keras Loss class.

```python
losskit.losses.huber(y_true, y_pred, delta=2.0)        # per-sample values, shape (N,)
model.compile(loss=losskit.losses.Huber(delta=2.0))    # a registered, saveable keras Loss
losskit.Term(losskit.losses.kl_divergence, p="x.teacher", q="pred")
```

A library loss is defined one way (`losskit.losses._common`: `@register` and `loss_class`), which
records it in an explicit registry. `ALL` maps every loss function's name to the function,
`CLASSES` every Loss class's name to the class, `FAMILIES` each family (module) name to its
function names. Adding a family is one import line below.
"""

from losskit.losses import _common
from losskit.losses.classification import *  # noqa: F403
from losskit.losses.detection import *  # noqa: F403
from losskit.losses.distillation import *  # noqa: F403
from losskit.losses.divergence import *  # noqa: F403
from losskit.losses.fused import *  # noqa: F403
from losskit.losses.fused_distillation import *  # noqa: F403
from losskit.losses.generative import *  # noqa: F403
from losskit.losses.metric_learning import *  # noqa: F403
from losskit.losses.probabilistic import *  # noqa: F403
from losskit.losses.ranking import *  # noqa: F403
from losskit.losses.regression import *  # noqa: F403
from losskit.losses.regularizers import *  # noqa: F403
from losskit.losses.segmentation import *  # noqa: F403
from losskit.losses.sequence import *  # noqa: F403

ALL = {name: fn for name, (_, fn) in _common.FUNCTIONS.items()}
CLASSES = {name: cls for name, (_, cls) in _common.CLASSES.items()}
FAMILIES = {}
for _family, _fn in _common.FUNCTIONS.values():
    FAMILIES[_family] = (*FAMILIES.get(_family, ()), _fn.__name__)
del FUNCTIONS  # noqa: F821 -- each family's own tuple; use ALL

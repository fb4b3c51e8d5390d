r"""Regularisers usable as objective terms: `activation_l2`.

A regulariser is a function of **one** tensor (an activation, a latent code), not of
``(y_true, y_pred)``, so it has no `keras.losses.Loss` class: a Loss class would have to invent
an ignored ``y_true``. It is used two ways:

- as an objective term, its parameter ``a`` routed to any tensor of the step::

      losskit.Term(losskit.losses.activation_l2, a="layer.dense_1", weight=1e-3, name="act")

- as a Keras activity regulariser on a layer (`ActivationL2`, a registered, serializable
  `keras.regularizers.Regularizer`)::

      keras.layers.Dense(64, activity_regularizer=losskit.losses.regularizers.ActivationL2(1e-3))

  Keras divides an activity regulariser by the batch size, so both add
  ``weight * mean over the batch of activation_l2(a)`` to the loss.
"""

import keras
from keras import ops

from losskit.losses._common import PACKAGE, family, public, register


@register
def activation_l2(a):
    r"""Mean squared activation per sample: :math:`\frac{1}{D}\sum_{k} a_{nk}^2` over all non-batch
    axes of ``a`` (``a`` itself squared if it has only the batch axis). Shape ``(N,)``.

    With an MSE term this is the "MSE + mean squared activations of layer 1" objective, an
    activity penalty in the spirit of Merity et al.'s activation regularisation (AR).

    Reference: S. Merity, B. McCann, R. Socher, "Revisiting Activation Regularization for
    Language RNNs", arXiv:1708.01123 (2017). Equivalent: ``keras.regularizers.L2(w)`` as an
    activity regulariser uses the *sum* over features, this the *mean*.
    """
    a = ops.convert_to_tensor(a)
    if len(a.shape) == 0:
        raise ValueError("activation_l2: `a` needs a batch axis, got a scalar")
    sq = ops.square(a)
    return sq if len(a.shape) == 1 else ops.mean(sq, axis=tuple(range(1, len(a.shape))))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ActivationL2(keras.regularizers.Regularizer):
    """Activity regulariser ``weight * sum_n activation_l2(a)_n`` (Keras then divides by the batch
    size, giving ``weight * mean_n activation_l2(a)_n``)."""

    def __init__(self, weight=1.0):
        self.weight = float(weight)

    def __call__(self, x):
        return self.weight * ops.sum(activation_l2(x))

    def get_config(self):
        return {"weight": self.weight}


FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES, 'ActivationL2')

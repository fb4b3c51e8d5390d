r"""Sequence losses: `ctc`.

`ctc` takes integer label sequences ``y_true`` of shape ``(N, L)`` padded with 0 and per-frame
logits ``y_pred`` of shape ``(N, T, C)``; ``L`` and ``T`` differ in general, so its Loss class
checks these shapes itself instead of aligning ``y_true`` with ``y_pred``.
"""

from keras import ops

from losskit import _contract
from losskit.loss import FunctionLoss
from losskit.losses._common import family, loss_class, public, register


@register(shapes="own")
def ctc(y_true, y_pred):
    r"""Connectionist temporal classification loss, one value per sequence:

    .. math:: \ell = -\log \sum_{\pi \in \mathcal{B}^{-1}(y)} \prod_{t=1}^{T}
              \operatorname{softmax}(z_t)_{\pi_t},

    the sum over all frame alignments :math:`\pi` that collapse to the label sequence :math:`y`
    (merge repeats, drop blanks), by the forward algorithm in log space. Class 0 is the blank and
    also pads ``y_true`` (label length = number of non-zero entries); every sequence uses all
    ``T`` frames. Non-negative; ``+inf`` (per the backend's kernel) when ``y`` is too long for
    ``T`` frames.

    Reference: A. Graves, S. Fernández, F. Gomez, J. Schmidhuber, "Connectionist Temporal
    Classification: Labelling Unsegmented Sequence Data with Recurrent Neural Networks", ICML
    2006. Keras: `keras.losses.ctc` (same conventions); torch: `nn.CTCLoss(blank=0)`.
    """
    if len(y_true.shape) != 2 or len(y_pred.shape) != 3:
        raise ValueError(
            "ctc: y_true must be integer labels of shape (N, L) padded with 0 and y_pred logits of "
            f"shape (N, T, C); got {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
        )
    invalid = _contract.invalid_labels("loss 'ctc'", y_true, y_pred.shape[-1])
    labels = ops.cast(y_true, "int32")
    n, frames = ops.shape(y_pred)[0], ops.shape(y_pred)[1]
    label_length = ops.sum(ops.cast(labels != 0, "int32"), axis=-1)
    logit_length = frames * ops.ones((n,), dtype="int32")
    values = ops.ctc_loss(labels, y_pred, label_length, logit_length, mask_index=0)
    return _contract.nan_where(invalid, values)


class SequenceLoss(FunctionLoss):
    """A Loss whose labels are sequences of their own length: `(N, L)` against `(N, T, C)`."""

    def call(self, y_true, y_pred):
        t, p = tuple(y_true.shape), tuple(y_pred.shape)
        if len(t) != 2 or len(p) != 3 or (t[0] is not None and p[0] is not None and t[0] != p[0]):
            raise ValueError(
                f"{self._owner}: y_true must be label sequences (N, L) and y_pred logits "
                f"(N, T, C) with the same N; got {t} and {p}."
            )
        values = self.fn(y_true, y_pred, **self.params)
        _contract.check_per_sample(self._owner, values, p[0])
        return values


CTC = loss_class(ctc, "CTC", sparse_labels=True, base=SequenceLoss)

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)

"""keras-hub `CausalLM`s trained with the fused output-head cross-entropy, in one line.

```python
from losskit.integrations.keras_hub import fused_causal_lm

model = fused_causal_lm(keras_hub.models.GemmaCausalLM.from_preset(...))
model.compile(optimizer="adamw")
model.fit({"token_ids": ids, "padding_mask": mask}, labels)  # labels: -100 at padding
```

Needs the extra `losskit[keras-hub]`; the core never imports this module.
"""

import keras

from losskit.losses import fused_linear_cross_entropy
from losskit.model import ObjectiveModel
from losskit.objective import Objective
from losskit.term import Term

try:
    import keras_hub
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "losskit.integrations.keras_hub needs keras-hub: pip install 'losskit[keras-hub]'."
    ) from error

_NAME = "fused_causal_lm"


def fused_causal_lm(causal_lm, *, ignore_index=-100, z_loss=0.0, label_smoothing=0.0,
                    chunk_size=None):  # fmt: skip
    """The `ObjectiveModel` that trains a keras-hub `CausalLM` with the fused head loss.

    keras-hub's causal LMs compute `logits = head(backbone(inputs), reverse=True)` with the
    backbone's `token_embedding` (a `ReversibleEmbedding`): `h @ E^T` with the tied embeddings
    `E` `(V, H)` (Gemma, Mistral, Llama-3.2), or `h @ R` with untied `reverse_embeddings` `R`
    `(H, V)` (Llama-3), then `c * tanh(z / c)` when the backbone has a `final_logit_soft_cap`
    `c` (Gemma-2). The returned model's only term is

        fused_linear_cross_entropy(h, E or R, labels, logit_soft_cap=c, ...)

    on the backbone's output `h` (its final hidden states, after the final norm), tapped in the
    forward pass, with the projection read from the head's own variable (`"var."` sources): the
    same loss as `sparse_categorical_crossentropy(labels, causal_lm(inputs), from_logits=True)`
    over the kept tokens, and the same gradients, while training never forms the `(B, T, V)`
    logits. `predict` and `causal_lm.generate` still run the full model (same weights).

    Normalisation: the loss is the mean over the tokens whose label is not `ignore_index`, in the
    global batch. keras-hub's own `compile()` (its default `SparseCategoricalCrossentropy`,
    reduction `"sum_over_batch_size"`, with the preprocessor's `padding_mask` as sample weight)
    divides the kept tokens' sum by all `B * T` positions instead.

    Inputs are keras-hub's, `{"token_ids": (B, T) int, "padding_mask": (B, T)}`, already
    preprocessed (an attached preprocessor is not run by `fit`); labels are the next tokens,
    `(B, T)` int, with `ignore_index` at padding. From a keras-hub preprocessor's
    `x, y, sample_weight`: `labels = np.where(sample_weight, y, -100)`.

    Refused, with an error naming what was found: a model that is not a keras-hub `CausalLM`,
    any head other than a `ReversibleEmbedding` called with `reverse=True` directly on the
    backbone's output (an extra logit scaling, bias or output layer changes the logits the fused
    loss computes), a subclassed projection, a quantised head, a `reverse_dtype` other than
    float32, and a head soft-cap that differs from the backbone's `final_logit_soft_cap`.

    Args:
        causal_lm: a keras-hub `CausalLM` (e.g. `GemmaCausalLM`, `Llama3CausalLM`,
            `MistralCausalLM`), built (every keras-hub task is).
        ignore_index: label value of tokens that do not count (padding).
        z_loss: weight of PaLM's `lse^2` auxiliary loss (Chowdhery et al. 2022).
        label_smoothing: as in `keras.losses.SparseCategoricalCrossentropy`'s dense form.
        chunk_size: tokens per chunk of the fused loss (default: its own choice).

    Returns:
        `losskit.ObjectiveModel(causal_lm, objective)`; compile it with an optimizer only.

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", arXiv:2411.09009.
        Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size",
        arXiv:2408.00118 (final logit soft-capping).
    """
    backbone, head = _head(causal_lm)
    if head.tie_weights:
        projection = {"weight": f"var.{head.name}.embeddings"}  # (V, H)
    else:
        projection = {"kernel": f"var.{head.name}.reverse_embeddings"}  # (H, V)
    term = Term(
        fused_linear_cross_entropy,
        name="ce",
        hidden=f"layer.{backbone.name}",
        labels="y",
        inputs=projection,
        ignore_index=ignore_index,
        z_loss=z_loss,
        label_smoothing=label_smoothing,
        chunk_size=chunk_size,
        logit_soft_cap=_soft_cap(backbone, head),
    )
    return ObjectiveModel(causal_lm, Objective([term]))


def _head(causal_lm):
    """`(backbone, head)` of a causal LM whose output is `head(backbone(x), reverse=True)`."""
    if not isinstance(causal_lm, keras_hub.models.CausalLM):
        raise TypeError(
            f"{_NAME}: expected a keras_hub.models.CausalLM, got {type(causal_lm).__name__}."
        )
    backbone = causal_lm.backbone
    outputs = keras.tree.flatten(getattr(causal_lm, "outputs", None) or [])
    if not hasattr(causal_lm, "_run_through_graph") or len(outputs) != 1:
        raise ValueError(
            f"{_NAME}: {type(causal_lm).__name__} is not a functional model with one output "
            "(the logits), so its head cannot be read from its graph."
        )
    head, node_index, _ = outputs[0]._keras_history
    if not isinstance(head, keras.layers.ReversibleEmbedding):
        raise ValueError(
            f"{_NAME}: {type(causal_lm).__name__}'s logits come from a "
            f"{type(head).__name__} layer '{head.name}'; only a ReversibleEmbedding head "
            "(token_embedding(hidden, reverse=True), as in Gemma, Llama and Mistral) is supported."
        )
    if type(head).call is not keras.layers.ReversibleEmbedding.call:
        raise ValueError(
            f"{_NAME}: head '{head.name}' is a {type(head).__name__} that overrides call(); "
            "its logits may differ from the projection the fused loss computes."
        )
    node = head._inbound_nodes[node_index]
    (hidden,) = node.arguments.keras_tensors or (None,)
    producer = hidden._keras_history[0] if hidden is not None else None
    if not node.arguments.kwargs.get("reverse", False) or producer is not backbone:
        found = type(producer).__name__ if producer is not None else "nothing"
        raise ValueError(
            f"{_NAME}: {type(causal_lm).__name__}'s head '{head.name}' must be called with "
            f"reverse=True directly on the backbone's output; it reads {found}. A logit "
            "scaling or other layer between backbone and head cannot be expressed."
        )
    if getattr(head, "quantization_mode", None) is not None:
        raise ValueError(
            f"{_NAME}: head '{head.name}' is quantised ({head.quantization_mode}); the fused "
            "loss needs a float projection."
        )
    if head.reverse_dtype not in (None, "float32"):
        raise ValueError(
            f"{_NAME}: head '{head.name}' computes its logits in reverse_dtype="
            f"{head.reverse_dtype!r}; the fused loss accumulates them in float32."
        )
    return backbone, head


def _soft_cap(backbone, head):
    """The logit soft-cap the head applies, checked against the backbone's config."""
    cap = head.logit_soft_cap
    configured = getattr(backbone, "final_logit_soft_cap", None)
    if configured is not None and configured != cap:
        raise ValueError(
            f"{_NAME}: the backbone's final_logit_soft_cap is {configured!r} but its head "
            f"'{head.name}' caps at {cap!r}; the logits the model computes are ambiguous."
        )
    return None if cap is None else float(cap)

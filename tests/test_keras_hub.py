"""`losskit.integrations.keras_hub.fused_causal_lm`: keras-hub CausalLMs (tiny random backbones,
real vocabulary sizes, nothing downloaded) trained with the fused head: the loss and the steps of
the naive head (keras-hub's own logits, masked sparse cross-entropy, kept-token mean), no
`(B, T, V)` logits in training, save / load / resume, predict and generate, and the refusals."""

import keras
import keras_hub
import numpy as np
import pytest
from conftest import only_backend

import losskit
from losskit import ObjectiveModel, Term
from losskit.integrations.keras_hub import fused_causal_lm

B, T = 2, 8
TINY = dict(num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=16,
            intermediate_dim=32)  # fmt: skip


def gemma(vocab=256000, cap=None):
    return keras_hub.models.GemmaCausalLM(keras_hub.models.GemmaBackbone(
        vocabulary_size=vocab, head_dim=8, final_logit_soft_cap=cap, **TINY), preprocessor=None)


def llama3(vocab=128256):  # untied head: reverse_embeddings (H, V)
    return keras_hub.models.Llama3CausalLM(keras_hub.models.Llama3Backbone(
        vocabulary_size=vocab, tie_word_embeddings=False, **TINY), preprocessor=None)


def mistral(vocab=32000):
    return keras_hub.models.MistralCausalLM(keras_hub.models.MistralBackbone(
        vocabulary_size=vocab, **TINY), preprocessor=None)


MODELS = {"gemma": gemma, "gemma2_soft_cap": lambda: gemma(cap=30.0), "llama3": llama3,
          "mistral": mistral}  # fmt: skip
# The other tests check what does not depend on the vocabulary's size (the steps, the saved
# state): 1000 tokens are still many chunks of the fused loss at B * T = 16 tokens.
SMALL = {"gemma2_soft_cap": lambda: gemma(1000, cap=30.0), "llama3": lambda: llama3(1000)}


def batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(2 * B, T + 1)).astype("int32")
    mask = np.ones((2 * B, T), "int32")
    mask[0, 5:] = 0  # right padding, uneven across sequences
    mask[3, 2:] = 0
    x = {"token_ids": np.where(mask, tokens[:, :-1], 0).astype("int32"), "padding_mask": mask}
    labels = np.where(mask, tokens[:, 1:], -100).astype("int32")
    return x, labels


def np_token_ce(logits, labels):
    kept = labels != -100
    z = logits[kept].astype("float64")
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, labels[kept][:, None], -1).mean()


def naive(causal_lm):
    """The naive head through the same trainer: keras-hub's logits, masked token mean."""
    return ObjectiveModel(causal_lm, [Term(losskit.losses.sparse_categorical_crossentropy,
                                           from_logits=True, ignore_index=-100, name="ce")])


def vocab_of(causal_lm):
    return causal_lm.backbone.vocabulary_size


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_is_the_kept_token_mean_of_keras_hubs_own_logits(name):
    keras.utils.set_random_seed(1)
    causal_lm = MODELS[name]()
    x, labels = batch(vocab_of(causal_lm))
    model = fused_causal_lm(causal_lm)
    model.compile(optimizer="sgd")
    logits = keras.ops.convert_to_numpy(causal_lm(x))
    loss = model.evaluate(x, labels, batch_size=2 * B, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, np_token_ce(logits, labels), rtol=1e-5)
    # predict still runs the whole model: keras-hub's logits.
    np.testing.assert_allclose(model.predict(x, verbose=0), logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gemma2_soft_cap", "llama3"])
def test_training_steps_equal_the_naive_head(name):
    def train(build):
        keras.utils.set_random_seed(2)
        causal_lm = SMALL[name]()
        x, labels = batch(vocab_of(causal_lm))
        model = build(causal_lm)
        model.compile(optimizer=keras.optimizers.SGD(1.0))
        history = model.fit(x, labels, batch_size=B, epochs=1, shuffle=False, verbose=0)
        return causal_lm, history.history["loss"]

    fused_lm, fused_loss = train(fused_causal_lm)
    naive_lm, naive_loss = train(naive)
    np.testing.assert_allclose(fused_loss, naive_loss, rtol=1e-5)
    # float32 sums in another order (the fused head's hidden-state gradient), through two steps
    # of SGD(1.0): updates ~1e-2, differences up to ~4e-6.
    for a, b in zip(fused_lm.get_weights(), naive_lm.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_keras_hubs_own_compile_divides_by_every_position():
    """The two normalisations, measured on the installed keras-hub: its default `compile()` loss
    with the preprocessor's padding mask as sample weight is the kept tokens' sum over B * T;
    the fused model's is their mean."""
    keras.utils.set_random_seed(4)
    causal_lm = gemma(1000)
    x, labels = batch(1000)
    logits = keras.ops.convert_to_numpy(causal_lm(x))
    kept = labels != -100
    y = np.where(kept, labels, 0)  # keras-hub's preprocessor: next tokens, padding as 0
    own = causal_lm.evaluate(x, y, sample_weight=kept.astype("int32"), batch_size=2 * B,
                             verbose=0, return_dict=True)["loss"]  # fmt: skip
    fused = fused_causal_lm(causal_lm)
    fused.compile(optimizer="sgd")
    mean = fused.evaluate(x, labels, batch_size=2 * B, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(mean, np_token_ce(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(own, np_token_ce(logits, labels) * kept.sum() / kept.size,
                               rtol=1e-5)  # fmt: skip
    assert kept.sum() < kept.size


def test_head_is_read_from_the_model():
    causal_lm = gemma(1000, cap=30.0)
    tied = fused_causal_lm(causal_lm).objective.terms[0]
    assert tied.sources["weight"] == "var.token_embedding.embeddings"
    assert tied.sources["hidden"] == f"layer.{causal_lm.backbone.name}"
    assert tied.constants["logit_soft_cap"] == 30.0
    untied = fused_causal_lm(llama3(1000)).objective.terms[0]
    assert untied.sources["kernel"] == "var.token_embedding.reverse_embeddings"
    assert untied.constants["logit_soft_cap"] is None


def graph_nodes(model):
    """`(operation, call kwargs, output shapes)` of every node between the model's inputs and
    outputs, found by walking back from the outputs."""
    seen, found = set(), []
    stack = list(keras.tree.flatten(model.outputs))
    while stack:
        operation, index, _ = stack.pop()._keras_history
        node = operation._inbound_nodes[index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        shapes = [tuple(t.shape) for t in keras.tree.flatten(node.outputs)]
        found.append((operation, node.arguments.kwargs, shapes))
        stack.extend(node.arguments.keras_tensors)
    return found


def test_training_never_forms_the_logits():
    vocab = 1000
    causal_lm = gemma(vocab)
    head = causal_lm.backbone.token_embedding
    full = graph_nodes(causal_lm)
    assert any(op is head and kwargs.get("reverse") for op, kwargs, _ in full)  # can fail
    assert any(shape[-1] == vocab for *_, shapes in full for shape in shapes)
    # The forward pass that training runs ends at the backbone's final hidden states: the
    # embedding is looked up, never projected back, and no tensor has the vocabulary axis.
    trained = graph_nodes(fused_causal_lm(causal_lm)._tapped)
    assert any(op is head for op, _, _ in trained)
    assert not any(op is head and kwargs.get("reverse") for op, kwargs, _ in trained)
    assert not any(shape[-1] == vocab for *_, shapes in trained for shape in shapes)


@only_backend("jax")
def test_traced_train_step_has_no_tensor_of_the_logits_shape():
    import jax

    def shapes_in_train_step(model, x, labels):
        model.compile(optimizer="sgd")
        model.fit(x, labels, batch_size=2 * B, epochs=1, verbose=0)  # builds every state
        state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                     optimizer_variables=True, metrics_variables=True)
        jaxpr = jax.make_jaxpr(model.train_step)(state, (x, labels))
        shapes = set()

        def walk(jpr):
            for eqn in jpr.eqns:
                shapes.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
                for sub in jax.core.jaxprs_in_params(eqn.params):
                    walk(sub)

        walk(jaxpr.jaxpr)
        return shapes

    vocab = 1000
    x, labels = batch(vocab)
    logits = {(2 * B, T, vocab), (2 * B * T, vocab), (vocab, 2 * B * T)}
    causal_lm = gemma(vocab)
    assert logits & shapes_in_train_step(naive(causal_lm), x, labels)  # the check can fail
    assert not logits & shapes_in_train_step(fused_causal_lm(causal_lm), x, labels)


def test_saves_loads_and_resumes(tmp_path):
    def fresh():
        keras.utils.set_random_seed(3)
        model = fused_causal_lm(gemma(1000, cap=30.0))
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        return model

    x, labels = batch(1000)
    straight = fresh()
    straight.fit(x, labels, batch_size=B, epochs=2, shuffle=False, verbose=0)
    first = fresh()
    first.fit(x, labels, batch_size=B, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "gemma2.keras"
    first.save(path)
    loaded = keras.saving.load_model(path)  # safe mode
    assert loaded.objective.terms[0].constants["logit_soft_cap"] == 30.0
    loaded.fit(x, labels, batch_size=B, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    for a, b in zip(straight.inner.get_weights(), loaded.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_generate_still_works_on_the_inner_model():
    causal_lm = gemma(1000)
    model = fused_causal_lm(causal_lm)
    model.compile(optimizer="sgd")
    x, labels = batch(1000)
    model.fit(x, labels, batch_size=2 * B, epochs=1, verbose=0)
    prompt = {"token_ids": x["token_ids"][:1], "padding_mask": np.zeros((1, T), "int32")}
    prompt["padding_mask"][0, :3] = 1
    out = model.inner.generate(prompt, stop_token_ids=None)
    ids = keras.ops.convert_to_numpy(out["token_ids"])
    assert ids.shape == (1, T)
    np.testing.assert_array_equal(ids[0, :3], x["token_ids"][0, :3])  # the prompt is kept
    assert ((ids >= 0) & (ids < 1000)).all()


# ----- refusals -------------------------------------------------------------------------------


def test_refuses_a_model_that_is_not_a_causal_lm():
    inputs = keras.Input((T,), dtype="int32")
    plain = keras.Model(inputs, keras.layers.Embedding(10, 4)(inputs))
    with pytest.raises(TypeError, match="expected a keras_hub.models.CausalLM, got Functional"):
        fused_causal_lm(plain)


class _CustomHeadLM(keras_hub.models.CausalLM):
    """A causal LM whose logits are `head(backbone(x))`, for the refusals."""

    def __init__(self, backbone, head):
        self.backbone = backbone
        self.preprocessor = None
        inputs = backbone.input
        logits = head(backbone(inputs))
        super().__init__(inputs=inputs, outputs=logits)


def test_refuses_a_head_it_cannot_express():
    backbone = gemma(1000).backbone
    dense = _CustomHeadLM(backbone, keras.layers.Dense(1000, name="lm_head"))
    with pytest.raises(ValueError, match="logits come from a Dense layer 'lm_head'"):
        fused_causal_lm(dense)
    scaled = _CustomHeadLM(backbone, lambda h: keras.layers.Rescaling(0.5, name="logit_scale")(
        backbone.token_embedding(h, reverse=True)))
    with pytest.raises(ValueError, match="logits come from a Rescaling layer 'logit_scale'"):
        fused_causal_lm(scaled)
    before = _CustomHeadLM(backbone, lambda h: backbone.token_embedding(
        keras.layers.Rescaling(2.0, name="pre_scale")(h), reverse=True))
    with pytest.raises(ValueError, match="directly on the backbone's output; it reads Rescaling"):
        fused_causal_lm(before)


def test_refuses_a_soft_cap_that_disagrees_with_the_config():
    causal_lm = gemma(1000, cap=30.0)
    causal_lm.backbone.token_embedding.logit_soft_cap = 50.0
    with pytest.raises(ValueError, match="final_logit_soft_cap is 30.0 but its head"):
        fused_causal_lm(causal_lm)


def test_refuses_a_16_bit_reverse_dtype():
    causal_lm = gemma(1000)
    causal_lm.backbone.token_embedding.reverse_dtype = "bfloat16"
    with pytest.raises(ValueError, match="reverse_dtype='bfloat16'"):
        fused_causal_lm(causal_lm)


def test_the_tied_embedding_named_as_term_weight_points_to_inputs():
    with pytest.raises(TypeError, match=r"did you mean inputs=\{'weight': "
                                        r"'var.token_embedding.embeddings'\}"):
        Term(losskit.losses.fused_linear_cross_entropy, hidden="layer.gemma_backbone",
             labels="y", weight="var.token_embedding.embeddings")

"""fused_linear_distillation equals the naive two-head computation, in value and gradients."""

import keras
import numpy as np
import pytest
from keras import ops

from losskit import backend
from losskit.gradients import value_and_grad
from losskit.losses import _fused_head, distillation_kl
from losskit.losses.fused_distillation import fused_linear_distillation

IGNORE = -100
BACKEND = keras.backend.backend()


def naive(hs, ws, ht, wt, labels, temperature, divergence, beta=0.5, reduction="mean"):
    """Materialised logits; P = teacher, Q = student."""
    s = ops.matmul(hs, ops.transpose(ws))
    t = ops.stop_gradient(ops.matmul(ht, ops.transpose(wt)))
    if divergence == "kl":
        value = distillation_kl(t, s, temperature=temperature)
    else:
        log_p = ops.log_softmax(t / temperature, axis=-1)
        log_q = ops.log_softmax(s / temperature, axis=-1)
        log_m = ops.logaddexp(np.log(beta) + log_p, np.log1p(-beta) + log_q)
        value = beta * ops.sum(ops.exp(log_p) * (log_p - log_m), axis=-1) + (1 - beta) * ops.sum(
            ops.exp(log_q) * (log_q - log_m), axis=-1
        )
    valid = np.ones(hs.shape[0], bool) if labels is None else labels != IGNORE
    value = ops.where(ops.convert_to_tensor(valid), value, ops.zeros_like(value))
    if reduction == "none":
        return value
    total = ops.sum(value)
    return total / max(int(valid.sum()), 1) if reduction == "mean" else total


def problem(n=21, hs_dim=8, ht_dim=12, vocab=26, seed=0):
    rng = np.random.default_rng(seed)
    hs = rng.normal(size=(n, hs_dim)).astype("float32")
    ws = (rng.normal(size=(vocab, hs_dim)) / 3).astype("float32")
    ht = rng.normal(size=(n, ht_dim)).astype("float32")
    wt = (rng.normal(size=(vocab, ht_dim)) / 3).astype("float32")
    labels = rng.integers(0, vocab, size=n).astype("int32")
    labels[::4] = IGNORE
    return hs, ws, ht, wt, labels


@pytest.fixture(params=["native", "portable"])
def schedule(request, monkeypatch):
    if request.param == "portable":
        monkeypatch.setattr(backend, "updates_in_place", lambda: False)
    monkeypatch.setattr(_fused_head, "VOCAB_BLOCK_OVERRIDE", 8)
    return request.param


def check(fused_fn, naive_fn, inputs, tol=1e-5):
    got, got_grads = value_and_grad(fused_fn, *inputs)
    want, want_grads = value_and_grad(naive_fn, *inputs)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(got_grads[0], want_grads[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(got_grads[1], want_grads[1], rtol=tol, atol=tol)
    for g in got_grads[2:]:  # the teacher: no gradient (None, or zeros under JAX)
        assert g is None or not np.any(g)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "divergence,beta,temperature", [("kl", 0.5, 1.0), ("kl", 0.5, 2.5), ("jsd", 0.5, 1.0),
                                    ("jsd", 0.2, 2.0)]
)
def test_matches_naive(divergence, beta, temperature, reduction, schedule):
    hs, ws, ht, wt, labels = problem()
    upstream = ops.convert_to_tensor(
        np.random.default_rng(2).uniform(0.5, 1.5, 21).astype("float32")
    )
    scale = upstream if reduction == "none" else 1.0
    check(
        lambda a, b, c, d: fused_linear_distillation(
            a, b, c, d, labels, temperature=temperature, divergence=divergence, beta=beta,
            chunk_size=8, reduction=reduction,
        ) * scale,
        lambda a, b, c, d: naive(a, b, c, d, labels, temperature, divergence, beta,
                                 reduction) * scale,
        (hs, ws, ht, wt),
    )


def test_kernels_and_no_labels(schedule):
    """Dense kernels `(H, V)` for both heads; `labels=None` counts every token."""
    hs, ws, ht, wt, _ = problem(seed=3)
    check(
        lambda a, b, c, d: fused_linear_distillation(
            a, teacher_hidden=c, student_kernel=b, teacher_kernel=d, temperature=2.0
        ),
        lambda a, b, c, d: naive(a, ops.transpose(b), c, ops.transpose(d), None, 2.0, "kl"),
        (hs, np.ascontiguousarray(ws.T), ht, np.ascontiguousarray(wt.T)),
    )


def test_compiled(schedule):
    if BACKEND == "torch":
        pytest.skip("torch runs eagerly")
    hs, ws, ht, wt, labels = problem()
    y = ops.convert_to_tensor(labels)

    def fn(a, b, c, d, y):
        return fused_linear_distillation(a, b, c, d, y, divergence="jsd", chunk_size=8)

    if BACKEND == "jax":
        import jax

        step = jax.jit(fn)
    else:
        import tensorflow as tf

        step = tf.function(fn, jit_compile=True)
    check(
        lambda a, b, c, d: step(a, b, c, d, y),
        lambda a, b, c, d: naive(a, b, c, d, labels, 1.0, "jsd"),
        (hs, ws, ht, wt),
    )


def test_compiled_temporaries_within_the_gradients_size():
    if BACKEND != "jax":
        pytest.skip("XLA's static memory analysis is read through jax.jit")
    import jax
    import jax.numpy as jnp

    n, hdim, vocab = 1024, 256, 8192
    args = [jnp.zeros((n, hdim)), jnp.zeros((vocab, hdim)), jnp.zeros((n, hdim)),
            jnp.zeros((vocab, hdim))]

    def loss(hs, ws, ht, wt):
        return fused_linear_distillation(hs, ws, ht, wt, divergence="jsd")

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    memory = step.lower(*args).compile().memory_analysis()
    assert memory.temp_size_in_bytes <= (n * hdim + vocab * hdim) * 4


def test_clear_errors():
    hs, ws, ht, wt, labels = problem()
    name = "fused_linear_distillation"
    with pytest.raises(ValueError, match=f"{name}.*divergence"):
        fused_linear_distillation(hs, ws, ht, wt, divergence="tv")
    with pytest.raises(ValueError, match=f"{name}.*beta"):
        fused_linear_distillation(hs, ws, ht, wt, divergence="jsd", beta=1.0)
    with pytest.raises(ValueError, match=f"{name}.*exactly one"):
        fused_linear_distillation(hs, ws, ht, teacher_weight=wt, student_kernel=ws.T)
    with pytest.raises(ValueError, match=f"{name}.*vocabulary"):
        fused_linear_distillation(hs, ws, ht, wt[:5])
    with pytest.raises(TypeError, match=f"{name}.*integer"):
        fused_linear_distillation(hs, ws, ht, wt, labels.astype("float32"))
    with pytest.raises(ValueError, match=f"{name}.*temperature"):
        fused_linear_distillation(hs, ws, ht, wt, temperature=0.0)

"""The backend fast paths of fused_linear_cross_entropy (`backend.fused_linear_ce`: JAX eager's
cached `jax.jit`, torch's `autograd.Function`) equal the portable `keras.ops` form, in value and
gradients, for every option they cover."""

import keras
import numpy as np
import pytest
from keras import ops

from losskit import backend
from losskit.gradients import value_and_grad
from losskit.losses.fused import fused_linear_cross_entropy

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND == "tensorflow", reason="no TensorFlow fast path here")


def problem(n=37, hidden_dim=16, vocab=29, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, hidden_dim)).astype("float32")
    weight = (rng.normal(size=(vocab, hidden_dim)) / np.sqrt(hidden_dim)).astype("float32")
    bias = rng.normal(size=(vocab,)).astype("float32")
    labels = rng.integers(0, vocab, size=n).astype("int32")
    labels[::5] = -100
    return hidden, weight, bias, labels


def fast_and_portable(fn, inputs, monkeypatch):
    """`(value, grads)` by the fast path, then with the fast path switched off."""
    calls = []
    fast = backend.fused_linear_ce

    def counted(*args):
        out = fast(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(backend, "fused_linear_ce", counted)
    got = value_and_grad(fn, *inputs)
    assert any(calls), "the fast path did not run"
    monkeypatch.setattr(backend, "fused_linear_ce", lambda *args: None)
    want = value_and_grad(fn, *inputs)
    return got, want


def assert_close(got, want, tol):
    np.testing.assert_allclose(np.float32(got[0]), np.float32(want[0]), rtol=tol, atol=tol)
    for g, w in zip(got[1], want[1]):
        assert (g is None) == (w is None)
        if g is not None:
            assert str(g.dtype) == str(w.dtype)
            g, w = (ops.convert_to_numpy(ops.cast(x, "float32")) for x in (g, w))
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "options",
    [{}, {"z_loss": 1e-2}, {"label_smoothing": 0.1}, {"z_loss": 1e-3, "label_smoothing": 0.2},
     {"logit_soft_cap": 1.5}, {"logit_soft_cap": 2.0, "z_loss": 1e-3, "label_smoothing": 0.2}],
)
@pytest.mark.parametrize("layout", ["weight", "kernel"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("chunk_size", [8, None])
def test_fast_path_equals_portable(reduction, options, layout, with_bias, chunk_size, monkeypatch):
    hidden, weight, bias, labels = problem()
    matrix = weight if layout == "weight" else np.ascontiguousarray(weight.T)

    def fn(h, w, b):
        return fused_linear_cross_entropy(
            h, labels=labels, bias=b if with_bias else None, reduction=reduction,
            chunk_size=chunk_size, **{layout: w}, **options,
        )

    got, want = fast_and_portable(fn, (hidden, matrix, bias), monkeypatch)
    assert_close(got, want, 1e-5)


@pytest.mark.parametrize("cap", [None, 2.0])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_fast_path_close_to_portable(dtype, cap, monkeypatch):
    """16-bit inputs: the torch path rounds logits and dlogits to bfloat16 for its matmuls and
    accumulates the weight gradient in bfloat16 (Liger's choice), so it agrees with the float32
    accumulation of the portable path to bfloat16 precision only. float16 has no torch fast path
    (the check is then exact); JAX eager runs the portable form compiled."""
    hidden, weight, bias, labels = problem(96, 64, 300)
    inputs = [ops.cast(x, dtype) for x in (hidden, weight, bias)]

    def fn(h, w, b):
        return fused_linear_cross_entropy(h, w, labels, bias=b, chunk_size=16, z_loss=1e-3,
                                          logit_soft_cap=cap)

    calls = []
    fast = backend.fused_linear_ce
    monkeypatch.setattr(
        backend, "fused_linear_ce", lambda *a: calls.append(1) or fast(*a)
    )
    got = value_and_grad(fn, *inputs)
    monkeypatch.setattr(backend, "fused_linear_ce", lambda *args: None)
    want = value_and_grad(fn, *inputs)
    assert calls
    np.testing.assert_allclose(np.float32(got[0]), np.float32(want[0]), rtol=2e-3)
    for g, w in zip(got[1], want[1]):
        assert str(g.dtype) == dtype
        g, w = (ops.convert_to_numpy(ops.cast(x, "float32")) for x in (g, w))
        scale = np.abs(w).max()
        np.testing.assert_allclose(g, w, atol=2e-2 * scale, rtol=2e-2)


def test_upstream_gradient_scales(monkeypatch):
    """A non-unit upstream gradient (here 3 x loss) scales the stored gradients."""
    hidden, weight, bias, labels = problem()

    def fn(h, w, b):
        return 3.0 * fused_linear_cross_entropy(h, w, labels, bias=b, z_loss=1e-3)

    got, want = fast_and_portable(fn, (hidden, weight, bias), monkeypatch)
    assert_close(got, want, 1e-5)


def test_value_without_gradients(monkeypatch):
    """Called outside autodiff, the fast path gives the portable value."""
    hidden, weight, bias, labels = problem()
    got = fused_linear_cross_entropy(hidden, weight, labels, bias=bias, label_smoothing=0.1)
    monkeypatch.setattr(backend, "fused_linear_ce", lambda *args: None)
    want = fused_linear_cross_entropy(hidden, weight, labels, bias=bias, label_smoothing=0.1)
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=1e-6)


def test_torch_second_backward_recomputes():
    """With `retain_graph`, a second backward pass (per-term gradients, then the step's) gives the
    same gradients: the first one hands its stored gradients over."""
    if BACKEND != "torch":
        pytest.skip("torch autograd")
    import torch

    hidden, weight, bias, labels = (torch.tensor(x) for x in problem())
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    loss = 2.0 * fused_linear_cross_entropy(hidden, weight, labels, bias=bias)
    first = torch.autograd.grad(loss, [hidden, weight], retain_graph=True)
    first = [g.clone() for g in first]
    second = torch.autograd.grad(loss, [hidden, weight])
    for a, b in zip(first, second):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)

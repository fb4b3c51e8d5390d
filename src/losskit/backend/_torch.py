"""PyTorch implementations of `losskit.backend`."""

import contextlib

import keras
import torch

from losskit import _keras
from losskit.backend import pack_upstream


def integer_bits():
    return 64


def assert_same_shape(message, a, b, drop_last):
    del message, b, drop_last  # shapes are static when tracing: checked already
    return a


def replica_context():
    return 1, None


def is_multi_worker(strategy):
    del strategy
    return False


def lgamma(x):
    return torch.lgamma(x)


def sequential_fori_loop(upper, body, init):
    value = init
    for i in range(int(upper)):
        value = body(i, value)
    return value


def float64_scope():
    # Keras maps float64 to float32 in type promotion on torch (`ops.matmul` of two float64
    # tensors returns float32) unless told otherwise.
    return _keras.float64_promotion()


def custom_gradient(inner, diff, constants):
    class _Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            value, rule = inner(xs, constants)
            ctx.rule = rule
            ctx.value = value
            return value

        @staticmethod
        def backward(ctx, *upstream):
            return tuple(ctx.rule(pack_upstream(ctx.value, upstream)))

    return _Function.apply(*diff)


def value_and_grad(fn, inputs):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    value = fn(*inputs)
    grads = torch.autograd.grad(value.sum(), inputs, allow_unused=True) if inputs else []
    return value, list(grads)


def score_derivatives(fn, score, constants):
    score = score.detach().requires_grad_(True)
    with torch.enable_grad():
        total = fn(score, *constants).sum()
        (grad,) = (torch.autograd.grad(total, score, create_graph=True, allow_unused=True)
                   if total.requires_grad else (None,))
        if grad is None:  # no path from the score (constants, stop_gradient): both are 0
            return torch.zeros_like(score).detach(), torch.zeros_like(score).detach()
        columns = []
        for j in range(score.shape[-1]):
            column = None
            if grad.requires_grad:
                (column,) = torch.autograd.grad(
                    grad[:, j].sum(), score, retain_graph=True, allow_unused=True
                )
            # Unconnected: the gradient is constant in the score (a piecewise-linear loss).
            columns.append(torch.zeros_like(score[:, j]) if column is None else column[:, j])
    return grad.detach(), torch.stack(columns, dim=-1).detach()


def compile_function(fn, xla=False):
    return fn  # eager; torch.compile costs more than the loops it would serve


def matmul(a, b, dtype):
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return torch.matmul(a.to(dtype), b.to(dtype))


def take(x, start, size, axis=0):
    return x.narrow(axis, int(start), size)


def _recorded(*tensors):
    # Autodiff of the forward pass itself (plain_autodiff): no in-place ops on recorded tensors.
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def add_rows(buffer, start, rows, axis=0):
    start, size = int(start), rows.shape[axis]
    if _recorded(buffer, rows):
        current = buffer.narrow(axis, start, size)
        return set_rows(buffer, start, current + rows.to(buffer.dtype), axis)
    buffer.narrow(axis, start, size).add_(rows.to(buffer.dtype))
    return buffer


def add_matmul(acc, a, b, axis, block):
    del axis, block
    if _recorded(acc, a, b):
        return acc + torch.matmul(a.to(acc.dtype), b.to(acc.dtype))
    return acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def set_rows(buffer, start, rows, axis=0):
    start, size = int(start), rows.shape[axis]
    if _recorded(buffer, rows):
        end = buffer.shape[axis]
        return torch.cat([buffer.narrow(axis, 0, start), rows.to(buffer.dtype),
                          buffer.narrow(axis, start + size, end - start - size)], dim=axis)
    buffer.narrow(axis, start, size).copy_(rows)
    return buffer


def scale(x, factor):
    if _recorded(x):
        return x * factor
    return x.mul_(factor.to(x.dtype) if torch.is_tensor(factor) else factor)


def updates_in_place():
    return True


def term_gradients(values_fn, variables, constants, values=None):
    del constants
    tensors = [v.value for v in variables]
    # The step's own forward graph serves (no second pass); it is kept for the step's backward.
    values = values_fn() if values is None else values
    out = []
    for value in values:
        if not value.requires_grad:
            out.append([torch.zeros_like(t) for t in tensors])
            continue
        grads = torch.autograd.grad(value, tensors, retain_graph=True, allow_unused=True)
        out.append(
            [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(tensors, grads)]
        )
    return out


# Dtypes of the fast path; float16 (narrow exponent range) takes the portable path.
_FAST_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def fused_linear_ce(portable, h, w, b, y, sw, static):
    """torch eager: the Liger-Kernel schedule as one `torch.autograd.Function`.

    Per token chunk: the logits by one matmul into a reused buffer; `exp` and the subtractions
    that turn them into `dloss/dlogits` in place; the chunk's `dhidden` rows by one matmul
    written into the output (`out=`); the weight gradient accumulated in place (`addmm_`). Three
    matmuls, as many as the naive head, and no buffer larger than a chunk's logits besides the
    gradients themselves; the backward pass only scales them (in place, and not at all for a unit
    upstream gradient). The portable form costs a Python-level `keras.ops` call per step and
    copies (`where`, one-hot masks) of the chunk's logits.

    Covers `reduction="mean"`/`"sum"` with float32, float64 or bfloat16 inputs of one dtype;
    None (the portable path) otherwise. bfloat16 follows Liger: the logits and `dlogits` pass
    through bfloat16 for the matmuls (CPU matmuls return their inputs' dtype), the softmax is
    computed in float32, and the weight gradient is accumulated in bfloat16 by `addmm_` (a
    float32 running sum would cost twice the gradients' bytes); each chunk's product is summed
    in float32 and rounded once as it is added.
    """
    del portable
    tensors = [t for t in (h, w, b) if t is not None]
    if (static["reduction"] == "none" or h.dtype not in _FAST_DTYPES or not h.shape[0]
            or any(t.dtype != h.dtype for t in tensors) or y.dim() != 1):
        return None
    need = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (h, w, b))
    return _FusedLinearCE.apply(h, w, b, y, sw, static, need)


def _liger_chunk(n, hidden_dim, vocab, itemsize, chunk_size, capped=False):
    """Tokens per chunk: `chunk_size`, or the largest power of two whose logits temporaries
    (float32, plus a bfloat16 copy for bfloat16 inputs) take at most 0.25x the gradients'
    bytes (issue 12's bound: a call needs at most 1.25x the memory of the gradients it returns).
    As large as that: each chunk streams the weight through two matmuls and its gradient through
    `addmm_`, so halving the chunk doubles that traffic (the naive head reads them about once)."""
    if chunk_size:
        return max(1, min(int(chunk_size), n))
    per_token = vocab * (8 if itemsize == 8 else 4 + (itemsize if itemsize < 4 else 0))
    if capped:  # the capped logits' tanh, kept for the gradient through the cap
        per_token += vocab * (8 if itemsize == 8 else 4)
    budget = 0.25 * (n + vocab) * hidden_dim * itemsize
    chunk = 1
    while chunk * 2 * per_token <= budget and chunk * 2 <= 4096:
        chunk *= 2
    return min(chunk, n)


def _liger(h, w, b, y, sw, static, need):
    """`(sum of the losses x sw x scale, dh, dw, db)` for per-token weights `sw` (None: 1) and
    `scale` = 1 / kept tokens ("mean") or 1.

    A chunk's logits are held transposed, `(V, chunk)`: `W @ h_i^T` is the faster matmul on
    CPU (BLAS reads `W` row by row), and `dW += dz^T h_i` then needs no transposed operand.
    """
    rows, ls, zl = static["rows"], static["label_smoothing"], static["z_loss"]
    cap = static["logit_soft_cap"]
    n, hidden_dim = h.shape
    vocab = w.shape[0] if rows else w.shape[1]
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    low = h.dtype != acc
    w_rows = w if rows else w.t()  # (V, H) views, no copy: the matmuls read either layout
    valid = y != static["ignore_index"]
    y_safe = torch.where(valid, y, torch.zeros_like(y)).long()
    count = valid.sum().to(acc)
    mean = static["reduction"] == "mean"
    scale = 1.0 / torch.clamp(count, min=1.0) if mean else count.new_ones(())
    chunk = _liger_chunk(n, hidden_dim, vocab, h.element_size(), static["chunk_size"],
                         cap is not None)
    buffer = torch.empty(vocab * chunk, dtype=acc, device=h.device)
    tanh_buffer = torch.empty(vocab * chunk, dtype=acc, device=h.device) if cap else None
    low_buffer = torch.empty(vocab * chunk, dtype=h.dtype, device=h.device) if low else None
    dh = torch.empty_like(h) if need[0] else None
    dw = torch.zeros_like(w) if need[1] else None
    db = torch.zeros(vocab, dtype=acc, device=h.device) if need[2] else None
    total = torch.zeros((), dtype=acc, device=h.device)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        part = slice(start, start + size)
        h_i, y_i, valid_i = h[part], y_safe[part][None, :], valid[part]
        z = buffer[:vocab * size].view(vocab, size)  # contiguous for the last, shorter chunk
        out = low_buffer[:vocab * size].view(vocab, size) if low else z
        if b is None:
            torch.mm(w_rows, h_i.t(), out=out)
        else:
            torch.addmm(b[:, None], w_rows, h_i.t(), out=out)
        if low:
            z.copy_(out)
        if cap:  # Gemma-2's soft-cap: z = cap tanh(z / cap); tanh kept for the gradient
            t = tanh_buffer[:vocab * size].view(vocab, size)
            torch.tanh(z.div_(cap), out=t)
            z.copy_(t).mul_(cap)
        z_y = z.gather(0, y_i)[0]
        z_sum = z.sum(0) if ls else None  # -inf (masked) columns make it -inf: as the portable
        shift = z.amax(0)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        z.sub_(shift).exp_()
        norm = z.sum(0)
        lse = shift + norm.log()
        loss = lse - (1.0 - ls) * z_y
        if ls:
            loss = loss - (ls / vocab) * z_sum
        if zl:
            loss = loss + zl * lse.square()
        g = valid_i.to(acc) * scale
        if sw is not None:
            g = g * sw[part].to(acc)
        total += torch.where(valid_i, loss * g, torch.zeros_like(loss)).sum()
        if not any(need):
            continue
        # z becomes dloss/dz x g: softmax (1 + 2 z_loss lse) - (1 - e) onehot(y) - e / V.
        coef = g * (1.0 + 2.0 * zl * lse) if zl else g
        z.mul_(coef / norm)
        z.scatter_add_(0, y_i, (-(1.0 - ls) * g)[None, :])
        if ls:
            z.sub_((ls / vocab) * g)
        if cap:  # through the cap: times 1 - tanh^2
            z.mul_(t.square_().neg_().add_(1.0))
        if b is not None and need[2]:
            db += z.sum(1)
        dz = out.copy_(z) if low else z  # (V, chunk)
        if need[0]:
            torch.mm(dz.t(), w_rows, out=dh[part])
        if need[1]:
            if rows:
                dw.addmm_(dz, h_i)
            else:
                dw.addmm_(h_i.t(), dz.t())
    if db is not None:
        db = db.to(b.dtype)
    return total, dh, dw, db


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, y, sw, static, need):
        h_, w_, b_, sw_ = (None if t is None else t.detach() for t in (h, w, b, sw))
        total, *grads = _liger(h_, w_, b_, y, sw_, static, need)
        ctx.grads, ctx.static, ctx.need = grads, static, need
        ctx.save_for_backward(h, w, b, y, sw)
        return total

    @staticmethod
    def backward(ctx, upstream):
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # a second backward pass (retain_graph): the first one used them
            h, w, b, y, sw = ctx.saved_tensors
            grads = _liger(h, w, b, y, sw, ctx.static, ctx.need)[1:]
        # Handed over, not kept: autograd may adopt them as `.grad` without copying.
        if not bool(upstream == 1):
            grads = [None if g is None else g.mul_(upstream.to(g.dtype)) for g in grads]
        return (*grads, None, None, None, None)


def after(tensors):
    del tensors
    return contextlib.nullcontext()  # ops already run in program order


def zeros(shape, dtype):
    return keras.ops.zeros(shape, dtype)


def is_traced(x):
    """Whether `x`'s value is unknown here: under `torch.compile` (dynamo), or a `meta` tensor
    (Keras's shape inference)."""
    if torch.compiler.is_compiling():
        return True
    return isinstance(x, torch.Tensor) and x.device.type == "meta"


def sample_weight_of_rank(sample_weight, values):
    del values
    return sample_weight  # a traced tensor's rank is always known here

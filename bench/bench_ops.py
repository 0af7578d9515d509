"""Memory-bound op families at the models' real shapes, CPU (NumPy reference, with its
Numba fast paths where the op has one) and GPU side by side: elementwise (leaky ReLU,
ReLU, tanh, sigmoid, dropout; forward and backward), bias (add, grad), batchnorm
(forward, backward), embedding (forward, backward), BCE-with-logits, Adam.

Throughput is GB/s of the bytes an ideal implementation reads and writes once.

    pytest bench/bench_ops.py --benchmark-enable --benchmark-only
"""
import numpy as np
import pytest

import _benchlib as bl
from cganraw import ops

F32 = bl.F32


def _arrays(xp, rng, *shapes, dtype=np.float32):
    return [xp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]


# ------------------------------------------------------------------ elementwise ---

ACT = {
    "leaky_relu": (lambda x: ops.leaky_relu_forward(x, 0.2), ops.leaky_relu_backward),
    "relu": (ops.relu_forward, ops.relu_backward),
    "tanh": (ops.tanh_forward, ops.tanh_backward),
    "sigmoid": (ops.sigmoid_forward, ops.sigmoid_backward),
}
ACT_CASES = [pytest.param(op, tail, id=f"{op}-{bl.tail_id(tail)}") for op, tails in bl.ELEMENTWISE.items()
             for tail in tails]


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("op,tail", ACT_CASES)
def test_activation(benchmark, bench_ctx, use_backend, batch, op, tail, direction):
    name, xp = use_backend
    rng = np.random.default_rng(0)
    shape = (batch,) + tail
    x, dy = _arrays(xp, rng, shape, shape)
    fwd, bwd = ACT[op]
    y, cache = fwd(x)
    if direction == "fwd":
        fn, moved = (lambda: fwd(x)[0]), 2 * x.nbytes            # read x, write y
    else:
        fn, moved = (lambda: bwd(dy, cache)), 3 * x.nbytes       # read dy and x (or y), write dx
    out = bl.measure(benchmark, fn, op=f"{op} {direction}", shape=shape, backend=name, family="elementwise",
                     ctx=bench_ctx, bytes_moved=moved)
    assert out.shape == shape and bool(xp.isfinite(out).all())


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("tail,p", [pytest.param(t, p, id=f"{bl.tail_id(t)}-p{p}") for t, p in bl.DROPOUT])
def test_dropout(benchmark, bench_ctx, use_backend, batch, tail, p, direction):
    name, xp = use_backend
    rng = np.random.default_rng(0)
    shape = (batch,) + tail
    x, dy = _arrays(xp, rng, shape, shape)
    keep = xp.asarray(rng.random(shape) >= p)
    _, cache = ops.dropout_forward(x, keep, p)
    moved = 2 * x.nbytes + keep.nbytes                             # read x (dy) and the mask, write y (dx)
    fn = (lambda: ops.dropout_forward(x, keep, p)[0]) if direction == "fwd" else (lambda: ops.dropout_backward(dy, cache))
    out = bl.measure(benchmark, fn, op=f"dropout {direction}", shape=shape, backend=name, family="elementwise",
                     ctx=bench_ctx, bytes_moved=moved, extra={"p": p})
    assert out.shape == shape


# ------------------------------------------------------------------ bias ----------

@pytest.mark.parametrize("tail", bl.BIAS, ids=bl.tail_id)
def test_bias_add(benchmark, bench_ctx, use_backend, batch, tail):
    name, xp = use_backend
    rng = np.random.default_rng(0)
    shape = (batch,) + tail
    y, b = _arrays(xp, rng, shape, (tail[0],))
    out = bl.measure(benchmark, lambda: ops.bias_add_forward(y, b), op="bias add", shape=shape, backend=name,
                     family="bias", ctx=bench_ctx, bytes_moved=2 * y.nbytes + b.nbytes)   # y read and written in place
    assert out.shape == shape


@pytest.mark.parametrize("tail", bl.BIAS, ids=bl.tail_id)
def test_bias_grad(benchmark, bench_ctx, use_backend, batch, tail):
    name, xp = use_backend
    rng = np.random.default_rng(0)
    shape = (batch,) + tail
    (dy,) = _arrays(xp, rng, shape)
    out = bl.measure(benchmark, lambda: ops.bias_add_backward(dy), op="bias grad", shape=shape, backend=name,
                     family="bias", ctx=bench_ctx, bytes_moved=dy.nbytes + tail[0] * F32)
    assert out.shape == (tail[0],)


# ------------------------------------------------------------------ batchnorm -----

@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("tail", bl.BATCHNORM, ids=bl.tail_id)
def test_batchnorm(benchmark, bench_ctx, use_backend, batch, tail, direction):
    name, xp = use_backend
    rng = np.random.default_rng(0)
    shape = (batch,) + tail
    x, dy = _arrays(xp, rng, shape, shape)
    gamma = xp.ones(tail[0], dtype=xp.float32)
    beta = xp.zeros(tail[0], dtype=xp.float32)
    _, cache, _, _ = ops.batchnorm_forward(x, gamma, beta)
    if direction == "fwd":   # training mode: batch statistics; ideal: read x once, write y
        fn, moved = (lambda: ops.batchnorm_forward(x, gamma, beta)[0]), 2 * x.nbytes
    else:                    # read dy and x (or xhat), write dx
        fn, moved = (lambda: ops.batchnorm_backward(dy, cache)[0]), 3 * x.nbytes
    out = bl.measure(benchmark, fn, op=f"batchnorm{1 if len(shape) == 2 else 2}d {direction}", shape=shape, backend=name,
                     family="batchnorm", ctx=bench_ctx, bytes_moved=moved)
    assert out.shape == shape


# ------------------------------------------------------------------ fused pairs ---
# Layer + LeakyReLU as nn.Sequential runs them (cganraw.nn.fused); ideal bytes as the
# unfused pair would need with no intermediate array.

@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("tail", bl.BATCHNORM, ids=bl.tail_id)
def test_batchnorm_leaky_relu(benchmark, bench_ctx, use_backend, batch, tail, direction):
    name, xp = use_backend
    rng = np.random.default_rng(0)
    shape = (batch,) + tail
    x, dy = _arrays(xp, rng, shape, shape)
    gamma = xp.ones(tail[0], dtype=xp.float32)
    beta = xp.zeros(tail[0], dtype=xp.float32)
    _, cache, _, _ = ops.batchnorm_leaky_relu_forward(x, gamma, beta, negative_slope=0.2)
    if direction == "fwd":
        fn, moved = (lambda: ops.batchnorm_leaky_relu_forward(x, gamma, beta, negative_slope=0.2)[0]), 2 * x.nbytes
    else:
        fn, moved = (lambda: ops.batchnorm_leaky_relu_backward(dy, cache)[0]), 3 * x.nbytes
    out = bl.measure(benchmark, fn, op=f"batchnorm+leaky_relu {direction}", shape=shape, backend=name,
                     family="batchnorm", ctx=bench_ctx, bytes_moved=moved)
    assert out.shape == shape


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("tail", bl.BIAS, ids=bl.tail_id)
def test_bias_leaky_relu(benchmark, bench_ctx, use_backend, batch, tail, direction):
    name, xp = use_backend
    rng = np.random.default_rng(0)
    shape = (batch,) + tail
    y, dy, b = _arrays(xp, rng, shape, shape, (tail[0],))
    _, cache = ops.bias_leaky_relu_forward(y.copy(), b, 0.2)
    if direction == "fwd":   # in place: y read and written
        fn, moved = (lambda: ops.bias_leaky_relu_forward(y, b, 0.2)[0]), 2 * y.nbytes
    else:                    # read dy and y, write dpre
        fn, moved = (lambda: ops.bias_leaky_relu_backward(dy, cache)[0]), 3 * y.nbytes
    out = bl.measure(benchmark, fn, op=f"bias+leaky_relu {direction}", shape=shape, backend=name,
                     family="bias", ctx=bench_ctx, bytes_moved=moved)
    assert out.shape == shape


# ------------------------------------------------------------------ embedding -----

@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_embedding(benchmark, bench_ctx, use_backend, batch, direction):
    """The label path of cgan-conv: Embedding(10, 50)."""
    name, xp = use_backend
    rng = np.random.default_rng(0)
    k, d = 10, 50
    idx = xp.asarray(rng.integers(0, k, batch))
    (W, dy) = _arrays(xp, rng, (k, d), (batch, d))
    _, cache = ops.embedding_forward(idx, W)
    if direction == "fwd":   # read the indices and their rows, write y
        fn, moved = (lambda: ops.embedding_forward(idx, W)[0]), idx.nbytes + 2 * dy.nbytes
    else:                    # read the indices and dy, write dW
        fn, moved = (lambda: ops.embedding_backward(dy, cache)), idx.nbytes + dy.nbytes + W.nbytes
    out = bl.measure(benchmark, fn, op=f"embedding {direction}", shape=f"N={batch} K={k} D={d}",
                     backend=name, family="embedding", ctx=bench_ctx, bytes_moved=moved)
    assert out.shape in ((batch, d), (k, d))


# ------------------------------------------------------------------ BCE -----------

@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_bce_with_logits(benchmark, bench_ctx, use_backend, batch, direction):
    """D's loss on its (N, 1) logits."""
    name, xp = use_backend
    rng = np.random.default_rng(0)
    shape = (batch, 1)
    (x,) = _arrays(xp, rng, shape)
    t = xp.ones(shape, dtype=xp.float32)
    _, cache = ops.bce_with_logits_forward(x, t)
    if direction == "fwd":
        fn, moved = (lambda: ops.bce_with_logits_forward(x, t)[0]), 2 * x.nbytes + F32
    else:
        fn, moved = (lambda: ops.bce_with_logits_backward(1.0, cache)), 3 * x.nbytes
    out = bl.measure(benchmark, fn, op=f"bce_with_logits {direction}", shape=shape, backend=name, family="bce",
                     ctx=bench_ctx, bytes_moved=moved)
    assert bool(xp.isfinite(out).all())


# ------------------------------------------------------------------ Adam ----------

@pytest.mark.parametrize("pname,shape", [pytest.param(n, s, id=n) for n, s in bl.ADAM_TENSORS])
def test_adam(benchmark, bench_ctx, use_backend, pname, shape):
    """One fused Adam update of a parameter tensor (batch-independent)."""
    name, xp = use_backend
    rng = np.random.default_rng(0)
    p, g = _arrays(xp, rng, shape, shape)
    m, v = xp.zeros_like(p), xp.zeros_like(p)
    step = [0]

    def update():
        step[0] += 1
        ops.adam_update(p, g, m, v, 2e-4, 0.5, 0.999, 1e-8, step[0])
        return p
    out = bl.measure(benchmark, update, op="adam", shape=f"{pname} {'x'.join(map(str, shape))}", backend=name,
                     family="adam", ctx=bench_ctx, bytes_moved=7 * p.nbytes)   # read p g m v, write p m v
    assert bool(xp.isfinite(out).all())

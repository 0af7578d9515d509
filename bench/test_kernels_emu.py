"""Smoke check of the benchmarked kernels through the CUDA emulator (backend `emu`):
each op family whose kernels/<family>.cu exists gives the NumPy reference's answer at
small shapes. Never timed: the emulator runs kernels on the CPU, its speed says nothing
about a GPU. A family whose kernel file is missing is skipped with that reason.
"""
import importlib
from pathlib import Path

import numpy as np
import pytest

import _benchlib as bl
import cganraw
from cganraw import ops

KERNELS = Path(cganraw.__file__).resolve().parents[1] / "kernels"


def _need(*names):
    """Skip unless one of kernels/<name>.cu exists."""
    if not any((KERNELS / f"{n}.cu").is_file() for n in names):
        pytest.skip(f"no kernels/{names[0]}.cu yet: nothing to run in the emulator")


@pytest.fixture
def emu():
    with bl.backend_ctx("emu"):
        yield


def close(got, want, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("op", ["leaky_relu", "relu", "tanh", "sigmoid"])
def test_activation_emu(emu, rng, op):
    _need("activation")
    act = importlib.import_module("cganraw.ops.activation")
    x = rng.standard_normal((3, 5, 7, 7)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    if op == "leaky_relu":
        y, cache = ops.leaky_relu_forward(x, 0.2)
        y_ref, cache_ref = act.leaky_relu_forward_numpy(x, 0.2)
        dx_ref = act.leaky_relu_backward_numpy(dy, cache_ref)
        dx = ops.leaky_relu_backward(dy, cache)
    else:
        y, cache = getattr(ops, f"{op}_forward")(x)
        y_ref, cache_ref = getattr(act, f"{op}_forward_numpy")(x)
        dx = getattr(ops, f"{op}_backward")(dy, cache)
        dx_ref = getattr(act, f"{op}_backward_numpy")(dy, cache_ref)
    close(y, y_ref)
    close(dx, dx_ref)


def test_dropout_emu(emu, rng):
    _need("dropout")
    do = importlib.import_module("cganraw.ops.dropout")
    x = rng.standard_normal((4, 33)).astype(np.float32)
    keep = rng.random(x.shape) >= 0.4
    y, cache = ops.dropout_forward(x, keep, 0.4)
    close(y, do.dropout_forward_numpy(x, keep, 0.4)[0])
    close(ops.dropout_backward(x, cache), do.dropout_backward_numpy(x, (keep, 0.4)))


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 6, 6)])
def test_bias_emu(emu, rng, shape):
    _need("bias")
    bias = importlib.import_module("cganraw.ops.bias")
    y = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    close(ops.bias_add_forward(y.copy(), b), bias.bias_add_forward_numpy(y.copy(), b))
    close(ops.bias_add_backward(y), bias.bias_add_backward_numpy(y), atol=1e-4)


@pytest.mark.parametrize("spec", [((2, 3, 9, 9), 3, 2, 1, None), ((2, 4, 7, 7), 4, 2, 1, (7, 7)),
                                  ((1, 2, 8, 8), 7, 1, 3, None)])
def test_im2col_col2im_emu(emu, rng, spec):
    _need("im2col")
    conv = importlib.import_module("cganraw.ops.conv")
    shape, k, s, p, out_hw = spec
    if out_hw is not None:   # a transposed conv: the image is the output, out_hw the input size
        shape = (shape[0], shape[1], (out_hw[0] - 1) * s - 2 * p + k, (out_hw[1] - 1) * s - 2 * p + k)
    x = rng.standard_normal(shape).astype(np.float32)
    cols_ref = conv.im2col_numpy(x, k, s, p, out_hw)
    close(ops.im2col(x, k, s, p, out_hw=out_hw), cols_ref)
    cols = rng.standard_normal(cols_ref.shape).astype(np.float32)
    close(ops.col2im(cols, shape, k, s, p, out_hw=out_hw), conv.col2im_numpy(cols, shape, k, s, p, out_hw), atol=1e-4)


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5, 5)])
def test_batchnorm_emu(emu, rng, shape):
    _need("batchnorm")
    bn = importlib.import_module("cganraw.ops.batchnorm")
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.standard_normal(shape[1]).astype(np.float32)
    beta = rng.standard_normal(shape[1]).astype(np.float32)
    y, cache, mean, var = ops.batchnorm_forward(x, gamma, beta)
    y_ref, cache_ref, mean_ref, var_ref = bn.batchnorm_forward_numpy(x, gamma, beta)
    close(y, y_ref, atol=1e-4)
    close(mean, mean_ref)
    close(var, var_ref, atol=1e-4)
    for got, want in zip(ops.batchnorm_backward(dy, cache), bn.batchnorm_backward_numpy(dy, cache_ref)):
        close(got, want, atol=1e-4)


def test_embedding_emu(emu, rng):
    _need("embedding")
    emb = importlib.import_module("cganraw.ops.embedding")
    W = rng.standard_normal((10, 50)).astype(np.float32)
    idx = rng.integers(0, 10, 37)
    dy = rng.standard_normal((37, 50)).astype(np.float32)
    y, cache = ops.embedding_forward(idx, W)
    close(y, emb.embedding_forward_numpy(idx, W)[0])
    close(ops.embedding_backward(dy, cache), emb.embedding_backward_numpy(dy, (idx, W.shape)), atol=1e-4)


def test_bce_emu(emu, rng):
    _need("bce")
    bce = importlib.import_module("cganraw.ops.bce")
    x = (5 * rng.standard_normal((33, 1))).astype(np.float32)
    t = (rng.random((33, 1)) > 0.5).astype(np.float32)
    loss, cache = ops.bce_with_logits_forward(x, t)
    loss_ref, cache_ref = bce.bce_with_logits_forward_numpy(x, t)
    close(loss, loss_ref)
    close(ops.bce_with_logits_backward(1.0, cache), bce.bce_with_logits_backward_numpy(1.0, cache_ref))


def test_adam_emu(emu, rng):
    _need("adam")
    adam = importlib.import_module("cganraw.ops.adam")
    p = rng.standard_normal(301).astype(np.float32)
    g = rng.standard_normal(301).astype(np.float32)
    state = [p.copy(), np.zeros_like(p), np.zeros_like(p)]
    ref = [p.copy(), np.zeros_like(p), np.zeros_like(p)]
    for step in (1, 2, 3):
        ops.adam_update(state[0], g, state[1], state[2], 2e-4, 0.5, 0.999, 1e-8, step)
        adam.adam_update_numpy(ref[0], g, ref[1], ref[2], 2e-4, 0.5, 0.999, 1e-8, step)
    for got, want in zip(state, ref):
        close(got, want, rtol=1e-5, atol=1e-6)


GEMM_SHAPES = [(17, 33, 9, False, False), (20, 7, 65, True, False), (5, 40, 31, False, True), (33, 17, 18, True, True)]


@pytest.mark.parametrize("m,n,k,ta,tb", GEMM_SHAPES)
@pytest.mark.parametrize("version", [None, 1, 2, 3])
def test_gemm_emu(emu, rng, m, n, k, ta, tb, version):
    """ops.gemm's own dispatch (version None), then each hand-written SGEMM version."""
    _need("gemm", "sgemm")
    gm = importlib.import_module("cganraw.ops.gemm")
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    want = (a.T if ta else a) @ (b.T if tb else b)
    if version is None:
        got = ops.gemm(a, b, trans_a=ta, trans_b=tb)
    else:
        if not hasattr(gm, "gemm_cuda"):
            pytest.skip("cganraw.ops.gemm.gemm_cuda (the SGEMM launcher) does not exist yet")
        got = gm.gemm_cuda(a, b, trans_a=ta, trans_b=tb, version=version)
    close(got, want, rtol=1e-4, atol=1e-4 * k ** 0.5)

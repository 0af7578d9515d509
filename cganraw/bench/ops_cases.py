"""Op-level cases at the models' real shapes (cganraw.bench.shapes):

    ops    memory-bound families: elementwise (leaky ReLU, ReLU, tanh, sigmoid, dropout;
           forward and backward), bias (add, grad), batchnorm, FiLM, embedding, BCE, Adam (GB/s
           of the bytes an ideal implementation reads and writes once)
    conv   im2col/col2im as each conv layer calls them (GB/s; col2im also per kernel
           version of col2im_cuda: v1 scatters with atomics, v2 gathers), and conv2d / conv_transpose2d
           forward and backward (GFLOP/s of the direct convolution, 2*N*Ho*Wo*O*C*k*k;
           backward = dx + dW = twice that)
    gemm   the GEMMs the layers run, in cganraw.ops.gemm's convention: NumPy's BLAS,
           cuBLAS, and every version of the hand-written kernels (gemm_cuda)
"""
from __future__ import annotations

import importlib

import numpy as np

from cganraw import ops
from cganraw.bench import shapes as S
from cganraw.bench.cases import Prepared, Spec
from cganraw.bench.harness import F32
from cganraw.ops.conv import COL2IM_VERSIONS
from cganraw.ops.film import BACKWARD_VERSIONS as FILM_BACKWARD_VERSIONS
from cganraw.ops.gemm import GEMM_VERSIONS

GPU_IMPLS = ("numpy", "cuda")


def _arrays(xp, *shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]


def _shape_is(shape, finite_xp=None):
    def check(out):
        assert tuple(out.shape) == tuple(shape), f"result shape {tuple(out.shape)}, expected {tuple(shape)}"
        if finite_xp is not None:
            assert bool(finite_xp.isfinite(out).all()), "non-finite result"
    return check


# ------------------------------------------------------------------ elementwise ---

ACTIVATIONS = {
    "leaky_relu": (lambda x: ops.leaky_relu_forward(x, 0.2), ops.leaky_relu_backward),
    "relu": (ops.relu_forward, ops.relu_backward),
    "tanh": (ops.tanh_forward, ops.tanh_backward),
    "sigmoid": (ops.sigmoid_forward, ops.sigmoid_backward),
}


def _activation(op, tail, direction):
    def prepare(xp, batch, impl, mode):
        shape = (batch, *tail)
        x, dy = _arrays(xp, shape, shape)
        fwd, bwd = ACTIVATIONS[op]
        _, cache = fwd(x)
        if direction == "fwd":
            fn, moved = (lambda: fwd(x)[0]), 2 * x.nbytes            # read x, write y
        else:
            fn, moved = (lambda: bwd(dy, cache)), 3 * x.nbytes       # read dy and x (or y), write dx
        return Prepared(fn, f"{op} {direction}", "x".join(map(str, shape)), bytes_moved=moved,
                        check=_shape_is(shape, xp))
    return prepare


def _dropout(tail, p, direction):
    def prepare(xp, batch, impl, mode):
        shape = (batch, *tail)
        x, dy = _arrays(xp, shape, shape)
        keep = xp.asarray(np.random.default_rng(1).random(shape) >= p)
        _, cache = ops.dropout_forward(x, keep, p)
        moved = 2 * x.nbytes + keep.nbytes                           # read x (dy) and the mask, write y (dx)
        fn = (lambda: ops.dropout_forward(x, keep, p)[0]) if direction == "fwd" else (
            lambda: ops.dropout_backward(dy, cache))
        return Prepared(fn, f"dropout {direction}", "x".join(map(str, shape)), bytes_moved=moved,
                        check=_shape_is(shape), extra={"p": p})
    return prepare


# ------------------------------------------------------------------ other ops -----

def _bias_add(tail, direction):
    def prepare(xp, batch, impl, mode):
        shape = (batch, *tail)
        y, b = _arrays(xp, shape, (tail[0],))
        if direction == "fwd":   # y read and written in place
            return Prepared(lambda: ops.bias_add_forward(y, b), "bias_add fwd", "x".join(map(str, shape)),
                            bytes_moved=2 * y.nbytes + b.nbytes, check=_shape_is(shape))
        return Prepared(lambda: ops.bias_add_backward(y), "bias_add bwd", "x".join(map(str, shape)),
                        bytes_moved=y.nbytes + tail[0] * F32, check=_shape_is((tail[0],)))
    return prepare


def _batchnorm(tail, direction):
    def prepare(xp, batch, impl, mode):
        shape = (batch, *tail)
        x, dy = _arrays(xp, shape, shape)
        gamma, beta = xp.ones(tail[0], dtype=xp.float32), xp.zeros(tail[0], dtype=xp.float32)
        _, cache, _, _ = ops.batchnorm_forward(x, gamma, beta)
        if direction == "fwd":   # training mode: batch statistics; ideal: read x once, write y
            fn, moved = (lambda: ops.batchnorm_forward(x, gamma, beta)[0]), 2 * x.nbytes
        else:                    # read dy and x (or xhat), write dx
            fn, moved = (lambda: ops.batchnorm_backward(dy, cache)[0]), 3 * x.nbytes
        return Prepared(fn, f"batchnorm{1 if len(shape) == 2 else 2}d {direction}", "x".join(map(str, shape)),
                        bytes_moved=moved, check=_shape_is(shape))
    return prepare


FILM_IMPLS = ("numpy", "cuda", *(f"cuda:v{v}" for v in FILM_BACKWARD_VERSIONS))   # cuda: the default version


def _film(tail, direction):
    """FiLM at G's planes, gamma and beta the halves of one (N, 2C) array as nn.FiLM passes
    them. Ideal bytes: fwd reads x, writes y; bwd reads dy and x, writes dx (the N*C values
    of gamma, beta, dgamma, dbeta are negligible)."""
    def prepare(xp, batch, impl, mode):
        film = importlib.import_module("cganraw.ops.film")
        shape, c = (batch, *tail), tail[0]
        x, dy, gb = _arrays(xp, shape, shape, (batch, 2 * c))
        gamma, beta = gb[:, :c], gb[:, c:]
        _, cache = ops.film_forward(x, gamma, beta)
        version = int(impl.split(":v")[1]) if impl.startswith("cuda:v") else None
        if direction == "fwd":
            fn, moved = (lambda: ops.film_forward(x, gamma, beta)[0]), 2 * x.nbytes
        elif version is None:
            fn, moved = (lambda: ops.film_backward(dy, cache)[0]), 3 * x.nbytes
        else:
            fn, moved = (lambda: film.film_backward_cuda(dy, cache, version=version)[0]), 3 * x.nbytes
        return Prepared(fn, f"film {direction}", "x".join(map(str, shape)), bytes_moved=moved,
                        check=_shape_is(shape, xp))
    return prepare


def _embedding(direction, k=10, d=50):
    """The label path of cgan-conv: Embedding(10, 50)."""
    def prepare(xp, batch, impl, mode):
        idx = xp.asarray(np.random.default_rng(0).integers(0, k, batch))
        W, dy = _arrays(xp, (k, d), (batch, d))
        _, cache = ops.embedding_forward(idx, W)
        if direction == "fwd":   # read the indices and their rows, write y
            fn, moved, out = (lambda: ops.embedding_forward(idx, W)[0]), idx.nbytes + 2 * dy.nbytes, (batch, d)
        else:                    # read the indices and dy, write dW
            fn, moved, out = (lambda: ops.embedding_backward(dy, cache)), idx.nbytes + dy.nbytes + W.nbytes, (k, d)
        return Prepared(fn, f"embedding {direction}", f"N={batch} K={k} D={d}", bytes_moved=moved,
                        check=_shape_is(out))
    return prepare


def _bce(direction):
    """D's loss on its (N, 1) logits."""
    def prepare(xp, batch, impl, mode):
        shape = (batch, 1)
        (x,) = _arrays(xp, shape)
        t = xp.ones(shape, dtype=xp.float32)
        _, cache = ops.bce_with_logits_forward(x, t)
        if direction == "fwd":
            fn, moved = (lambda: ops.bce_with_logits_forward(x, t)[0]), 2 * x.nbytes + F32
        else:
            fn, moved = (lambda: ops.bce_with_logits_backward(1.0, cache)), 3 * x.nbytes

        def check(out):
            assert bool(xp.isfinite(out).all()), "non-finite loss or gradient"
        return Prepared(fn, f"bce_with_logits {direction}", "x".join(map(str, shape)), bytes_moved=moved,
                        check=check)
    return prepare


def _adam(pname, shape):
    """One fused Adam update of a parameter tensor (batch-independent)."""
    def prepare(xp, batch, impl, mode):
        p, g = _arrays(xp, shape, shape)
        m, v = xp.zeros_like(p), xp.zeros_like(p)
        step = [0]

        def update():
            step[0] += 1
            ops.adam_update(p, g, m, v, 2e-4, 0.5, 0.999, 1e-8, step[0])
            return p
        return Prepared(update, "adam", f"{pname} {'x'.join(map(str, shape))}", bytes_moved=7 * p.nbytes,
                        check=_shape_is(shape, xp))    # read p g m v, write p m v
    return prepare


# ------------------------------------------------------------------ conv ----------

def _layer_tag(layer):
    return layer[0].split()[0]


def _im2col(layer):
    def prepare(xp, batch, impl, mode):
        shape, k, s, p, out_hw = S.im2col_calls(layer, batch)
        (x,) = _arrays(xp, shape)
        cols = ops.im2col(x, k, s, p, out_hw=out_hw)
        return Prepared(lambda: ops.im2col(x, k, s, p, out_hw=out_hw), "im2col",
                        f"{'x'.join(map(str, shape))} k{k}s{s}p{p} [{_layer_tag(layer)}]",
                        bytes_moved=x.nbytes + cols.nbytes, check=_shape_is(cols.shape))
    return prepare


COL2IM_IMPLS = ("numpy", "cuda", *(f"cuda:v{v}" for v in COL2IM_VERSIONS))   # cuda: the default version


def _col2im(layer):
    def prepare(xp, batch, impl, mode):
        conv = importlib.import_module("cganraw.ops.conv")
        shape, k, s, p, out_hw = S.im2col_calls(layer, batch)
        n, c = shape[:2]
        (cols,) = _arrays(xp, (c * k * k, n * out_hw[0] * out_hw[1]))
        version = int(impl.split(":v")[1]) if impl.startswith("cuda:v") else None

        def fn():
            if version is None:
                return ops.col2im(cols, shape, k, s, p, out_hw=out_hw)
            return conv.col2im_cuda(cols, shape, k, s, p, out_hw, version=version)

        def check(out):
            _shape_is(shape)(out)
            if mode == "smoke" and impl != "numpy":   # the kernels against the NumPy reference
                from cganraw import backend
                want = conv.col2im_numpy(backend.asnumpy(cols), shape, k, s, p, out_hw)
                np.testing.assert_allclose(backend.asnumpy(out), want, rtol=1e-5, atol=1e-5)
        return Prepared(fn, "col2im", f"{'x'.join(map(str, shape))} k{k}s{s}p{p} [{_layer_tag(layer)}]",
                        bytes_moved=cols.nbytes + int(np.prod(shape)) * F32, check=check)
    return prepare


def _conv_layer(layer, direction):
    def prepare(xp, batch, impl, mode):
        _, kind, *_ = layer
        x_shape, w_shape, y_shape, flops = S.conv_layer_dims(layer, batch)
        x, W, dy = _arrays(xp, x_shape, w_shape, y_shape)
        W *= 0.02
        b = xp.zeros(w_shape[0] if kind == "conv" else w_shape[1], dtype=xp.float32)
        op, fwd, bwd = (("conv2d", ops.conv2d_forward, ops.conv2d_backward) if kind == "conv" else
                        ("conv_transpose2d", ops.conv_transpose2d_forward, ops.conv_transpose2d_backward))
        stride, padding = layer[5], layer[6]
        y, cache = fwd(x, W, b, stride, padding)
        assert tuple(y.shape) == y_shape
        if direction == "fwd":
            fn, check = (lambda: fwd(x, W, b, stride, padding)[0]), _shape_is(y_shape)
        else:
            fn, flops = (lambda: bwd(dy, cache)), 2 * flops

            def check(out):
                dx, dW, _ = out
                assert tuple(dx.shape) == x_shape and tuple(dW.shape) == w_shape
        return Prepared(fn, f"{op} {direction}", f"N={batch} {layer[0].split(' ', 1)[1]}", flops=flops,
                        check=check, extra={"layer": _layer_tag(layer)})
    return prepare


# ------------------------------------------------------------------ GEMM ----------

GEMM_IMPLS = ("numpy", "cuda:cublas", *(f"cuda:v{v}" for v in GEMM_VERSIONS))


def _gemm(index):
    def prepare(xp, batch, impl, mode):
        gm = importlib.import_module("cganraw.ops.gemm")
        label, m, n, k, ta, tb = S.gemm_cases(batch)[index]
        a, b = _arrays(xp, (k, m) if ta else (m, k), (n, k) if tb else (k, n))
        opa, opb = (a.T if ta else a), (b.T if tb else b)
        version = int(impl.split(":v")[1]) if impl.startswith("cuda:v") else None

        def fn():
            if impl == "numpy":
                return gm.gemm(a, b, trans_a=ta, trans_b=tb)
            if impl == "cuda:cublas":
                return xp.matmul(opa, opb)
            return gm.gemm_cuda(a, b, trans_a=ta, trans_b=tb, version=version)

        def check(out):
            assert tuple(out.shape) == (m, n)
            if impl.startswith("cuda:v") and mode == "smoke":   # the kernels against cuBLAS
                want = xp.matmul(opa, opb)
                np.testing.assert_allclose(xp.asnumpy(out), xp.asnumpy(want), rtol=1e-3, atol=1e-3 * k ** 0.5)
        return Prepared(fn, f"gemm {label}", f"M={m} N={n} K={k} {'T' if ta else 'N'}{'T' if tb else 'N'}",
                        flops=2 * m * n * k, check=check,
                        extra={"m": m, "n": n, "k": k, "trans_a": ta, "trans_b": tb})
    return prepare


# ------------------------------------------------------------------ registry ------

def specs() -> list[Spec]:
    out = []
    for op, tails in S.ELEMENTWISE.items():
        for tail in tails:
            for d in ("fwd", "bwd"):
                out.append(Spec("ops", "elementwise", f"{op}_{d}-{S.tail_id(tail)}", _activation(op, tail, d)))
    for tail, p in S.DROPOUT:
        for d in ("fwd", "bwd"):
            out.append(Spec("ops", "elementwise", f"dropout_{d}-{S.tail_id(tail)}-p{p}", _dropout(tail, p, d)))
    for tail in S.BIAS:
        for d in ("fwd", "bwd"):
            out.append(Spec("ops", "bias", f"bias_add_{d}-{S.tail_id(tail)}", _bias_add(tail, d)))
    for tail in S.BATCHNORM:
        for d in ("fwd", "bwd"):
            out.append(Spec("ops", "batchnorm", f"batchnorm_{d}-{S.tail_id(tail)}", _batchnorm(tail, d)))
    for tail in S.BATCHNORM:
        if len(tail) == 3:      # G's (C, H, W) planes
            out.append(Spec("ops", "film", f"film_fwd-{S.tail_id(tail)}", _film(tail, "fwd")))
            out.append(Spec("ops", "film", f"film_bwd-{S.tail_id(tail)}", _film(tail, "bwd"), impls=FILM_IMPLS))
    for d in ("fwd", "bwd"):
        out.append(Spec("ops", "embedding", f"embedding_{d}", _embedding(d)))
        out.append(Spec("ops", "bce", f"bce_with_logits_{d}", _bce(d)))
    for pname, shape in S.ADAM_TENSORS:
        out.append(Spec("ops", "adam", f"adam-{pname}", _adam(pname, shape), batched=False))
    for layer in S.CONV_LAYERS:
        tag = _layer_tag(layer)
        out.append(Spec("conv", "im2col", f"im2col-{tag}", _im2col(layer)))
        out.append(Spec("conv", "im2col", f"col2im-{tag}", _col2im(layer), impls=COL2IM_IMPLS))
        for d in ("fwd", "bwd"):
            out.append(Spec("conv", "conv", f"conv_{d}-{tag}", _conv_layer(layer, d)))
    for i, (label, *_) in enumerate(S.gemm_cases(1)):   # labels are batch-free; M, N scale with it
        out.append(Spec("gemm", "gemm", f"gemm-{label.replace(' ', '_')}", _gemm(i), impls=GEMM_IMPLS))
    return out

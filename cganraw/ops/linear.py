"""Dense layer: y = x @ W.T + b, with W in PyTorch's (out, in) layout, for the layer
cganraw.nn.Linear.

    linear_forward    gemm (x W^T) + bias_add_forward
    linear_backward   gemm (dy W, dy^T x) + bias_add_backward
Linear runs on the cuda/emu backends as cuBLAS or the GEMM kernels (kernels/gemm.cu,
cganraw.ops.gemm) and the bias kernels (kernels/bias.cu, cganraw.ops.bias); on numpy, as
BLAS and their NumPy references. A layer with one output (a discriminator's logit) is a
matrix-vector product: on the kernel backends it runs as kernels/linear.cu instead, one
launch each way (linear_one_output_forward_cuda / _backward_cuda, reference
linear_one_output_numpy: the GEMM formulas).
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch
from cganraw.ops.bias import bias_add_backward, bias_add_forward
from cganraw.ops.gemm import gemm

ONE_OUTPUT_BLOCK = 256


def _one_output(x, W):
    # the kernels' case: kernel backends, float32, W (1, F), x (N, F)
    return (backend.uses_kernels() and W.ndim == 2 and W.shape[0] == 1 and x.ndim == 2 and x.shape[1] == W.shape[1]
            and x.dtype == np.float32 and W.dtype == np.float32)


def linear_one_output_numpy(x, W, b, dy):
    """The reference of both kernels: y = x W^T + b, and for dy (N, 1): dx = dy W, dW = dy^T x,
    db = sum dy."""
    y = x @ W.T + (b if b is not None else 0)
    return y, dy @ W, dy.T @ x, dy.sum(axis=0)


def linear_one_output_forward_cuda(x, W, b=None):
    """kernels/linear.cu linear_one_output_forward_v1: x (N, F), W (1, F), b (1,) or None -> y (N, 1)."""
    op = "linear_one_output_forward"
    xc, wc = _launch.arg(x, np.float32, f"{op}: x"), _launch.arg(W, np.float32, f"{op}: W")
    if xc.ndim != 2 or wc.shape != (1, xc.shape[1]):
        raise ValueError(f"{op}: expected x (N, F) and W (1, F), got {tuple(xc.shape)} and {tuple(wc.shape)}")
    bc = None if b is None else _launch.arg(b, np.float32, f"{op}: b")
    if bc is not None and bc.shape != (1,):
        raise ValueError(f"{op}: b must have shape (1,), got {tuple(bc.shape)}")
    n, f = (int(v) for v in xc.shape)
    _launch.element_count(xc.size, op)
    y = _launch.empty((n, 1))
    if n:
        _launch.function("linear", "linear_one_output_forward_v1")(
            (min(n, _launch.MAX_ROW_BLOCKS),), (_launch.warp_block(f, ONE_OUTPUT_BLOCK),),
            (y, xc, wc, bc if bc is not None else wc, _launch.i32(n), _launch.i32(f), _launch.i32(bc is not None)))
    return y


def linear_one_output_backward_cuda(dy, x, W, need_dx=True, need_dW=True, has_bias=False, dW_out=None, db_out=None):
    """kernels/linear.cu linear_one_output_backward_v1, one launch: dy (N, 1) -> dx (N, F),
    dW (1, F), db (1,) (None where not needed or absent). With dW_out and db_out (the
    parameters' .grad; both or neither) the sums are added into them and come back None."""
    op = "linear_one_output_backward"
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    xc, wc = _launch.arg(x, np.float32, f"{op}: x"), _launch.arg(W, np.float32, f"{op}: W")
    n, f = (int(v) for v in xc.shape)
    if dyc.shape != (n, 1) or wc.shape != (1, f):
        raise ValueError(f"{op}: expected dy (N, 1), x (N, F), W (1, F), got {tuple(dyc.shape)}, {tuple(xc.shape)}, "
                         f"{tuple(wc.shape)}")
    into = dW_out is not None
    if (has_bias and into != (db_out is not None)) or (not has_bias and db_out is not None):
        raise ValueError(f"{op}: give dW_out and db_out together (db_out only with a bias)")
    need_db = has_bias and need_dW
    dx = _launch.empty((n, f)) if need_dx else None
    dW = (_launch.writable(dW_out, op, "dW_out") if into else _launch.empty((1, f))) if need_dW else None
    db = (_launch.writable(db_out, op, "db_out") if into else _launch.empty((1,))) if need_db else None
    if dW is not None and dW.shape != (1, f) or db is not None and db.shape != (1,):
        raise ValueError(f"{op}: dW_out must be (1, {f}) and db_out (1,), float32, contiguous")
    if need_dW and n == 0 and not into:
        dW.fill(0)
        if db is not None:
            db.fill(0)
    elif need_dx or need_dW:
        dummy = dyc
        grid, block = _launch.grid_for(f + 1, ONE_OUTPUT_BLOCK)
        _launch.function("linear", "linear_one_output_backward_v1")(
            grid, block, (dx if dx is not None else dummy, dW if dW is not None else dummy,
                          db if db is not None else dummy, dyc, xc, wc, _launch.i32(n), _launch.i32(f),
                          _launch.i32(need_dx), _launch.i32(need_dW), _launch.i32(need_db), _launch.i32(into)))
    if into:
        if need_dW:
            _launch.write_back(dW_out, dW)
            if db is not None:
                _launch.write_back(db_out, db)
        return dx, None, None
    return dx, dW, db


def linear_forward(x, W, b=None):
    """x (N, in), W (out, in), b (out,) or None -> y (N, out)."""
    if _one_output(x, W):
        return linear_one_output_forward_cuda(x, W, b), (x, W, b is not None)
    y = gemm(x, W, trans_b=True)
    if b is not None:
        bias_add_forward(y, b)
    return y, (x, W, b is not None)


def linear_backward(dy, cache, need_dx=True, need_dW=True, dW_out=None, db_out=None):
    """dy (N, out) -> dx (N, in), dW (out, in), db (out,) (None where not needed/absent).
    With dW_out (a C-contiguous (out, in) array, the weight's .grad) the GEMM adds dW into
    it (beta = 1) and dW is returned as None; with db_out (the bias's .grad) the bias
    reduction adds db into it, and db is None."""
    x, W, has_bias = cache
    if _one_output(x, W) and not (has_bias and (dW_out is None) != (db_out is None)):
        return linear_one_output_backward_cuda(dy, x, W, need_dx, need_dW, has_bias, dW_out,
                                               db_out if has_bias else None)
    if need_dx and W.shape[0] == 1 and type(dy) is np.ndarray and type(W) is np.ndarray and dy.dtype == W.dtype:
        # one output (D's head): dx = dy W is an outer product, K = 1, which BLAS ran at 1 GFLOP/s;
        # each element is one product either way, so the broadcast gives the GEMM's bits
        dx = np.multiply(dy, W)
    else:
        dx = gemm(dy, W) if need_dx else None
    if need_dW and dW_out is not None:
        gemm(dy, x, trans_a=True, beta=1.0, out=dW_out)
        dW = None
    else:
        dW = gemm(dy, x, trans_a=True) if need_dW else None
    db = bias_add_backward(dy, out=db_out) if (has_bias and need_dW) else None
    return dx, dW, db

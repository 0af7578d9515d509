"""Dense layer: y = x @ W.T + b, with W in PyTorch's (out, in) layout, for the layer
cganraw.nn.Linear.

    linear_forward    gemm (x W^T) + bias_add_forward
    linear_backward   gemm (dy W, dy^T x) + bias_add_backward
Linear has no kernels of its own: on the cuda/emu backends it runs as cuBLAS or the
GEMM kernels (kernels/gemm.cu, cganraw.ops.gemm) and the bias kernels (kernels/bias.cu,
cganraw.ops.bias); on numpy, as BLAS and their NumPy references. A fused kernel would
save one pass over the (N, out) output, small beside the GEMM.
"""
from __future__ import annotations

from cganraw.ops.bias import bias_add_backward, bias_add_forward
from cganraw.ops.gemm import gemm


def linear_forward(x, W, b=None):
    """x (N, in), W (out, in), b (out,) or None -> y (N, out)."""
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
    dx = gemm(dy, W) if need_dx else None
    if need_dW and dW_out is not None:
        gemm(dy, x, trans_a=True, beta=1.0, out=dW_out)
        dW = None
    else:
        dW = gemm(dy, x, trans_a=True) if need_dW else None
    db = bias_add_backward(dy, out=db_out) if (has_bias and need_dW) else None
    return dx, dW, db

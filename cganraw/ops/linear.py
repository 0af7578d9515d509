"""Dense layer: y = x @ W.T + b, with W in PyTorch's (out, in) layout."""
from __future__ import annotations

from cganraw.ops.bias import bias_add, bias_grad
from cganraw.ops.gemm import gemm


def linear_forward(x, W, b=None):
    """x (N, in), W (out, in), b (out,) or None -> y (N, out)."""
    y = gemm(x, W, trans_b=True)
    if b is not None:
        bias_add(y, b)
    return y, (x, W, b is not None)


def linear_backward(dy, cache, need_dx=True, need_dW=True):
    """dy (N, out) -> dx (N, in), dW (out, in), db (out,) (None where not needed/absent)."""
    x, W, has_bias = cache
    dx = gemm(dy, W) if need_dx else None
    dW = gemm(dy, x, trans_a=True) if need_dW else None
    db = bias_grad(dy) if (has_bias and need_dW) else None
    return dx, dW, db

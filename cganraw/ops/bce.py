"""Binary cross-entropy on logits, mean-reduced, in the stable form
    l(x, t) = max(x, 0) - x t + log1p(exp(-|x|))
which never exponentiates a positive number, so logits of +-1e4 stay finite.
Targets may be soft (label smoothing). The loss function is cganraw.losses.bce_with_logits.

Faces of the op `bce_with_logits` (kernels in kernels/bce.cu):
    bce_with_logits_forward    _numpy, _cuda: bce_with_logits_forward_v1, or
                               bce_with_logits_forward_v2 + bce_with_logits_forward_reduce_v2
    bce_with_logits_backward   _numpy, _cuda: bce_with_logits_backward_v1/v2
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch
from cganraw.ops.activation import sigmoid_numpy


def bce_with_logits_forward_numpy(logits, targets):
    xp = backend.array_module(logits)
    x, t = logits, targets
    per_item = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
    return per_item.mean(), (x, t)


def bce_with_logits_backward_numpy(dloss, cache):
    # d/dx mean(l) = (sigmoid(x) - t) / N
    x, t = cache
    return (sigmoid_numpy(x) - t) * x.dtype.type(dloss / x.size)


# ---------------------------------------------------------------- CUDA kernels (kernels/bce.cu)
# version 1: per-element atomicAdd of term / n into one float (order varies run to run);
# version 2 (default): block partial sums, then one block adds them in a fixed order and
# divides by n: the same loss on every run.

REDUCE_BLOCK = 256   # threads of the single block that sums version 2's partials


def bce_with_logits_forward_cuda(logits, targets, version=None):
    """As bce_with_logits_forward_numpy: (loss as a 0-d float32 array, cache (x, t))."""
    op = "bce_with_logits_forward"
    xc = _launch.arg(logits, np.float32, f"{op}: logits")
    tc = _launch.arg(targets, np.float32, f"{op}: targets")
    if tuple(tc.shape) != tuple(xc.shape):
        raise ValueError(f"{op}: targets have shape {tuple(tc.shape)}, logits {tuple(xc.shape)}")
    if xc.size == 0:
        raise ValueError(f"{op}: the mean of no logits is undefined")
    version = _launch.pick_version(op, version, 2)
    n = _launch.element_count(xc.size, op)
    if version == 1:
        loss = _launch.zeros((1,))
        grid, block = _launch.grid_for(xc.size)
        _launch.function("bce", "bce_with_logits_forward_v1")(
            grid, block, (loss, xc, tc, _launch.f32(1.0 / xc.size), n))
    else:
        loss = _launch.empty((1,))
        grid, block = _launch.grid_for(xc.size, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        block_sums = _launch.empty((grid[0],))
        _launch.function("bce", "bce_with_logits_forward_v2")(grid, block, (block_sums, xc, tc, n))
        _launch.function("bce", "bce_with_logits_forward_reduce_v2")(
            (1,), (REDUCE_BLOCK,), (loss, block_sums, _launch.i32(grid[0]), n))
    return loss.reshape(()), (xc, tc)


def bce_with_logits_backward_cuda(dloss, cache, version=None, out=None):
    """As bce_with_logits_backward_numpy: dx = (sigmoid(x) - t) * dloss / N, written into
    `out` (a contiguous float32 array of the logits' shape) when given."""
    op = "bce_with_logits_backward"
    x, t = cache
    xc = _launch.arg(x, np.float32, f"{op}: logits")
    tc = _launch.arg(t, np.float32, f"{op}: targets")
    if tuple(tc.shape) != tuple(xc.shape):
        raise ValueError(f"{op}: targets have shape {tuple(tc.shape)}, logits {tuple(xc.shape)}")
    if out is None:
        dx = _launch.empty(xc.shape)
    else:
        dx = _launch.arg(out, np.float32, f"{op}: out")
        if dx is not out or tuple(dx.shape) != tuple(xc.shape):
            raise ValueError(f"{op}: out must be a contiguous array of shape {tuple(xc.shape)}")
    # float(): dloss may be a Python number, a NumPy scalar or a 0-d array of either backend
    _launch.elementwise_launch("bce", op, _launch.pick_version(op, version, 2), xc.size,
                               (dx, xc, tc, _launch.f32(float(dloss) / max(xc.size, 1)),
                                _launch.element_count(xc.size, op)))
    return dx


# ---------------------------------------------------------------- public ops: dispatch

def bce_with_logits_forward(logits, targets):
    """logits, targets (same shape) -> (loss 0-d array, cache)."""
    if backend.uses_kernels():
        return bce_with_logits_forward_cuda(logits, targets)
    return bce_with_logits_forward_numpy(logits, targets)


def bce_with_logits_backward(dloss, cache, out=None):
    """dlogits, written into `out` when given (and returned)."""
    if backend.uses_kernels():
        return bce_with_logits_backward_cuda(dloss, cache, out=out)
    dx = bce_with_logits_backward_numpy(dloss, cache)
    if out is None:
        return dx
    out[...] = dx
    return out

"""Binary cross-entropy on logits, mean-reduced, in the stable form
    l(x, t) = max(x, 0) - x t + log1p(exp(-|x|))
which never exponentiates a positive number, so logits of +-1e4 stay finite.
Targets may be soft (label smoothing). The loss function is cganraw.losses.bce_with_logits.

Faces of the op `bce_with_logits` (kernels in kernels/bce.cu):
    bce_with_logits_forward    _numpy, _cuda: bce_with_logits_forward_v1, or
                               bce_with_logits_forward_v2 + bce_with_logits_forward_reduce_v2
    bce_with_logits_backward   _numpy, _cuda: bce_with_logits_backward_v1/v2
    bce_with_logits_segments   _numpy, _cuda: bce_with_logits_segments_v1: the loss and the
                               gradient of several terms at once, each a segment of equal
                               length of one logits array with a constant target and a
                               gradient weight (D's [real | wrong | fake] batch): one launch
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


def _gradient_out(out, shape, op):
    """The gradient's array: a new one, or `out` when it is a contiguous float32 array of
    `shape` (the caller's buffer, written in place)."""
    if out is None:
        return _launch.empty(shape)
    dx = _launch.arg(out, np.float32, f"{op}: out")
    if dx is not out or tuple(dx.shape) != tuple(shape):
        raise ValueError(f"{op}: out must be a contiguous array of shape {tuple(shape)}")
    return dx


def bce_with_logits_backward_cuda(dloss, cache, version=None, out=None):
    """As bce_with_logits_backward_numpy: dx = (sigmoid(x) - t) * dloss / N, written into
    `out` (a contiguous float32 array of the logits' shape) when given."""
    op = "bce_with_logits_backward"
    x, t = cache
    xc = _launch.arg(x, np.float32, f"{op}: logits")
    tc = _launch.arg(t, np.float32, f"{op}: targets")
    if tuple(tc.shape) != tuple(xc.shape):
        raise ValueError(f"{op}: targets have shape {tuple(tc.shape)}, logits {tuple(xc.shape)}")
    dx = _gradient_out(out, xc.shape, op)
    # float(): dloss may be a Python number, a NumPy scalar or a 0-d array of either backend
    _launch.elementwise_launch("bce", op, _launch.pick_version(op, version, 2), xc.size,
                               (dx, xc, tc, _launch.f32(float(dloss) / max(xc.size, 1)),
                                _launch.element_count(xc.size, op)))
    return dx


def bce_with_logits_segments_numpy(logits, targets, weights, out=None):
    """logits (parts * n, ...) as `parts` = len(targets) segments of equal length along axis 0;
    segment s against the constant target targets[s], its gradient scaled by weights[s].
    -> (losses (parts,), dlogits of the logits' shape, written into `out` when given):
    per segment exactly bce_with_logits_forward_numpy and bce_with_logits_backward_numpy."""
    xp = backend.array_module(logits)
    parts = _check_segments(logits, targets, weights, "bce_with_logits_segments")
    n = logits.shape[0] // parts
    dx = out if out is not None else xp.empty_like(logits)
    losses = xp.empty((parts,), logits.dtype)
    for s, (t, w) in enumerate(zip(targets, weights)):
        x = logits[s * n:(s + 1) * n]
        loss, cache = bce_with_logits_forward_numpy(x, xp.full(x.shape, t, dtype=x.dtype))
        losses[s] = loss
        dx[s * n:(s + 1) * n] = bce_with_logits_backward_numpy(float(w), cache)
    return losses, dx


def _check_segments(logits, targets, weights, op):
    parts = len(targets)
    if parts < 1 or len(weights) != parts:
        raise ValueError(f"{op}: need one weight per target and at least one segment, got {len(targets)} targets "
                         f"and {len(weights)} weights")
    if logits.ndim < 1 or logits.shape[0] % parts or logits.size == 0:
        raise ValueError(f"{op}: logits of shape {tuple(logits.shape)} do not split into {parts} equal, non-empty "
                         "segments along axis 0")
    return parts


SEGMENT_BLOCK = 256      # threads of each segment's block
_params: dict = {}       # (backend, targets, weights) -> the device array of both, uploaded once


def _segment_params(targets, weights):
    key = (backend.current(), tuple(float(t) for t in targets), tuple(float(w) for w in weights))
    p = _params.get(key)
    if p is None:
        if len(_params) > 64:
            _params.clear()
        p = _params[key] = backend.to_device(np.array(key[1] + key[2], dtype=np.float32))
    return p


def bce_with_logits_segments_cuda(logits, targets, weights, out=None, version=None):
    """As bce_with_logits_segments_numpy, in one launch (a block per segment); losses is a
    (parts,) device array. The targets and weights go up once per distinct set and stay."""
    op = "bce_with_logits_segments"
    _launch.pick_version(op, version, 1, (1,))
    xc = _launch.arg(logits, np.float32, f"{op}: logits")
    parts = _check_segments(xc, targets, weights, op)
    dx = _gradient_out(out, xc.shape, op)
    n = _launch.element_count(xc.size // parts, op)
    _launch.element_count(xc.size, op)
    losses = _launch.empty((parts,))
    _launch.function("bce", "bce_with_logits_segments_v1")(
        (parts,), (SEGMENT_BLOCK,), (losses, dx, xc, _segment_params(targets, weights), n, _launch.i32(parts)))
    return losses, dx


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


def bce_with_logits_segments(logits, targets, weights, out=None):
    """(losses (parts,), dlogits): every segment's mean loss and weighted gradient at once."""
    if backend.uses_kernels():
        return bce_with_logits_segments_cuda(logits, targets, weights, out=out)
    return bce_with_logits_segments_numpy(logits, targets, weights, out=out)

"""Per-channel bias over axis 1 of (N, C) or (N, C, H, W): the op `bias_add`, used by
the layers Linear, Conv2d and ConvTranspose2d (cganraw.nn.linear, cganraw.nn.conv).

    bias_add_forward    y += b along axis 1, in place    _numpy, _cuda: bias_add_forward_v1/v2
    bias_add_backward   db = dy summed over all but C     _numpy, _cuda: bias_add_backward_v1/v2
Kernels in kernels/bias.cu.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


def _channel_view(b, ndim):
    # (C,) -> (1, C) or (1, C, 1, 1), broadcastable against (N, C[, H, W])
    return b.reshape((1, -1) + (1,) * (ndim - 2))


def bias_add_forward_numpy(y, b):
    y += _channel_view(b, y.ndim)
    return y


def bias_add_backward_numpy(dy):
    # db[c] = sum over batch and pixels of dy[:, c]
    if dy.ndim == 2:
        return dy.sum(axis=0)
    n, c = dy.shape[:2]
    return dy.reshape(n, c, -1).sum(axis=(0, 2))


# ---------------------------------------------------------------- CUDA kernels (kernels/bias.cu)

MAX_ROW_BLOCKS = 65535   # the v2 kernels block-stride over rows/channels beyond this many blocks


def bias_add_forward_cuda(y, b, version=None):
    """In place, as bias_add_forward_numpy. version None picks 2 for maps with at least a
    warp of pixels per row (conv outputs) and 1 otherwise (Linear outputs)."""
    op = "bias_add_forward"
    n, c, hw = _launch.split_channels(y, op, "y")
    yc = _launch.writable(y, op, "y")
    bc = _launch.arg(b, np.float32, f"{op}: b")
    if tuple(bc.shape) != (c,):
        raise ValueError(f"{op}: b has shape {tuple(bc.shape)}, expected ({c},) for y of shape {tuple(y.shape)}")
    version = _launch.pick_version(op, version, 2 if hw >= 32 else 1)
    total = _launch.element_count(yc.size, op)
    if yc.size:
        if version == 1:
            grid, block = _launch.grid_for(yc.size)
            _launch.function("bias", "bias_add_forward_v1")(
                grid, block, (yc, bc, _launch.i32(c), _launch.i32(hw), total))
        else:
            rows = n * c
            _launch.function("bias", "bias_add_forward_v2")(
                (min(rows, MAX_ROW_BLOCKS),), (_launch.warp_block(hw),),
                (yc, bc, _launch.i32(rows), _launch.i32(c), _launch.i32(hw)))
    _launch.write_back(y, yc)
    return y


def bias_add_backward_cuda(dy, version=None):
    """As bias_add_backward_numpy. version None picks 2 (a block per channel) for conv maps
    and 1 (a thread per channel) for (N, C), where the channels alone give the parallelism."""
    op = "bias_add_backward"
    n, c, hw = _launch.split_channels(dy, op, "dy")
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    _launch.element_count(dyc.size, op)
    version = _launch.pick_version(op, version, 2 if hw > 1 else 1)
    db = _launch.empty((c,))
    if c == 0:
        return db
    args = (db, dyc, _launch.i32(n), _launch.i32(c), _launch.i32(hw))
    if version == 1:
        grid, block = _launch.grid_for(c)
        _launch.function("bias", "bias_add_backward_v1")(grid, block, args)
    else:
        _launch.function("bias", "bias_add_backward_v2")(
            (min(c, MAX_ROW_BLOCKS),), (_launch.warp_block(n * hw),), args)
    return db


# ---------------------------------------------------------------- public ops: dispatch

def bias_add_forward(y, b):
    """In place: y (N, C[, H, W]) += b (C,) along axis 1. Returns y (no cache: the
    backward needs only dy)."""
    if backend.uses_kernels():
        return bias_add_forward_cuda(y, b)
    return bias_add_forward_numpy(y, b)


def bias_add_backward(dy):
    """dy (N, C[, H, W]) -> db (C,)."""
    if backend.uses_kernels():
        return bias_add_backward_cuda(dy)
    return bias_add_backward_numpy(dy)

"""Bias add and bias gradient over the channel axis 1 of (N, C) or (N, C, H, W)."""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch
from cganraw.ops.activation import KERNEL_VERSIONS, element_count


def _channel_view(b, ndim):
    # (C,) -> (1, C) or (1, C, 1, 1), broadcastable against (N, C[, H, W])
    return b.reshape((1, -1) + (1,) * (ndim - 2))


def bias_add_numpy(y, b):
    y += _channel_view(b, y.ndim)
    return y


def bias_grad_numpy(dy):
    # db[c] = sum over batch and pixels of dy[:, c]
    if dy.ndim == 2:
        return dy.sum(axis=0)
    n, c = dy.shape[:2]
    return dy.reshape(n, c, -1).sum(axis=(0, 2))


# ---------------------------------------------------------------- CUDA kernels (kernels/bias.cu)

MAX_ROW_BLOCKS = 65535   # kernel2s block-stride over rows/channels beyond this many blocks


def _split(a, op, name):
    """(N, C, HW) of an (N, C[, ...]) array; HW = 1 for (N, C)."""
    if a.ndim < 2:
        raise ValueError(f"{op}: {name} must have shape (N, C[, H, W]), got {tuple(a.shape)}")
    n, c = int(a.shape[0]), int(a.shape[1])
    return n, c, (a.size // (n * c) if n * c else 0)


def _check_version(op, version):
    if version not in KERNEL_VERSIONS:
        raise ValueError(f"{op}: kernel version must be one of {KERNEL_VERSIONS}, got {version!r}")


def warp_block(count, max_block=256):
    """Threads per block for a per-channel reduction over `count` values: whole warps
    (the shuffles use full masks), no more than the work, at most max_block."""
    return int(min(max_block, max(32, -(-int(count) // 32) * 32)))


def writable(a, op, name):
    """An operand a kernel updates in place: `a` itself when it is a contiguous float32
    array; for a strided float32 view, a contiguous copy to hand to `write_back` after."""
    return _launch.arg(a, np.float32, f"{op}: {name}")


def write_back(a, ac):
    """Copy a kernel's in-place result `ac` into `a` when `writable` had to copy."""
    if ac is not a:
        a[...] = ac


def bias_add_kernel(y, b, version=None):
    """In place, as bias_add_numpy. version None picks 2 for maps with at least a warp
    of pixels per row (conv outputs) and 1 otherwise (Linear outputs)."""
    op = "bias_forward"
    n, c, hw = _split(y, op, "y")
    yc = writable(y, op, "y")
    bc = _launch.arg(b, np.float32, f"{op}: b")
    if tuple(bc.shape) != (c,):
        raise ValueError(f"{op}: b has shape {tuple(bc.shape)}, expected ({c},) for y of shape {tuple(y.shape)}")
    if version is None:
        version = 2 if hw >= 32 else 1
    _check_version(op, version)
    total = element_count(yc.size, op)
    if yc.size:
        if version == 1:
            grid, block = _launch.grid_for(yc.size)
            _launch.function("bias", "bias_forward_kernel1")(
                grid, block, (yc, bc, _launch.i32(c), _launch.i32(hw), total))
        else:
            rows = n * c
            _launch.function("bias", "bias_forward_kernel2")(
                (min(rows, MAX_ROW_BLOCKS),), (warp_block(hw),), (yc, bc, _launch.i32(rows), _launch.i32(c), _launch.i32(hw)))
    write_back(y, yc)
    return y


def bias_grad_kernel(dy, version=None):
    """As bias_grad_numpy. version None picks 2 (a block per channel) for conv maps and
    1 (a thread per channel) for (N, C), where the channels alone give the parallelism."""
    op = "bias_backward"
    n, c, hw = _split(dy, op, "dy")
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    element_count(dyc.size, op)
    if version is None:
        version = 2 if hw > 1 else 1
    _check_version(op, version)
    db = _launch.empty((c,))
    if c == 0:
        return db
    args = (db, dyc, _launch.i32(n), _launch.i32(c), _launch.i32(hw))
    if version == 1:
        grid, block = _launch.grid_for(c)
        _launch.function("bias", "bias_backward_kernel1")(grid, block, args)
    else:
        _launch.function("bias", "bias_backward_kernel2")((min(c, MAX_ROW_BLOCKS),), (warp_block(n * hw),), args)
    return db


# ---------------------------------------------------------------- public ops: dispatch

def bias_add(y, b):
    """In place: y (N, C[, H, W]) += b (C,) along axis 1. Returns y."""
    if backend.uses_kernels():
        return bias_add_kernel(y, b)
    return bias_add_numpy(y, b)


def bias_grad(dy):
    """dy (N, C[, H, W]) -> db (C,)."""
    if backend.uses_kernels():
        return bias_grad_kernel(dy)
    return bias_grad_numpy(dy)

"""Nearest-neighbour upsampling by an integer factor s (torch.nn.Upsample(scale_factor=s,
mode="nearest")): every pixel becomes an s x s block; backward sums each block's gradient.

Forward (x (N, C, H, W), s) -> (y (N, C, H*s, W*s), cache); backward (dy, cache) -> dx.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


def _dims(x, scale, op):
    if x.ndim != 4:
        raise ValueError(f"{op}: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"{op}: scale must be a positive integer, got {scale!r}")
    return tuple(map(int, x.shape)), int(scale)


def upsample_nearest2d_forward_numpy(x, scale):
    xp = backend.array_module(x)
    (n, c, h, w), s = _dims(x, scale, "upsample_nearest2d_forward")
    y = xp.broadcast_to(x[:, :, :, None, :, None], (n, c, h, s, w, s)).reshape(n, c, h * s, w * s)
    return xp.ascontiguousarray(y), ((n, c, h, w), s)


def upsample_nearest2d_backward_numpy(dy, cache):
    """Sums each s x s block row-major (the kernels' order)."""
    (n, c, h, w), s = cache
    xp = backend.array_module(dy)
    blocks = dy.reshape(n, c, h, s, w, s)
    dx = xp.zeros((n, c, h, w), dtype=dy.dtype)
    for a in range(s):
        for b in range(s):
            dx += blocks[:, :, :, a, :, b]
    return dx


# ---------------------------------------------------------------- CUDA kernels (kernels/upsample.cu)

def upsample_nearest2d_forward_cuda(x, scale, version=None):
    """As upsample_nearest2d_forward_numpy, on the GPU (or the emulator); version None picks 2."""
    op = "upsample_nearest2d_forward"
    (n, c, h, w), s = _dims(x, scale, op)
    xc = _launch.arg(x, np.float32, f"{op}: x")
    y = _launch.empty((n, c, h * s, w * s))
    total = _launch.element_count(y.size, op)
    _launch.elementwise_launch("upsample", op, _launch.pick_version(op, version, 2), y.size,
                           (y, xc, _launch.i32(h), _launch.i32(w), _launch.i32(s), total))
    return y, ((n, c, h, w), s)


def upsample_nearest2d_backward_cuda(dy, cache, version=None):
    op = "upsample_nearest2d_backward"
    (n, c, h, w), s = cache
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    if tuple(dyc.shape) != (n, c, h * s, w * s):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, expected {(n, c, h * s, w * s)}")
    dx = _launch.empty((n, c, h, w))
    total = _launch.element_count(dx.size, op)
    _launch.elementwise_launch("upsample", op, _launch.pick_version(op, version, 2), dx.size,
                           (dx, dyc, _launch.i32(h), _launch.i32(w), _launch.i32(s), total))
    return dx


# ---------------------------------------------------------------- public ops: dispatch

def upsample_nearest2d_forward(x, scale):
    if backend.uses_kernels():
        return upsample_nearest2d_forward_cuda(x, scale)
    return upsample_nearest2d_forward_numpy(x, scale)


def upsample_nearest2d_backward(dy, cache):
    if backend.uses_kernels():
        return upsample_nearest2d_backward_cuda(dy, cache)
    return upsample_nearest2d_backward_numpy(dy, cache)

"""AvgPool2d: the mean of each k x k window, stride s, no padding, floor output size
(torch.nn.AvgPool2d with padding 0 and ceil_mode False); backward spreads each output's
gradient evenly over its window (overlapping windows, s < k, add up).

Forward (x (N, C, H, W), k, s) -> (y (N, C, Ho, Wo), cache); backward (dy, cache) -> dx.
The cache is only (x shape, k, s): the backward needs no activations.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


def avgpool_output_size(size, kernel_size, stride):
    """floor((size - k) / s) + 1, torch's size for padding 0."""
    return (int(size) - int(kernel_size)) // int(stride) + 1


def _tap(a, i, j, stride, ho, wo):
    # the (N, C, Ho, Wo) strided view of tap (i, j) of every window of a (N, C, H, W)
    return a[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]


def _dims(x, k, s, op):
    if x.ndim != 4:
        raise ValueError(f"{op}: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    k, s = int(k), int(s)
    if k <= 0 or s <= 0:
        raise ValueError(f"{op}: kernel_size and stride must be positive, got {k} and {s}")
    n, c, h, w = map(int, x.shape)
    if min(h, w) < k:
        raise ValueError(f"{op}: input of spatial size {h}x{w} is smaller than the window ({k})")
    return n, c, h, w, avgpool_output_size(h, k, s), avgpool_output_size(w, k, s)


def avgpool2d_forward_numpy(x, kernel_size, stride):
    """Sums the k*k taps row-major, then divides by k*k (the kernels' order)."""
    xp = backend.array_module(x)
    n, c, h, w, ho, wo = _dims(x, kernel_size, stride, "avgpool2d_forward")
    k, s = int(kernel_size), int(stride)
    y = xp.zeros((n, c, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            y += _tap(x, i, j, s, ho, wo)
    y /= x.dtype.type(k * k)
    return y, (tuple(x.shape), k, s)


def avgpool2d_backward_numpy(dy, cache):
    x_shape, k, s = cache
    xp = backend.array_module(dy)
    ho, wo = dy.shape[2:]
    g = dy / dy.dtype.type(k * k)
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            _tap(dx, i, j, s, ho, wo)[...] += g
    return dx


# ---------------------------------------------------------------- CUDA kernels (kernels/avgpool.cu)

def avgpool2d_forward_cuda(x, kernel_size, stride, version=None):
    """As avgpool2d_forward_numpy, on the GPU (or the emulator). version None picks 2."""
    op = "avgpool2d_forward"
    n, c, h, w, ho, wo = _dims(x, kernel_size, stride, op)
    xc = _launch.arg(x, np.float32, f"{op}: x")
    y = _launch.empty((n, c, ho, wo))
    total = _launch.element_count(y.size, op)
    _launch.elementwise_launch("avgpool", op, _launch.pick_version(op, version, 2), y.size,
                           (y, xc, _launch.i32(h), _launch.i32(w), _launch.i32(ho), _launch.i32(wo),
                            _launch.i32(kernel_size), _launch.i32(stride), total))
    return y, (tuple(x.shape), int(kernel_size), int(stride))


def avgpool2d_backward_cuda(dy, cache, version=None):
    op = "avgpool2d_backward"
    x_shape, k, s = cache
    n, c, h, w = x_shape
    ho, wo = avgpool_output_size(h, k, s), avgpool_output_size(w, k, s)
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    if tuple(dyc.shape) != (n, c, ho, wo):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, expected {(n, c, ho, wo)}")
    dx = _launch.empty(x_shape)
    total = _launch.element_count(dx.size, op)
    _launch.elementwise_launch("avgpool", op, _launch.pick_version(op, version, 2), dx.size,
                           (dx, dyc, _launch.i32(h), _launch.i32(w), _launch.i32(ho), _launch.i32(wo),
                            _launch.i32(k), _launch.i32(s), total))
    return dx


# ---------------------------------------------------------------- public ops: dispatch

def avgpool2d_forward(x, kernel_size, stride=None):
    """x (N, C, H, W) -> (y (N, C, Ho, Wo), cache); stride defaults to kernel_size."""
    stride = kernel_size if stride is None else stride
    if backend.uses_kernels():
        return avgpool2d_forward_cuda(x, kernel_size, stride)
    return avgpool2d_forward_numpy(x, kernel_size, stride)


def avgpool2d_backward(dy, cache):
    if backend.uses_kernels():
        return avgpool2d_backward_cuda(dy, cache)
    return avgpool2d_backward_numpy(dy, cache)

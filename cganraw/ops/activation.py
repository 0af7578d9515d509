"""Elementwise activations: leaky ReLU, ReLU, tanh, sigmoid.

Forward returns (y, cache); backward(dy, cache) returns dx. The cache is the array
the derivative is cheapest from: x for the ReLUs, y for tanh and sigmoid.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch


def leaky_relu_forward_numpy(x, negative_slope):
    xp = backend.array_module(x)
    y = xp.where(x > 0, x, x * x.dtype.type(negative_slope))
    return y, (x, negative_slope)


def leaky_relu_backward_numpy(dy, cache):
    x, negative_slope = cache
    xp = backend.array_module(dy)
    return xp.where(x > 0, dy, dy * dy.dtype.type(negative_slope))


def relu_forward_numpy(x):
    xp = backend.array_module(x)
    return xp.maximum(x, 0), x


def relu_backward_numpy(dy, x):
    xp = backend.array_module(dy)
    return xp.where(x > 0, dy, dy.dtype.type(0))


def tanh_forward_numpy(x):
    xp = backend.array_module(x)
    y = xp.tanh(x)
    return y, y


def tanh_backward_numpy(dy, y):
    # d tanh = 1 - y^2
    return dy * (1 - y * y)


def sigmoid_numpy(x):
    """Stable logistic: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below, never exp of a large value."""
    xp = backend.array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_forward_numpy(x):
    y = sigmoid_numpy(x)
    return y, y


def sigmoid_backward_numpy(dy, y):
    return dy * y * (1 - y)


@_cpu.kernel
def _leaky_relu_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def leaky(x, slope, y):  # flat arrays; forward when y is the output, backward via mask
        for i in nb.prange(x.size):
            v = x[i]
            y[i] = v if v > 0 else v * slope
    return leaky


@_cpu.kernel
def _leaky_relu_backward_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def leaky_backward(dy, x, slope, dx):
        for i in nb.prange(dy.size):
            dx[i] = dy[i] if x[i] > 0 else dy[i] * slope
    return leaky_backward


def _flat_numpy(*arrays):
    return _cpu.enabled() and all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays)


# ---------------------------------------------------------------- CUDA kernels (kernels/activation.cu)
# Launchers for the "cuda" and "emu" backends. Each returns exactly what its NumPy
# reference returns: forward (y, cache) with the same cache (the contiguous x for the
# ReLUs, y for tanh and sigmoid), backward dx.

KERNEL_VERSIONS = (1, 2)
# version 2 grid-strides over at most this many blocks: about 8 blocks of 256 threads
# per SM on a 132-SM H100, enough to fill it; more would only add scheduling
ELEMENTWISE_MAX_BLOCKS = 1024
# kernels index with int: keep n + (threads in the grid) below 2^31
MAX_ELEMENTS = 2 ** 31 - 2 ** 20


def element_count(n, op):
    """n as the kernels' int argument, refusing sizes whose grid-stride index could overflow."""
    if n > MAX_ELEMENTS:
        raise ValueError(f"{op}: {n} elements exceed what the int-indexed kernels take ({MAX_ELEMENTS})")
    return _launch.i32(n)


def elementwise_launch(family, kernel, version, n, args):
    """Launch <kernel>_kernel<version> of kernels/<family>.cu over n elements:
    version 1 one thread per element, version 2 a bounded grid that grid-strides."""
    if version not in KERNEL_VERSIONS:
        raise ValueError(f"{kernel}: kernel version must be one of {KERNEL_VERSIONS}, got {version!r}")
    fn = _launch.function(family, f"{kernel}_kernel{version}")
    grid, block = _launch.grid_for(n, max_blocks=ELEMENTWISE_MAX_BLOCKS if version == 2 else None)
    fn(grid, block, args)


def _same_shape(op, a, b, names):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{op}: {names[0]} has shape {tuple(a.shape)} but {names[1]} has shape {tuple(b.shape)}")


def _unary_forward(kernel, x, extra=(), version=2):
    xc = _launch.arg(x, np.float32, f"{kernel}: x")
    y = _launch.empty(xc.shape)
    elementwise_launch("activation", kernel, version, xc.size,
                       (y, xc) + tuple(extra) + (element_count(xc.size, kernel),))
    return xc, y


def _binary_backward(kernel, dy, saved, saved_name, extra=(), version=2):
    dyc = _launch.arg(dy, np.float32, f"{kernel}: dy")
    sc = _launch.arg(saved, np.float32, f"{kernel}: {saved_name}")
    _same_shape(kernel, dyc, sc, ("dy", saved_name))
    dx = _launch.empty(dyc.shape)
    elementwise_launch("activation", kernel, version, dyc.size,
                       (dx, dyc, sc) + tuple(extra) + (element_count(dyc.size, kernel),))
    return dx


def leaky_relu_forward_kernel(x, negative_slope=0.2, version=2):
    xc, y = _unary_forward("leaky_relu_forward", x, (_launch.f32(negative_slope),), version)
    return y, (xc, negative_slope)


def leaky_relu_backward_kernel(dy, cache, version=2):
    x, negative_slope = cache
    return _binary_backward("leaky_relu_backward", dy, x, "x", (_launch.f32(negative_slope),), version)


def relu_forward_kernel(x, version=2):
    xc, y = _unary_forward("relu_forward", x, version=version)
    return y, xc


def relu_backward_kernel(dy, x, version=2):
    return _binary_backward("relu_backward", dy, x, "x", version=version)


def tanh_forward_kernel(x, version=2):
    _, y = _unary_forward("tanh_forward", x, version=version)
    return y, y


def tanh_backward_kernel(dy, y, version=2):
    return _binary_backward("tanh_backward", dy, y, "y", version=version)


def sigmoid_forward_kernel(x, version=2):
    _, y = _unary_forward("sigmoid_forward", x, version=version)
    return y, y


def sigmoid_backward_kernel(dy, y, version=2):
    return _binary_backward("sigmoid_backward", dy, y, "y", version=version)


# ---------------------------------------------------------------- public ops: dispatch

def leaky_relu_forward(x, negative_slope=0.2):
    if backend.uses_kernels():
        return leaky_relu_forward_kernel(x, negative_slope)
    if _flat_numpy(x):
        y = np.empty_like(x)
        _leaky_relu_numba(x.reshape(-1), x.dtype.type(negative_slope), y.reshape(-1), work=x.size)
        return y, (x, negative_slope)
    return leaky_relu_forward_numpy(x, negative_slope)


def leaky_relu_backward(dy, cache):
    if backend.uses_kernels():
        return leaky_relu_backward_kernel(dy, cache)
    x, negative_slope = cache
    if _flat_numpy(dy, x):
        dx = np.empty_like(dy)
        _leaky_relu_backward_numba(dy.reshape(-1), x.reshape(-1), dy.dtype.type(negative_slope), dx.reshape(-1),
                                   work=dy.size)
        return dx
    return leaky_relu_backward_numpy(dy, cache)


def relu_forward(x):
    if backend.uses_kernels():
        return relu_forward_kernel(x)
    return relu_forward_numpy(x)


def relu_backward(dy, cache):
    if backend.uses_kernels():
        return relu_backward_kernel(dy, cache)
    return relu_backward_numpy(dy, cache)


def tanh_forward(x):
    if backend.uses_kernels():
        return tanh_forward_kernel(x)
    return tanh_forward_numpy(x)


def tanh_backward(dy, cache):
    if backend.uses_kernels():
        return tanh_backward_kernel(dy, cache)
    return tanh_backward_numpy(dy, cache)


def sigmoid_forward(x):
    if backend.uses_kernels():
        return sigmoid_forward_kernel(x)
    return sigmoid_forward_numpy(x)


def sigmoid_backward(dy, cache):
    if backend.uses_kernels():
        return sigmoid_backward_kernel(dy, cache)
    return sigmoid_backward_numpy(dy, cache)

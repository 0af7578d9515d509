"""Elementwise activations: leaky ReLU, ReLU, tanh, sigmoid.

Forward returns (y, cache); backward(dy, cache) returns dx. The cache is the array
the derivative is cheapest from: x for the ReLUs, y for tanh and sigmoid.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu


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
def _leaky_relu_numba(nb):
    @nb.njit(parallel=True, cache=True)
    def leaky(x, slope, y):  # flat arrays; forward when y is the output, backward via mask
        for i in nb.prange(x.size):
            v = x[i]
            y[i] = v if v > 0 else v * slope
    return leaky


@_cpu.kernel
def _leaky_relu_backward_numba(nb):
    @nb.njit(parallel=True, cache=True)
    def leaky_backward(dy, x, slope, dx):
        for i in nb.prange(dy.size):
            dx[i] = dy[i] if x[i] > 0 else dy[i] * slope
    return leaky_backward


def _flat_numpy(*arrays):
    return _cpu.enabled() and all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays)


def leaky_relu_forward(x, negative_slope=0.2):
    if _flat_numpy(x):
        y = np.empty_like(x)
        _leaky_relu_numba(x.reshape(-1), x.dtype.type(negative_slope), y.reshape(-1))
        return y, (x, negative_slope)
    return leaky_relu_forward_numpy(x, negative_slope)


def leaky_relu_backward(dy, cache):
    x, negative_slope = cache
    if _flat_numpy(dy, x):
        dx = np.empty_like(dy)
        _leaky_relu_backward_numba(dy.reshape(-1), x.reshape(-1), dy.dtype.type(negative_slope), dx.reshape(-1))
        return dx
    return leaky_relu_backward_numpy(dy, cache)


def relu_forward(x):
    return relu_forward_numpy(x)


def relu_backward(dy, cache):
    return relu_backward_numpy(dy, cache)


def tanh_forward(x):
    return tanh_forward_numpy(x)


def tanh_backward(dy, cache):
    return tanh_backward_numpy(dy, cache)


def sigmoid_forward(x):
    return sigmoid_forward_numpy(x)


def sigmoid_backward(dy, cache):
    return sigmoid_backward_numpy(dy, cache)

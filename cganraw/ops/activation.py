"""Elementwise activations: leaky ReLU, ReLU, tanh, sigmoid.

Forward returns (y, cache); backward(dy, cache) returns dx. The cache is the array
the derivative is cheapest from: x for the ReLUs, y for tanh and sigmoid.
"""
from __future__ import annotations

from cganraw import backend


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


def leaky_relu_forward(x, negative_slope=0.2):
    return leaky_relu_forward_numpy(x, negative_slope)


def leaky_relu_backward(dy, cache):
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

"""Elementwise activations: leaky ReLU, ReLU, tanh, sigmoid (layers in cganraw.nn.activation).

Each op `foo` has four faces: `foo_forward_numpy`/`foo_backward_numpy` (the reference),
`foo_forward_cuda`/`foo_backward_cuda` (kernels/activation.cu's `foo_forward_v1/v2`,
`foo_backward_v1/v2`), and the dispatch `foo_forward`/`foo_backward`.

Forward returns (y, cache); backward(dy, cache) returns dx. The cache is the array
the derivative is cheapest from: x for the ReLUs, y for tanh and sigmoid.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch, _workspace
from cganraw.ops.bias import bias_leaky_relu_backward_numba


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


def _dense_layout(*arrays):
    """For the flat Numba kernels: "c" when every array is a C-contiguous host array, "cm" when
    every one is a channel-major (N, C, H, W) one (the layout of G's convolutions and FiLM),
    else None. Elementwise work runs over the physical memory either way."""
    if not _cpu.enabled() or not all(isinstance(a, np.ndarray) for a in arrays):
        return None
    if all(a.flags.c_contiguous for a in arrays):
        return "c"
    if all(a.ndim == 4 and a.transpose(1, 0, 2, 3).flags.c_contiguous for a in arrays):
        return "cm"
    return None


def _flat(a, layout):
    # the physical memory of an array of _dense_layout `layout`, as one flat view
    return (a.transpose(1, 0, 2, 3) if layout == "cm" else a).reshape(-1)


def _empty_in(layout, like):
    # a workspace array of like's shape and dtype, laid out as `layout`
    if layout == "cm":
        n, c, h, w = like.shape
        return _workspace.empty((c, n, h, w), like.dtype).transpose(1, 0, 2, 3)
    return _workspace.empty_like(like)


# ---------------------------------------------------------------- CUDA kernels (kernels/activation.cu)
# Launchers for the "cuda" and "emu" backends. Each returns exactly what its NumPy
# reference returns: forward (y, cache) with the same cache (the contiguous x for the
# ReLUs, y for tanh and sigmoid), backward dx. version None is 2 (grid-stride, float4).

DEFAULT_VERSION = 2


def _same_shape(op, a, b, names):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{op}: {names[0]} has shape {tuple(a.shape)} but {names[1]} has shape {tuple(b.shape)}")


def _unary_forward(op, x, extra=(), version=None):
    xc = _launch.arg(x, np.float32, f"{op}: x")
    y = _launch.empty(xc.shape)
    _launch.elementwise_launch("activation", op, _launch.pick_version(op, version, DEFAULT_VERSION), xc.size,
                               (y, xc) + tuple(extra) + (_launch.element_count(xc.size, op),))
    return xc, y


def _binary_backward(op, dy, saved, saved_name, extra=(), version=None):
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    sc = _launch.arg(saved, np.float32, f"{op}: {saved_name}")
    _same_shape(op, dyc, sc, ("dy", saved_name))
    dx = _launch.empty(dyc.shape)
    _launch.elementwise_launch("activation", op, _launch.pick_version(op, version, DEFAULT_VERSION), dyc.size,
                               (dx, dyc, sc) + tuple(extra) + (_launch.element_count(dyc.size, op),))
    return dx


def leaky_relu_forward_cuda(x, negative_slope=0.2, version=None):
    xc, y = _unary_forward("leaky_relu_forward", x, (_launch.f32(negative_slope),), version)
    return y, (xc, negative_slope)


def leaky_relu_backward_cuda(dy, cache, version=None):
    x, negative_slope = cache
    return _binary_backward("leaky_relu_backward", dy, x, "x", (_launch.f32(negative_slope),), version)


def relu_forward_cuda(x, version=None):
    xc, y = _unary_forward("relu_forward", x, version=version)
    return y, xc


def relu_backward_cuda(dy, x, version=None):
    return _binary_backward("relu_backward", dy, x, "x", version=version)


def tanh_forward_cuda(x, version=None):
    _, y = _unary_forward("tanh_forward", x, version=version)
    return y, y


def tanh_backward_cuda(dy, y, version=None):
    return _binary_backward("tanh_backward", dy, y, "y", version=version)


def sigmoid_forward_cuda(x, version=None):
    _, y = _unary_forward("sigmoid_forward", x, version=version)
    return y, y


def sigmoid_backward_cuda(dy, y, version=None):
    return _binary_backward("sigmoid_backward", dy, y, "y", version=version)


# ---------------------------------------------------------------- public ops: dispatch

def leaky_relu_forward(x, negative_slope=0.2):
    if backend.uses_kernels():
        return leaky_relu_forward_cuda(x, negative_slope)
    layout = _dense_layout(x)
    if layout:
        y = _empty_in(layout, x)
        _leaky_relu_numba(_flat(x, layout), x.dtype.type(negative_slope), _flat(y, layout), work=x.size)
        return y, (x, negative_slope)
    return leaky_relu_forward_numpy(x, negative_slope)


def leaky_relu_backward(dy, cache):
    if backend.uses_kernels():
        return leaky_relu_backward_cuda(dy, cache)
    x, negative_slope = cache
    layout = _dense_layout(dy, x)
    if layout:
        dx = _empty_in(layout, dy)
        _leaky_relu_backward_numba(_flat(dy, layout), _flat(x, layout), dy.dtype.type(negative_slope),
                                   _flat(dx, layout), work=dy.size)
        return dx
    if negative_slope >= 0 and _planes_numpy(dy, x):
        # dy and x in different layouts (a host conv's channel-major gradient against an NCHW
        # x: G's LeakyReLU after FiLM): bias_leaky_relu_backward's kernel without a bias reads
        # each where it lies (its mask y > 0 is x > 0 for a slope >= 0); dx in x's layout.
        # NumPy's where over the mixed strides took 4 ms at (32, 96, 14, 14).
        return bias_leaky_relu_backward_numba(dy, cache, need_db=False)[0]
    return leaky_relu_backward_numpy(dy, cache)


def _planes_numpy(dy, x):
    return (_cpu.enabled() and _cpu.host_arrays(dy, x) and dy.ndim == x.ndim == 4 and dy.shape == x.shape
            and dy.dtype == x.dtype and dy.dtype in (np.float32, np.float64))


def relu_forward(x):
    if backend.uses_kernels():
        return relu_forward_cuda(x)
    return relu_forward_numpy(x)


def relu_backward(dy, cache):
    if backend.uses_kernels():
        return relu_backward_cuda(dy, cache)
    return relu_backward_numpy(dy, cache)


def tanh_forward(x):
    if backend.uses_kernels():
        return tanh_forward_cuda(x)
    return tanh_forward_numpy(x)


def tanh_backward(dy, cache):
    if backend.uses_kernels():
        return tanh_backward_cuda(dy, cache)
    return tanh_backward_numpy(dy, cache)


def sigmoid_forward(x):
    if backend.uses_kernels():
        return sigmoid_forward_cuda(x)
    return sigmoid_forward_numpy(x)


def sigmoid_backward(dy, cache):
    if backend.uses_kernels():
        return sigmoid_backward_cuda(dy, cache)
    return sigmoid_backward_numpy(dy, cache)

"""The mode-seeking term of MSGAN (Mao et al. 2019) as an op with its gradient, for
cganraw.losses.mode_seeking. Rows i and M + i of the batch share a label:

    ratio = mean |x_a - x_b| / mean |z_a - z_b|,   loss = 1 / (ratio + eps)

    mode_seeking_forward    _numpy, _cuda: kernels/mode_seeking.cu mode_seeking_forward_v1
                            -> (loss as a 0-d array, cache)
    mode_seeking_backward   _numpy, _cuda: mode_seeking_backward_v1 -> dimages
The loss and the gradient's scale stay on the device (float32), so the step never waits.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch

REDUCE_BLOCK = 256


def mode_seeking_forward_numpy(images, z, eps=1e-5):
    """images (2M, ...), z (2M, L) -> (loss 0-d, cache)."""
    xp = backend.array_module(images)
    f = images.dtype.type
    m = images.shape[0] // 2
    diff = images[:m] - images[m:]
    z_dist = xp.abs(z[:m] - z[m:]).mean(dtype=images.dtype)
    loss = f(1) / (xp.abs(diff).mean() / z_dist + f(eps))
    scale = -loss * loss / (z_dist * f(diff.size))
    return xp.asarray(loss, dtype=images.dtype), (diff, xp.asarray(scale, dtype=images.dtype))


def mode_seeking_backward_numpy(cache):
    diff, scale = cache
    xp = backend.array_module(diff)
    d_a = xp.sign(diff) * scale.astype(diff.dtype)
    return xp.concatenate([d_a, -d_a])


def _halves(images, z, op):
    x = _launch.arg(images, np.float32, f"{op}: images")
    zc = _launch.arg(z, np.float32, f"{op}: z")
    n = x.shape[0]
    m = n // 2
    p = x.size // max(n, 1)
    return x, zc, m, p, zc.size // max(n, 1)


def mode_seeking_forward_cuda(images, z, eps=1e-5, version=None):
    op = "mode_seeking_forward"
    _launch.pick_version(op, version, 1, (1,))
    x, zc, m, p, ln = _halves(images, z, op)
    _launch.element_count(x.size, op)
    out = _launch.empty((2,))
    _launch.function("mode_seeking", "mode_seeking_forward_v1")(
        (1,), (REDUCE_BLOCK,), (out, x, zc, _launch.i32(m), _launch.i32(p), _launch.i32(ln), _launch.f32(eps)))
    return out[0:1].reshape(()), (x, out[1:], m, p)      # a 0-d view: no read-back


def mode_seeking_backward_cuda(cache, version=None):
    op = "mode_seeking_backward"
    _launch.pick_version(op, version, 1, (1,))
    x, scale, m, p = cache
    dx = _launch.empty(x.shape)
    if m * p:
        grid, block = _launch.grid_for(m * p, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("mode_seeking", "mode_seeking_backward_v1")(
            grid, block, (dx, x, _launch.arg(scale, np.float32, f"{op}: scale"), _launch.i32(m), _launch.i32(p)))
    return dx


def mode_seeking_forward(images, z, eps=1e-5):
    if backend.uses_kernels():
        return mode_seeking_forward_cuda(images, z, eps)
    return mode_seeking_forward_numpy(images, z, eps)


def mode_seeking_backward(cache):
    if backend.uses_kernels():
        return mode_seeking_backward_cuda(cache)
    return mode_seeking_backward_numpy(cache)

"""FiLM (Perez et al. 2018): a per-sample, per-channel scale and shift of a feature map,
y = x * (1 + gamma) + beta, gamma and beta (N, C) broadcast over H, W. G's conditional
norms (cganraw.nn.FiLM computes gamma, beta from its condition; models: --g-film).

    film_forward    y = x (1 + gamma) + beta             _numpy, _cuda: kernels/film.cu film_forward_v1
    film_backward   dx = dy (1 + gamma), dgamma = sum_hw dy x, dbeta = sum_hw dy
                                                         _numpy, _cuda: film_backward_v1 (a block
                                                         per (n, c) plane), _v2 (a warp per plane)

On the host with Numba (numpy backend) each direction is one pass over a plane per task
(film_forward_numba, film_backward_numba), on x and dy where they lie (NCHW or channel-major,
the layout of G's convolutions) where the reference makes two or three passes and their
temporaries: the forward the reference's bits, the backward's sums in float64 in pixel order
(the reference's values within float32 rounding; the same bits at any thread count).
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch


def _check(x, gamma, beta, op):
    if x.ndim != 4 or gamma.ndim != 2 or beta.ndim != 2 or tuple(gamma.shape) != tuple(x.shape[:2]) \
            or tuple(beta.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{op}: expected x (N, C, H, W), gamma and beta (N, C), got {tuple(x.shape)}, "
                         f"{tuple(gamma.shape)} and {tuple(beta.shape)}")


def film_forward_numpy(x, gamma, beta):
    """x (N, C, H, W), gamma, beta (N, C) -> y (N, C, H, W) = x * (1 + gamma) + beta,
    cache (x, gamma)."""
    _check(x, gamma, beta, "film_forward")
    one = x.dtype.type(1)
    y = x * (one + gamma)[:, :, None, None] + beta[:, :, None, None]
    return y, (x, gamma)


def film_backward_numpy(dy, cache, need_dx=True, out=None):
    """dy (N, C, H, W) -> dx (None unless need_dx), dgamma, dbeta (N, C). With out (N, 2C)
    dgamma and dbeta are written into its halves [dgamma | dbeta] and returned as views of
    it (nn.FiLM hands that to its projection's backward as one array)."""
    x, gamma = cache
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"film_backward: dy has shape {tuple(dy.shape)}, expected {tuple(x.shape)}")
    n, c, h, w = x.shape
    one = dy.dtype.type(1)
    dx = dy * (one + gamma)[:, :, None, None] if need_dx else None
    dgamma = (dy * x).reshape(n, c, h * w).sum(axis=2)
    dbeta = dy.reshape(n, c, h * w).sum(axis=2)
    if out is not None:
        _check_out(out, n, c, "film_backward")
        out[:, :c] = dgamma
        out[:, c:] = dbeta
        dgamma, dbeta = out[:, :c], out[:, c:]
    return dx, dgamma, dbeta


def _check_out(out, n, c, op):
    if tuple(out.shape) != (n, 2 * c) or not out.flags.c_contiguous:
        raise ValueError(f"{op}: out must be a contiguous array of shape ({n}, {2 * c}), "
                         f"got {tuple(out.shape)}")


# ---------------------------------------------------------------- Numba (the numpy backend's host path)

@_cpu.kernel
def _film_forward_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def forward(x, x_cm, gamma, beta, y):
        # x, y (N, C, HW), or (C, N, HW) when x_cm; gamma, beta (N, C), any strides.
        # y = x * (1 + gamma) + beta in float32 steps, as the reference's broadcasts
        if x_cm:
            c, n, hw = x.shape
        else:
            n, c, hw = x.shape
        one = x.dtype.type(1)
        for task in nb.prange(n * c):
            i, ch = task // c, task % c
            xr = x[ch, i] if x_cm else x[i, ch]
            yr = y[ch, i] if x_cm else y[i, ch]
            scale, shift = one + gamma[i, ch], beta[i, ch]
            for p in range(hw):
                yr[p] = xr[p] * scale + shift
    return forward


@_cpu.kernel
def _film_backward_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def backward(dy, dy_cm, x, x_cm, gamma, need_dx, dx, dgb):
        # dy, x (N, C, HW) or (C, N, HW) each; dx in x's layout; dgb (N, 2C) = [dgamma | dbeta],
        # the sums in float64 over the plane's pixels in order
        if x_cm:
            c, n, hw = x.shape
        else:
            n, c, hw = x.shape
        one = x.dtype.type(1)
        for task in nb.prange(n * c):
            i, ch = task // c, task % c
            g = dy[ch, i] if dy_cm else dy[i, ch]
            xr = x[ch, i] if x_cm else x[i, ch]
            sum_dy = 0.0
            sum_dyx = 0.0
            for p in range(hw):
                sum_dy += g[p]
                sum_dyx += g[p] * xr[p]
            dgb[i, ch], dgb[i, c + ch] = sum_dyx, sum_dy
            if need_dx:
                dr = dx[ch, i] if x_cm else dx[i, ch]
                scale = one + gamma[i, ch]
                for p in range(hw):
                    dr[p] = g[p] * scale
    return backward


def film_forward_numba(x, gamma, beta):
    """As film_forward_numpy (y in x's layout), one task per (n, c) plane."""
    _check(x, gamma, beta, "film_forward")
    x3, cm = _cpu.planes(x)
    y3, y = _cpu.empty_planes_like(x3, cm, x.shape)
    _film_forward_numba(x3, cm, gamma, beta, y3, work=x.size)
    return y, (x, gamma)


def film_backward_numba(dy, cache, need_dx=True, out=None):
    """As film_backward_numpy (dx in x's layout), one task per plane; dgamma and dbeta are the
    halves of one (N, 2C) array (out, when given)."""
    x, gamma = cache
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"film_backward: dy has shape {tuple(dy.shape)}, expected {tuple(x.shape)}")
    n, c = x.shape[:2]
    if out is not None:
        _check_out(out, n, c, "film_backward")
    dgb = np.empty((n, 2 * c)) if out is None or out.dtype != np.float64 else out
    x3, cm = _cpu.planes(x)
    dx3, dx = _cpu.empty_planes_like(x3, cm, x.shape) if need_dx else (x3, None)
    _film_backward_numba(*_cpu.planes(dy), x3, cm, gamma, bool(need_dx), dx3, dgb, work=2 * x.size)
    if out is None:
        dgb = dgb.astype(dy.dtype)
    elif dgb is not out:
        out[...] = dgb
        dgb = out
    return dx, dgb[:, :c], dgb[:, c:]


# ---------------------------------------------------------------- CUDA kernels (kernels/film.cu)

BACKWARD_VERSIONS = (1, 2)
BACKWARD_BLOCK = 256        # v1: at most this many threads per plane; v2: 8 warps, a plane each


def _rows(a, op, name):
    """(span, ld) of an (N, C) operand for the kernels: read where it lies when its rows are
    evenly spaced (gamma and beta are the halves of the projection's (N, 2C) output), else a
    contiguous copy (ld = C)."""
    if a.dtype != np.float32 or backend.array_module(a) is not backend.get_xp():
        _launch.arg(a, np.float32, f"{op}: {name}")     # the error naming it
    got = _launch.row_strided(a, f"{op}: {name}")
    if got is None:
        ac = _launch.arg(a, np.float32, f"{op}: {name}")
        return ac, int(ac.shape[1])
    return got


def film_forward_cuda(x, gamma, beta):
    """As film_forward_numpy: film_forward_v1, one launch (grid-strided)."""
    op = "film_forward"
    xc = _launch.arg(x, np.float32, f"{op}: x")
    _check(xc, gamma, beta, op)
    n, c, hw = _launch.split_channels(xc, op, "x")
    total = _launch.element_count(xc.size, op)
    g, ld_g = _rows(gamma, op, "gamma")
    b, ld_b = _rows(beta, op, "beta")
    y = _launch.empty(tuple(xc.shape))
    if total:
        grid, block = _launch.grid_for(total, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("film", "film_forward_v1")(
            grid, block, (y, xc, g, b, _launch.i32(n), _launch.i32(c), _launch.i32(hw), _launch.i32(ld_g),
                          _launch.i32(ld_b)))
    return y, (xc, gamma)


def film_backward_cuda(dy, cache, need_dx=True, out=None, version=None):
    """As film_backward_numpy, in one launch: v1 (the default) a block per (n, c) plane, v2 a
    warp per plane; both deterministic. dgamma and dbeta are the halves of one (N, 2C) array
    (out, when given)."""
    op = "film_backward"
    version = _launch.pick_version(op, version, 1, BACKWARD_VERSIONS)
    x, gamma = cache
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    if tuple(dyc.shape) != tuple(x.shape):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, expected {tuple(x.shape)}")
    n, c, hw = _launch.split_channels(x, op, "x")
    _launch.element_count(x.size, op)
    g, ld_g = _rows(gamma, op, "gamma")
    if out is None:
        dgb = _launch.empty((n, 2 * c))
    else:
        dgb = _launch.arg(out, np.float32, f"{op}: out")
        if dgb is not out:
            raise ValueError(f"{op}: out must be a contiguous float32 array, written in place")
        _check_out(dgb, n, c, op)
    dx = _launch.empty(tuple(x.shape)) if need_dx else None
    planes = n * c
    if planes:
        args = (dx if dx is not None else dyc, dgb, dyc, x, g, _launch.i32(n), _launch.i32(c), _launch.i32(hw),
                _launch.i32(ld_g), _launch.i32(2 * c), _launch.i32(c), _launch.i32(need_dx))
        if version == 1:
            grid, block = (min(planes, _launch.MAX_ROW_BLOCKS),), (_launch.warp_block(hw, BACKWARD_BLOCK),)
        else:
            warps = BACKWARD_BLOCK // 32
            grid, block = (min(-(-planes // warps), _launch.MAX_ROW_BLOCKS),), (BACKWARD_BLOCK,)
        _launch.function("film", f"film_backward_v{version}")(grid, block, args)
    return dx, dgb[:, :c], dgb[:, c:]


# ---------------------------------------------------------------- public ops: dispatch

def film_forward(x, gamma, beta):
    """x (N, C, H, W), gamma, beta (N, C) -> (y = x (1 + gamma) + beta, cache)."""
    if backend.uses_kernels() and x.dtype == np.float32:
        return film_forward_cuda(x, gamma, beta)
    if _cpu.host_planes(x, gamma, beta):
        return film_forward_numba(x, gamma, beta)
    return film_forward_numpy(x, gamma, beta)


def film_backward(dy, cache, need_dx=True, out=None):
    """dy -> (dx or None, dgamma (N, C), dbeta (N, C)); with out (N, 2C) the last two are
    written into its halves and returned as views of it."""
    if backend.uses_kernels() and dy.dtype == np.float32:
        return film_backward_cuda(dy, cache, need_dx, out)
    if _cpu.host_planes(dy, *cache):
        return film_backward_numba(dy, cache, need_dx, out)
    return film_backward_numpy(dy, cache, need_dx, out)

"""Layout moves of the convolutions on the NumPy backend, one pass each (Numba where it
is on, NumPy otherwise), and the channel-major activation layout.

Channel-major: a conv layer's GEMM produces (C, N*H*W); on the NumPy backend the layer
hands it on as an (N, C, H, W) *view* of that buffer (`channel_major_view`) instead of
copying it into NCHW order, and the next GEMM takes it back as (C, N*H*W) for free
(`as_channel_major`). The values are the same; only the strides differ, and every op
accepts any strides (the elementwise Numba kernels work on (N, C, H*W) views, which
both layouts have).

    bordered_gather   a (N, C, H', W') -> (C, N*(h+2)*(w+2)): the sub-grid a[:, :, s*y+q, s*x+r]
                      (y < h, x < w) channel-major inside a one-pixel zero border
    bordered_scatter  the inverse: y[n, c, s*a+q, s*b+r] = buf[c, n, 1+a, 1+b]
    phases_gather     the four stride-2 phases (q, r) of a (N, C, 2h, 2w) map, bordered as
                      above, in one pass over the map: (4, C, N*(h+2)*(w+2))
    phases_scatter    the inverse: the four bordered phases interleaved into (N, C, 2h, 2w),
                      each output row written once
"""
from __future__ import annotations

import numpy as np

from cganraw.ops import _cpu


def _numba_ok(*arrays):
    return _cpu.enabled() and all(type(a) is np.ndarray for a in arrays)


def _in_place(y):
    # the kernels write y through its physical form: NCHW or channel-major, not a copy
    return y.flags.c_contiguous or y.transpose(1, 0, 2, 3).flags.c_contiguous


def channel_major_view(a2, n, h, w):
    """(C, N*H*W) -> an (N, C, H, W) view of the same memory."""
    return a2.reshape(a2.shape[0], n, h, w).transpose(1, 0, 2, 3)


def as_channel_major(a):
    """(N, C, H, W) -> (C, N*H*W): free for a channel-major view, a copy otherwise."""
    n, c, h, w = a.shape
    return a.transpose(1, 0, 2, 3).reshape(c, n * h * w)


@_cpu.kernel
def _gather_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def gather(a, a_cm, s, q, r, out):  # a as cganraw.ops._cpu.physical gives it; out (C, N, h+2, w+2)
        c_in, n_img, hp, wp = out.shape
        h, w = hp - 2, wp - 2
        for cn in nb.prange(c_in * n_img):
            c, n = cn // n_img, cn % n_img
            plane = out[c, n]
            for x in range(wp):
                plane[0, x] = 0
                plane[hp - 1, x] = 0
            for y in range(h):
                plane[y + 1, 0] = 0
                plane[y + 1, wp - 1] = 0
                src = a[c, n, s * y + q] if a_cm else a[n, c, s * y + q]
                for x in range(w):
                    plane[y + 1, x + 1] = src[s * x + r]
    return gather


@_cpu.kernel
def _scatter_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def scatter(buf, s, q, r, y, y_cm):  # buf (C, N, h+2, w+2); y physical, as in gather
        c_out, n_img, hp, wp = buf.shape
        h, w = hp - 2, wp - 2
        for cn in nb.prange(c_out * n_img):
            c, n = cn // n_img, cn % n_img
            plane = buf[c, n]
            for yy in range(h):
                dst = y[c, n, s * yy + q] if y_cm else y[n, c, s * yy + q]
                for x in range(w):
                    dst[s * x + r] = plane[yy + 1, x + 1]
    return scatter


def bordered_gather(a, h, w, stride=1, q=0, r=0):
    """a (N, C, H', W') -> (C, N*(h+2)*(w+2)): a[n, c, s*y+q, s*x+r] at (c, n, 1+y, 1+x),
    zeros on the border."""
    n, c = a.shape[:2]
    if _numba_ok(a):
        out = np.empty((c, n, h + 2, w + 2), dtype=a.dtype)
        _gather_numba(*_cpu.physical(a), stride, q, r, out, work=out.size)
        return out.reshape(c, -1)
    from cganraw import backend
    xp = backend.array_module(a)
    out = xp.zeros((c, n, h + 2, w + 2), dtype=a.dtype)
    out[:, :, 1:h + 1, 1:w + 1] = a[:, :, q:q + stride * h:stride, r:r + stride * w:stride].transpose(1, 0, 2, 3)
    return out.reshape(c, -1)


def bordered_scatter(buf4, y, stride=1, q=0, r=0):
    """y[n, c, s*a+q, s*b+r] = buf4[c, n, 1+a, 1+b] for the interior of buf4 (C, N, h+2, w+2)."""
    h, w = buf4.shape[2] - 2, buf4.shape[3] - 2
    if _numba_ok(buf4, y) and _in_place(y):
        _scatter_numba(np.ascontiguousarray(buf4), stride, q, r, *_cpu.physical(y), work=buf4.size)
        return y
    y[:, :, q:q + stride * h:stride, r:r + stride * w:stride] = buf4[:, :, 1:h + 1, 1:w + 1].transpose(1, 0, 2, 3)
    return y


@_cpu.kernel
def _phases_gather_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def gather(a, a_cm, out):  # a (N, C, 2h, 2w) physical -> out (4, C, N, h+2, w+2), phase 2q + r
        _, c_in, n_img, hp, wp = out.shape
        h, w = hp - 2, wp - 2
        for cn in nb.prange(c_in * n_img):
            c, n = cn // n_img, cn % n_img
            for ph in range(4):
                plane = out[ph, c, n]
                for x in range(wp):
                    plane[0, x] = 0
                    plane[hp - 1, x] = 0
                for y in range(h):
                    plane[y + 1, 0] = 0
                    plane[y + 1, wp - 1] = 0
            for yy in range(2 * h):
                src = a[c, n, yy] if a_cm else a[n, c, yy]
                q, y = yy % 2, yy // 2
                p0, p1 = out[2 * q, c, n, y + 1], out[2 * q + 1, c, n, y + 1]
                for x in range(w):
                    p0[x + 1] = src[2 * x]
                    p1[x + 1] = src[2 * x + 1]
    return gather


@_cpu.kernel
def _phases_scatter_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def scatter(bufs, y, y_cm):  # bufs (4, C, N, h+2, w+2) -> y (N, C, 2h, 2w) physical
        _, c_out, n_img, hp, wp = bufs.shape
        h, w = hp - 2, wp - 2
        for cn in nb.prange(c_out * n_img):
            c, n = cn // n_img, cn % n_img
            for yy in range(2 * h):
                dst = y[c, n, yy] if y_cm else y[n, c, yy]
                q, row = yy % 2, yy // 2 + 1
                p0, p1 = bufs[2 * q, c, n, row], bufs[2 * q + 1, c, n, row]
                for x in range(w):
                    dst[2 * x] = p0[x + 1]
                    dst[2 * x + 1] = p1[x + 1]
    return scatter


def phases_gather(a, h, w):
    """a (N, C, 2h, 2w) -> (4, C, N*(h+2)*(w+2)): phase (q, r) = a[:, :, q::2, r::2] at index
    2q + r, each channel-major inside a zero border (bordered_gather of each phase)."""
    n, c = a.shape[:2]
    if _numba_ok(a):
        out = np.empty((4, c, n, h + 2, w + 2), dtype=a.dtype)
        _phases_gather_numba(*_cpu.physical(a), out, work=out.size)
        return out.reshape(4, c, -1)
    from cganraw import backend
    xp = backend.array_module(a)
    return xp.stack([bordered_gather(a, h, w, 2, q, r) for q in (0, 1) for r in (0, 1)])


def phases_scatter(bufs, y):
    """y (N, C, 2h, 2w) from the four bordered phases bufs (4, C, N, h+2, w+2)."""
    if _numba_ok(bufs, y) and _in_place(y):
        _phases_scatter_numba(np.ascontiguousarray(bufs), *_cpu.physical(y), work=y.size)
        return y
    for q in (0, 1):
        for r in (0, 1):
            bordered_scatter(bufs[2 * q + r], y, 2, q, r)
    return y

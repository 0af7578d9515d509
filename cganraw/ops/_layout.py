"""Layout moves of the convolutions on the NumPy backend, one pass each (Numba where it
is on, NumPy otherwise), and the channel-major activation layout.

Channel-major: a conv layer's GEMM produces (C, N*H*W); on the NumPy backend the layer
hands it on as an (N, C, H, W) *view* of that buffer (`channel_major_view`) instead of
copying it into NCHW order, and the next GEMM takes it back as (C, N*H*W) for free
(`as_channel_major`). The values are the same; only the strides differ, and every op
accepts any strides (the elementwise Numba kernels work on (N, C, H*W) views, which
both layouts have).

Batch-minor: a host Conv2d's GEMM produces (C, H*W*N), the image index innermost (ops.conv's
columns order). Between two host convolutions (nn.Sequential asks, ops.conv's
batch_minor_handoff) the first hands that buffer on as an (N, C, H, W) view too
(`batch_minor_view`): the second's im2col reads runs of N values from it, and its col2im
writes the input gradient back in it, so neither layout turn runs. Any other op given such
a view copies it to NCHW first (cganraw.ops._cpu.physical): the same values.

The padded flat layout of the phase-split transposed convolution (cganraw.ops.conv):
channel-major rows (C, total) in which image n's pixel (y, x) sits at column
first + n*(h+1)*(w+1) + y*(w+1) + x. Each image row is followed by one zero column and each
image by one zero row, shared with the next row and image; `first` = w + 2 zero columns
lead and trail. So the neighbour (y + dy, x + dx), |dy|, |dx| <= 1, of every pixel is a fixed
column offset dy*(w+1) + dx away and reads a zero off the image: a shifted 2x2 conv is a
GEMM on a view. Sharing the pads keeps the padding waste to (h+1)(w+1)/(hw) - 1 (a
one-pixel border all round would cost (h+2)(w+2)/(hw) - 1: 65% more columns at 7x7).

    padded_layout     (first, length, pitch): the pixel columns are [first, first + length)
    padded_gather     a (N, C, H', W') -> (C, total): the sub-grid a[:, :, s*y+q, s*x+r]
                      (y < h, x < w) in the padded layout
    padded_scatter    the inverse: y[n, c, s*y'+q, s*x'+r] from the padded layout
    phases_gather     the four stride-2 phases (q, r) of a (N, C, 2h, 2w) map in one pass
                      over it: (4, C, total), phase (q, r) at slot PHASE_SLOT[q, r]
    phases_scatter    the inverse: four padded phases interleaved into (N, C, 2h, 2w), each
                      output row written once

The slots run (0, 0), (1, 0), (1, 1), (0, 1): round the square, so that three of the four
pairs of phases that differ in one parity are neighbouring slots, and a GEMM can take
such a pair (or all four) as one block of rows of the (4*C, total) stack (ops.conv).
"""
from __future__ import annotations

import numpy as np

from cganraw.ops import _cpu, _launch, _workspace

PHASE_ORDER = ((0, 0), (1, 0), (1, 1), (0, 1))          # slot -> output parity (q, r)
PHASE_SLOT = {qr: s for s, qr in enumerate(PHASE_ORDER)}  # (q, r) -> slot: (q, 0) -> q, (q, 1) -> 3 - q


def _numba_ok(*arrays):
    return _cpu.enabled() and _cpu.host_arrays(*arrays)


def _in_place(y):
    # the kernels write y through its physical form: NCHW or channel-major, not a copy
    return y.flags.c_contiguous or y.transpose(1, 0, 2, 3).flags.c_contiguous


def channel_major_view(a2, n, h, w):
    """(C, N*H*W) -> an (N, C, H, W) view of the same memory."""
    return a2.reshape(a2.shape[0], n, h, w).transpose(1, 0, 2, 3)


def batch_minor_view(a2, n, h, w):
    """(C, H*W*N), the image index innermost (batch-minor, ops.conv's columns order) -> an
    (N, C, H, W) view of the same memory."""
    return a2.reshape(a2.shape[0], h, w, n).transpose(3, 0, 1, 2)


def batch_minor_block(a):
    """a (N, C, H, W) -> its memory as (C, H, W, N) when a is a batch-minor view of it (as
    batch_minor_view gives), else None (an NCHW array is NCHW, even where both are one)."""
    if a.ndim != 4 or a.flags.c_contiguous:
        return None
    t = a.transpose(1, 2, 3, 0)
    return t if t.flags.c_contiguous else None


def as_channel_major(a):
    """(N, C, H, W) -> (C, N*H*W): free for a channel-major view, a copy otherwise."""
    n, c, h, w = a.shape
    return a.transpose(1, 0, 2, 3).reshape(c, n * h * w)


def padded_layout(n, h, w):
    """(first, length, pitch) of the padded layout of n images of h x w: the columns
    [first, first + length) hold every pixel and its pads; the array has length + 2*first."""
    pitch = w + 1
    return pitch + 1, n * (h + 1) * pitch, pitch


def _interior(flat, n, h, w):
    # (C, total) -> (C, N, h, w) view of the pixels
    first, length, pitch = padded_layout(n, h, w)
    return flat[:, first:first + length].reshape(flat.shape[0], n, h + 1, pitch)[:, :, :h, :w]


@_cpu.kernel
def _gather_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def gather(a, a_cm, s, q, r, h, w, out):  # a as cganraw.ops._cpu.physical gives it; out (C, total)
        c_in, total = out.shape
        n_img = a.shape[1] if a_cm else a.shape[0]
        pitch = w + 1
        size, first = (h + 1) * pitch, pitch + 1
        for cn in nb.prange(c_in * n_img):
            c, n = cn // n_img, cn % n_img
            row = out[c]
            base = first + n * size
            if n == 0:
                row[:first] = 0
            if n == n_img - 1:
                row[base + size:] = 0
            for y in range(h):
                src = a[c, n, s * y + q] if a_cm else a[n, c, s * y + q]
                o = base + y * pitch
                for x in range(w):
                    row[o + x] = src[s * x + r]
                row[o + w] = 0
            row[base + h * pitch:base + size] = 0
    return gather


@_cpu.kernel
def _scatter_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def scatter(flat, s, q, r, h, w, y, y_cm):  # flat (C, total) padded; y physical, as in gather
        c_out = flat.shape[0]
        n_img = y.shape[1] if y_cm else y.shape[0]
        pitch = w + 1
        size, first = (h + 1) * pitch, pitch + 1
        for cn in nb.prange(c_out * n_img):
            c, n = cn // n_img, cn % n_img
            row = flat[c]
            base = first + n * size
            for yy in range(h):
                dst = y[c, n, s * yy + q] if y_cm else y[n, c, s * yy + q]
                o = base + yy * pitch
                for x in range(w):
                    dst[s * x + r] = row[o + x]
    return scatter


@_cpu.kernel
def _phases_gather_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def gather(a, a_cm, h, w, out):  # a (N, C, 2h, 2w) physical -> out (4, C, total), slots as PHASE_SLOT
        _, c_in, total = out.shape
        n_img = a.shape[1] if a_cm else a.shape[0]
        pitch = w + 1
        size, first = (h + 1) * pitch, pitch + 1
        for cn in nb.prange(c_in * n_img):
            c, n = cn // n_img, cn % n_img
            base = first + n * size
            for ph in range(4):
                row = out[ph, c]
                if n == 0:
                    row[:first] = 0
                if n == n_img - 1:
                    row[base + size:] = 0
                for y in range(h):
                    row[base + y * pitch + w] = 0
                row[base + h * pitch:base + size] = 0
            for yy in range(2 * h):
                src = a[c, n, yy] if a_cm else a[n, c, yy]
                q, o = yy % 2, base + (yy // 2) * pitch
                p0, p1 = out[q, c], out[3 - q, c]           # slots of (q, 0) and (q, 1)
                for x in range(w):
                    p0[o + x] = src[2 * x]
                    p1[o + x] = src[2 * x + 1]
    return gather


@_cpu.kernel
def _phases_scatter_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def scatter(flats, h, w, y, y_cm):  # flats (4, C, total) -> y (N, C, 2h, 2w) physical
        c_out = flats.shape[1]
        n_img = y.shape[1] if y_cm else y.shape[0]
        pitch = w + 1
        size, first = (h + 1) * pitch, pitch + 1
        for cn in nb.prange(c_out * n_img):
            c, n = cn // n_img, cn % n_img
            base = first + n * size
            for yy in range(2 * h):
                dst = y[c, n, yy] if y_cm else y[n, c, yy]
                q, o = yy % 2, base + (yy // 2) * pitch
                p0, p1 = flats[q, c], flats[3 - q, c]       # slots of (q, 0) and (q, 1)
                for x in range(w):
                    dst[2 * x] = p0[o + x]
                    dst[2 * x + 1] = p1[o + x]
    return scatter


def padded_gather(a, h, w, stride=1, q=0, r=0):
    """a (N, C, H', W') -> (C, total): a[n, c, s*y+q, s*x+r] (y < h, x < w) in the padded layout."""
    n, c = a.shape[:2]
    first, length, _ = padded_layout(n, h, w)
    if _numba_ok(a):
        out = _workspace.empty((c, length + 2 * first), a.dtype)
        _gather_numba(*_cpu.physical(a), stride, q, r, h, w, out, work=out.size)
        return out
    out = _launch.zeros((c, length + 2 * first), a.dtype)       # a memset and a copy (counted on a GPU)
    _launch.copy_into(_interior(out, n, h, w), a[:, :, q:q + stride * h:stride, r:r + stride * w:stride].transpose(1, 0, 2, 3))
    return out


def padded_scatter(flat, y, h, w, stride=1, q=0, r=0):
    """y[n, c, s*y'+q, s*x'+r] = pixel (y', x') of image n, channel c, of flat (C, total); returns y."""
    n = y.shape[0]
    if _numba_ok(flat, y) and _in_place(y):
        _scatter_numba(np.ascontiguousarray(flat), stride, q, r, h, w, *_cpu.physical(y), work=n * flat.shape[0] * h * w)
        return y
    _launch.copy_into(y[:, :, q:q + stride * h:stride, r:r + stride * w:stride], _interior(flat, n, h, w).transpose(1, 0, 2, 3))
    return y


def phases_gather(a, h, w):
    """a (N, C, 2h, 2w) -> (4, C, total): phase (q, r) = a[:, :, q::2, r::2] at slot PHASE_SLOT[q, r],
    each in the padded layout (padded_gather of each phase, in one pass over a)."""
    n, c = a.shape[:2]
    if _numba_ok(a):
        first, length, _ = padded_layout(n, h, w)
        out = _workspace.empty((4, c, length + 2 * first), a.dtype)
        _phases_gather_numba(*_cpu.physical(a), h, w, out, work=out.size)
        return out
    first, length, _ = padded_layout(n, h, w)
    out = _launch.empty((4, c, length + 2 * first), a.dtype)
    for q in (0, 1):
        for r in (0, 1):
            _launch.copy_into(out[PHASE_SLOT[q, r]], padded_gather(a, h, w, 2, q, r))
    return out


def phases_scatter(flats, y, h, w):
    """y (N, C, 2h, 2w) from its four phases in the padded layout, flats (4, C, total); returns y."""
    if _numba_ok(flats, y) and _in_place(y):
        _phases_scatter_numba(np.ascontiguousarray(flats), h, w, *_cpu.physical(y), work=y.size)
        return y
    for q in (0, 1):
        for r in (0, 1):
            padded_scatter(flats[PHASE_SLOT[q, r]], y, h, w, 2, q, r)
    return y

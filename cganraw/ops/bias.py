"""Per-channel bias over axis 1 of (N, C) or (N, C, H, W): the op `bias_add`, used by
the layers Linear, Conv2d and ConvTranspose2d (cganraw.nn.linear, cganraw.nn.conv).

    bias_add_forward    y += b along axis 1, in place    _numpy, _cuda: bias_add_forward_v1/v2
    bias_add_backward   db = dy summed over all but C     _numpy, _cuda: bias_add_backward_v1/v2,
                                                          _partial_v3 + _reduce_v3, _v5 (the
                                                          default: both passes in one launch)
    bias_leaky_relu_forward    y = leaky_relu(y + b), in place      _numpy, _cuda: bias_leaky_relu_forward_v1
    bias_leaky_relu_backward   dpre = leaky_relu'(y) dy, db = sum dpre   _numpy, _cuda:
                               bias_leaky_relu_backward_v3 (one launch), or _partial_v1 +
                               bias_add_backward_reduce_v3
    bias_tanh_forward          y = tanh(y + b), in place             _numpy, _cuda: bias_tanh_forward_v1
    bias_tanh_backward         dpre = (1 - y^2) dy, db = sum dpre    _numpy, _cuda: bias_tanh_backward_v1
Kernels in kernels/bias.cu. The fused pair is what a Linear/Conv2d/ConvTranspose2d followed by
LeakyReLU runs inside nn.Sequential (cganraw.nn.fused); its reference is exactly the unfused
bias_add + leaky_relu arithmetic, so the numpy backend gives the same bits either way.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch, _workspace


def _channel_view(b, ndim):
    # (C,) -> (1, C) or (1, C, 1, 1), broadcastable against (N, C[, H, W])
    return b.reshape((1, -1) + (1,) * (ndim - 2))


def bias_add_forward_numpy(y, b):
    y += _channel_view(b, y.ndim)
    return y


def bias_add_backward_numpy(dy):
    # db[c] = sum over batch and pixels of dy[:, c]
    if dy.ndim == 2:
        return dy.sum(axis=0)
    n, c = dy.shape[:2]
    return dy.reshape(n, c, -1).sum(axis=(0, 2))


def _check_slope(op, negative_slope):
    # the backward reads the mask from the output: y > 0 iff y + b > 0 needs slope >= 0
    if not negative_slope >= 0:
        raise ValueError(f"{op}: the fused bias + LeakyReLU needs negative_slope >= 0, got {negative_slope}")


def bias_leaky_relu_forward_numpy(y, b, negative_slope):
    """In place: y = leaky_relu(y + b) with the arithmetic of bias_add_forward_numpy then
    leaky_relu_forward_numpy. Returns y, cache (y, negative_slope)."""
    _check_slope("bias_leaky_relu_forward", negative_slope)
    xp = backend.array_module(y)
    if b is not None:
        bias_add_forward_numpy(y, b)
    xp.multiply(y, y.dtype.type(negative_slope), out=y, where=~(y > 0))
    return y, (y, negative_slope)


def bias_leaky_relu_backward_numpy(dy, cache, need_db=True):
    """dy -> dpre = dy where y > 0 else slope * dy (leaky_relu_backward_numpy's values), and
    db = bias_add_backward_numpy(dpre) (None unless need_db)."""
    y, negative_slope = cache
    xp = backend.array_module(dy)
    dpre = xp.where(y > 0, dy, dy * dy.dtype.type(negative_slope))
    return dpre, (bias_add_backward_numpy(dpre) if need_db else None)


# ---------------------------------------------------------------- Numba CPU paths (cganraw.ops._cpu)
# One pass each way over (N, C, HW): the forward adds the bias and applies the slope in
# place (the reference's operations on float32 values: the same bits); the backward writes
# dpre and sums it per channel in float64, one channel per task, in the order channel_total
# gives (the same bits at any thread count and in either layout; the reference's float32
# reduction differs from it only by float32 rounding). bias_add_backward and every fused
# pass that sums a bias gradient (ops.conv's layout turns and im2col) sum that way, so a
# fused and an unfused layer still agree bit for bit.
IMAGES_AT_ONCE = 8      # the images channel_total sums side by side


def _build_channel_total(nb):
    @nb.njit(cache=True)
    def images_total(rows):
        n, hw = rows.shape
        part = np.zeros(IMAGES_AT_ONCE, np.float64)
        acc = 0.0
        for n0 in range(0, n, IMAGES_AT_ONCE):
            m = min(IMAGES_AT_ONCE, n - n0)
            part[:] = 0.0
            if m == IMAGES_AT_ONCE:
                for p in range(hw):
                    for q in range(IMAGES_AT_ONCE):
                        part[q] += rows[n0 + q, p]
            else:
                for p in range(hw):
                    for q in range(m):
                        part[q] += rows[n0 + q, p]
            for q in range(m):
                acc += part[q]
        return acc
    return images_total


def _build_channel_total_batch_minor(nb):
    @nb.njit(cache=True)
    def images_total_batch_minor(block):
        hw, n = block.shape
        part = np.zeros(n, np.float64)
        for p in range(hw):
            row = block[p]
            for i in range(n):
                part[i] += row[i]
        acc = 0.0
        for i in range(n):
            acc += part[i]
        return acc
    return images_total_batch_minor


# The jitted totals, built once by bind_totals. Kernels call them as globals of their module,
# never as closure variables: Numba keys a cached function's entries by the pickled contents of
# its closure, and a jitted function pickles with an id of its process, so a kernel closing
# over one missed its disk cache and compiled again in every new process (seconds at start-up).
# Numba's cache checks only the kernel's own file: after changing a total, touch the files of
# the kernels that call it (here and ops.conv), or their cached code keeps the old one.
_images_total = _images_total_batch_minor = None


def bind_totals(nb):
    """(channel_total(nb), channel_total_batch_minor(nb)), built once, and bound to this
    module's globals for its kernels."""
    global _images_total, _images_total_batch_minor
    if _images_total is None:
        _images_total = _build_channel_total(nb)
        _images_total_batch_minor = _build_channel_total_batch_minor(nb)
    return _images_total, _images_total_batch_minor


def channel_total(nb):
    """The jitted total(rows) -> float64 of a channel's values rows (N, P) (each row
    contiguous, any row stride): each image's row summed in float64 in pixel order, from 0,
    then the images' sums added in n order. The images run IMAGES_AT_ONCE side by side, so
    the adds do not wait for each other as one chain did (0.7 of the 1.1 ms of the layout
    turn at (128, 64, 14, 14) on two threads); with P = 1 it is the row kernels' n-order sum,
    and channel_total_batch_minor gives its bits from the (P, N) layout."""
    return bind_totals(nb)[0]


def channel_total_batch_minor(nb):
    """The jitted total(block) of a channel's values in the batch-minor layout, block (P, N)
    C-contiguous: channel_total(block.T), bit for bit (the same per-image sums, now side by
    side along the rows)."""
    return bind_totals(nb)[1]


@_cpu.kernel
def _bias_leaky_forward_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def forward(y, y_cm, b, slope):  # y (N, C, HW), or (C, N, HW) when y_cm, in place; b (C,) or empty
        if y_cm:
            c, n, hw = y.shape
        else:
            n, c, hw = y.shape
        has_bias = b.size > 0
        for task in nb.prange(n * c):
            ch, i = task // n, task % n
            row = y[ch, i] if y_cm else y[i, ch]
            bias = b[ch] if has_bias else y.dtype.type(0)
            for p in range(hw):
                v = row[p] + bias if has_bias else row[p]
                row[p] = v if v > 0 else v * slope
    return forward


@_cpu.kernel
def _bias_leaky_backward_numba(nb, parallel):
    bind_totals(nb)

    @nb.njit(parallel=parallel, cache=True)
    def backward(dy, dy_cm, y, y_cm, slope, dpre, db):  # dpre in y's layout; db (C,) float64 or empty
        if y_cm:
            c, n, hw = y.shape
        else:
            n, c, hw = y.shape
        sums = db.size > 0
        for ch in nb.prange(c):
            for i in range(n):
                g = dy[ch, i] if dy_cm else dy[i, ch]
                yr = y[ch, i] if y_cm else y[i, ch]
                d = dpre[ch, i] if y_cm else dpre[i, ch]
                for p in range(hw):
                    d[p] = g[p] if yr[p] > 0 else g[p] * slope
            if sums:                        # the channel's dpre, still in cache
                db[ch] = _images_total(dpre[ch] if y_cm else dpre[:, ch])
    return backward


@_cpu.kernel
def _channel_sum_numba(nb, parallel):
    bind_totals(nb)

    @nb.njit(parallel=parallel, cache=True)
    def channel_sum(dy, dy_cm, db):  # db[c] = sum of channel c in float64, in channel_total's order
        c = dy.shape[0] if dy_cm else dy.shape[1]
        for ch in nb.prange(c):
            db[ch] = _images_total(dy[ch] if dy_cm else dy[:, ch])
    return channel_sum


# (N, C) Linear outputs: with HW = 1 the kernels above run one element per task and read a
# channel down a column; these go along rows (contiguous, vectorised) and sum the channels of
# a block of COLS at a time, each in float64 in n order: the bits of the kernels above.
COLS = 64


@_cpu.kernel
def _bias_leaky_forward_rows_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def forward(y, b, slope):  # y (N, C) C-contiguous, in place; b (C,) or empty
        n, c = y.shape
        has_bias = b.size > 0
        for i in nb.prange(n):
            row = y[i]
            if has_bias:
                for j in range(c):
                    v = row[j] + b[j]
                    row[j] = v if v > 0 else v * slope
            else:
                for j in range(c):
                    v = row[j]
                    row[j] = v if v > 0 else v * slope
    return forward


@_cpu.kernel
def _bias_leaky_backward_rows_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def backward(dy, y, slope, dpre, db, cols):  # all (N, C) C-contiguous; db (C,) float64 or empty
        n, c = y.shape
        sums = db.size > 0
        for blk in nb.prange((c + cols - 1) // cols):
            lo = blk * cols
            w = min(cols, c - lo)
            acc = np.zeros(w, np.float64)
            for i in range(n):
                # row segments indexed from 0: the loop vectorises (indexing from lo does not)
                g, yr, d = dy[i, lo:lo + w], y[i, lo:lo + w], dpre[i, lo:lo + w]
                for j in range(w):
                    v = g[j] if yr[j] > 0 else g[j] * slope
                    d[j] = v
                    acc[j] += v
            if sums:
                db[lo:lo + w] = acc
    return backward


@_cpu.kernel
def _channel_sum_rows_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def channel_sum(dy, db, cols):  # dy (N, C) C-contiguous; db (C,) float64
        n, c = dy.shape
        for blk in nb.prange((c + cols - 1) // cols):
            lo = blk * cols
            w = min(cols, c - lo)
            acc = np.zeros(w, np.float64)
            for i in range(n):
                g = dy[i, lo:lo + w]
                for j in range(w):
                    acc[j] += g[j]
            db[lo:lo + w] = acc
    return channel_sum


def _numba_ok(*arrays):
    return _cpu.enabled() and _cpu.host_arrays(*arrays) and all(a.ndim in (2, 4) and a.dtype in (np.float32, np.float64)
                                  for a in arrays)


def _physical3(a):
    """(N, C) or (N, C, H, W) -> (C-contiguous (N, C, HW) or (C, N, HW), channel_major): a view
    of an NCHW or channel-major array, a copy of any other layout (cganraw.ops._cpu.physical)."""
    if a.ndim == 2:
        return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], 1), False
    return _cpu.planes(a)


def bias_add_backward_numba(dy):
    """As bias_add_backward_numpy, summed per channel in float64 (see above)."""
    db = np.empty(dy.shape[1], dtype=np.float64)
    if dy.ndim == 2:
        _channel_sum_rows_numba(np.ascontiguousarray(dy), db, COLS, work=dy.size)
    else:
        _channel_sum_numba(*_physical3(dy), db, work=dy.size)
    return db.astype(dy.dtype)


def bias_leaky_relu_forward_numba(y, b, negative_slope):
    """In place, bit-identical to bias_leaky_relu_forward_numpy."""
    _check_slope("bias_leaky_relu_forward", negative_slope)
    bias = np.empty(0, dtype=y.dtype) if b is None else np.ascontiguousarray(b, dtype=y.dtype)
    if y.ndim == 2 and y.flags.c_contiguous:
        _bias_leaky_forward_rows_numba(y, bias, y.dtype.type(negative_slope), work=y.size)
        return y, (y, negative_slope)
    y3, cm = _physical3(y)
    if not np.may_share_memory(y3, y):   # a layout that needed a copy: stay in place instead
        return bias_leaky_relu_forward_numpy(y, b, negative_slope)
    _bias_leaky_forward_numba(y3, cm, bias, y.dtype.type(negative_slope), work=y.size)
    return y, (y, negative_slope)


def bias_leaky_relu_backward_numba(dy, cache, need_db=True):
    """As bias_leaky_relu_backward_numpy: dpre bit-identical, db = bias_add_backward_numba(dpre)."""
    y, negative_slope = cache
    if y.ndim == 2:
        y2 = np.ascontiguousarray(y)
        dpre = _workspace.empty_like(y2)
        db = np.empty(dy.shape[1] if need_db else 0, dtype=np.float64)
        _bias_leaky_backward_rows_numba(np.ascontiguousarray(dy), y2, dy.dtype.type(negative_slope), dpre, db, COLS,
                                        work=dy.size)
        return dpre, (db.astype(dy.dtype) if need_db else None)
    y3, y_cm = _physical3(y)
    dpre3 = _workspace.empty_like(y3)   # in the layer's own output layout: the GEMMs after take it as it is
    db = np.empty(dy.shape[1] if need_db else 0, dtype=np.float64)
    _bias_leaky_backward_numba(*_physical3(dy), y3, y_cm, dy.dtype.type(negative_slope), dpre3, db, work=dy.size)
    if y.ndim == 2:
        dpre = dpre3.reshape(y.shape)
    else:
        n, c, h, w = y.shape
        dpre = dpre3.reshape(c, n, h, w).transpose(1, 0, 2, 3) if y_cm else dpre3.reshape(n, c, h, w)
    return dpre, (db.astype(dy.dtype) if need_db else None)


# ---------------------------------------------------------------- CUDA kernels (kernels/bias.cu)

MAX_ROW_BLOCKS = 65535   # the v2 kernels block-stride over rows/channels beyond this many blocks


def bias_add_forward_cuda(y, b, version=None):
    """In place, as bias_add_forward_numpy. version None picks 2 for maps with at least a
    warp of pixels per row (conv outputs) and 1 otherwise (Linear outputs)."""
    op = "bias_add_forward"
    n, c, hw = _launch.split_channels(y, op, "y")
    yc = _launch.writable(y, op, "y")
    bc = _launch.arg(b, np.float32, f"{op}: b")
    if tuple(bc.shape) != (c,):
        raise ValueError(f"{op}: b has shape {tuple(bc.shape)}, expected ({c},) for y of shape {tuple(y.shape)}")
    version = _launch.pick_version(op, version, 2 if hw >= 32 else 1)
    total = _launch.element_count(yc.size, op)
    if yc.size:
        if version == 1:
            grid, block = _launch.grid_for(yc.size)
            _launch.function("bias", "bias_add_forward_v1")(
                grid, block, (yc, bc, _launch.i32(c), _launch.i32(hw), total))
        else:
            rows = n * c
            _launch.function("bias", "bias_add_forward_v2")(
                (min(rows, MAX_ROW_BLOCKS),), (_launch.warp_block(hw),),
                (yc, bc, _launch.i32(rows), _launch.i32(c), _launch.i32(hw)))
    _launch.write_back(y, yc)
    return y


BACKWARD_VERSIONS = (1, 2, 3, 5)


def _check_out(out, c, op):
    if out is not None and (tuple(out.shape) != (c,) or out.dtype != np.float32 or not out.flags.c_contiguous
                            or backend.array_module(out) is not backend.get_xp()):
        raise ValueError(f"{op}: out must be a contiguous float32 array of shape ({c},) on the device")


def _reduce_partials(partials, c, splits, out=None):
    """db (C,) from the (splits, C) partial sums, summed in split order; with `out`, the
    total is added into it (bias_add_backward_reduce_v4) and None returned."""
    grid, block = _launch.grid_for(c)
    if out is not None:
        _launch.function("bias", "bias_add_backward_reduce_v4")(
            grid, block, (out, partials, _launch.i32(c), _launch.i32(splits)))
        return None
    db = _launch.empty((c,))
    _launch.function("bias", "bias_add_backward_reduce_v3")(
        grid, block, (db, partials, _launch.i32(c), _launch.i32(splits)))
    return db


def bias_add_backward_cuda(dy, version=None, splits=None, out=None):
    """As bias_add_backward_numpy. version None is 5: v3's (channels x splits) grid of
    partial sums (float4 loads where aligned) whose last block to finish adds the splits
    up in order, one launch, reading a row-strided dy (a channel slice) in place; 3 the
    same in two launches (partials, then bias_add_backward_reduce_v3/v4); 2 a block per
    channel, 1 a thread per channel. splits forces v3/v5's split count. out: db is added
    into it (the bias's .grad; v3 and v5 in their reduction, else one add) and None returned."""
    op = "bias_add_backward"
    n, c, hw = _launch.split_channels(dy, op, "dy")
    version = _launch.pick_version(op, version, 5, BACKWARD_VERSIONS)
    if version == 5:
        if dy.dtype != np.float32:
            raise TypeError(f"{op}: dy: kernels take float32, got {dy.dtype}")
        dyc, ld = _launch.rows_strided(dy, op, "dy")
    else:
        dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    _launch.element_count(dyc.size, op)
    _check_out(out, c, op)
    if c == 0 or (n * hw == 0 and out is not None):
        return None if out is not None else _launch.empty((c,))
    db = _launch.empty((c,))
    if n * hw == 0:
        db.fill(0)
        return db
    if version == 5:
        grid, block, s = _launch.channel_split_launch(n, c, hw, splits)
        partials = _launch.empty((s, c))
        _launch.function("bias", "bias_add_backward_v5")(
            grid, block, (out if out is not None else db, partials, _launch.grid_counter(), dyc, _launch.i32(n),
                          _launch.i32(c), _launch.i32(hw), _launch.i32(ld), _launch.i32(s),
                          _launch.i32(out is not None)))
        return None if out is not None else db
    args = (db, dyc, _launch.i32(n), _launch.i32(c), _launch.i32(hw))
    if version == 3:
        grid, block, s = _launch.channel_split_launch(n, c, hw, splits)
        partials = _launch.empty((s, c))
        _launch.function("bias", "bias_add_backward_partial_v3")(
            grid, block, (partials, dyc, _launch.i32(n), _launch.i32(c), _launch.i32(hw), _launch.i32(s)))
        return _reduce_partials(partials, c, s, out)
    if version == 1:
        grid, block = _launch.grid_for(c)
        _launch.function("bias", "bias_add_backward_v1")(grid, block, args)
    else:
        _launch.function("bias", "bias_add_backward_v2")(
            (min(c, MAX_ROW_BLOCKS),), (_launch.warp_block(n * hw),), args)
    if out is not None:
        _launch.add_into(out, db)
        return None
    return db


def _bias_forward_arrays(op, y, b):
    """(n, c, hw, y as the kernel writes it, the bias (zeros for None)) of an in-place
    bias + activation forward, checked."""
    n, c, hw = _launch.split_channels(y, op, "y")
    yc = _launch.writable(y, op, "y")
    bc = _launch.zeros((c,)) if b is None else _launch.arg(b, np.float32, f"{op}: b")
    if tuple(bc.shape) != (c,):
        raise ValueError(f"{op}: b has shape {tuple(bc.shape)}, expected ({c},) for y of shape {tuple(y.shape)}")
    _launch.element_count(yc.size, op)
    return n, c, hw, yc, bc


def bias_leaky_relu_forward_cuda(y, b, negative_slope, splits=None):
    """In place, as bias_leaky_relu_forward_numpy (kernels/bias.cu bias_leaky_relu_forward_v1;
    b None: a zero bias). Returns y, cache (y, negative_slope)."""
    op = "bias_leaky_relu_forward"
    _check_slope(op, negative_slope)
    n, c, hw, yc, bc = _bias_forward_arrays(op, y, b)
    if yc.size:
        grid, block, s = _launch.channel_split_launch(n, c, hw, splits)
        _launch.function("bias", "bias_leaky_relu_forward_v1")(
            grid, block, (yc, bc, _launch.f32(negative_slope), _launch.i32(n), _launch.i32(c), _launch.i32(hw),
                          _launch.i32(s)))
    _launch.write_back(y, yc)
    return y, (y, negative_slope)


def bias_leaky_relu_backward_cuda(dy, cache, need_db=True, splits=None, out=None, one_launch=True):
    """As bias_leaky_relu_backward_numpy: one pass writes dpre and the partial sums of db,
    and its last block adds them up (bias_leaky_relu_backward_v3; with `out`, into it, and db
    comes back None). one_launch=False: partial_v1, then bias_add_backward_reduce_v3 (skipped
    when not need_db) or reduce_v4 into `out`."""
    return _bias_leaky_relu_backward_launch(dy, cache, need_db, splits, out, channel_major=False,
                                            one_launch=one_launch)


def _bias_leaky_relu_backward_launch(dy, cache, need_db, splits, out, channel_major, one_launch=True):
    """dpre (N, C, H, W) (bias_leaky_relu_backward_v3, or partial_v1 and a reduction), or
    channel-major (C, N*H*W) (v4, or partial_v2 and a reduction), and db from the per-split
    partial sums: by the grid's last block in the same launch (one_launch), else by
    bias_add_backward_reduce_v3/v4."""
    op = "bias_leaky_relu_backward"
    y, negative_slope = cache
    n, c, hw = _launch.split_channels(dy, op, "dy")
    _check_out(out, c, op)
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    yc = _launch.arg(y, np.float32, f"{op}: y")
    if tuple(yc.shape) != tuple(dyc.shape):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, the forward's output {tuple(yc.shape)}")
    _launch.element_count(dyc.size, op)
    dpre = _launch.empty((c, n * hw) if channel_major else dyc.shape)
    if dyc.size == 0:
        return dpre, (_launch.zeros((c,)) if need_db and out is None else None)
    grid, block, s = _launch.channel_split_launch(n, c, hw, splits)
    partials = _launch.empty((s, c))
    if one_launch:
        into = need_db and out is not None          # without need_db, db is scratch, `out` untouched
        db = out if into else _launch.empty((c,))
        _launch.function("bias", f"bias_leaky_relu_backward_v{4 if channel_major else 3}")(
            grid, block, (dpre, db, partials, _launch.grid_counter(), dyc, yc, _launch.f32(negative_slope),
                          _launch.i32(n), _launch.i32(c), _launch.i32(hw), _launch.i32(s), _launch.i32(into)))
        return dpre, (db if need_db and not into else None)
    _launch.function("bias", f"bias_leaky_relu_backward_partial_v{2 if channel_major else 1}")(
        grid, block, (dpre, partials, dyc, yc, _launch.f32(negative_slope), _launch.i32(n), _launch.i32(c),
                      _launch.i32(hw), _launch.i32(s)))
    return dpre, (_reduce_partials(partials, c, s, out) if need_db else None)


def bias_leaky_relu_forward_from_channel_major_cuda(y_cm, n, h, w, b, negative_slope):
    """leaky_relu(y + b) as bias_leaky_relu_forward_numpy, for a pre-activation y held
    channel-major, y_cm (C, N*H*W) (a conv GEMM's output): bias_leaky_relu_forward_v2 writes
    the result (N, C, H, W) in one pass, with no layout copy. Returns y, cache (y, slope)."""
    op = "bias_leaky_relu_forward"
    _check_slope(op, negative_slope)
    yc = _launch.arg(y_cm, np.float32, f"{op}: y_cm")
    c = int(yc.shape[0]) if yc.ndim == 2 else -1
    if yc.ndim != 2 or yc.shape[1] != n * h * w:
        raise ValueError(f"{op}: y_cm must have shape (C, {n * h * w}), got {tuple(yc.shape)}")
    bc = _launch.arg(b, np.float32, f"{op}: b")
    if tuple(bc.shape) != (c,):
        raise ValueError(f"{op}: b has shape {tuple(bc.shape)}, expected ({c},)")
    y = _launch.empty((n, c, h, w))
    total = _launch.element_count(y.size, op)
    if y.size:
        grid, block = _launch.grid_for(y.size, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("bias", "bias_leaky_relu_forward_v2")(
            grid, block, (y, yc, bc, _launch.f32(negative_slope), _launch.i32(n), _launch.i32(c), _launch.i32(h * w),
                          total))
    return y, (y, negative_slope)


def bias_leaky_relu_backward_to_channel_major_cuda(dy, cache, need_db=True, splits=None, out=None,
                                                   one_launch=True):
    """As bias_leaky_relu_backward_cuda, with dpre written channel-major (C, N*H*W), the
    layout a conv's weight and input GEMMs take (bias_leaky_relu_backward_v4, or partial_v2
    and a reduction): no layout copy. Returns dpre_cm, db (None without need_db, or with
    `out`, added into it)."""
    return _bias_leaky_relu_backward_launch(dy, cache, need_db, splits, out, channel_major=True,
                                            one_launch=one_launch)


# ---------------------------------------------------------------- public ops: dispatch

def bias_add_forward(y, b):
    """In place: y (N, C[, H, W]) += b (C,) along axis 1. Returns y (no cache: the
    backward needs only dy)."""
    if backend.uses_kernels():
        return bias_add_forward_cuda(y, b)
    return bias_add_forward_numpy(y, b)


def _accumulate(out, db):
    # the CPU backends: grad += db, as Parameter.accumulate does (the same bits)
    if out is None or db is None:
        return db
    out += db
    return None


def bias_add_backward(dy, out=None):
    """dy (N, C[, H, W]) -> db (C,); with `out` (the bias's .grad) db is added into it and
    None returned."""
    if backend.uses_kernels():
        return bias_add_backward_cuda(dy, out=out)
    if _numba_ok(dy):
        return _accumulate(out, bias_add_backward_numba(dy))
    return _accumulate(out, bias_add_backward_numpy(dy))


def bias_leaky_relu_forward(y, b, negative_slope):
    """In place: y (N, C[, H, W]) = leaky_relu(y + b) (b None: no bias). Returns y and the
    cache (y itself and the slope: the backward's mask is y > 0). negative_slope >= 0."""
    if backend.uses_kernels():
        return bias_leaky_relu_forward_cuda(y, b, negative_slope)
    if _numba_ok(y) and y.flags.writeable and (b is None or b.dtype == y.dtype):
        return bias_leaky_relu_forward_numba(y, b, negative_slope)
    return bias_leaky_relu_forward_numpy(y, b, negative_slope)


def bias_leaky_relu_backward(dy, cache, need_db=True, out=None):
    """dy -> dpre (the gradient before the activation), db (C,) or None; with `out` (the
    bias's .grad) db is added into it and comes back None."""
    if backend.uses_kernels():
        return bias_leaky_relu_backward_cuda(dy, cache, need_db, out=out)
    if _numba_ok(dy, cache[0]) and dy.dtype == cache[0].dtype and dy.shape == cache[0].shape:
        dpre, db = bias_leaky_relu_backward_numba(dy, cache, need_db)
    else:
        dpre, db = bias_leaky_relu_backward_numpy(dy, cache, need_db)
    return dpre, _accumulate(out, db)


# ---------------------------------------------------------------- fused bias + Tanh
# A layer with bias followed by Tanh (G's last Conv2d): on the kernel backends one pass each
# way (nn.fused) instead of bias_add + tanh forward and tanh_backward + the bias reduction.

def bias_tanh_forward_numpy(y, b):
    """In place: y = tanh(y + b), as bias_add_forward_numpy then tanh_forward_numpy. Returns
    y, cache (y: the backward's derivative is 1 - y^2)."""
    xp = backend.array_module(y)
    if b is not None:
        bias_add_forward_numpy(y, b)
    xp.tanh(y, out=y)
    return y, y


def bias_tanh_backward_numpy(dy, cache, need_db=True):
    """dy -> dpre = dy (1 - y^2) (tanh_backward_numpy's values) and db =
    bias_add_backward_numpy(dpre) (None unless need_db)."""
    y = cache
    dpre = dy * (1 - y * y)
    return dpre, (bias_add_backward_numpy(dpre) if need_db else None)


def bias_tanh_forward_cuda(y, b, splits=None):
    """In place, as bias_tanh_forward_numpy (kernels/bias.cu bias_tanh_forward_v1; b None: a
    zero bias). Returns y, cache (y)."""
    op = "bias_tanh_forward"
    n, c, hw, yc, bc = _bias_forward_arrays(op, y, b)
    if yc.size:
        grid, block, s = _launch.channel_split_launch(n, c, hw, splits)
        _launch.function("bias", "bias_tanh_forward_v1")(
            grid, block, (yc, bc, _launch.i32(n), _launch.i32(c), _launch.i32(hw), _launch.i32(s)))
    _launch.write_back(y, yc)
    return y, y


def bias_tanh_backward_cuda(dy, cache, need_db=True, splits=None, out=None):
    """As bias_tanh_backward_numpy in one launch (bias_tanh_backward_v1: dpre and the partial
    sums of db, which the grid's last block adds up; with `out`, into it, and db comes back
    None)."""
    op = "bias_tanh_backward"
    n, c, hw = _launch.split_channels(dy, op, "dy")
    _check_out(out, c, op)
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    yc = _launch.arg(cache, np.float32, f"{op}: y")
    if tuple(yc.shape) != tuple(dyc.shape):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, the forward's output {tuple(yc.shape)}")
    _launch.element_count(dyc.size, op)
    dpre = _launch.empty(dyc.shape)
    if dyc.size == 0:
        return dpre, (_launch.zeros((c,)) if need_db and out is None else None)
    grid, block, s = _launch.channel_split_launch(n, c, hw, splits)
    into = need_db and out is not None          # without need_db, db is scratch, `out` untouched
    db = out if into else _launch.empty((c,))
    _launch.function("bias", "bias_tanh_backward_v1")(
        grid, block, (dpre, db, _launch.empty((s, c)), _launch.grid_counter(), dyc, yc, _launch.i32(n),
                      _launch.i32(c), _launch.i32(hw), _launch.i32(s), _launch.i32(into)))
    return dpre, (db if need_db and not into else None)


def bias_tanh_forward(y, b):
    """In place: y (N, C[, H, W]) = tanh(y + b) (b None: no bias). Returns y and the cache (y)."""
    if backend.uses_kernels():
        return bias_tanh_forward_cuda(y, b)
    return bias_tanh_forward_numpy(y, b)


def bias_tanh_backward(dy, cache, need_db=True, out=None):
    """dy -> dpre (the gradient before tanh), db (C,) or None; with `out` (the bias's .grad)
    db is added into it and comes back None."""
    if backend.uses_kernels():
        return bias_tanh_backward_cuda(dy, cache, need_db, out=out)
    dpre, db = bias_tanh_backward_numpy(dy, cache, need_db)
    return dpre, _accumulate(out, db)

"""Conv2d and ConvTranspose2d through im2col/col2im and one GEMM, for the layers
cganraw.nn.Conv2d and ConvTranspose2d.

Ops and faces:
    im2col                      im2col_numpy, im2col_cuda (kernels/im2col.cu: im2col_v1-v3)
    col2im                      col2im_numpy, col2im_cuda (kernels/im2col.cu: col2im_v1-v4)
    (flip=True: row (c, i, j) of cols is tap (k-1-i, k-1-j); im2col_v3, col2im_v4)
    im2col_batch_minor, col2im_batch_minor   the host's columns (C*k*k, Ho*Wo*N) with Numba (the same
                                values, permuted: the image index innermost)
    conv2d_forward/_backward    im2col + gemm + bias_add_forward; gemm + col2im + bias_add_backward
    conv_transpose2d_forward/_backward   the same pair the other way round
The convolutions have no kernels of their own: on the GPU they are these im2col/col2im
kernels, the GEMM (cuBLAS or kernels/gemm.cu) and the bias kernels (kernels/bias.cu).

Layout of the column matrix, shared by both directions:
    cols (C*k*k, N*Ho*Wo): row (c, i, j) holds input pixel (n, c, oy*s + i - p, ox*s + j - p)
                           for every output position (n, oy, ox).
Conv2d forward is im2col + GEMM; its data gradient is GEMM + col2im.
ConvTranspose2d is the same pair run the other way round (Chainer's deconvolution):
its forward is GEMM + col2im and its data gradient im2col + GEMM.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch, _layout, _workspace
from cganraw.ops.bias import bias_add_backward, bias_add_forward, bind_totals
from cganraw.ops.gemm import gemm


def conv_output_size(size, kernel_size, stride=1, padding=0):
    """PyTorch's Conv2d output size: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel_size) // stride + 1


def conv_transpose_output_size(size, kernel_size, stride=1, padding=0, output_padding=0):
    """PyTorch's ConvTranspose2d output size: (size - 1) s - 2p + k + output_padding."""
    return (size - 1) * stride - 2 * padding + kernel_size + output_padding


def _pad(x, padding):
    # zero border of width `padding` around the last two axes, one allocation
    if padding == 0:
        return x
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    out = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
    out[:, :, padding:padding + h, padding:padding + w] = x
    return out


def flip_taps(cols, k):
    """cols (C*k*k, L) with each channel's k*k rows in reverse order: tap (i, j) <-> (k-1-i,
    k-1-j) (a view). The NumPy reference of the kernels' flip."""
    return cols.reshape(-1, k * k, cols.shape[1])[:, ::-1].reshape(cols.shape)


def im2col_numpy(x, kernel_size, stride, padding, out_hw=None, flip=False):
    """x (N, C, H, W) -> cols (C*k*k, N*Ho*Wo) as one strided view and one copy."""
    n, c, h, w, k, _, _, ho, wo = _conv_geometry("im2col", x.shape, kernel_size, stride, padding, out_hw)
    if flip:
        return np.ascontiguousarray(flip_taps(im2col_numpy(x, kernel_size, stride, padding, out_hw), k))
    xpad = np.ascontiguousarray(_pad(x, padding))
    sn, sc, sh, sw = xpad.strides
    windows = np.lib.stride_tricks.as_strided(
        xpad, shape=(c, k, k, n, ho, wo), strides=(sc, sh, sw, sn, sh * stride, sw * stride),
        writeable=False)
    return windows.reshape(c * k * k, n * ho * wo)


def col2im_numpy(cols, x_shape, kernel_size, stride, padding, out_hw=None, flip=False):
    """cols (C*k*k, N*Ho*Wo) -> x (N, C, H, W), summing overlaps as k*k strided adds."""
    n, c, h, w, k, _, _, ho, wo = _conv_geometry("col2im", x_shape, kernel_size, stride, padding, out_hw)
    _check_cols("col2im", cols, x_shape, k, stride, padding, ho, wo)
    if flip:
        cols = flip_taps(cols, k)
    # the windows may overhang the padded input by up to s-1 on the far side; the
    # overhang is cropped with the padding
    hp = max(h + 2 * padding, (ho - 1) * stride + k)
    wp = max(w + 2 * padding, (wo - 1) * stride + k)
    # accumulate in (C, N, Hp, Wp) so each add reads one contiguous (C, N, Ho, Wo) slab
    acc = np.zeros((c, n, hp, wp), dtype=cols.dtype)
    c6 = cols.reshape(c, k, k, n, ho, wo)
    for i in range(k):
        for j in range(k):
            acc[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += c6[:, i, j]
    acc = acc[:, :, padding:padding + h, padding:padding + w]
    return np.ascontiguousarray(acc.transpose(1, 0, 2, 3))


@_cpu.kernel
def _im2col_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def im2col(x, x_cm, k, s, p, ho, wo, cols):
        # one row (c, i, j) of cols per task; padding handled by bounds, not a padded copy;
        # x NCHW, or (C, N, H, W) when x_cm (cganraw.ops._cpu.physical)
        if x_cm:
            c_in, n_img, h, w = x.shape
        else:
            n_img, c_in, h, w = x.shape
        for r in nb.prange(c_in * k * k):
            c, i, j = r // (k * k), (r // k) % k, r % k
            # the windows ox whose column ox*s + j - p lies on the image: [lo, hi)
            lo = max(0, (p - j + s - 1) // s)
            hi = max(lo, min(wo, (w - 1 + p - j) // s + 1))
            for n in range(n_img):
                for oy in range(ho):
                    yy = oy * s + i - p
                    row = cols[r, (n * ho + oy) * wo:(n * ho + oy + 1) * wo]
                    if yy < 0 or yy >= h:
                        row[:] = 0
                        continue
                    src = x[c, n, yy] if x_cm else x[n, c, yy]
                    row[:lo] = 0
                    for ox in range(lo, hi):       # branch-free interior
                        row[ox] = src[ox * s + j - p]
                    row[hi:] = 0
    return im2col


@_cpu.kernel
def _col2im_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def col2im(cols, k, s, p, ho, wo, out, out_cm):  # out (N, C, H, W), or (C, N, H, W) when out_cm
        # one (n, c) output plane per task: its k*k scatters never race with another task;
        # channel-major task order, so that neighbouring tasks read neighbouring columns of
        # the same k*k rows of cols
        if out_cm:
            c_out, n_img, h, w = out.shape
        else:
            n_img, c_out, h, w = out.shape
        for cn in nb.prange(n_img * c_out):
            c, n = cn // n_img, cn % n_img
            plane = out[c, n] if out_cm else out[n, c]
            plane[:, :] = 0
            for i in range(k):
                for j in range(k):
                    r = (c * k + i) * k + j
                    lo = max(0, (p - j + s - 1) // s)      # windows on the image, as in im2col
                    hi = max(lo, min(wo, (w - 1 + p - j) // s + 1))
                    for oy in range(ho):
                        yy = oy * s + i - p
                        if yy < 0 or yy >= h:
                            continue
                        src = cols[r, (n * ho + oy) * wo:(n * ho + oy + 1) * wo]
                        dst = plane[yy]
                        for ox in range(lo, hi):
                            dst[ox * s + j - p] += src[ox]
    return col2im


# bias.channel_total's jitted forms, bound as globals before a kernel that calls them compiles
# (not closure variables: see ops.bias.bind_totals, and its note on touching this file)
_images_total = _images_total_batch_minor = None


def _bind_totals(nb):
    global _images_total, _images_total_batch_minor
    _images_total, _images_total_batch_minor = bind_totals(nb)


# Batch-minor columns (the host Conv2d's GEMM operand): cols (C*k*k, Ho*Wo*N), column
# (oy, ox, n), the image index innermost. Per channel the input is first transposed into a
# zero-bordered (Hp, Wp, N) plane, so that each (row, oy, ox) of cols is one contiguous run of
# N values: the NCHW column order's runs are Wo long (7 at 7x7), and the per-run overhead
# made im2col and col2im as slow as the layer's GEMM. The GEMMs do not care about the column
# order: y (O, Ho*Wo*N) and dy come in that order too (a pass over the output, 16 times
# smaller than cols at k4). Values are those of im2col_numpy / col2im_numpy, permuted.
# The plane pass is where a LeakyReLU after a transposed conv costs nothing extra (ops.conv_leaky):
# im2col can read dy through the activation's gradient (and sum the bias gradient, in
# bias_leaky_relu_backward's order) and col2im can add the bias and apply the slope as it
# writes the output, so the pair needs no pass of its own either way.
@_cpu.kernel
def _im2col_bm_numba(nb, parallel):
    _bind_totals(nb)

    @nb.njit(parallel=parallel, cache=True)
    def im2col_bm(x, x_cm, k, s, p, ho, wo, cols, y, y_cm, slope, db):
        # x NCHW, or (C, N, H, W) when x_cm -> cols (C*k*k, Ho*Wo*N). y of x's shape (any
        # size-0 array: none): x is dy of leaky_relu(. + b) = y, read as dpre = x where y > 0
        # else slope * x. db[c] (float64; size 0: not summed) sums what is read (dpre, or x),
        # in channel_total's order: a bias's gradient, as bias_add_backward sums it
        if x_cm:
            c_in, n_img, h, w = x.shape
        else:
            n_img, c_in, h, w = x.shape
        act = y.size > 0
        sums = db.size > 0
        hp = max(h + 2 * p, (ho - 1) * s + k)               # windows may overhang the far side by s-1
        wp = max(w + 2 * p, (wo - 1) * s + k)
        for c in nb.prange(c_in):
            # the channel's images copied along their rows first (contiguous reads), then
            # turned into the plane from that copy, in cache: turning straight from x, one
            # image's page per value read or written, ran at half the speed
            images = np.empty((n_img, h, w), x.dtype)
            for n in range(n_img):
                src = x[c, n] if x_cm else x[n, c]
                dst = images[n]
                if act:
                    mask = y[c, n] if y_cm else y[n, c]
                    for yy in range(h):
                        for xx in range(w):
                            dst[yy, xx] = src[yy, xx] if mask[yy, xx] > 0 else src[yy, xx] * slope
                else:
                    dst[:, :] = src
            if sums:
                db[c] = _images_total(images.reshape((n_img, h * w)))
            plane = np.zeros((hp, wp, n_img), x.dtype)      # (Hp, Wp, N), zero border
            for yy in range(h):
                for xx in range(w):
                    run = plane[yy + p, xx + p]
                    for n in range(n_img):
                        run[n] = images[n, yy, xx]
            for i in range(k):
                for j in range(k):
                    row = cols[(c * k + i) * k + j]
                    for oy in range(ho):
                        for ox in range(wo):
                            o = (oy * wo + ox) * n_img
                            src_run = plane[oy * s + i, ox * s + j]
                            for n in range(n_img):
                                row[o + n] = src_run[n]
    return im2col_bm


@_cpu.kernel
def _col2im_bm_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def col2im_bm(cols, k, s, p, ho, wo, out, out_cm, b, act, slope):
        # cols (C*k*k, Ho*Wo*N) -> out (N, C, H, W), or (C, N, H, W); then out += b (size 0:
        # none) and, with act, out = leaky_relu(out) (bias_leaky_relu_forward's operations).
        # Each pixel sums its taps in (i, j) order from zero, as col2im_numpy's strided adds do.
        if out_cm:
            c_out, n_img, h, w = out.shape
        else:
            n_img, c_out, h, w = out.shape
        has_bias = b.size > 0
        hp = max(h + 2 * p, (ho - 1) * s + k)
        wp = max(w + 2 * p, (wo - 1) * s + k)
        for c in nb.prange(c_out):
            plane = np.zeros((hp, wp, n_img), cols.dtype)
            for i in range(k):
                for j in range(k):
                    row = cols[(c * k + i) * k + j]
                    for oy in range(ho):
                        for ox in range(wo):
                            o = (oy * wo + ox) * n_img
                            dst_run = plane[oy * s + i, ox * s + j]
                            for n in range(n_img):
                                dst_run[n] += row[o + n]
            bias = b[c] if has_bias else cols.dtype.type(0)
            # turned out of the plane into a scratch of the channel's images, in cache, then
            # copied along their rows (im2col_bm's `images` the other way round)
            images = np.empty((n_img, h, w), cols.dtype)
            for yy in range(h):
                for xx in range(w):
                    run = plane[yy + p, xx + p]
                    for n in range(n_img):
                        v = run[n]
                        if has_bias:
                            v = v + bias
                        if act:
                            v = v if v > 0 else v * slope
                        images[n, yy, xx] = v
            for n in range(n_img):
                dst = out[c, n] if out_cm else out[n, c]
                dst[:, :] = images[n]
    return col2im_bm


_NO_ACTIVATION = {}    # dtype -> the size-0 arrays that tell the kernels above "no activation"


def _none_of(dtype):
    arrays = _NO_ACTIVATION.get(np.dtype(dtype))
    if arrays is None:
        arrays = _NO_ACTIVATION[np.dtype(dtype)] = (np.empty((0, 0, 0, 0), dtype), np.empty(0, dtype),
                                                    np.empty(0, np.float64))
    return arrays


def _gradient_operands(op, dy, leaky, channel_sums, layout):
    """(y, y_channel_major, slope, sums): what a Numba kernel reading dy (N, C, H, W) takes
    for leaky = (y, slope), dy being the gradient of y = leaky_relu(.) and read through its
    slope, and for channel_sums ((C,) float64, receives each channel's sum of what is read);
    empty stand-ins where they are None. layout: _cpu.physical or _cpu.planes, as the kernel
    indexes y."""
    y, _, sums = _none_of(dy.dtype)
    y_cm, slope = False, dy.dtype.type(0)
    if leaky is not None:
        y, slope = leaky
        if tuple(y.shape) != tuple(dy.shape) or y.dtype != dy.dtype:
            raise ValueError(f"{op}: the activation's output has shape {tuple(y.shape)} and dtype {y.dtype}, "
                             f"expected {tuple(dy.shape)} and {dy.dtype}")
        y, y_cm = layout(y)
        slope = dy.dtype.type(slope)
    if channel_sums is not None:
        if channel_sums.shape != (dy.shape[1],) or channel_sums.dtype != np.float64:
            raise ValueError(f"{op}: channel_sums must be float64 of shape ({dy.shape[1]},)")
        sums = channel_sums
    return y, y_cm, slope, sums


def im2col_batch_minor(x, kernel_size, stride=1, padding=0, out_hw=None, leaky=None, channel_sums=None):
    """x (N, C, H, W) host array -> cols (C*k*k, Ho*Wo*N), column (oy, ox, n) (Numba); out_hw as
    im2col's. leaky = (y, negative_slope): x is the gradient of y = leaky_relu(. + b), y of x's
    shape, and the columns are those of its gradient before the activation
    (bias_leaky_relu_backward's dpre). channel_sums ((C,) float64) receives the per-channel sum
    of what the columns hold (x, or dpre), in bias_add_backward's order: the bias gradient."""
    n, c, h, w, k, s, p, ho, wo = _conv_geometry("im2col_batch_minor", x.shape, kernel_size, stride, padding, out_hw)
    cols = _workspace.empty((c * k * k, ho * wo * n), x.dtype)
    block = _layout.batch_minor_block(x)
    if block is not None and leaky is None and channel_sums is None:     # runs straight from x
        _im2col_from_bm_numba(block, k, s, p, ho, wo, cols, work=cols.size)
        return cols
    y, y_cm, slope, db = _gradient_operands("im2col_batch_minor", x, leaky, channel_sums, _cpu.physical)
    _im2col_bm_numba(*_cpu.physical(x), k, s, p, ho, wo, cols, y, y_cm, slope, db, work=cols.size)
    return cols


def col2im_batch_minor(cols, x_shape, kernel_size, stride=1, padding=0, out_hw=None, bias=None,
                       negative_slope=None, batch_minor=False):
    """cols (C*k*k, Ho*Wo*N), column (oy, ox, n) -> x (N, C, H, W), channel-major (Numba), or
    with batch_minor a batch-minor view (ops._layout); out_hw as col2im's. With bias (C,)
    and/or negative_slope, x = leaky_relu(x + bias) as it is written (bias_leaky_relu_forward's
    operations, bit for bit)."""
    n, c, h, w, k, s, p, ho, wo = _conv_geometry("col2im_batch_minor", x_shape, kernel_size, stride, padding, out_hw)
    if tuple(cols.shape) != (c * k * k, ho * wo * n):
        raise ValueError(f"col2im_batch_minor: cols has shape {tuple(cols.shape)}, expected "
                         f"(C*k*k, Ho*Wo*N) = ({c * k * k}, {ho * wo * n})")
    b = _none_of(cols.dtype)[1] if bias is None else np.ascontiguousarray(bias, dtype=cols.dtype)
    if b.shape not in ((0,), (c,)):
        raise ValueError(f"col2im_batch_minor: bias has shape {tuple(b.shape)}, expected ({c},)")
    act = negative_slope is not None
    slope = cols.dtype.type(negative_slope if act else 0)
    if batch_minor:
        block = _workspace.empty((c, h, w, n), cols.dtype)
        _col2im_to_bm_numba(np.ascontiguousarray(cols), k, s, p, ho, wo, block, work=cols.size)
        block = block.reshape(c, h * w * n)
        if b.size or act:       # a second pass (no caller of this layout has a bias here yet)
            _finish_batch_minor_numba(block, b, act, slope, work=block.size)
        return _layout.batch_minor_view(block, n, h, w)
    out = _workspace.empty((c, n, h, w), cols.dtype)
    _col2im_bm_numba(np.ascontiguousarray(cols), k, s, p, ho, wo, out, True, b, act, slope, work=cols.size)
    return out.transpose(1, 0, 2, 3)


def _batch_minor(x, W):
    """Whether the column paths of Conv2d and ConvTranspose2d take batch-minor columns: host
    arrays with Numba on."""
    return _use_numba(x) and _cpu.host_arrays(x, W)


# The layout turns between NCHW (or channel-major) and batch-minor (C, H*W*N), one channel
# per task. Turning in, the channel is read along its rows into a scratch that stays in cache,
# then written along the images; with a LeakyReLU after the layer (y of its output, the mask)
# the scratch holds the activation's gradient, and with sums each channel's sum, in
# channel_total's order: bias_leaky_relu_backward's dpre and db, or bias_add_backward's db,
# bit for bit.
# Turning out reads along the images and writes across them, adding the bias and applying the
# slope as it goes (bias_add_forward's and bias_leaky_relu_forward's bits). Timed at (256,
# 128, 14, 14) on two threads, with the activation: out 3.5 ms against 7.9 for a layout copy
# and an in-place pass, in 5.4 ms against 13.8. A tiled transpose, or writing across the
# images as the sum goes, measured slower than either.
@_cpu.kernel
def _to_batch_minor_numba(nb, parallel):
    _bind_totals(nb)

    @nb.njit(parallel=parallel, cache=True)
    def to_batch_minor(a, a_cm, y, y_cm, slope, out, sums):
        # a, y (N, C, HW), or (C, N, HW) when a_cm / y_cm -> out (C, HW, N); y (size 0: none)
        # the activation's output; sums (C,) float64 (size 0: none)
        if a_cm:
            c, n, hw = a.shape
        else:
            n, c, hw = a.shape
        act = y.size > 0
        for ch in nb.prange(c):
            scratch = np.empty((n, hw), a.dtype)
            for i in range(n):
                src = a[ch, i] if a_cm else a[i, ch]
                row = scratch[i]
                if act:
                    mask = y[ch, i] if y_cm else y[i, ch]
                    for p in range(hw):
                        row[p] = src[p] if mask[p] > 0 else src[p] * slope
                else:
                    row[:] = src
            dst = out[ch]
            for p in range(hw):
                row = dst[p]
                for i in range(n):
                    row[i] = scratch[i, p]
            if sums.size > 0:               # from the turned copy, in cache: along its rows
                sums[ch] = _images_total_batch_minor(dst)
    return to_batch_minor


@_cpu.kernel
def _from_batch_minor_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def from_batch_minor(a2, b, act, slope, out):  # a2 (C, HW, N) -> out (C, N, HW), + b[c] (size 0: none)
        c, hw, n = a2.shape
        has_bias = b.size > 0
        for ch in nb.prange(c):
            src, dst = a2[ch], out[ch]
            bias = b[ch] if has_bias else a2.dtype.type(0)
            for p in range(hw):
                row = src[p]
                for i in range(n):
                    v = row[i]
                    if has_bias:
                        v = v + bias
                    if act:
                        v = v if v > 0 else v * slope
                    dst[i, p] = v
    return from_batch_minor


# Batch-minor activations (ops._layout: a host Conv2d's output handed on to the next Conv2d as
# a view of its (C, H*W*N) GEMM output). The next layer's im2col copies runs of N values
# straight from it, its col2im writes the input gradient back in that layout, and the first
# layer's backward reads that gradient through its activation in place: the values of the
# NCHW passes above, bit for bit (each pixel's taps summed in the same order, the same
# elementwise operations, the bias gradient summed in channel_total's order).
@_cpu.kernel
def _finish_batch_minor_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def finish_batch_minor(a2, b, act, slope):  # a2 (C, L) in place: + b[c] (size 0: none), then the slope
        c, length = a2.shape
        has_bias = b.size > 0
        for ch in nb.prange(c):
            row = a2[ch]
            bias = b[ch] if has_bias else a2.dtype.type(0)
            for t in range(length):
                v = row[t]
                if has_bias:
                    v = v + bias
                if act:
                    v = v if v > 0 else v * slope
                row[t] = v
    return finish_batch_minor


@_cpu.kernel
def _im2col_from_bm_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def im2col_from_bm(x, k, s, p, ho, wo, cols):  # x (C, H, W, N) -> cols (C*k*k, Ho*Wo*N)
        c_in, h, w, n = x.shape
        for r in nb.prange(c_in * k * k):
            c, i, j = r // (k * k), (r // k) % k, r % k
            row = cols[r]
            for oy in range(ho):
                yy = oy * s + i - p
                for ox in range(wo):
                    xx = ox * s + j - p
                    o = (oy * wo + ox) * n
                    if 0 <= yy < h and 0 <= xx < w:
                        src = x[c, yy, xx]
                        for t in range(n):
                            row[o + t] = src[t]
                    else:
                        for t in range(n):
                            row[o + t] = 0
    return im2col_from_bm


@_cpu.kernel
def _col2im_to_bm_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def col2im_to_bm(cols, k, s, p, ho, wo, out):  # -> out (C, H, W, N), each pixel's taps in col2im_bm's order
        c_out, h, w, n = out.shape
        for c in nb.prange(c_out):
            dst = out[c]
            dst[:, :, :] = 0
            for i in range(k):
                for j in range(k):
                    row = cols[(c * k + i) * k + j]
                    for oy in range(ho):
                        yy = oy * s + i - p
                        if yy < 0 or yy >= h:
                            continue
                        for ox in range(wo):
                            xx = ox * s + j - p
                            if xx < 0 or xx >= w:
                                continue
                            o = (oy * wo + ox) * n
                            run = dst[yy, xx]
                            for t in range(n):
                                run[t] += row[o + t]
    return col2im_to_bm


@_cpu.kernel
def _gradient_bm_numba(nb, parallel):
    _bind_totals(nb)

    @nb.njit(parallel=parallel, cache=True)
    def gradient_bm(a, y, slope, out, sums):
        # a, y (C, HW, N) batch-minor; y (size 0: none) the activation's output: out = a where
        # y > 0 else slope * a (out may be a itself when y is none); sums (C,) float64 (size 0:
        # none) each channel's sum of out, in channel_total's order
        c = a.shape[0]
        act = y.size > 0
        for ch in nb.prange(c):
            src, dst = a[ch], out[ch]
            if act:
                mask = y[ch]
                for p in range(src.shape[0]):
                    for i in range(src.shape[1]):
                        dst[p, i] = src[p, i] if mask[p, i] > 0 else src[p, i] * slope
            if sums.size > 0:
                sums[ch] = _images_total_batch_minor(dst)
    return gradient_bm


def _to_batch_minor(a, channel_sums=None, leaky=None):
    # (N, C, H, W) host array, any strides -> (C, H*W*N): the GEMM operand of batch-minor
    # columns. leaky = (y, slope): a is dy of y = leaky_relu(.), turned in as its gradient
    # before the activation; channel_sums ((C,) float64) receives each channel's sum of what
    # is turned in (a bias gradient)
    n, c, h, w = a.shape
    if _layout.batch_minor_block(a) is not None and (leaky is None or _layout.batch_minor_block(leaky[0]) is not None):
        return _batch_minor_gradient(a, leaky, channel_sums)
    out = _workspace.empty((c, h * w, n), a.dtype)
    y, y_cm, slope, sums = _gradient_operands("_to_batch_minor", a, leaky, channel_sums, _cpu.planes)
    _to_batch_minor_numba(*_cpu.planes(a), y, y_cm, slope, out, sums, work=a.size)
    return out.reshape(c, h * w * n)


def _batch_minor_gradient(a, leaky, channel_sums):
    # _to_batch_minor of a batch-minor view a (and y, with leaky): a's own memory when there is
    # nothing to do, else through the activation's gradient into a new buffer
    n, c, h, w = a.shape
    a3 = _layout.batch_minor_block(a).reshape(c, h * w, n)
    if leaky is None and channel_sums is None:
        return a3.reshape(c, h * w * n)
    y, _, slope, sums = _gradient_operands("_to_batch_minor", a, leaky, channel_sums,
                                           lambda t: (_layout.batch_minor_block(t), True))
    if leaky is None:           # the sums alone, read from a3 itself
        out, y = a3, np.empty((0, 0, 0), a.dtype)
    else:
        out, y = _workspace.empty(a3.shape, a.dtype), y.reshape(c, h * w, n)
    _gradient_bm_numba(a3, y, slope, out, sums, work=a3.size)
    return out.reshape(c, h * w * n)


def _from_batch_minor(a2, n, h, w, bias=None, negative_slope=None):
    # (C, H*W*N) -> (N, C, H, W), channel-major, plus bias (C,), then leaky_relu with a slope;
    # inside batch_minor_handoff a batch-minor view of a2, finished in place
    c = a2.shape[0]
    b = _none_of(a2.dtype)[1] if bias is None else np.ascontiguousarray(bias, dtype=a2.dtype)
    if b.shape not in ((0,), (c,)):
        raise ValueError(f"bias has shape {tuple(b.shape)}, expected ({c},)")
    act = negative_slope is not None
    slope = a2.dtype.type(negative_slope if act else 0)
    if _bm_handoff and a2.flags.c_contiguous and n > 1:
        if b.size or act:
            _finish_batch_minor_numba(a2, b, act, slope, work=a2.size)
        return _layout.batch_minor_view(a2, n, h, w)
    out = _workspace.empty((c, n, h * w), a2.dtype)
    _from_batch_minor_numba(np.ascontiguousarray(a2).reshape(c, h * w, n), b, act, slope, out, work=a2.size)
    return out.reshape(c, n, h, w).transpose(1, 0, 2, 3)


# ---------------------------------------------------------------- CUDA kernels (kernels/im2col.cu)
IM2COL_VERSIONS = (1, 2, 3)
IM2COL_DEFAULT = 2      # 2-D grid, 32-bit index math
COL2IM_VERSIONS = (1, 2, 3, 4)
COL2IM_DEFAULT = 3      # gather (no atomics, no zero fill), 2-D grid, 32-bit index math
FLIP_VERSIONS = {"im2col": 3, "col2im": 4}      # the versions with a `flip` argument (their default for flip)
_CONV_BLOCK = 256
_CONV_MAX_BLOCKS = 8192  # the kernels grid-stride past this (2M threads fill any GPU)
_MAX_GRID_Y = 65535
_INT32_LIMIT = 2 ** 31


def _check_index_range(op, n, c, h, w, k, ho, wo, all_32bit):
    """Every index the kernel computes fits its integer type, else a clear ValueError:
    the column count always (every version splits an element into 32-bit row and column),
    and with all_32bit (im2col_v2, col2im_v3) the element counts of cols and the image."""
    sizes = {"N*Ho*Wo (columns of cols)": n * ho * wo}
    if all_32bit:
        sizes["C*k*k*N*Ho*Wo (cols elements)"] = c * k * k * n * ho * wo
        sizes["N*C*H*W (image elements)"] = n * c * h * w
    for what, v in sizes.items():
        if v >= _INT32_LIMIT:
            raise ValueError(f"{op}: {what} = {v} does not fit the kernel's 32-bit indices (< 2^31); "
                             f"use a smaller batch" + (", or version=1 (64-bit element indices)" if all_32bit else ""))


def _grid_2d(cols, rows):
    """(grid, block) of a 2-D launch: x over `cols` threads, y over `rows` (both grid-strided)."""
    bx = max(1, min(-(-cols // _CONV_BLOCK), _CONV_MAX_BLOCKS))
    return (bx, max(1, min(rows, _MAX_GRID_Y))), (_CONV_BLOCK,)


def _conv_geometry(op, shape, kernel_size, stride, padding, out_hw):
    if len(shape) != 4:
        raise ValueError(f"{op}: expected an (N, C, H, W) shape, got {tuple(shape)}")
    n, c, h, w = (int(v) for v in shape)
    k, s, p = int(kernel_size), int(stride), int(padding)
    if k < 1 or s < 1 or p < 0:
        raise ValueError(f"{op}: need kernel_size >= 1, stride >= 1, padding >= 0; "
                         f"got k={k}, s={s}, p={p}")
    ho, wo = out_hw or (conv_output_size(h, k, s, p), conv_output_size(w, k, s, p))
    ho, wo = int(ho), int(wo)
    if ho < 0 or wo < 0:
        raise ValueError(f"{op}: a {k}x{k} window with padding {p} does not fit a {h}x{w} input")
    return n, c, h, w, k, s, p, ho, wo


def _check_cols(op, cols, x_shape, k, s, p, ho, wo):
    n, c = x_shape[:2]
    if not backend.is_array(cols) or tuple(cols.shape) != (c * k * k, n * ho * wo):
        raise ValueError(f"{op}: cols has shape "
                         f"{tuple(cols.shape) if backend.is_array(cols) else type(cols).__name__}, "
                         f"expected (C*k*k, N*Ho*Wo) = ({c * k * k}, {n * ho * wo}) for x {tuple(x_shape)}, "
                         f"k={k}, s={s}, p={p}")


def _conv_args(n, c, h, w, k, s, p, ho, wo):
    i32 = _launch.i32
    return (i32(n), i32(c), i32(h), i32(w), i32(k), i32(s), i32(p), i32(ho), i32(wo))


def _float32(op, name, a):
    if not backend.is_array(a):
        raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{op}: the conv kernels take float32, got {name} of dtype {a.dtype} "
                        f"(cast it yourself, or use the numpy backend for float64)")
    return _launch.arg(a, name=name)


def _flip_version(op, family, version, default, versions, flip):
    version = _launch.pick_version(op, version, FLIP_VERSIONS[family] if flip else default, versions)
    if flip and version != FLIP_VERSIONS[family]:
        raise ValueError(f"{op}: flip needs version {FLIP_VERSIONS[family]}, got version={version}")
    return version


def im2col_cuda(x, kernel_size, stride=1, padding=0, out_hw=None, version=None, flip=False):
    """kernels/im2col.cu im2col_v<version> (2, the default: 2-D grid, 32-bit indices; 1: a
    flat grid; 3: v2 with flipped taps when `flip`, the default for flip): x (N, C, H, W)
    float32 -> cols (C*k*k, N*Ho*Wo) on the active kernel backend. A non-contiguous x is
    made contiguous; other dtypes are a TypeError; sizes whose indices would overflow the
    kernel's integers are a ValueError."""
    op = "im2col_cuda"
    version = _flip_version(op, "im2col", version, IM2COL_DEFAULT, IM2COL_VERSIONS, flip)
    if not backend.is_array(x) or x.ndim != 4:
        raise ValueError(f"{op}: x must be an (N, C, H, W) array, got "
                         f"{tuple(x.shape) if backend.is_array(x) else type(x).__name__}")
    x = _float32(op, "x", x)
    n, c, h, w, k, s, p, ho, wo = _conv_geometry(op, x.shape, kernel_size, stride, padding, out_hw)
    _check_index_range(op, n, c, h, w, k, ho, wo, version >= 2)
    cols = _launch.empty((c * k * k, n * ho * wo))
    if cols.size:
        if version == 1:
            grid, block = _launch.grid_for(cols.size, _CONV_BLOCK, _CONV_MAX_BLOCKS)
        else:
            grid, block = _grid_2d(n * ho * wo, c * k * k)
        extra = (_launch.i32(bool(flip)),) if version == 3 else ()
        _launch.function("im2col", f"im2col_v{version}")(
            grid, block, (x, cols, *_conv_args(n, c, h, w, k, s, p, ho, wo), *extra))
    return cols


def col2im_cuda(cols, x_shape, kernel_size, stride=1, padding=0, out_hw=None, version=None, flip=False):
    """kernels/im2col.cu col2im_v<version> (1 scatter with atomics, 2 gather, 3 gather
    with a 2-D grid and 32-bit indices, the default; 4: v3 with flipped taps when `flip`,
    the default for flip): cols (C*k*k, N*Ho*Wo) float32 -> x (N, C, H, W), summing
    overlapping windows."""
    version = _flip_version("col2im_cuda", "col2im", version, COL2IM_DEFAULT, COL2IM_VERSIONS, flip)
    op = f"col2im_cuda(version={version})"
    n, c, h, w, k, s, p, ho, wo = _conv_geometry(op, x_shape, kernel_size, stride, padding, out_hw)
    _check_cols(op, cols, x_shape, k, s, p, ho, wo)
    _check_index_range(op, n, c, h, w, k, ho, wo, version >= 3)
    cols = _float32(op, "cols", cols)
    if version == 1:
        x = _launch.zeros((n, c, h, w))          # the scatter accumulates into x
        total = cols.size
    else:
        x = _launch.empty((n, c, h, w))          # the gather writes every pixel
        total = x.size
    if total and version >= 3:
        grid, block = _grid_2d(h * w, n * c)
        extra = (_launch.i32(bool(flip)),) if version == 4 else ()
        _launch.function("im2col", f"col2im_v{version}")(
            grid, block, (cols, x, *_conv_args(n, c, h, w, k, s, p, ho, wo), *extra))
    elif total:
        grid, block = _launch.grid_for(total, _CONV_BLOCK, _CONV_MAX_BLOCKS)
        _launch.function("im2col", f"col2im_v{version}")(
            grid, block, (cols, x, *_conv_args(n, c, h, w, k, s, p, ho, wo)))
    return x


def _use_numba(a):
    return _cpu.enabled() and isinstance(a, np.ndarray)


def im2col(x, kernel_size, stride=1, padding=0, out_hw=None, flip=False):
    """x (N, C, H, W) -> cols (C*k*k, N*Ho*Wo). out_hw fixes the number of windows
    (a transposed conv's input size, which output_padding makes smaller than what fits);
    flip puts tap (k-1-i, k-1-j) in row (c, i, j)."""
    if backend.uses_kernels():
        return im2col_cuda(x, kernel_size, stride, padding, out_hw, flip=flip)
    if flip:
        return _launch.contiguous(flip_taps(im2col(x, kernel_size, stride, padding, out_hw), int(kernel_size)))
    if _use_numba(x):
        n, c, h, w, k, _, _, ho, wo = _conv_geometry("im2col", x.shape, kernel_size, stride, padding, out_hw)
        cols = _workspace.empty((c * k * k, n * ho * wo), x.dtype)
        _im2col_numba(*_cpu.physical(x), k, stride, padding, ho, wo, cols, work=cols.size)
        return cols
    return im2col_numpy(x, kernel_size, stride, padding, out_hw)


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, out_hw=None, flip=False):
    """cols (C*k*k, N*Ho*Wo) -> x (N, C, H, W), the adjoint of im2col (of the same flip)."""
    if backend.uses_kernels():
        return col2im_cuda(cols, x_shape, kernel_size, stride, padding, out_hw, flip=flip)
    if flip:
        cols = flip_taps(cols, int(kernel_size))
    if _use_numba(cols):
        n, c, h, w, k, _, _, ho, wo = _conv_geometry("col2im", x_shape, kernel_size, stride, padding, out_hw)
        _check_cols("col2im", cols, x_shape, k, stride, padding, ho, wo)
        out = _workspace.empty((c, n, h, w), cols.dtype)        # channel-major (ops._layout)
        _col2im_numba(np.ascontiguousarray(cols), k, stride, padding, ho, wo, out, True, work=cols.size)
        return out.transpose(1, 0, 2, 3)
    return col2im_numpy(cols, x_shape, kernel_size, stride, padding, out_hw)


def _to_channel_major(a):
    # (N, C, H, W) -> (C, N*H*W): the GEMM operand layout of `cols` (a copy unless N == 1)
    n, c, h, w = a.shape
    return _launch.contiguous(a.transpose(1, 0, 2, 3)).reshape(c, n * h * w)


_handoff = False     # channel_major_handoff's state


@contextlib.contextmanager
def channel_major_handoff(on=True):
    """Inside the block (when `on`), a convolution's backward on a kernel backend hands its
    input gradient on as a channel-major (N, C, H, W) view of its GEMM's (C, N*H*W) output
    instead of copying it to NCHW: for a consumer that reads that layout in place
    (nn.Sequential sets it before an InstanceNorm2d + LeakyReLU pair, nn.fused)."""
    global _handoff
    prev, _handoff = _handoff, bool(on)
    try:
        yield
    finally:
        _handoff = prev


def handing_off():
    """Whether channel_major_handoff is on here."""
    return _handoff


_bm_handoff = False     # batch_minor_handoff's state


@contextlib.contextmanager
def batch_minor_handoff(on=True):
    """Inside the block (when `on`), a host Conv2d's forward hands its output on as a
    batch-minor (N, C, H, W) view of its GEMM's (C, H*W*N) output (ops._layout), its bias and
    activation applied in place, instead of turning it to channel-major: for a host Conv2d
    next (nn.Sequential sets it, nn.fused.hands_batch_minor), whose im2col reads that layout
    and whose backward hands the input gradient back in it."""
    global _bm_handoff
    prev, _bm_handoff = _bm_handoff, bool(on)
    try:
        yield
    finally:
        _bm_handoff = prev


def _from_channel_major(a2, n, h, w):
    # (C, N*H*W) -> (N, C, H, W): on the NumPy backend a channel-major view (ops._layout),
    # else a contiguous copy (the kernels take NCHW), or the view too inside
    # channel_major_handoff
    if _cpu.host_arrays(a2) or _handoff:
        return _layout.channel_major_view(a2, n, h, w)
    c = a2.shape[0]
    return _launch.contiguous(a2.reshape(c, n, h, w).transpose(1, 0, 2, 3))


def _as_transposed_kernel(W):
    # a stride-1 conv is a transposed conv with the kernel flipped and in/out swapped:
    # (O, C, k, k) -> (C, O, k, k) reversed in both spatial axes (a view)
    return W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]


def _expand_outputs(W, stride, padding):
    """True when expanding the k*k taps on the output side is cheaper: for a stride-1
    conv with fewer output than input channels (G's last Conv2d(w -> 1, k=7)) the
    column matrix shrinks from C*k*k to O*k*k rows."""
    o, c, k, _ = W.shape
    return stride == 1 and o < c and padding <= k - 1


def conv2d_reads_batch_minor(W, stride, padding):
    """Whether a host Conv2d of this weight (O, C, k, k) reads a batch-minor input in place
    (its batch-minor column path; the expanded-outputs path turns its input whole)."""
    return not _expand_outputs(W, stride, padding)


def conv2d_forward(x, W, b=None, stride=1, padding=0):
    """x (N, C, H, W), W (O, C, k, k), b (O,) -> y (N, O, Ho, Wo)."""
    n, _, h, w = x.shape
    o, c, k, _ = W.shape
    if _expand_outputs(W, stride, padding):
        if o == 1 and backend.uses_kernels():
            return _one_output_forward(x, W, b, padding)
        Wt = _as_transposed_kernel(W)
        # channel-major columns even on the host: k*k*O rows are few, and x, 28x28 here, comes
        # channel-major from the layer before (batch-minor would transpose it and dx whole)
        y, cache = _conv_transpose2d_forward(x, _launch.contiguous(Wt), b, 1, k - 1 - padding, 0,
                                             batch_minor=False)
        return y, ("expand_outputs", cache)
    ho, wo = conv_output_size(h, k, stride, padding), conv_output_size(w, k, stride, padding)
    if _batch_minor(x, W) and (b is None or b.dtype == x.dtype):
        cols = im2col_batch_minor(x, k, stride, padding)      # (C*k*k, Ho*Wo*N)
        # the bias added in the layout turn (bias_add_forward's bits, no pass of its own)
        y = _from_batch_minor(gemm(W.reshape(o, c * k * k), cols), n, ho, wo, bias=b)
        return y, ("batch_minor", batch_minor_cache(cols, x, W, stride, padding, b is not None))
    cols = im2col(x, k, stride, padding)                      # (C*k*k, N*Ho*Wo)
    y2 = gemm(W.reshape(o, c * k * k), cols)                  # (O, N*Ho*Wo)
    y = _from_channel_major(y2, n, ho, wo)
    if b is not None:
        bias_add_forward(y, b)
    return y, ("im2col", (cols, x.shape, W, stride, padding, b is not None))


def _one_output_forward(x, W, b, padding):
    """A stride-1 Conv2d with one output channel (G's last, w -> 1, k7) on the kernel
    backends: the expand_outputs path (a transposed conv with the kernel flipped) without
    flipping W. W (1, C, k, k) is the (C, k*k) GEMM operand as it lies, so the column matrix
    holds the taps in flipped order, and col2im reads them so (col2im_v4): no copy of W."""
    n, c, h, w = x.shape
    k = W.shape[2]
    pt = k - 1 - padding                                       # the transposed conv's padding
    ho, wo = conv_transpose_output_size(h, k, 1, pt), conv_transpose_output_size(w, k, 1, pt)
    x2 = _to_channel_major(x)                                  # (C, N*H*W)
    cols = gemm(W.reshape(c, k * k), x2, trans_a=True)         # (k*k, N*H*W), taps flipped
    y = col2im(cols, (n, 1, ho, wo), k, 1, pt, out_hw=(h, w), flip=True)
    if b is not None:
        bias_add_forward(y, b)
    return y, ("one_output", (x2, x.shape, W, pt, b is not None))


def _one_output_backward(dy, cache, need_dx, need_dW, dW_out, db_out):
    # _one_output_forward's backward: im2col of dy with flipped taps gives the weight
    # gradient in W's own layout (added into .grad, beta = 1) and the data gradient from W
    # as it lies
    x2, x_shape, W, pt, has_bias = cache
    n, c, h, w = x_shape
    k = W.shape[2]
    dcols = im2col(dy, k, 1, pt, out_hw=(h, w), flip=True)   # (k*k, N*H*W)
    dW = db = dx = None
    if need_dW:
        if dW_out is not None:
            gemm(x2, dcols, trans_b=True, beta=1.0, out=dW_out.reshape(c, k * k))
        else:
            dW = gemm(x2, dcols, trans_b=True).reshape(W.shape)
        db = bias_add_backward(dy, out=db_out) if has_bias else None
    if need_dx:
        dx = _from_channel_major(gemm(W.reshape(c, k * k), dcols), n, h, w)
    return dx, dW, db


def conv2d_backward(dy, cache, need_dx=True, need_dW=True, dW_out=None, db_out=None, dy_channel_major=None):
    """dy (N, O, Ho, Wo) -> dx (N, C, H, W), dW (O, C, k, k), db (O,). With dW_out (the
    weight's contiguous .grad) the GEMM adds dW into it (beta = 1) and returns dW None,
    except on the expanded-outputs path, whose dW is a flipped transpose. With db_out (the
    bias's .grad) db is added into it and returned None. dy_channel_major: dy already as
    (O, N*Ho*Wo) (the im2col path of a layer without bias; dy is then None)."""
    mode, cache = cache
    if dy_channel_major is not None and (mode != "im2col" or cache[5]):
        raise ValueError("conv2d_backward: dy_channel_major needs the im2col path of a layer without bias")
    if mode == "one_output":
        return _one_output_backward(dy, cache, need_dx, need_dW, dW_out, db_out)
    if mode == "batch_minor":
        return _batch_minor_backward(dy, cache, need_dx, need_dW, dW_out, db_out)
    if mode == "expand_outputs":
        dx, dWt, db = conv_transpose2d_backward(dy, cache, need_dx, need_dW, db_out=db_out)
        dW = None if dWt is None else _launch.contiguous(_as_transposed_kernel(dWt))
        return dx, dW, db
    cols, x_shape, W, stride, padding, has_bias = cache
    o, c, k, _ = W.shape
    dy2 = _to_channel_major(dy) if dy_channel_major is None else dy_channel_major    # (O, N*Ho*Wo)
    dW = db = dx = None
    if need_dW:
        if dW_out is not None:
            gemm(dy2, cols, trans_b=True, beta=1.0, out=dW_out.reshape(o, c * k * k))
        else:
            dW = gemm(dy2, cols, trans_b=True).reshape(W.shape)   # (O, C*k*k)
        db = bias_add_backward(dy, out=db_out) if has_bias else None
    if need_dx:
        dcols = gemm(W.reshape(o, c * k * k), dy2, trans_a=True)   # (C*k*k, N*Ho*Wo)
        dx = col2im(dcols, x_shape, k, stride, padding)
    return dx, dW, db


def batch_minor_cache(cols, x, W, stride, padding, has_bias):
    """The host Conv2d's cache ("batch_minor" mode): its columns, and whether x was a
    batch-minor view (its gradient is handed back in that layout)."""
    return cols, x.shape, W, stride, padding, has_bias, _layout.batch_minor_block(x) is not None


def _batch_minor_backward(dy, cache, need_dx, need_dW, dW_out, db_out, dy2=None):
    # conv2d_backward of the host path: the same GEMMs on batch-minor columns; dy2: dy already
    # as (O, Ho*Wo*N) (ops.conv_leaky: the activation's gradient writes it so; dy is then None)
    cols, x_shape, W, stride, padding, has_bias, x_batch_minor = cache
    o, c, k, _ = W.shape
    db64 = np.empty(o) if has_bias and need_dW and dy2 is None else None
    if dy2 is None:
        dy2 = _to_batch_minor(dy, channel_sums=db64)           # (O, Ho*Wo*N); the bias gradient in the turn
    dW = db = dx = None
    if need_dW:
        if dW_out is not None:
            gemm(dy2, cols, trans_b=True, beta=1.0, out=dW_out.reshape(o, c * k * k))
        else:
            dW = gemm(dy2, cols, trans_b=True).reshape(W.shape)
        if db64 is not None:                                   # as bias_add_backward(dy, out=db_out)
            db = db64.astype(dy.dtype)
            if db_out is not None:
                db_out += db
                db = None
    if need_dx:
        dcols = gemm(W.reshape(o, c * k * k), dy2, trans_a=True)   # (C*k*k, Ho*Wo*N)
        dx = col2im_batch_minor(dcols, x_shape, k, stride, padding, batch_minor=x_batch_minor)
    return dx, dW, db


# ---------------------------------------------------------------- phase-split transposed conv
# ConvTranspose2d(k=4, s=2, p=1) (both cGAN generators' and DCGAN's upsampling) writes
# output pixel (2a + q, 2b + r) from input pixels (a + di, b + dj) through kernel taps
# (i, j) only: for each output phase (q, r) it is a stride-1 2x2 convolution, and
#   q = 0: (i, di) = (1, 0), (3, -1);   q = 1: (i, di) = (0, 1), (2, 0)     (likewise r, j, dj)
# So the forward is 16 GEMMs W[:, :, i, j]^T (Cout, Cin) @ x shifted by (di, dj), four per
# phase accumulating (beta = 1), instead of one (Cout*16, N*H*W) column matrix and col2im.
# The shift is a column offset into the input in the padded flat layout of ops._layout
# (channel-major, a zero column after each image row and a zero row after each image,
# shared with the next): (Cin, total), whose pixel (n, y, x) has a fixed column and whose
# neighbours are fixed offsets away. The GEMM operands are views of it (no copies, rows
# strided), and the phase results land in the same layout, (Cout, total), pad columns
# scratch. The data gradient is the same 16 GEMMs the other way (W[:, :, i, j] @ the padded
# dy phase shifted by (-di, -dj)), the weight gradient 16 GEMMs x-shift @ dy-phase^T over
# the same column range (dy's pads are zeros). No matrix is bigger than the input or the
# output (plus their pads). On the host the taps sharing a shift run as one GEMM over the
# stacked phases (SHIFT_GROUPS: 10 GEMMs a direction, with 2-4 times the rows or depth).
PHASE_TAPS = {0: ((1, 0), (3, -1)), 1: ((0, 1), (2, 0))}   # output parity -> (kernel index, input shift)


# Which of the two runs that geometry, by backend: GEMM + col2im on the kernel backends, where a
# layer's pass is then 1-2 GEMMs and 1-2 kernels instead of 16-32 GEMMs and their border
# copies (the step census, cganraw.bench.census: 170 launches and an estimated 2.7 ms per
# H100 step against 290 and 3.3 ms), and on numpy with Numba (batch-minor columns: one GEMM
# of full depth, no padded-layout columns; same-process medians of the training step, one
# thread: DCGAN width 64 batch 64 56 ms against 59, width 128 batch 128 301 against 321,
# conv cGAN width 64 batch 64 200 against 215). The phase split stays numpy's without Numba
# (NumPy's col2im is k*k strided adds over the output). $CGANRAW_CONV_TRANSPOSE (or
# set_transpose_impl) picks one on every backend: "phase" or "col2im".
TRANSPOSE_ENV = "CGANRAW_CONV_TRANSPOSE"
TRANSPOSE_IMPLS = ("phase", "col2im")
_transpose_override = None  # set_transpose_impl's choice, or None


def _check_transpose_impl(name, where):
    key = str(name).strip().lower()
    if key not in TRANSPOSE_IMPLS:
        raise ValueError(f"{where}: {name!r} is not a transposed-conv choice; use one of {', '.join(TRANSPOSE_IMPLS)}")
    return key


def set_transpose_impl(name):
    """Override $CGANRAW_CONV_TRANSPOSE for this process ("phase", "col2im", or None for the
    environment and the backend's default). Returns the previous override."""
    global _transpose_override
    if name is not None:
        name = _check_transpose_impl(name, "set_transpose_impl")
    prev, _transpose_override = _transpose_override, name
    return prev


def transpose_impl():
    """How ConvTranspose2d(k4, s2, p1) runs on the active backend: "phase" or "col2im"."""
    if _transpose_override is not None:
        return _transpose_override
    env = os.environ.get(TRANSPOSE_ENV, "").strip()
    if env:
        return _check_transpose_impl(env, TRANSPOSE_ENV)
    return "phase" if backend.current() == "numpy" and not _cpu.enabled() else "col2im"


def uses_phase_split(kernel_size, stride, padding, output_padding=0):
    """True where a transposed conv runs phase-split: the geometry it handles (k4, s2, p1, no
    output padding) and transpose_impl() "phase"."""
    return (kernel_size, stride, padding, output_padding) == (4, 2, 1, 0) and transpose_impl() == "phase"


def _phase_taps(q, r):
    return [(i, di, j, dj) for i, di in PHASE_TAPS[q] for j, dj in PHASE_TAPS[r]]


def _shift_groups():
    """The 16 taps grouped for the host path: [(di, dj, slot0, [(i, j), ...])], one entry per
    GEMM. The taps of one input shift (di, dj) act on the same shifted input and write
    different output phases; those whose phases are neighbouring slots of the stack
    (ops._layout.PHASE_ORDER) form one GEMM of 2 or 4 times the rows, (i, j) in slot order
    from slot0. Shift (0, 0), used by every phase, comes first (it sets all four)."""
    groups = []
    for di in (0, -1, 1):
        for dj in (0, -1, 1):
            taps = sorted((_layout.PHASE_SLOT[q, r], i, j) for q in (0, 1) for i, d in PHASE_TAPS[q] if d == di
                          for r in (0, 1) for j, e in PHASE_TAPS[r] if e == dj)
            run = [taps[0]]
            for t in taps[1:] + [None]:
                if t is not None and t[0] == run[-1][0] + 1:
                    run.append(t)
                    continue
                groups.append((di, dj, run[0][0], [(i, j) for _, i, j in run]))
                run = [t]
    return groups


SHIFT_GROUPS = _shift_groups()     # 10 GEMMs: 4 phases at shift (0, 0), 2 at three edge shifts, 1 at the rest
_GROUP_TAPS = [tap for *_, taps in SHIFT_GROUPS for tap in taps]   # (i, j) in group order
_TAP_I = np.array([i for i, _ in _GROUP_TAPS])
_TAP_J = np.array([j for _, j in _GROUP_TAPS])


def _grouped_weights(W):
    """W (Cin, Cout, 4, 4) -> (Cin, 16, Cout): tap (i, j) of group order at [:, t, :]."""
    cin, cout = W.shape[:2]
    out = _workspace.empty((cin, 16, cout), W.dtype)
    np.copyto(out, W[:, :, _TAP_I, _TAP_J].transpose(0, 2, 1))
    return out


def conv_transpose2d_phase_forward(x, W):
    """ConvTranspose2d(k4, s2, p1) without bias: x (N, Cin, H, W), W (Cin, Cout, 4, 4) ->
    (y (N, Cout, 2H, 2W), xf the padded flat input for the backward)."""
    n, cin, h, w = x.shape
    cout = W.shape[1]
    xf = _layout.padded_gather(x, h, w)                         # (Cin, total)
    first, length, pitch = _layout.padded_layout(n, h, w)
    if _cpu.host_arrays(x):
        # one GEMM per shift group into the stacked phases (4*Cout, total), the phases
        # interleaved into a channel-major y in one pass (ops._layout)
        Wg = _grouped_weights(W)
        At = Wg.reshape(cin, 16 * cout)                          # group g's rows of A = its columns, transposed
        flats = _workspace.empty((4, cout, xf.shape[1]), x.dtype)
        rows = flats.reshape(4 * cout, xf.shape[1])
        t = 0
        for g, (di, dj, slot0, taps) in enumerate(SHIFT_GROUPS):
            off = first + di * pitch + dj
            k = len(taps) * cout
            gemm(At[:, t:t + k], xf[:, off:off + length], trans_a=True, beta=0.0 if g == 0 else 1.0,
                 out=rows[slot0 * cout:slot0 * cout + k, first:first + length])
            t += k
        y = _workspace.empty((cout, n, 2 * h, 2 * w), x.dtype).transpose(1, 0, 2, 3)
        _layout.phases_scatter(flats, y, h, w)
        return y, xf
    Wt = _launch.contiguous(W.transpose(2, 3, 1, 0))            # (4, 4, Cout, Cin)
    y = _launch.empty((n, cout, 2 * h, 2 * w), x.dtype)
    flat = _launch.empty((cout, xf.shape[1]), x.dtype)
    acc = flat[:, first:first + length]
    for q in (0, 1):
        for r in (0, 1):
            for t, (i, di, j, dj) in enumerate(_phase_taps(q, r)):
                off = first + di * pitch + dj
                gemm(Wt[i, j], xf[:, off:off + length], beta=0.0 if t == 0 else 1.0, out=acc)
            _layout.padded_scatter(flat, y, h, w, 2, q, r)
    return y, xf


def _phase_backward_host(dy, xf, x_shape, W, need_dx, need_dW):
    # the shift groups of the forward (SHIFT_GROUPS) the other way: the weight gradient of a
    # group's taps is one GEMM with its phases' rows of dy stacked (M = 2 or 4 times Cout), the
    # data gradient one GEMM with them stacked along K
    n, cin, h, w = x_shape
    cout = W.shape[1]
    first, length, pitch = _layout.padded_layout(n, h, w)
    stacked = _layout.phases_gather(dy, h, w)                   # (4, Cout, total), one pass over dy
    rows = stacked.reshape(4 * cout, stacked.shape[2])
    dx = dW = None
    if need_dW:
        dWg = _workspace.empty((16 * cout, cin), dy.dtype)      # (tap in group order, Cout) x Cin
        t = 0
        for di, dj, slot0, taps in SHIFT_GROUPS:
            off = first + di * pitch + dj
            k = len(taps) * cout
            gemm(rows[slot0 * cout:slot0 * cout + k, first:first + length], xf[:, off:off + length],
                 trans_b=True, out=dWg[t:t + k])
            t += k
        dW = _launch.empty(W.shape, dy.dtype)
        dW[:, :, _TAP_I, _TAP_J] = dWg.reshape(16, cout, cin).transpose(2, 1, 0)
    if need_dx:
        Wg = _grouped_weights(W).reshape(cin, 16 * cout)
        flat = _workspace.empty((cin, xf.shape[1]), dy.dtype)
        acc = flat[:, first:first + length]
        t = 0
        for g, (di, dj, slot0, taps) in enumerate(SHIFT_GROUPS):
            off = first - di * pitch - dj
            k = len(taps) * cout
            gemm(Wg[:, t:t + k], rows[slot0 * cout:slot0 * cout + k, off:off + length],
                 beta=0.0 if g == 0 else 1.0, out=acc)
            t += k
        dx = _workspace.empty((cin, n, h, w), dy.dtype).transpose(1, 0, 2, 3)     # channel-major
        _layout.padded_scatter(flat, dx, h, w)
    return dx, dW


def conv_transpose2d_phase_backward(dy, xf, x_shape, W, need_dx=True, need_dW=True):
    """dy (N, Cout, 2H, 2W) -> dx (N, Cin, H, W) and dW (Cin, Cout, 4, 4) (None where not needed)."""
    if _cpu.host_arrays(dy):
        return _phase_backward_host(dy, xf, x_shape, W, need_dx, need_dW)
    n, cin, h, w = x_shape
    first, length, pitch = _layout.padded_layout(n, h, w)
    stacked = _layout.phases_gather(dy, h, w)                   # (4, Cout, total), one pass over dy
    phases = {(q, r): stacked[_layout.PHASE_SLOT[q, r]] for q in (0, 1) for r in (0, 1)}
    dx = dW = None
    if need_dW:
        dWt = _launch.empty((4, 4, cin, W.shape[1]), dy.dtype)
        for (q, r), dyf in phases.items():
            for i, di, j, dj in _phase_taps(q, r):
                off = first + di * pitch + dj
                gemm(xf[:, off:off + length], dyf[:, first:first + length], trans_b=True, out=dWt[i, j])
        dW = _launch.contiguous(dWt.transpose(2, 3, 0, 1))
    if need_dx:
        Wd = _launch.contiguous(W.transpose(2, 3, 0, 1))       # (4, 4, Cin, Cout)
        flat = _launch.empty((cin, xf.shape[1]), dy.dtype)
        acc = flat[:, first:first + length]
        t = 0
        for (q, r), dyf in phases.items():
            for i, di, j, dj in _phase_taps(q, r):
                off = first - di * pitch - dj
                gemm(Wd[i, j], dyf[:, off:off + length], beta=0.0 if t == 0 else 1.0, out=acc)
                t += 1
        dx = _launch.empty((n, cin, h, w), dy.dtype)
        _layout.padded_scatter(flat, dx, h, w)
    return dx, dW


def conv_transpose2d_forward(x, W, b=None, stride=1, padding=0, output_padding=0):
    """x (N, Cin, H, W), W (Cin, Cout, k, k), b (Cout,) -> y (N, Cout, Ho, Wo),
    Ho = (H - 1) s - 2p + k + output_padding (PyTorch's size). k4 s2 p1 runs phase-split
    (conv_transpose2d_phase_forward) where uses_phase_split says so, everything else as GEMM
    + col2im."""
    return _conv_transpose2d_forward(x, W, b, stride, padding, output_padding, _batch_minor(x, W))


def _conv_transpose2d_forward(x, W, b, stride, padding, output_padding, batch_minor):
    # conv_transpose2d_forward, batch-minor columns or not (host arrays only) on the col2im path
    k = W.shape[2]
    if uses_phase_split(k, stride, padding, output_padding):
        y, xf = conv_transpose2d_phase_forward(x, W)
        if b is not None:
            bias_add_forward(y, b)
        return y, ("phase", (xf, x.shape, W, b is not None))
    n, cin, h, w = x.shape
    _, cout, k, _ = W.shape
    ho = conv_transpose_output_size(h, k, stride, padding, output_padding)
    wo = conv_transpose_output_size(w, k, stride, padding, output_padding)
    if batch_minor:
        x2 = _to_batch_minor(x)                                # (Cin, H*W*N)
        cols = gemm(W.reshape(cin, cout * k * k), x2, trans_a=True)     # (Cout*k*k, H*W*N)
        # the bias added as col2im writes y (bias_add_forward's bits, no pass of its own)
        y = col2im_batch_minor(cols, (n, cout, ho, wo), k, stride, padding, out_hw=(h, w), bias=b)
        return y, ("batch_minor", (x2, x.shape, W, stride, padding, b is not None))
    x2 = _to_channel_major(x)                                  # (Cin, N*H*W)
    cols = gemm(W.reshape(cin, cout * k * k), x2, trans_a=True)     # (Cout*k*k, N*H*W)
    y = col2im(cols, (n, cout, ho, wo), k, stride, padding, out_hw=(h, w))
    if b is not None:
        bias_add_forward(y, b)
    return y, ("col2im", (x2, x.shape, W, stride, padding, b is not None))


def conv_transpose2d_backward(dy, cache, need_dx=True, need_dW=True, dW_out=None, db_out=None):
    """dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W), dW (Cin, Cout, k, k), db (Cout,). With dW_out
    (the weight's contiguous .grad) the col2im path's GEMM adds dW into it (beta = 1) and
    returns dW None; the phase-split path returns dW. With db_out (the bias's .grad) db is
    added into it and returned None."""
    mode, cache = cache
    if mode == "phase":
        xf, x_shape, W, has_bias = cache
        dx, dW = conv_transpose2d_phase_backward(dy, xf, x_shape, W, need_dx, need_dW)
        db = bias_add_backward(dy, out=db_out) if (has_bias and need_dW) else None
        return dx, dW, db
    x2, x_shape, W, stride, padding, has_bias = cache
    n, cin, h, w = x_shape
    _, cout, k, _ = W.shape
    sums = has_bias and need_dW
    if mode == "batch_minor":
        # the bias gradient summed as im2col reads dy (bias_add_backward's bits)
        db64 = np.empty(cout) if sums else None
        dcols = im2col_batch_minor(dy, k, stride, padding, out_hw=(h, w), channel_sums=db64)   # (Cout*k*k, H*W*N)
    else:
        dcols = im2col(dy, k, stride, padding, out_hw=(h, w))  # (Cout*k*k, N*H*W)
    dx, dW = conv_transpose2d_columns_backward(dcols, (mode, cache), need_dx, need_dW, dW_out)
    if not sums:
        return dx, dW, None
    if mode == "batch_minor":
        db = db64.astype(dy.dtype)
        if db_out is None:
            return dx, dW, db
        db_out += db
        return dx, dW, None
    return dx, dW, bias_add_backward(dy, out=db_out)


def conv_transpose2d_columns_backward(dcols, cache, need_dx=True, need_dW=True, dW_out=None):
    """The GEMMs of conv_transpose2d_backward's column paths ("col2im", "batch_minor"), from
    dcols, the column matrix of dy in the forward's column order: dx (N, Cin, H, W) and dW
    (None where not needed, or added into dW_out)."""
    mode, (x2, x_shape, W, _, _, _) = cache
    n, cin, h, w = x_shape
    _, cout, k, _ = W.shape
    dx = dW = None
    if need_dW:
        if dW_out is not None:
            gemm(x2, dcols, trans_b=True, beta=1.0, out=dW_out.reshape(cin, cout * k * k))
        else:
            dW = gemm(x2, dcols, trans_b=True).reshape(W.shape)   # (Cin, Cout*k*k)
    if need_dx:
        dx2 = gemm(W.reshape(cin, cout * k * k), dcols)       # (Cin, N*H*W), or (Cin, H*W*N)
        dx = _from_batch_minor(dx2, n, h, w) if mode == "batch_minor" else _from_channel_major(dx2, n, h, w)
    return dx, dW


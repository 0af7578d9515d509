"""Batch normalisation over axis 1 of (N, C) or (N, C, H, W), for the layers
cganraw.nn.BatchNorm1d and BatchNorm2d.

Training normalises with the batch's biased variance and reports the unbiased one
for the running statistics, as PyTorch does; eval normalises with the running ones.

Ops and faces (kernels in kernels/batchnorm.cu):
    batchnorm_forward           _numpy, _cuda: batchnorm_forward_stats_v1/v2/v3 (+ _stats_centered_v3)
                                (training) or batchnorm_forward_invstd_v1 (eval), then batchnorm_forward_v1/v2/v3
    batchnorm_backward          _numpy, _cuda: batchnorm_backward_v1/v2, or
                                batchnorm_backward_partial_v3 + batchnorm_backward_v3 (the default)
    batchnorm_running_update    _numpy, _cuda: batchnorm_running_update_v1 (in place)
    batchnorm_leaky_relu_forward    BatchNorm then LeakyReLU, fused: _numpy, _cuda: batchnorm_forward_stats_v3
                                + _stats_centered_v3 + batchnorm_leaky_relu_forward_v1
    batchnorm_leaky_relu_backward   _numpy, _cuda: batchnorm_leaky_relu_backward_partial_v1 +
                                batchnorm_leaky_relu_backward_v1 (the activation's gradient
                                recomputed from xhat, folded into both passes)
    batchnorm_relu_forward / _backward   BatchNorm1d/2d then ReLU, fused on the numpy backend only:
                                _numpy (the reference), the Numba kernels below
The fused pairs are what BatchNorm + LeakyReLU (and on the numpy backend BatchNorm2d + ReLU)
run as inside nn.Sequential (cganraw.nn.fused); their references are exactly the unfused
arithmetic. On the numpy backend, (N, C) and 4-D inputs run through Numba kernels (below) shared by the
unfused and fused ops, so fused and unfused still give the same bits.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch, _workspace


def _reduce_axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _channel_view(a, ndim):
    return a.reshape((1, -1) + (1,) * (ndim - 2))


def batchnorm_forward_numpy(x, gamma, beta, mean=None, var=None, eps=1e-5):
    """x (N, C[, H, W]), gamma/beta (C,). mean/var None: use the batch statistics
    (training); given: use them (eval). Returns y, cache, batch_mean, batch_var_unbiased."""
    xp = backend.array_module(x)
    axes = _reduce_axes(x)
    count = x.size // x.shape[1]
    if mean is None:
        mean = x.mean(axis=axes)
        centered = x - _channel_view(mean, x.ndim)
        var = (centered * centered).mean(axis=axes)
        var_unbiased = var * (count / max(count - 1, 1))
        training = True
    else:
        centered = x - _channel_view(mean, x.ndim)
        var_unbiased = None
        training = False
    invstd = 1 / xp.sqrt(var + x.dtype.type(eps))
    xhat = centered
    xhat *= _channel_view(invstd, x.ndim)
    y = xhat * _channel_view(gamma, x.ndim)
    y += _channel_view(beta, x.ndim)
    return y, (xhat, invstd, gamma, training), mean, var_unbiased


def batchnorm_backward_numpy(dy, cache):
    """dy -> dx, dgamma, dbeta."""
    xhat, invstd, gamma, training = cache
    axes = _reduce_axes(dy)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    scale = _channel_view(gamma * invstd, dy.ndim)
    if not training:
        return dy * scale, dgamma, dbeta
    count = dy.size // dy.shape[1]
    # dx = gamma invstd / n * (n dy - sum(dy) - xhat sum(dy xhat))
    dx = xhat * _channel_view(dgamma / count, dy.ndim)
    dx += _channel_view(dbeta / count, dy.ndim)
    xp = backend.array_module(dy)
    dx = xp.subtract(dy, dx, out=dx)
    dx *= scale
    return dx, dgamma, dbeta


def _preactivation(xhat, gamma, beta):
    # xhat * gamma + beta as batchnorm_forward_numpy computes it (same operations, same bits)
    y = xhat * _channel_view(gamma, xhat.ndim)
    y += _channel_view(beta, xhat.ndim)
    return y


def batchnorm_leaky_relu_forward_numpy(x, gamma, beta, mean=None, var=None, eps=1e-5, negative_slope=0.2):
    """leaky_relu(batchnorm(x)) with the arithmetic of batchnorm_forward_numpy then
    leaky_relu_forward_numpy (the activation in place). Returns y, cache (xhat, invstd,
    gamma, beta, training, negative_slope), batch mean and unbiased variance (training)."""
    y, (xhat, invstd, gamma, training), mean_out, var_unbiased = batchnorm_forward_numpy(x, gamma, beta, mean, var, eps)
    xp = backend.array_module(y)
    xp.multiply(y, y.dtype.type(negative_slope), out=y, where=~(y > 0))
    return y, (xhat, invstd, gamma, beta, training, negative_slope), mean_out, var_unbiased


def batchnorm_leaky_relu_backward_numpy(dy, cache):
    """dy -> dx, dgamma, dbeta: LeakyReLU's gradient (its mask recomputed from xhat, gamma,
    beta exactly as the forward computed the pre-activation), then batchnorm_backward_numpy."""
    xhat, invstd, gamma, beta, training, negative_slope = cache
    xp = backend.array_module(dy)
    dpre = xp.where(_preactivation(xhat, gamma, beta) > 0, dy, dy * dy.dtype.type(negative_slope))
    return batchnorm_backward_numpy(dpre, (xhat, invstd, gamma, training))


def batchnorm_relu_forward_numpy(x, gamma, beta, mean=None, var=None, eps=1e-5):
    """relu(batchnorm(x)) with the arithmetic of batchnorm_forward_numpy then relu_forward_numpy.
    Returns y, cache (xhat, invstd, gamma, beta, training, RELU), batch mean and unbiased variance."""
    y, (xhat, invstd, gamma, training), mean_out, var_unbiased = batchnorm_forward_numpy(x, gamma, beta, mean, var, eps)
    backend.array_module(y).maximum(y, y.dtype.type(0), out=y)
    return y, (xhat, invstd, gamma, beta, training, RELU), mean_out, var_unbiased


def batchnorm_relu_backward_numpy(dy, cache):
    """dy -> dx, dgamma, dbeta: ReLU's gradient (its mask recomputed from xhat, gamma, beta as
    the forward computed the pre-activation), then batchnorm_backward_numpy."""
    xhat, invstd, gamma, beta, training, _ = cache
    xp = backend.array_module(dy)
    dpre = xp.where(_preactivation(xhat, gamma, beta) > 0, dy, dy.dtype.type(0))
    return batchnorm_backward_numpy(dpre, (xhat, invstd, gamma, training))


def batchnorm_running_update_numpy(running_mean, running_var, mean, var_unbiased, momentum):
    f = running_mean.dtype.type
    running_mean *= f(1 - momentum)
    running_mean += f(momentum) * mean
    running_var *= f(1 - momentum)
    running_var += f(momentum) * var_unbiased


# ---------------------------------------------------------------- Numba CPU paths (cganraw.ops._cpu)
# (N, C, H, W) maps here, (N, C) batches in the row kernels below.
# One task per channel, x read in its physical layout (NCHW or channel-major, ops._cpu.physical):
# act: ACT_NONE, ACT_LEAKY (slope), ACT_RELU (slope then holds a +0.0 of x's dtype, so that
# every value stays in that dtype).
#   forward   stats: the channel's sum, then its centred sum of squares, each in float64
#             (the mean rounded to float32 first, as the reference centres with it); apply:
#             xhat = (x - mean) * invstd, y = xhat * gamma + beta [then the activation], the
#             reference's float32 operations in its order (no FMA: fastmath off), xhat in x's
#             layout, y in NCHW (Flatten and the next layer's gathers take it as it is);
#   backward  sums: dbeta = sum dpre, dgamma = sum dpre * xhat in float64 (dpre the activation's
#             gradient, its mask recomputed from xhat * gamma + beta as the forward made it);
#             dx: dpre - (xhat * (dgamma / n) + dbeta / n), times gamma * invstd, in xhat's layout.
# Each float64 sum runs in LANES partial sums, lane q taking the positions p = q (mod LANES) of
# every row (n order), added pairwise at the end ((0+1)+(2+3))+((4+5)+(6+7)): eight independent
# chains instead of one, whose latency set the pace (stats at 2.1 GB/s -> 4.7, the sums at 3.4
# -> 4.1 alone, (128, 64, 14, 14) on one thread). A plane of one value per row (N, C, 1, 1)
# sums in lane 0 alone, in n order: the row kernels' bits.
# The statistics and sums differ from the reference's float32 reductions only by rounding;
# given them, every elementwise value is the reference's, bit for bit. The unfused layer and
# the fused pair run the same kernels, so they still agree bit for bit; a channel's sums run
# in one order at any thread count, so a resumed run stays bit-exact.

ACT_NONE, ACT_LEAKY, ACT_RELU = 0, 1, 2
LANES = 8          # partial sums per channel (the pairwise total below is written for 8)
RELU = "relu"    # the last item of a BatchNorm + ReLU cache, where BatchNorm + LeakyReLU keeps its slope


# The pairwise total of the lanes, built once by _bind_lane_total and called by the kernels as
# a global of this module, not a closure variable (so that their disk cache holds across
# processes: see ops.bias.bind_totals).
_lanes_total = None


def _bind_lane_total(nb):
    global _lanes_total
    if _lanes_total is None:
        @nb.njit(cache=True)
        def lanes_total(acc):  # acc (LANES,) float64 partial sums -> their pairwise total
            return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        _lanes_total = lanes_total


@_cpu.kernel
def _bn_stats_numba(nb, parallel):
    _bind_lane_total(nb)

    @nb.njit(parallel=parallel, cache=True)
    def stats(x, x_cm, mean, sq):  # x (N, C, HW) or (C, N, HW); mean (C,) x.dtype; sq (C,) float64 out
        if x_cm:
            c, n, hw = x.shape
        else:
            n, c, hw = x.shape
        count = n * hw
        body = hw - hw % LANES
        for ch in nb.prange(c):
            acc = np.zeros(LANES, np.float64)
            for i in range(n):
                row = x[ch, i] if x_cm else x[i, ch]
                for p0 in range(0, body, LANES):
                    for q in range(LANES):
                        acc[q] += row[p0 + q]
                for p in range(body, hw):
                    acc[p - body] += row[p]
            mean[ch] = _lanes_total(acc) / count          # rounded to x's dtype by the store
            m = mean[ch]
            acc[:] = 0.0
            for i in range(n):
                row = x[ch, i] if x_cm else x[i, ch]
                for p0 in range(0, body, LANES):
                    for q in range(LANES):
                        d = row[p0 + q] - m
                        acc[q] += d * d
                for p in range(body, hw):
                    d = row[p] - m
                    acc[p - body] += d * d
            sq[ch] = _lanes_total(acc)
    return stats


@_cpu.kernel
def _bn_apply_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def apply(x, x_cm, mean, invstd, gamma, beta, act, slope, xhat, y):  # xhat in x's layout, y (N, C, HW)
        if x_cm:
            c, n, hw = x.shape
        else:
            n, c, hw = x.shape
        for ch in nb.prange(c):
            m, s, g, b = mean[ch], invstd[ch], gamma[ch], beta[ch]
            for i in range(n):
                xr = x[ch, i] if x_cm else x[i, ch]
                hr = xhat[ch, i] if x_cm else xhat[i, ch]
                yr = y[i, ch]
                for p in range(hw):
                    hr[p] = (xr[p] - m) * s
                for p in range(hw):
                    v = hr[p] * g
                    v = v + b
                    if act == 1:
                        v = v if v > 0 else v * slope
                    elif act == 2:          # np.maximum(v, 0): NaN stays, -0.0 becomes +0.0 (slope)
                        v = v if v > 0 or v != v else slope
                    yr[p] = v
    return apply


@_cpu.kernel
def _bn_backward_sums_numba(nb, parallel):
    _bind_lane_total(nb)

    @nb.njit(parallel=parallel, cache=True)
    def sums(dy, dy_cm, xhat, h_cm, gamma, beta, act, slope, out):  # out (2, C) float64: dbeta, dgamma
        if h_cm:
            c, n, hw = xhat.shape
        else:
            n, c, hw = xhat.shape
        body = hw - hw % LANES
        for ch in nb.prange(c):
            g, b = gamma[ch], beta[ch]
            db = np.zeros(LANES, np.float64)
            dg = np.zeros(LANES, np.float64)
            dpre = np.empty(hw, dy.dtype)       # a row of the activation's gradient
            for i in range(n):
                gr = dy[ch, i] if dy_cm else dy[i, ch]
                hr = xhat[ch, i] if h_cm else xhat[i, ch]
                for p in range(hw):
                    d = gr[p]
                    if act != 0:
                        v = hr[p] * g
                        v = v + b
                        if act == 1:
                            d = d if v > 0 else d * slope
                        else:               # np.where(pre > 0, dy, 0): slope is a +0.0 of x's type
                            d = d if v > 0 else slope
                    dpre[p] = d
                for p0 in range(0, body, LANES):
                    for q in range(LANES):
                        db[q] += dpre[p0 + q]
                        dg[q] += dpre[p0 + q] * hr[p0 + q]
                for p in range(body, hw):
                    db[p - body] += dpre[p]
                    dg[p - body] += dpre[p] * hr[p]
            out[0, ch] = _lanes_total(db)
            out[1, ch] = _lanes_total(dg)
    return sums


@_cpu.kernel
def _bn_backward_dx_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def dx_pass(dy, dy_cm, xhat, h_cm, gamma, beta, act, slope, a, b_mean, scale, training, dx):  # dx as xhat
        if h_cm:
            c, n, hw = xhat.shape
        else:
            n, c, hw = xhat.shape
        for ch in nb.prange(c):
            g, b, k, q, sc = gamma[ch], beta[ch], a[ch], b_mean[ch], scale[ch]
            for i in range(n):
                gr = dy[ch, i] if dy_cm else dy[i, ch]
                hr = xhat[ch, i] if h_cm else xhat[i, ch]
                dr = dx[ch, i] if h_cm else dx[i, ch]
                for p in range(hw):
                    d = gr[p]
                    h = hr[p]
                    if act != 0:
                        v = h * g
                        v = v + b
                        if act == 1:
                            d = d if v > 0 else d * slope
                        else:               # np.where(pre > 0, dy, 0): slope is a +0.0 of x's type
                            d = d if v > 0 else slope
                    if training:
                        t = h * k
                        t = t + q
                        d = d - t
                    dr[p] = d * sc
    return dx_pass


# (N, C) batches (BatchNorm1d): the same arithmetic along rows, a block of COLS channels per
# task with one float64 accumulator per channel, summed in n order: the bits the plane kernels
# above give the same values as (N, C, 1, 1). Row segments are indexed from 0 so the loops
# vectorise.
COLS = 64


@_cpu.kernel
def _bn_stats_rows_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def stats(x, mean, sq, cols):  # x (N, C); mean (C,) x.dtype; sq (C,) float64 out
        n, c = x.shape
        for blk in nb.prange((c + cols - 1) // cols):
            lo = blk * cols
            w = min(cols, c - lo)
            acc = np.zeros(w, np.float64)
            for i in range(n):
                row = x[i, lo:lo + w]
                for j in range(w):
                    acc[j] += row[j]
            m = mean[lo:lo + w]
            for j in range(w):
                m[j] = acc[j] / n           # rounded to x's dtype by the store
            acc[:] = 0.0
            for i in range(n):
                row = x[i, lo:lo + w]
                for j in range(w):
                    d = row[j] - m[j]
                    acc[j] += d * d
            sq[lo:lo + w] = acc
    return stats


@_cpu.kernel
def _bn_apply_rows_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def apply(x, mean, invstd, gamma, beta, act, slope, xhat, y):  # all (N, C) or (C,)
        n, c = x.shape
        for i in nb.prange(n):
            xr, hr, yr = x[i], xhat[i], y[i]
            for j in range(c):
                h = (xr[j] - mean[j]) * invstd[j]
                hr[j] = h
                v = h * gamma[j]
                v = v + beta[j]
                if act == 1:
                    v = v if v > 0 else v * slope
                elif act == 2:              # np.maximum(v, 0): NaN stays, -0.0 becomes +0.0 (slope)
                    v = v if v > 0 or v != v else slope
                yr[j] = v
    return apply


@_cpu.kernel
def _bn_backward_sums_rows_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def sums(dy, xhat, gamma, beta, act, slope, out, cols):  # out (2, C) float64: dbeta, dgamma
        n, c = xhat.shape
        for blk in nb.prange((c + cols - 1) // cols):
            lo = blk * cols
            w = min(cols, c - lo)
            db = np.zeros(w, np.float64)
            dg = np.zeros(w, np.float64)
            g, b = gamma[lo:lo + w], beta[lo:lo + w]
            for i in range(n):
                gr, hr = dy[i, lo:lo + w], xhat[i, lo:lo + w]
                for j in range(w):
                    d = gr[j]
                    h = hr[j]
                    if act != 0:
                        v = h * g[j]
                        v = v + b[j]
                        if act == 1:
                            d = d if v > 0 else d * slope
                        else:
                            d = d if v > 0 else slope
                    db[j] += d
                    dg[j] += d * h
            out[0, lo:lo + w] = db
            out[1, lo:lo + w] = dg
    return sums


@_cpu.kernel
def _bn_backward_dx_rows_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def dx_pass(dy, xhat, gamma, beta, act, slope, a, b_mean, scale, training, dx):  # (N, C) or (C,)
        n, c = xhat.shape
        for i in nb.prange(n):
            gr, hr, dr = dy[i], xhat[i], dx[i]
            for j in range(c):
                d = gr[j]
                h = hr[j]
                if act != 0:
                    v = h * gamma[j]
                    v = v + beta[j]
                    if act == 1:
                        d = d if v > 0 else d * slope
                    else:
                        d = d if v > 0 else slope
                if training:
                    t = h * a[j]
                    t = t + b_mean[j]
                    d = d - t
                dr[j] = d * scale[j]
    return dx_pass


def _numba_ok(*arrays):
    return (_cpu.enabled() and _cpu.host_arrays(*arrays) and len({a.ndim for a in arrays}) == 1
            and arrays[0].ndim in (2, 4)
            and len({a.dtype for a in arrays}) == 1 and arrays[0].dtype in (np.float32, np.float64))


def batchnorm_forward_numba(x, gamma, beta, mean=None, var=None, eps=1e-5, negative_slope=None):
    """As batchnorm_forward_numpy (negative_slope None), batchnorm_leaky_relu_forward_numpy
    (a slope: the cache then holds beta and the slope) or batchnorm_relu_forward_numpy
    (negative_slope RELU), for a 4-D x: see above."""
    f = x.dtype.type
    if x.ndim == 2:
        return _batchnorm_forward_rows(x, gamma, beta, mean, var, eps, negative_slope)
    x3, x_cm = _cpu.planes(x)
    n, c = x.shape[:2]
    count = x.size // c
    gamma, beta = np.ascontiguousarray(gamma, x.dtype), np.ascontiguousarray(beta, x.dtype)
    training = mean is None
    norm_mean, invstd, mean, var_unbiased = _statistics(
        x.dtype, c, count, mean, var, eps, lambda m, sq: _bn_stats_numba(x3, x_cm, m, sq, work=2 * x.size))
    xhat3 = _workspace.empty_like(x3)
    y = _workspace.empty(x.shape, x.dtype)
    act = ACT_NONE if negative_slope is None else ACT_RELU if negative_slope == RELU else ACT_LEAKY
    slope = f(negative_slope) if act == ACT_LEAKY else f(0)
    _bn_apply_numba(x3, x_cm, norm_mean, invstd, gamma, beta, act, slope, xhat3,
                    y.reshape(n, c, -1), work=x.size)
    xhat = _cpu.nchw_view(xhat3, x_cm, x.shape)
    if negative_slope is None:
        return y, (xhat, invstd, gamma, training), mean, var_unbiased
    return y, (xhat, invstd, gamma, beta, training, negative_slope), mean, var_unbiased


def _statistics(dtype, c, count, mean, var, eps, batch_stats):
    """(norm_mean, invstd, mean, var_unbiased) of a Numba BatchNorm forward. Training (mean
    None): batch_stats(mean (c,), sq (c,) float64) writes each channel's batch mean and sum of
    squared deviations over its `count` values; var_unbiased is for the running variance.
    Eval: the given running mean and var, and var_unbiased None."""
    f = np.dtype(dtype).type
    if mean is None:
        mean = np.empty(c, dtype)
        sq = np.empty(c, np.float64)
        batch_stats(mean, sq)
        var = (sq / count).astype(dtype)
        var_unbiased = var * (count / max(count - 1, 1))
        norm_mean = mean
    else:
        var_unbiased = None
        norm_mean = np.ascontiguousarray(mean, dtype)
    return norm_mean, 1 / np.sqrt(var + f(eps)), mean, var_unbiased


def batchnorm_backward_numba(dy, cache):
    """As batchnorm_backward_numpy (a 4-element cache), batchnorm_leaky_relu_backward_numpy or
    batchnorm_relu_backward_numpy (a 6-element one): dx (in xhat's layout), dgamma, dbeta."""
    if len(cache) == 4:
        xhat, invstd, gamma, training = cache
        beta, act, slope = gamma, ACT_NONE, 0.0
    else:
        xhat, invstd, gamma, beta, training, slope = cache
        act, slope = (ACT_RELU, 0.0) if slope == RELU else (ACT_LEAKY, slope)
    f = dy.dtype.type
    if dy.ndim == 2:
        return _batchnorm_backward_rows(dy, xhat, invstd, gamma, beta, training, act, f(slope))
    h3, h_cm = _cpu.planes(xhat)
    d3, d_cm = _cpu.planes(dy)
    c = dy.shape[1]
    count = dy.size // c
    sums = np.empty((2, c), np.float64)
    _bn_backward_sums_numba(d3, d_cm, h3, h_cm, gamma, beta, act, f(slope), sums, work=2 * dy.size)
    dbeta, dgamma = sums[0].astype(dy.dtype), sums[1].astype(dy.dtype)
    scale = gamma * invstd
    dx3 = _workspace.empty_like(h3)
    _bn_backward_dx_numba(d3, d_cm, h3, h_cm, gamma, beta, act, f(slope), dgamma / count, dbeta / count, scale,
                          bool(training), dx3, work=dy.size)
    return _cpu.nchw_view(dx3, h_cm, dy.shape), dgamma, dbeta


def _batchnorm_forward_rows(x, gamma, beta, mean, var, eps, negative_slope):
    # batchnorm_forward_numba for (N, C): the same steps through the row kernels
    f = x.dtype.type
    x = np.ascontiguousarray(x)
    n, c = x.shape
    gamma, beta = np.ascontiguousarray(gamma, x.dtype), np.ascontiguousarray(beta, x.dtype)
    training = mean is None
    norm_mean, invstd, mean, var_unbiased = _statistics(
        x.dtype, c, n, mean, var, eps, lambda m, sq: _bn_stats_rows_numba(x, m, sq, COLS, work=2 * x.size))
    xhat = _workspace.empty_like(x)
    y = _workspace.empty_like(x)
    act = ACT_NONE if negative_slope is None else ACT_RELU if negative_slope == RELU else ACT_LEAKY
    slope = f(negative_slope) if act == ACT_LEAKY else f(0)
    _bn_apply_rows_numba(x, norm_mean, np.ascontiguousarray(invstd), gamma, beta, act, slope, xhat, y, work=x.size)
    if negative_slope is None:
        return y, (xhat, invstd, gamma, training), mean, var_unbiased
    return y, (xhat, invstd, gamma, beta, training, negative_slope), mean, var_unbiased


def _batchnorm_backward_rows(dy, xhat, invstd, gamma, beta, training, act, slope):
    # batchnorm_backward_numba for (N, C)
    dy, xhat = np.ascontiguousarray(dy), np.ascontiguousarray(xhat)
    gamma, beta = np.ascontiguousarray(gamma, dy.dtype), np.ascontiguousarray(beta, dy.dtype)
    n, c = dy.shape
    sums = np.empty((2, c), np.float64)
    _bn_backward_sums_rows_numba(dy, xhat, gamma, beta, act, slope, sums, COLS, work=2 * dy.size)
    dbeta, dgamma = sums[0].astype(dy.dtype), sums[1].astype(dy.dtype)
    scale = gamma * invstd
    dx = _workspace.empty_like(xhat)
    _bn_backward_dx_rows_numba(dy, xhat, gamma, beta, act, slope, dgamma / n, dbeta / n, scale, bool(training), dx,
                               work=dy.size)
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- CUDA kernels (kernels/batchnorm.cu)
# Training: stats kernel (mean, invstd, unbiased var) then the normalise kernel; eval:
# invstd kernel then the normalise kernel. The cache is the reference's own structure,
# (xhat, invstd, gamma, training), so either backward can consume it.
# version None picks per shape: the reductions (stats, backward) take a block per channel
# (2) for conv maps and a thread per channel (1) for (N, C); the elementwise normalise
# takes a block per row (2) when a row has at least a warp of pixels.

MAX_CHANNEL_BLOCKS = 65535   # the v2 kernels block-stride over channels / rows beyond this


def _per_channel(a, c, op, name):
    ac = _launch.arg(a, np.float32, f"{op}: {name}")
    if tuple(ac.shape) != (c,):
        raise ValueError(f"{op}: {name} has shape {tuple(ac.shape)}, expected ({c},)")
    return ac


def _channel_launch(kernel, version, c, count, args):
    """A per-channel reduction: version 1 a thread per channel, 2 a block per channel."""
    fn = _launch.function("batchnorm", f"{kernel}_v{version}")
    if version == 1:
        grid, block = _launch.grid_for(c)
        fn(grid, block, args)
    else:
        fn((min(c, MAX_CHANNEL_BLOCKS),), (_launch.warp_block(count),), args)


VERSIONS = (1, 2, 3)


def batchnorm_forward_cuda(x, gamma, beta, mean=None, var=None, eps=1e-5, version=None, splits=None):
    """As batchnorm_forward_numpy: y, (xhat, invstd, gamma, training), batch mean and
    unbiased variance (training), or the given mean and None (eval). version None is 3 (split
    reductions, float4); 1 and 2 pick their pass kernels by shape as before."""
    op = "batchnorm_forward"
    if (3 if version is None else version) == 3:
        y, (xhat, invstd, gc, _, training, _), out_mean, out_var = _forward_v3(
            op, x, gamma, beta, mean, var, eps, None, splits)
        return y, (xhat, invstd, gc, training), out_mean, out_var
    n, c, hw = _launch.split_channels(x, op, "x")
    xc = _launch.arg(x, np.float32, f"{op}: x")
    total = _launch.element_count(xc.size, op)
    gc = _per_channel(gamma, c, op, "gamma")
    bc = _per_channel(beta, c, op, "beta")
    count = n * hw
    invstd = _launch.empty((c,))
    training = mean is None
    if training:
        v = _launch.pick_version(op, version, 2 if hw > 1 else 1, VERSIONS)
        batch_mean, var_unbiased = _launch.empty((c,)), _launch.empty((c,))
        if c:
            _channel_launch("batchnorm_forward_stats", v, c, count,
                            (batch_mean, var_unbiased, invstd, xc, _launch.f32(eps),
                             _launch.f32(count / max(count - 1, 1)), _launch.i32(n), _launch.i32(c), _launch.i32(hw)))
        norm_mean, out_mean, out_var = batch_mean, batch_mean, var_unbiased
    else:
        if var is None:
            raise ValueError(f"{op}: eval mode needs both mean and var")
        norm_mean = _per_channel(mean, c, op, "mean")
        vc = _per_channel(var, c, op, "var")
        if c:
            grid, block = _launch.grid_for(c)
            _launch.function("batchnorm", "batchnorm_forward_invstd_v1")(
                grid, block, (invstd, vc, _launch.f32(eps), _launch.i32(c)))
        out_mean, out_var = mean, None
    y, xhat = _launch.empty(xc.shape), _launch.empty(xc.shape)
    if xc.size:
        v = _launch.pick_version(op, version, 2 if hw >= 32 else 1, VERSIONS)
        if v == 1:
            grid, block = _launch.grid_for(xc.size)
            _launch.function("batchnorm", "batchnorm_forward_v1")(
                grid, block, (y, xhat, xc, norm_mean, invstd, gc, bc, _launch.i32(c), _launch.i32(hw), total))
        else:
            rows = n * c
            _launch.function("batchnorm", "batchnorm_forward_v2")(
                (min(rows, MAX_CHANNEL_BLOCKS),), (_launch.warp_block(hw),),
                (y, xhat, xc, norm_mean, invstd, gc, bc, _launch.i32(rows), _launch.i32(c), _launch.i32(hw)))
    return y, (xhat, invstd, gc, training), out_mean, out_var


def batchnorm_backward_cuda(dy, cache, version=None, splits=None):
    """As batchnorm_backward_numpy: dy -> dx, dgamma, dbeta. version None is 3."""
    op = "batchnorm_backward"
    xhat, invstd, gamma, training = cache
    if (3 if version is None else version) == 3:
        return _backward_v3(op, dy, (xhat, invstd, gamma, None, training, None), splits)
    n, c, hw, dyc, xc, gc, ic, dx, dgamma, dbeta = _backward_args(op, dy, xhat, gamma, invstd)
    if c:
        v = _launch.pick_version(op, version, 2 if hw > 1 else 1, VERSIONS)
        _channel_launch("batchnorm_backward", v, c, n * hw,
                        (dx, dgamma, dbeta, dyc, xc, gc, ic, _launch.i32(1 if training else 0),
                         _launch.i32(n), _launch.i32(c), _launch.i32(hw)))
    return dx, dgamma, dbeta


def _forward_v3(op, x, gamma, beta, mean, var, eps, negative_slope, splits, running=None):
    """batchnorm_forward_stats_v3 (training) and batchnorm_forward_v3, or with a slope
    batchnorm_leaky_relu_forward_v1. Returns y, the fused cache (xhat, invstd, gamma, beta,
    training, slope), the mean and the unbiased variance (training) or None."""
    n, c, hw = _launch.split_channels(x, op, "x")
    xc = _launch.arg(x, np.float32, f"{op}: x")
    _launch.element_count(xc.size, op)
    gc = _per_channel(gamma, c, op, "gamma")
    bc = _per_channel(beta, c, op, "beta")
    training = mean is None
    count = n * hw
    y, xhat, invstd = _launch.empty(xc.shape), _launch.empty(xc.shape), _launch.empty((c,))
    if training:
        norm_mean, var_unbiased = _launch.empty((c,)), _launch.empty((c,))
    else:
        if var is None:
            raise ValueError(f"{op}: eval mode needs both mean and var")
        norm_mean = _per_channel(mean, c, op, "mean")
        vc = _per_channel(var, c, op, "var")
        var_unbiased = _launch.empty((1,))                      # not written in eval
        if c:
            grid, block = _launch.grid_for(c)
            _launch.function("batchnorm", "batchnorm_forward_invstd_v1")(
                grid, block, (invstd, vc, _launch.f32(eps), _launch.i32(c)))
    if xc.size:
        grid, block, s = _launch.channel_split_launch(n, c, hw, splits)
        i32 = _launch.i32
        shape = (i32(n), i32(c), i32(hw), i32(s))
        if training:
            partials = _launch.empty((2, s, c))      # [0] sums of x, [1] sums of squared deviations
            _launch.function("batchnorm", "batchnorm_forward_stats_v3")(grid, block, (partials, xc) + shape)
            _launch.function("batchnorm", "batchnorm_forward_stats_centered_v3")(grid, block, (partials, xc) + shape)
        else:
            partials = _launch.empty((1,))                      # not read in eval
        head = (y, xhat, norm_mean, var_unbiased, invstd, xc, partials, gc, bc, _launch.f32(eps),
                _launch.f32(count / max(count - 1, 1)))
        if negative_slope is None:
            _launch.function("batchnorm", "batchnorm_forward_v3")(grid, block, head + (i32(int(training)),) + shape)
        elif training and running is not None:
            rm, rv, momentum = running
            _launch.function("batchnorm", "batchnorm_leaky_relu_forward_v2")(
                grid, block, head + (_launch.f32(negative_slope), rm, rv, _launch.f32(1 - momentum),
                                     _launch.f32(momentum)) + shape)
        else:
            _launch.function("batchnorm", "batchnorm_leaky_relu_forward_v1")(
                grid, block, head + (_launch.f32(negative_slope), i32(int(training))) + shape)
    cache = (xhat, invstd, gc, bc, training, negative_slope)
    if training:
        return y, cache, norm_mean, var_unbiased
    return y, cache, mean, None


def _backward_args(op, dy, xhat, gamma, invstd):
    """The checked kernel arguments of a backward launch and its outputs:
    (n, c, hw, dy, xhat, gamma, invstd, dx, dgamma, dbeta), dy and xhat (N, C, HW) float32."""
    n, c, hw = _launch.split_channels(dy, op, "dy")
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    xc = _launch.arg(xhat, np.float32, f"{op}: xhat")
    if tuple(xc.shape) != tuple(dyc.shape):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, the forward's input {tuple(xc.shape)}")
    _launch.element_count(dyc.size, op)
    gc = _per_channel(gamma, c, op, "gamma")
    ic = _per_channel(invstd, c, op, "invstd")
    return n, c, hw, dyc, xc, gc, ic, _launch.empty(dyc.shape), _launch.empty((c,)), _launch.empty((c,))


def _check_grads_out(out, c, op):
    if out is None:
        return
    for name, a in zip(("dgamma", "dbeta"), out):
        if tuple(a.shape) != (c,) or a.dtype != np.float32 or not a.flags.c_contiguous \
                or backend.array_module(a) is not backend.get_xp():
            raise ValueError(f"{op}: out's {name} must be a contiguous float32 array of shape ({c},) on the device")


def _backward_v3(op, dy, cache, splits, out=None):
    """The two v3 passes (or the fused ones when the cache holds a slope). out: (dgamma,
    dbeta) arrays to add the parameters' gradients into (the fused pass only), returned None."""
    xhat, invstd, gamma, beta, training, negative_slope = cache
    n, c, hw, dyc, xc, gc, ic, dx, dgamma, dbeta = _backward_args(op, dy, xhat, gamma, invstd)
    _check_grads_out(out, c, op)
    if dyc.size == 0:
        dgamma.fill(0)
        dbeta.fill(0)
        return (dx, dgamma, dbeta) if out is None else (dx, None, None)
    grid, block, s = _launch.channel_split_launch(n, c, hw, splits)
    i32 = _launch.i32
    shape = (i32(n), i32(c), i32(hw), i32(s))
    partials = _launch.empty((2, s, c))
    if negative_slope is None:
        _launch.function("batchnorm", "batchnorm_backward_partial_v3")(grid, block, (partials, dyc, xc) + shape)
        _launch.function("batchnorm", "batchnorm_backward_v3")(
            grid, block, (dx, dgamma, dbeta, partials, dyc, xc, gc, ic, i32(int(training))) + shape)
    else:
        bc = _per_channel(beta, c, op, "beta")
        slope = _launch.f32(negative_slope)
        _launch.function("batchnorm", "batchnorm_leaky_relu_backward_partial_v1")(
            grid, block, (partials, dyc, xc, gc, bc, slope) + shape)
        kernel, (dgamma, dbeta) = (("batchnorm_leaky_relu_backward_v1", (dgamma, dbeta)) if out is None
                                   else ("batchnorm_leaky_relu_backward_v2", out))
        _launch.function("batchnorm", kernel)(
            grid, block, (dx, dgamma, dbeta, partials, dyc, xc, gc, bc, ic, slope, i32(int(training))) + shape)
        if out is not None:
            return dx, None, None
    return dx, dgamma, dbeta


def batchnorm_leaky_relu_forward_cuda(x, gamma, beta, mean=None, var=None, eps=1e-5, negative_slope=0.2,
                                      splits=None, running=None):
    """As batchnorm_leaky_relu_forward_numpy, through batchnorm_forward_stats_v3 (training)
    and batchnorm_leaky_relu_forward_v1. running = (running_mean, running_var, momentum), in
    training: the running statistics updated in the same pass (batchnorm_leaky_relu_forward_v2),
    as batchnorm_running_update would after it (the same bits)."""
    op = "batchnorm_leaky_relu_forward"
    if running is not None:
        rm, rv, momentum = running
        c = _launch.split_channels(x, op, "x")[1]
        for name, a in (("running_mean", rm), ("running_var", rv)):
            if backend.array_module(a) is not backend.get_xp() or a.dtype != np.float32 or \
                    not a.flags.c_contiguous or tuple(a.shape) != (c,):
                raise ValueError(f"{op}: {name} is updated in place: a contiguous float32 ({c},) array")
    return _forward_v3(op, x, gamma, beta, mean, var, eps, float(negative_slope), splits, running)


def batchnorm_leaky_relu_backward_cuda(dy, cache, splits=None, out=None):
    """As batchnorm_leaky_relu_backward_numpy: dy -> dx, dgamma, dbeta; with out = (dgamma,
    dbeta arrays, the parameters' .grad) the gradients are added into them
    (batchnorm_leaky_relu_backward_v2) and come back None."""
    return _backward_v3("batchnorm_leaky_relu_backward", dy, cache, splits, out)


def batchnorm_running_update_cuda(running_mean, running_var, mean, var_unbiased, momentum):
    """In place, as batchnorm_running_update_numpy."""
    op = "batchnorm_running_update"
    c = int(running_mean.shape[0]) if running_mean.ndim == 1 else -1
    rm = _launch.writable(running_mean, op, "running_mean")
    rv = _launch.writable(running_var, op, "running_var")
    for name, a in (("running_mean", rm), ("running_var", rv)):
        if a.ndim != 1 or a.shape[0] != c:
            raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, expected (C,)")
    mc = _per_channel(mean, c, op, "mean")
    vc = _per_channel(var_unbiased, c, op, "var_unbiased")
    if c:
        grid, block = _launch.grid_for(c)
        _launch.function("batchnorm", "batchnorm_running_update_v1")(
            grid, block, (rm, rv, mc, vc, _launch.f32(1 - momentum), _launch.f32(momentum), _launch.i32(c)))
    _launch.write_back(running_mean, rm)
    _launch.write_back(running_var, rv)


# ---------------------------------------------------------------- public ops: dispatch

def batchnorm_forward(x, gamma, beta, mean=None, var=None, eps=1e-5):
    if backend.uses_kernels():
        return batchnorm_forward_cuda(x, gamma, beta, mean, var, eps)
    if _numba_ok(x):
        return batchnorm_forward_numba(x, gamma, beta, mean, var, eps)
    return batchnorm_forward_numpy(x, gamma, beta, mean, var, eps)


def batchnorm_backward(dy, cache):
    if backend.uses_kernels():
        return batchnorm_backward_cuda(dy, cache)
    if _numba_ok(dy, cache[0]):
        return batchnorm_backward_numba(dy, cache)
    return batchnorm_backward_numpy(dy, cache)


def batchnorm_running_update(running_mean, running_var, mean, var_unbiased, momentum):
    """In place: r = (1 - momentum) r + momentum * batch statistic."""
    if backend.uses_kernels():
        batchnorm_running_update_cuda(running_mean, running_var, mean, var_unbiased, momentum)
        return
    batchnorm_running_update_numpy(running_mean, running_var, mean, var_unbiased, momentum)


def batchnorm_leaky_relu_forward(x, gamma, beta, mean=None, var=None, eps=1e-5, negative_slope=0.2, running=None):
    """leaky_relu(batchnorm(x)): y, cache, batch mean, batch unbiased variance (None in eval).
    running = (running_mean, running_var, momentum) in training: they are updated too, as
    batchnorm_running_update does (on the kernel backends in the same launch)."""
    if backend.uses_kernels():
        fits = running is not None and mean is None and all(
            backend.array_module(a) is backend.get_xp() and a.dtype == np.float32 and a.flags.c_contiguous
            for a in running[:2])
        out = batchnorm_leaky_relu_forward_cuda(x, gamma, beta, mean, var, eps, negative_slope,
                                                running=running if fits else None)
        if running is not None and mean is None and not fits:
            batchnorm_running_update(running[0], running[1], out[2], out[3], running[2])
        return out
    if _numba_ok(x):
        out = batchnorm_forward_numba(x, gamma, beta, mean, var, eps, float(negative_slope))
    else:
        out = batchnorm_leaky_relu_forward_numpy(x, gamma, beta, mean, var, eps, negative_slope)
    if running is not None and mean is None:
        batchnorm_running_update(running[0], running[1], out[2], out[3], running[2])
    return out


def batchnorm_leaky_relu_backward(dy, cache, out=None):
    """dy (gradient of the activated output) -> dx, dgamma, dbeta; with out = (dgamma, dbeta
    arrays, the parameters' .grad) the gradients are added into them and come back None."""
    if backend.uses_kernels():
        return batchnorm_leaky_relu_backward_cuda(dy, cache, out=out)
    if _numba_ok(dy, cache[0]):
        dx, dgamma, dbeta = batchnorm_backward_numba(dy, cache)
    else:
        dx, dgamma, dbeta = batchnorm_leaky_relu_backward_numpy(dy, cache)
    if out is None:
        return dx, dgamma, dbeta
    gamma_grad, beta_grad = out
    gamma_grad += dgamma        # grad += g, as Parameter.accumulate does (the same bits)
    beta_grad += dbeta
    return dx, None, None


def batchnorm_relu_forward(x, gamma, beta, mean=None, var=None, eps=1e-5, running=None):
    """relu(batchnorm(x)), the pair nn.fused runs for BatchNorm1d/2d + ReLU on the numpy backend
    (the kernel backends keep the two layers): the Numba kernels for 2-D and 4-D host arrays, else the
    reference. Returns y, cache, batch mean, batch unbiased variance (None in eval); running as
    batchnorm_leaky_relu_forward's."""
    if backend.uses_kernels():
        raise ValueError("batchnorm_relu_forward: a host op (the kernel backends run BatchNorm and ReLU apart)")
    if _numba_ok(x):
        out = batchnorm_forward_numba(x, gamma, beta, mean, var, eps, RELU)
    else:
        out = batchnorm_relu_forward_numpy(x, gamma, beta, mean, var, eps)
    if running is not None and mean is None:
        batchnorm_running_update(running[0], running[1], out[2], out[3], running[2])
    return out


def batchnorm_relu_backward(dy, cache, out=None):
    """dy (gradient of the activated output) -> dx, dgamma, dbeta; with out = (dgamma, dbeta
    arrays, the parameters' .grad) the gradients are added into them and come back None."""
    if _numba_ok(dy, cache[0]):
        dx, dgamma, dbeta = batchnorm_backward_numba(dy, cache)
    else:
        dx, dgamma, dbeta = batchnorm_relu_backward_numpy(dy, cache)
    if out is None:
        return dx, dgamma, dbeta
    gamma_grad, beta_grad = out
    gamma_grad += dgamma
    beta_grad += dbeta
    return dx, None, None

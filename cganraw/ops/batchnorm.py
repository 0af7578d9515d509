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
The fused pair is what BatchNorm + LeakyReLU run as inside nn.Sequential (cganraw.nn.fused);
its reference is exactly the unfused arithmetic, so the numpy backend gives the same bits.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


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


def batchnorm_running_update_numpy(running_mean, running_var, mean, var_unbiased, momentum):
    f = running_mean.dtype.type
    running_mean *= f(1 - momentum)
    running_mean += f(momentum) * mean
    running_var *= f(1 - momentum)
    running_var += f(momentum) * var_unbiased


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
    return batchnorm_forward_numpy(x, gamma, beta, mean, var, eps)


def batchnorm_backward(dy, cache):
    if backend.uses_kernels():
        return batchnorm_backward_cuda(dy, cache)
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
    out = batchnorm_leaky_relu_forward_numpy(x, gamma, beta, mean, var, eps, negative_slope)
    if running is not None and mean is None:
        batchnorm_running_update(running[0], running[1], out[2], out[3], running[2])
    return out


def batchnorm_leaky_relu_backward(dy, cache, out=None):
    """dy (gradient of the activated output) -> dx, dgamma, dbeta; with out = (dgamma, dbeta
    arrays, the parameters' .grad) the gradients are added into them and come back None."""
    if backend.uses_kernels():
        return batchnorm_leaky_relu_backward_cuda(dy, cache, out=out)
    dx, dgamma, dbeta = batchnorm_leaky_relu_backward_numpy(dy, cache)
    if out is None:
        return dx, dgamma, dbeta
    gamma_grad, beta_grad = out
    gamma_grad += dgamma        # grad += g, as Parameter.accumulate does (the same bits)
    beta_grad += dbeta
    return dx, None, None

"""Instance normalisation over the planes of (N, C, H, W), as torch's F.instance_norm.

With input statistics (training, or no running statistics tracked): every (n, c) plane is
normalised by its own mean and biased variance, then y = gamma[c] xhat + beta[c]; the
per-plane mean and biased variance come back for the running statistics. With running
statistics (eval with track_running_stats) it is BatchNorm's eval path, reused from
cganraw.ops.batchnorm. The cache says which, so one backward serves both.

    instancenorm_forward(x, gamma, beta, running_mean=None, running_var=None, eps)
        -> y, cache, mean (N, C) or None, var (N, C) or None
    instancenorm_backward(dy, cache) -> dx, dgamma, dbeta
    instancenorm_running_update(running_mean, running_var, mean, var, momentum, hw)  in place
    instancenorm_leaky_relu_forward / _backward: InstanceNorm2d (affine, input statistics) and
        LeakyReLU as one op (nn.fused, on the kernel backends): one launch each way, the
        parameter gradients added into .grad by the backward's last block

On the host with Numba (numpy backend), the input-statistics forward and backward run one
task per plane (instancenorm_forward_numba, instancenorm_backward_numba): two passes over a
plane each way where the reference makes six or seven, on x and dy where they lie (NCHW or
channel-major, the layout of G's convolutions), the sums in float64 in pixel order: the
reference's values within float32 rounding, and the same bits at any thread count.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch
from cganraw.ops.batchnorm import batchnorm_backward, batchnorm_forward

INPUT_STATS, RUNNING_STATS = "input", "running"


def _dims(x, op):
    if x.ndim != 4:
        raise ValueError(f"{op}: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = map(int, x.shape)
    return n, c, h * w


def _unbias(hw):
    return hw / max(hw - 1, 1)


def instancenorm_forward_numpy(x, gamma, beta, eps=1e-5):
    """x (N, C, H, W), gamma/beta (C,) -> y, cache (INPUT_STATS, xhat, invstd (N, C), gamma),
    mean (N, C), var (N, C) biased."""
    xp = backend.array_module(x)
    n, c, hw = _dims(x, "instancenorm_forward")
    rows = x.reshape(n * c, hw)
    mean = rows.mean(axis=1)
    centered = rows - mean[:, None]
    var = (centered * centered).mean(axis=1)
    invstd = 1 / xp.sqrt(var + x.dtype.type(eps))
    xhat = centered
    xhat *= invstd[:, None]
    xhat = xhat.reshape(x.shape)
    y = xhat * gamma.reshape(1, c, 1, 1)
    y += beta.reshape(1, c, 1, 1)
    return y, (INPUT_STATS, xhat, invstd.reshape(n, c), gamma), mean.reshape(n, c), var.reshape(n, c)


def instancenorm_backward_numpy(dy, cache):
    """dy -> dx, dgamma, dbeta for the input-statistics cache:
    dx = gamma invstd (dy - xhat mean(dy xhat) - mean(dy)) per plane."""
    _, xhat, invstd, gamma = cache
    n, c, hw = _dims(dy, "instancenorm_backward")
    s1 = dy.sum(axis=(2, 3))                 # (N, C)
    s2 = (dy * xhat).sum(axis=(2, 3))
    f = dy.dtype.type(hw)
    dx = xhat * (s2 / f)[:, :, None, None]
    dx += (s1 / f)[:, :, None, None]
    dx = dy - dx
    dx *= (gamma.reshape(1, c) * invstd)[:, :, None, None]
    return dx, s2.sum(axis=0), s1.sum(axis=0)


@_cpu.kernel
def _instancenorm_forward_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def forward(x, x_cm, gamma, beta, eps, y, xhat, mean, var, invstd):
        # x, y, xhat (N, C, HW), or (C, N, HW) when x_cm; mean, var, invstd (N, C)
        if x_cm:
            c, n, hw = x.shape
        else:
            n, c, hw = x.shape
        for task in nb.prange(n * c):
            i, ch = task // c, task % c
            xr = x[ch, i] if x_cm else x[i, ch]
            yr = y[ch, i] if x_cm else y[i, ch]
            hr = xhat[ch, i] if x_cm else xhat[i, ch]
            s = 0.0
            for p in range(hw):
                s += xr[p]
            m = s / hw
            q = 0.0
            for p in range(hw):
                d = xr[p] - m
                q += d * d
            v = q / hw
            inv = x.dtype.type(1.0 / np.sqrt(v + eps))
            mf = x.dtype.type(m)
            g, b = gamma[ch], beta[ch]
            for p in range(hw):
                h = (xr[p] - mf) * inv
                hr[p] = h
                yr[p] = h * g + b
            mean[i, ch], var[i, ch], invstd[i, ch] = m, v, inv
    return forward


@_cpu.kernel
def _instancenorm_backward_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def backward(dy, dy_cm, xhat, x_cm, invstd, gamma, dx, s1, s2):
        # dy and xhat each (N, C, HW) or (C, N, HW); dx in xhat's layout; s1, s2 (N, C) float64
        if x_cm:
            c, n, hw = xhat.shape
        else:
            n, c, hw = xhat.shape
        for task in nb.prange(n * c):
            i, ch = task // c, task % c
            g = dy[ch, i] if dy_cm else dy[i, ch]
            hr = xhat[ch, i] if x_cm else xhat[i, ch]
            dr = dx[ch, i] if x_cm else dx[i, ch]
            a = 0.0
            q = 0.0
            for p in range(hw):
                a += g[p]
                q += g[p] * hr[p]
            s1[i, ch], s2[i, ch] = a, q
            ma, mq = dy.dtype.type(a / hw), dy.dtype.type(q / hw)
            k = gamma[ch] * invstd[i, ch]
            for p in range(hw):
                dr[p] = (g[p] - (hr[p] * mq + ma)) * k
    return backward


def instancenorm_forward_numba(x, gamma, beta, eps=1e-5):
    """As instancenorm_forward_numpy (y and xhat in x's layout), one task per plane."""
    n, c, _ = _dims(x, "instancenorm_forward")
    x3, cm = _cpu.planes(x)
    y3, y = _cpu.empty_planes_like(x3, cm, x.shape)
    h3, xhat = _cpu.empty_planes_like(x3, cm, x.shape)
    mean, var = np.empty((n, c)), np.empty((n, c))
    invstd = np.empty((n, c), x.dtype)
    _instancenorm_forward_numba(x3, cm, np.ascontiguousarray(gamma), np.ascontiguousarray(beta), float(eps), y3, h3,
                                mean, var, invstd, work=x.size)
    return y, (INPUT_STATS, xhat, invstd, gamma), mean.astype(x.dtype), var.astype(x.dtype)


def instancenorm_backward_numba(dy, cache):
    """As instancenorm_backward_numpy, one task per plane (dx in xhat's layout)."""
    _, xhat, invstd, gamma = cache
    n, c, _ = _dims(dy, "instancenorm_backward")
    if tuple(dy.shape) != tuple(xhat.shape):
        raise ValueError(f"instancenorm_backward: dy has shape {tuple(dy.shape)}, the forward's input "
                         f"{tuple(xhat.shape)}")
    h3, cm = _cpu.planes(xhat)
    dx3, dx = _cpu.empty_planes_like(h3, cm, xhat.shape)
    s1, s2 = np.empty((n, c)), np.empty((n, c))
    _instancenorm_backward_numba(*_cpu.planes(dy), h3, cm, np.ascontiguousarray(invstd), np.ascontiguousarray(gamma), dx3,
                                 s1, s2, work=dy.size)
    return dx, s2.sum(axis=0).astype(dy.dtype), s1.sum(axis=0).astype(dy.dtype)


def instancenorm_running_update_numpy(running_mean, running_var, mean, var, momentum, hw):
    """In place, as torch: batch_norm's update on each of the N instances' copies of the
    running statistics, averaged back: r = mean_n(keep r + momentum stat[n]), with the
    variance unbiased by HW / (HW - 1)."""
    f = running_mean.dtype.type
    keep, m = f(1 - momentum), f(momentum)
    running_mean[...] = (running_mean * keep + m * mean).mean(axis=0)
    running_var[...] = (running_var * keep + m * (var * f(_unbias(hw)))).mean(axis=0)


def instancenorm_leaky_relu_forward_numpy(x, gamma, beta, eps=1e-5, negative_slope=0.2):
    """leaky_relu(instancenorm(x)), the unfused arithmetic: y, cache (INPUT_STATS, xhat, invstd,
    gamma, beta, slope), mean, var."""
    xp = backend.array_module(x)
    y, cache, mean, var = instancenorm_forward_numpy(x, gamma, beta, eps)
    y = xp.where(y > 0, y, y * y.dtype.type(negative_slope))
    return y, cache + (beta, negative_slope), mean, var


def _pre_activation_mask(cache):
    _, xhat, _, gamma, beta, _ = cache
    c = gamma.shape[0]
    return xhat * gamma.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1) > 0


def instancenorm_leaky_relu_backward_numpy(dy, cache):
    """dy of the activated output -> dx, dgamma, dbeta: LeakyReLU's gradient (its mask
    recomputed from xhat, as the kernel does), then instancenorm_backward_numpy."""
    xp = backend.array_module(dy)
    dpre = xp.where(_pre_activation_mask(cache), dy, dy * dy.dtype.type(cache[5]))
    return instancenorm_backward_numpy(dpre, cache[:4])


# ---------------------------------------------------------------- CUDA kernels (kernels/instancenorm.cu)
# version None picks per shape: a block per plane (2) when a plane has at least a warp of
# pixels, else a thread per plane (1).

def _per_channel(a, c, op, name):
    ac = _launch.arg(a, np.float32, f"{op}: {name}")
    if tuple(ac.shape) != (c,):
        raise ValueError(f"{op}: {name} has shape {tuple(ac.shape)}, expected ({c},)")
    return ac


def _row_launch(kernel, version, rows, hw, args):
    if version == 1:
        _launch.thread_per_row_launch("instancenorm", kernel, 1, rows, args)
    else:
        _launch.row_launch("instancenorm", kernel, 2, rows, hw, args)


def _forward_arrays(x, gamma, beta, n, c, op):
    """The forward kernels' inputs, checked (x, gamma, beta), and outputs: y, xhat (N, C, H, W)
    and mean, var, invstd (N, C)."""
    xc = _launch.arg(x, np.float32, f"{op}: x")
    _launch.element_count(xc.size, op)
    gc, bc = _per_channel(gamma, c, op, "gamma"), _per_channel(beta, c, op, "beta")
    y, xhat = _launch.empty(xc.shape), _launch.empty(xc.shape)
    return (xc, gc, bc, y, xhat, *(_launch.empty((n, c)) for _ in range(3)))


def instancenorm_forward_cuda(x, gamma, beta, eps=1e-5, version=None):
    """As instancenorm_forward_numpy, on the GPU (or the emulator)."""
    op = "instancenorm_forward"
    n, c, hw = _dims(x, op)
    xc, gc, bc, y, xhat, mean, var, invstd = _forward_arrays(x, gamma, beta, n, c, op)
    rows = n * c
    _row_launch(op, _launch.pick_version(op, version, 2 if hw >= 32 else 1), rows, hw,
                (y, xhat, mean, var, invstd, xc, gc, bc, _launch.f32(eps),
                 _launch.i32(rows), _launch.i32(c), _launch.i32(hw)))
    return y, (INPUT_STATS, xhat, invstd, gc), mean, var


def _backward_inputs(dy, xhat, op):
    """(n, c, hw, dy, xhat) for the backward kernels: float32, contiguous, of one shape."""
    n, c, hw = _dims(dy, op)
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    xc = _launch.arg(xhat, np.float32, f"{op}: xhat")
    if tuple(xc.shape) != tuple(dyc.shape):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, the forward's input {tuple(xc.shape)}")
    _launch.element_count(dyc.size, op)
    return n, c, hw, dyc, xc


def instancenorm_backward_cuda(dy, cache, version=None):
    op = "instancenorm_backward"
    _, xhat, invstd, gamma = cache
    n, c, hw, dyc, xc = _backward_inputs(dy, xhat, op)
    gc = _per_channel(gamma, c, op, "gamma")
    ic = _launch.arg(invstd, np.float32, f"{op}: invstd")
    rows = n * c
    dx, s1, s2 = _launch.empty(dyc.shape), _launch.empty((n, c)), _launch.empty((n, c))
    _row_launch(op, _launch.pick_version(op, version, 2 if hw >= 32 else 1), rows, hw,
                (dx, s1, s2, dyc, xc, gc, ic, _launch.i32(rows), _launch.i32(c), _launch.i32(hw)))
    dgamma, dbeta = _launch.empty((c,)), _launch.empty((c,))
    _launch.thread_per_row_launch("instancenorm", "instancenorm_backward_param_grad", 1, c,
                                     (dgamma, dbeta, s1, s2, _launch.i32(n), _launch.i32(c)))
    return dx, dgamma, dbeta


def instancenorm_leaky_relu_forward_cuda(x, gamma, beta, eps=1e-5, negative_slope=0.2, channel_major=False,
                                        version=None):
    """As instancenorm_leaky_relu_forward_numpy, one launch (a block per plane): version 1, or
    2 (the default) which with channel_major writes y channel-major and returns it as an
    (N, C, H, W) view of that (C, N, H, W) memory: the next convolution takes it as its GEMM
    operand (C, N*H*W) without a copy."""
    op = "instancenorm_leaky_relu_forward"
    version = _launch.pick_version(op, version, 2, (1, 2))
    if channel_major and version != 2:
        raise ValueError(f"{op}: channel_major needs version 2, got version={version}")
    if not negative_slope >= 0:
        raise ValueError(f"{op}: the backward recomputes the mask from xhat: negative_slope >= 0, got {negative_slope}")
    n, c, hw = _dims(x, op)
    xc, gc, bc, y, xhat, mean, var, invstd = _forward_arrays(x, gamma, beta, n, c, op)
    rows = n * c
    if channel_major:
        y = _launch.empty((c, n) + tuple(xc.shape[2:]))         # (C, N, H, W); handed on as an NCHW view
    _launch.row_launch("instancenorm", op, version, rows, hw,
                       (y, xhat, mean, var, invstd, xc, gc, bc, _launch.f32(eps), _launch.f32(negative_slope),
                        _launch.i32(rows), _launch.i32(c), _launch.i32(hw))
                       + ((_launch.i32(channel_major),) if version == 2 else ()))
    if channel_major:
        y = y.transpose(1, 0, 2, 3)
    return y, (INPUT_STATS, xhat, invstd, gc, bc, float(negative_slope)), mean, var


def _channel_major_memory(a):
    """(C, N, H, W) contiguous memory of an (N, C, H, W) channel-major view (ops._layout), or None."""
    if a.ndim != 4 or a.flags.c_contiguous or a.dtype != np.float32 or \
            backend.array_module(a) is not backend.get_xp():
        return None
    t = a.transpose(1, 0, 2, 3)
    return t if t.flags.c_contiguous else None


def instancenorm_leaky_relu_backward_cuda(dy, cache, out=None, version=None):
    """As instancenorm_leaky_relu_backward_numpy, one launch; with out = (dgamma, dbeta arrays,
    the parameters' .grad) the parameter gradients are added into them and come back None.
    version 2 (the default) reads a channel-major dy (an (N, C, H, W) view of (C, N, H, W)
    memory, as a convolution's data gradient comes) in place, where v1 copies it to NCHW."""
    op = "instancenorm_leaky_relu_backward"
    version = _launch.pick_version(op, version, 2, (1, 2))
    _, xhat, invstd, gamma, beta, slope = cache
    dy_cm = _channel_major_memory(dy) if version == 2 else None
    if dy_cm is not None and tuple(dy.shape) != tuple(xhat.shape):
        raise ValueError(f"{op}: dy has shape {tuple(dy.shape)}, the forward's input {tuple(xhat.shape)}")
    # a channel-major dy is taken as it lies (its shape checked above); any other is made NCHW
    n, c, hw, dyc, xc = _backward_inputs(dy if dy_cm is None else xhat, xhat, op)
    if dy_cm is not None:
        dyc = dy_cm
    gc, bc = _per_channel(gamma, c, op, "gamma"), _per_channel(beta, c, op, "beta")
    if out is not None:
        dgamma, dbeta = (_launch.writable(a, op, name) for a, name in zip(out, ("out[0]", "out[1]")))
        if tuple(dgamma.shape) != (c,) or tuple(dbeta.shape) != (c,):
            raise ValueError(f"{op}: out must be two float32 ({c},) arrays, added to in place")
    else:
        dgamma, dbeta = _launch.empty((c,)), _launch.empty((c,))
    rows = n * c
    dx, s1, s2 = _launch.empty(xc.shape), _launch.empty((n, c)), _launch.empty((n, c))
    if rows:
        _launch.row_launch("instancenorm", op, version, rows, hw,
                           (dx, s1, s2, dgamma, dbeta, _launch.grid_counter(), dyc, xc, gc, bc,
                            _launch.arg(invstd, np.float32, f"{op}: invstd"), _launch.f32(slope), _launch.i32(rows),
                            _launch.i32(c), _launch.i32(hw), _launch.i32(out is not None))
                           + ((_launch.i32(dy_cm is not None),) if version == 2 else ()))
    elif out is None:
        dgamma.fill(0)
        dbeta.fill(0)
    if out is not None:
        _launch.write_back(out[0], dgamma)
        _launch.write_back(out[1], dbeta)
        return dx, None, None
    return dx, dgamma, dbeta


def instancenorm_leaky_relu_forward(x, gamma, beta, eps=1e-5, negative_slope=0.2, channel_major=False):
    """y, cache, mean, var. channel_major (kernel backends): y is an (N, C, H, W) view of
    channel-major memory (instancenorm_leaky_relu_forward_cuda); the numpy backend ignores it."""
    if backend.uses_kernels():
        return instancenorm_leaky_relu_forward_cuda(x, gamma, beta, eps, negative_slope, channel_major)
    return instancenorm_leaky_relu_forward_numpy(x, gamma, beta, eps, negative_slope)


def instancenorm_leaky_relu_backward(dy, cache, out=None):
    """dx, dgamma, dbeta; with out = (dgamma, dbeta .grad arrays) added into them (None back)."""
    if backend.uses_kernels():
        return instancenorm_leaky_relu_backward_cuda(dy, cache, out=out)
    dx, dgamma, dbeta = instancenorm_leaky_relu_backward_numpy(dy, cache)
    if out is None:
        return dx, dgamma, dbeta
    out[0] += dgamma
    out[1] += dbeta
    return dx, None, None


def instancenorm_running_update_cuda(running_mean, running_var, mean, var, momentum, hw):
    """In place, as instancenorm_running_update_numpy."""
    op = "instancenorm_running_update"
    c = int(running_mean.shape[0]) if running_mean.ndim == 1 else -1
    rm = _launch.arg(running_mean, np.float32, f"{op}: running_mean")
    rv = _launch.arg(running_var, np.float32, f"{op}: running_var")
    for name, a in (("running_mean", rm), ("running_var", rv)):
        if a.ndim != 1 or a.shape[0] != c:
            raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, expected (C,)")
    mc = _launch.arg(mean, np.float32, f"{op}: mean")
    vc = _launch.arg(var, np.float32, f"{op}: var")
    if mc.ndim != 2 or mc.shape[1] != c or tuple(vc.shape) != tuple(mc.shape):
        raise ValueError(f"{op}: mean and var must have shape (N, {c}), got {tuple(mc.shape)} and {tuple(vc.shape)}")
    _launch.thread_per_row_launch(
        "instancenorm", op, 1, c,
        (rm, rv, mc, vc, _launch.f32(1 - momentum), _launch.f32(momentum), _launch.f32(_unbias(hw)),
         _launch.i32(mc.shape[0]), _launch.i32(c)))
    for a, ac in ((running_mean, rm), (running_var, rv)):
        if ac is not a:           # a strided view was updated through a contiguous copy
            a[...] = ac


# ---------------------------------------------------------------- public ops: dispatch

def instancenorm_forward(x, gamma, beta, running_mean=None, running_var=None, eps=1e-5):
    """Input statistics when running_mean is None (training, or untracked): y, cache, the
    planes' mean and biased var (N, C). Else the running statistics (BatchNorm's eval):
    y, cache, None, None."""
    if running_mean is not None:
        y, cache, _, _ = batchnorm_forward(x, gamma, beta, running_mean, running_var, eps)
        return y, (RUNNING_STATS, cache), None, None
    if backend.uses_kernels():
        return instancenorm_forward_cuda(x, gamma, beta, eps)
    if _cpu.host_planes(x, gamma, beta):
        return instancenorm_forward_numba(x, gamma, beta, eps)
    return instancenorm_forward_numpy(x, gamma, beta, eps)


def instancenorm_backward(dy, cache):
    """dy (N, C, H, W) -> dx, dgamma (C,), dbeta (C,)."""
    if cache[0] == RUNNING_STATS:
        return batchnorm_backward(dy, cache[1])
    if backend.uses_kernels():
        return instancenorm_backward_cuda(dy, cache)
    if _cpu.host_planes(dy, cache[1], cache[2], cache[3]):
        return instancenorm_backward_numba(dy, cache)
    return instancenorm_backward_numpy(dy, cache)


def instancenorm_running_update(running_mean, running_var, mean, var, momentum, hw):
    """In place: running stats (C,) from the planes' mean and biased var (N, C) of HW pixels."""
    if backend.uses_kernels():
        instancenorm_running_update_cuda(running_mean, running_var, mean, var, momentum, hw)
        return
    instancenorm_running_update_numpy(running_mean, running_var, mean, var, momentum, hw)

"""Spectral normalisation of a weight (Miyato et al. 2018), torch.nn.utils.spectral_norm's
arithmetic as pure functions.

The weight W (any shape) is read as the matrix Wm (H, Wd): axis `dim` first, the rest
flattened in order (torch's reshape_weight_to_matrix). u (H,) and v (Wd,) estimate its
leading singular vectors:

    forward(W, u, v, dim, n_power_iterations, eps, power_iteration, *, in_place=False, zero=None)
        power_iteration (training): n times v = normalize(Wm^T u), u = normalize(Wm v)
        sigma = u . (Wm v);  W_sn = W / sigma
        -> W_sn, u, v (new arrays, the cache's own), cache
        in_place: the new u, v are also written into the given u, v (the module's buffers);
        zero: an array of W's shape set to 0 (the normalised weight's gradient accumulator),
        in the same pass as W / sigma on the kernel backends
    backward(dW_sn, cache, out=None) -> dW = dW_sn / sigma - (<dW_sn, W> / sigma^2) u v^T
        u and v held fixed, as torch does (they come out of a no_grad power iteration):
        the gradient flows through sigma only. out: dW is added into it (the raw weight's
        .grad) and returned.

normalize(x) = x / max(||x||, eps), as torch.nn.functional.normalize.
"""
from __future__ import annotations

import math

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


def matrix_dims(shape, dim):
    """(outer, H, inner) of a weight of `shape` read along axis `dim`; Wd = outer * inner."""
    shape = tuple(int(s) for s in shape)
    if not 0 <= dim < len(shape):
        raise ValueError(f"spectral_norm: dim {dim} is out of range for a weight of shape {shape}")
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def _check(w, u, v, dim, op):
    outer, h, inner = matrix_dims(w.shape, dim)
    if tuple(u.shape) != (h,) or tuple(v.shape) != (outer * inner,):
        raise ValueError(f"{op}: u and v must have shapes ({h},) and ({outer * inner},) for a weight of shape "
                         f"{tuple(w.shape)} along dim {dim}, got {tuple(u.shape)} and {tuple(v.shape)}")
    return outer, h, inner


def _as_matrix(w, dim):
    xp = backend.array_module(w)
    return xp.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)


def _normalize_numpy(x, eps):
    xp = backend.array_module(x)
    norm = xp.sqrt((x * x).sum())
    return x / xp.maximum(norm, x.dtype.type(eps))


def _check_zero(zero, weight, op):
    if zero is not None and (tuple(zero.shape) != tuple(weight.shape) or zero.dtype != weight.dtype):
        raise ValueError(f"{op}: zero must have the weight's shape {tuple(weight.shape)} and dtype {weight.dtype}, "
                         f"got {tuple(zero.shape)} {zero.dtype}")


def spectral_norm_forward_numpy(weight, u, v, dim=0, n_power_iterations=1, eps=1e-12, power_iteration=True, *,
                                in_place=False, zero=None):
    _check(weight, u, v, dim, "spectral_norm_forward")
    _check_zero(zero, weight, "spectral_norm_forward")
    wm = _as_matrix(weight, dim)
    u_in, v_in = u, v
    if power_iteration:
        for _ in range(int(n_power_iterations)):
            v = _normalize_numpy(wm.T @ u, eps)
            u = _normalize_numpy(wm @ v, eps)
    u, v = u.copy(), v.copy()
    sigma = u @ (wm @ v)
    if in_place and power_iteration:
        u_in[...] = u
        v_in[...] = v
    if zero is not None:
        zero.fill(0)
    return weight / sigma, u, v, (weight, u, v, sigma, dim)


def spectral_norm_backward_numpy(dw_sn, cache, out=None):
    weight, u, v, sigma, dim = cache
    xp = backend.array_module(dw_sn)
    coef = (dw_sn * weight).sum() / (sigma * sigma)
    rank1 = (u[:, None] * v[None, :]).reshape((weight.shape[dim],) + tuple(
        s for k, s in enumerate(weight.shape) if k != dim))
    rank1 = xp.moveaxis(rank1, 0, dim)
    dw = dw_sn / sigma - coef * rank1
    if out is None:
        return dw
    out += dw
    return out


# ---------------------------------------------------------------- CUDA kernels (kernels/spectral_norm.cu)
# version None: 3, the fused kernels (forward: spectral_norm_power_v1 and
# spectral_norm_forward_v3, two launches; backward: the dot and spectral_norm_backward_v3,
# adding into `out`). Versions 1 and 2: the unfused sequence, v2 with the row-per-block
# matvec when rows hold at least a warp of values and the grid-striding elementwise kernels.
VERSIONS = (1, 2, 3)
POWER_BLOCK = 512        # threads of the one-block power iteration

SINGLE_BLOCK = 256


def _single_block(kernel, args):
    _launch.function("spectral_norm", kernel)((1,), (SINGLE_BLOCK,), args)


def _matvec(wc, vec, outer, h, inner, version):
    out = _launch.empty((h,))
    dims = (_launch.i32(outer), _launch.i32(h), _launch.i32(inner))
    if version == 1:
        _launch.thread_per_row_launch("spectral_norm", "spectral_norm_forward_matvec", 1, h, (out, wc, vec) + dims)
    else:
        _launch.row_launch("spectral_norm", "spectral_norm_forward_matvec", 2, h, outer * inner, (out, wc, vec) + dims)
    return out


def _matvec_t(wc, vec, outer, h, inner):
    out = _launch.empty((outer * inner,))
    _launch.thread_per_row_launch("spectral_norm", "spectral_norm_forward_matvec_t", 1, outer * inner,
                                     (out, wc, vec, _launch.i32(outer), _launch.i32(h), _launch.i32(inner)))
    return out


def _normalize(x, eps):
    _single_block("spectral_norm_forward_normalize_v1", (x, _launch.i32(x.size), _launch.f32(eps)))
    return x


def _check_in_place(a, what, op):
    if not (a.dtype == np.float32 and a.flags.c_contiguous):
        raise ValueError(f"{op}: in_place needs {what} as a contiguous float32 array")


def spectral_norm_forward_cuda(weight, u, v, dim=0, n_power_iterations=1, eps=1e-12, power_iteration=True, *,
                               in_place=False, zero=None, version=None):
    """As spectral_norm_forward_numpy, on the GPU (or the emulator); sigma in the cache is a
    one-float device array."""
    op = "spectral_norm_forward"
    wc = _launch.arg(weight, np.float32, f"{op}: weight")
    if in_place:
        _check_in_place(u, "u", op)
        _check_in_place(v, "v", op)
    uc = _launch.arg(u, np.float32, f"{op}: u")
    vc = _launch.arg(v, np.float32, f"{op}: v")
    outer, h, inner = _check(wc, uc, vc, dim, op)
    _check_zero(zero, wc, op)
    if zero is not None:
        _check_in_place(zero, "zero", op)
    total = _launch.element_count(wc.size, op)
    version = _launch.pick_version(op, version, 3, VERSIONS)
    if version == 3:
        u_out, v_out, rows, sigma = _launch.empty(uc.shape), _launch.empty(vc.shape), _launch.empty((h,)), \
            _launch.empty((1,))
        _launch.function("spectral_norm", "spectral_norm_power_v1")(
            (1,), (POWER_BLOCK,), (uc, vc, u_out, v_out, rows, sigma, wc, _launch.i32(outer), _launch.i32(h),
                                   _launch.i32(inner), _launch.i32(n_power_iterations if power_iteration else 0),
                                   _launch.i32(bool(in_place)), _launch.f32(eps)))
        w_sn = _launch.empty(wc.shape)
        zero_arg = zero if zero is not None else _launch.empty(wc.shape)
        grid, block = _launch.grid_for(wc.size, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("spectral_norm", "spectral_norm_forward_v3")(grid, block, (w_sn, zero_arg, wc, sigma, total))
        return w_sn, u_out, v_out, (wc, u_out, v_out, sigma, dim)
    mv_version = _launch.pick_version(op, version, 2 if outer * inner >= 32 else 1)
    if power_iteration:
        for _ in range(int(n_power_iterations)):
            vc = _normalize(_matvec_t(wc, uc, outer, h, inner), eps)
            uc = _normalize(_matvec(wc, vc, outer, h, inner, mv_version), eps)
    uc = _launch.copy_into(_launch.empty(uc.shape), uc)      # the cache's own u, v: the
    vc = _launch.copy_into(_launch.empty(vc.shape), vc)      # caller stores them in its buffers
    sigma = _launch.empty((1,))
    _single_block("spectral_norm_dot_v1", (sigma, uc, _matvec(wc, vc, outer, h, inner, mv_version), _launch.i32(h)))
    w_sn = _launch.empty(wc.shape)
    _launch.elementwise_launch("spectral_norm", op, version, wc.size, (w_sn, wc, sigma, total))
    if in_place and power_iteration:
        _launch.copy_into(u, uc)
        _launch.copy_into(v, vc)
    if zero is not None:
        _launch.fill_zero(zero)
    return w_sn, uc, vc, (wc, uc, vc, sigma, dim)


def spectral_norm_backward_cuda(dw_sn, cache, out=None, version=None):
    op = "spectral_norm_backward"
    weight, u, v, sigma, dim = cache
    gc = _launch.arg(dw_sn, np.float32, f"{op}: dw_sn")
    if tuple(gc.shape) != tuple(weight.shape):
        raise ValueError(f"{op}: dw_sn has shape {tuple(gc.shape)}, the weight {tuple(weight.shape)}")
    if out is not None:
        _check_zero(out, weight, op)
        _check_in_place(out, "out", op)
    version = _launch.pick_version(op, version, 3 if out is not None else 2, VERSIONS)
    if version == 3 and out is None:
        raise ValueError(f"{op}: kernel version 3 adds into `out`: give one")
    _, h, inner = matrix_dims(weight.shape, dim)
    total = _launch.element_count(gc.size, op)
    gw = _launch.empty((1,))
    _single_block("spectral_norm_dot_v1", (gw, gc, weight, total))
    args = (gc, u, v, sigma, gw, _launch.i32(h), _launch.i32(inner), total)
    if version == 3:
        grid, block = _launch.grid_for(gc.size, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("spectral_norm", "spectral_norm_backward_v3")(grid, block, (out,) + args)
        return out
    dw = _launch.empty(gc.shape)
    _launch.elementwise_launch("spectral_norm", op, version, gc.size, (dw,) + args)
    return dw if out is None else _launch.add_into(out, dw)


# ---------------------------------------------------------------- public ops: dispatch

def spectral_norm_forward(weight, u, v, dim=0, n_power_iterations=1, eps=1e-12, power_iteration=True, *,
                          in_place=False, zero=None):
    """-> W_sn (weight's shape), u (H,), v (Wd,), cache."""
    if backend.uses_kernels():
        return spectral_norm_forward_cuda(weight, u, v, dim, n_power_iterations, eps, power_iteration,
                                          in_place=in_place, zero=zero)
    return spectral_norm_forward_numpy(weight, u, v, dim, n_power_iterations, eps, power_iteration,
                                       in_place=in_place, zero=zero)


def spectral_norm_backward(dw_sn, cache, out=None):
    """dW_sn -> dW (the gradient of the raw weight), added into `out` when given."""
    if backend.uses_kernels():
        return spectral_norm_backward_cuda(dw_sn, cache, out)
    return spectral_norm_backward_numpy(dw_sn, cache, out)


def sigma_of(cache):
    """sigma (a Python float) from a forward cache, for reports and tests."""
    return float(np.asarray(backend.asnumpy(cache[3])).reshape(-1)[0])

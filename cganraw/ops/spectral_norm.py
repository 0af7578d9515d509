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

Every normalised layer of a model at once (nn.utils.SpectralNormGroup, on the kernel
backends): spectral_norm_multi_forward / spectral_norm_multi_backward, two launches each.
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


# ---------------------------------------------------------------- every layer at once
# A model's spectrally normalised weights in one launch per pass (kernels/spectral_norm.cu
# *_multi_v1). The operands are flat arrays and a table of ints, SN_COLS per layer:
#     w_off outer H inner uv_off rows_off iterations wsn_off
# W: the raw weights (layer l at w_off, its gradient at the same offset of dW); uv: u then v
# per layer at uv_off (H + outer*inner values); w_sn and its accumulator zero: the layers
# back to back from wsn_off. The reference runs the single-layer ops layer by layer.
SN_COLS = 8


def multi_table(layers):
    """The int32 table (L, SN_COLS) for layers = [(w_off, weight shape, dim, uv_off, iterations)]
    (rows_off and wsn_off follow from the sizes) -> (table, rows total, w_sn total)."""
    rows, wsn, out = 0, 0, []
    for w_off, shape, dim, uv_off, iterations in layers:
        outer, h, inner = matrix_dims(shape, dim)
        out.append((w_off, outer, h, inner, uv_off, rows, iterations, wsn))
        rows += h
        wsn += outer * h * inner
    return np.array(out, dtype=np.int32).reshape(-1, SN_COLS), rows, wsn


def _multi_views(table, W, uv, w_sn, eps):
    for w_off, outer, h, inner, uv_off, _, _, wsn_off in (tuple(int(v) for v in r) for r in table):
        size = outer * h * inner
        yield (W[w_off:w_off + size], uv[uv_off:uv_off + h], uv[uv_off + h:uv_off + h + outer * inner],
               None if w_sn is None else w_sn[wsn_off:wsn_off + size], (outer, h, inner))


def spectral_norm_multi_forward_numpy(table, W, uv, w_sn, zero, eps=1e-12, write_back=True):
    """Every layer of the table: u, v (power iteration, `iterations` steps) into uv_out (and
    into uv, write_back), sigma (L,), W_sn into w_sn and zero zeroed: spectral_norm_forward_numpy
    layer by layer (a weight read as (outer, H, inner), dim 1). Returns uv_out, sigma."""
    xp = backend.array_module(W)
    uv_out = uv.copy()
    sigma = xp.empty((table.shape[0],), W.dtype)
    for i, (w, u, v, wsn, (outer, h, inner)) in enumerate(_multi_views(table, W, uv, w_sn, eps)):
        it = int(table[i, 6])
        w_sn_l, u_n, v_n, cache = spectral_norm_forward_numpy(w.reshape(outer, h, inner), u, v, 1, max(it, 1), eps,
                                                              power_iteration=it > 0)
        off = int(table[i, 4])
        uv_out[off:off + h], uv_out[off + h:off + h + v.size] = u_n, v_n
        if write_back and it > 0:
            u[...], v[...] = u_n, v_n
        sigma[i] = cache[3]
        wsn[...] = w_sn_l.reshape(-1)
    zero.fill(0)
    return uv_out, sigma


def spectral_norm_multi_backward_numpy(table, dW, dw_sn, W, uv_out, sigma):
    """dW (W's layout) += every layer's spectral_norm_backward_numpy(dw_sn_l), with the
    forward's u, v (uv_out) and sigma."""
    for i, (w, u, v, g, (outer, h, inner)) in enumerate(_multi_views(table, W, uv_out, dw_sn, 0.0)):
        w_off = int(table[i, 0])
        spectral_norm_backward_numpy(g.reshape(outer, h, inner), (w.reshape(outer, h, inner), u, v, sigma[i], 1),
                                     out=dW[w_off:w_off + w.size].reshape(outer, h, inner))
    return dW


def spectral_norm_multi_forward_cuda(table, W, uv, w_sn, zero, eps=1e-12, write_back=True, rows_total=None):
    """As spectral_norm_multi_forward_numpy in two launches (spectral_norm_power_multi_v1: a
    block per layer; spectral_norm_forward_multi_v1: every W / sigma). table: a device int32
    array (uploaded once by the caller)."""
    op = "spectral_norm_multi_forward"
    layers = int(table.shape[0])
    Wc, uvc = _launch.arg(W, np.float32, f"{op}: W"), _launch.arg(uv, np.float32, f"{op}: uv")
    wsn, zc = _launch.arg(w_sn, np.float32, f"{op}: w_sn"), _launch.arg(zero, np.float32, f"{op}: zero")
    if wsn is not w_sn or zc is not zero or uvc is not uv:
        raise ValueError(f"{op}: uv, w_sn and zero are written in place: contiguous float32 arrays")
    tc = _launch.arg(table, np.int32, f"{op}: table")
    uv_out, sigma = _launch.empty(uvc.shape), _launch.empty((layers,))
    rows = _launch.empty((max(int(rows_total or uvc.size), 1),))
    _launch.function("spectral_norm", "spectral_norm_power_multi_v1")(
        (layers,), (POWER_BLOCK,), (uvc, uv_out, rows, sigma, Wc, tc, _launch.i32(layers), _launch.i32(write_back),
                                    _launch.f32(eps)))
    total = _launch.element_count(wsn.size, op)
    grid, block = _launch.grid_for(wsn.size, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
    _launch.function("spectral_norm", "spectral_norm_forward_multi_v1")(
        grid, block, (wsn, zc, Wc, sigma, tc, _launch.i32(layers), total))
    return uv_out, sigma


def spectral_norm_multi_backward_cuda(table, dW, dw_sn, W, uv_out, sigma):
    """As spectral_norm_multi_backward_numpy in two launches (spectral_norm_dot_multi_v1,
    spectral_norm_backward_multi_v1), added into dW in place."""
    op = "spectral_norm_multi_backward"
    layers = int(table.shape[0])
    dWc = _launch.arg(dW, np.float32, f"{op}: dW")
    if dWc is not dW:
        raise ValueError(f"{op}: dW is added into in place: a contiguous float32 array")
    gc = _launch.arg(dw_sn, np.float32, f"{op}: dw_sn")
    tc = _launch.arg(table, np.int32, f"{op}: table")
    Wc = _launch.arg(W, np.float32, f"{op}: W")
    gw = _launch.empty((layers,))
    _launch.function("spectral_norm", "spectral_norm_dot_multi_v1")(
        (layers,), (SINGLE_BLOCK,), (gw, gc, Wc, tc, _launch.i32(layers)))
    total = _launch.element_count(gc.size, op)
    grid, block = _launch.grid_for(gc.size, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
    _launch.function("spectral_norm", "spectral_norm_backward_multi_v1")(
        grid, block, (dWc, gc, _launch.arg(uv_out, np.float32, f"{op}: uv_out"), _launch.arg(sigma, np.float32),
                      gw, tc, _launch.i32(layers), total))
    return dW


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

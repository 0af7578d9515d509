"""Embedding: a row gather, and its gradient as a scatter-add, for the layer
cganraw.nn.Embedding.

    embedding_forward    _numpy, _cuda: kernels/embedding.cu embedding_forward_v1
    embedding_backward   _numpy, _cuda: kernels/embedding.cu embedding_backward_v1 (atomics),
                         embedding_backward_v2 (segmented by label, deterministic: the default)
    label_map_concat_forward, label_map_concat_backward   _numpy, _cuda: the conditional conv
                         models' label path fused (Embedding(K, E) -> Linear(E, M) -> the map
                         concatenated after x, with x's own bias and LeakyReLU):
                         out = [act(x + bx) | T[labels] + b], T = emb_w fc_w^T a (K, M) table.
                         Forward: label_map_concat_forward_v2, each table value computed
                         where it is used (v1: one K-row GEMM for T, then a launch); backward:
                         label_map_concat_backward_v1 and two GEMMs for the weights.
    scatter_add_rows     out[indices[n]] += src[n] (* scale[n]), n in order: np.add.at's
                         adds bit for bit, on the host with Numba (np.add.at's general path took
                         2 ms for D's projection gradient, 32 rows of 2352, in a 75 ms step)
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch
from cganraw.ops.gemm import gemm


def embedding_forward_numpy(indices, W):
    """indices (N,) int, W (K, D) -> y (N, D)."""
    return W[indices], (indices, W.shape)


def embedding_backward_numpy(dy, cache, out=None):
    """dy (N, D) -> dW (K, D); repeated indices add up. With out (K, D) the rows are added
    into it instead (a weight's .grad), and out is returned."""
    indices, w_shape = cache
    xp = backend.array_module(dy)
    dW = xp.zeros(w_shape, dtype=dy.dtype) if out is None else out
    xp.add.at(dW, indices, dy)
    return dW


@_cpu.kernel
def _scatter_add_rows_numba(nb, parallel):
    @nb.njit(cache=True)
    def scatter_add_rows(out, indices, src, scale):
        # out (K, D), indices (N,) in [0, K), src (N, D), scale (N,) or size 0 (none)
        scaled = scale.size > 0
        for n in range(src.shape[0]):
            row, s = out[indices[n]], src[n]
            if scaled:
                f = scale[n]
                for d in range(src.shape[1]):
                    row[d] += f * s[d]
            else:
                for d in range(src.shape[1]):
                    row[d] += s[d]
    return scatter_add_rows


def scatter_add_uses_numba(out, src):
    """Whether scatter_add_rows runs (host float arrays of one dtype, Numba on)."""
    return (_cpu.enabled() and _cpu.host_arrays(out, src) and out.dtype == src.dtype
            and out.dtype in (np.float32, np.float64) and out.ndim == 2 and src.ndim == 2)


def scatter_add_rows(out, indices, src, scale=None):
    """out (K, D) += rows of src (N, D) (times scale (N,) when given) at indices (N,), in row
    order: np.add.at(out, indices, src [* scale[:, None]])'s bits (scatter_add_uses_numba must
    hold). Indices outside [0, K) raise ValueError. Returns out."""
    idx = np.asarray(indices)
    k = out.shape[0]
    if idx.shape != (src.shape[0],) or src.shape[1] != out.shape[1]:
        raise ValueError(f"scatter_add_rows: indices {idx.shape} and src {tuple(src.shape)} do not match "
                         f"out {tuple(out.shape)}")
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        raise ValueError(f"scatter_add_rows: indices must lie in [0, {k}), got {int(idx.min())}..{int(idx.max())}")
    factors = np.empty(0, out.dtype) if scale is None else np.ascontiguousarray(scale, out.dtype).reshape(-1)
    _scatter_add_rows_numba(out, idx.astype(np.int64, copy=False), src, factors, work=src.size)
    return out


# ---------------------------------------------------------------- CUDA kernels (kernels/embedding.cu)
# Labels arrive as int64 (any integer dtype is taken). The launcher checks they lie in
# [0, K) on the host and hands the kernels int32 (_launch.labels_arg). The cache keeps
# the int32 labels. The backward's default, v2, gives the same bits every run.

VERSIONS = (1,)
BACKWARD_VERSIONS = (1, 2, 3)
_MAX_ROW_BLOCKS = 65535

def embedding_forward_cuda(indices, W, version=None):
    """As embedding_forward_numpy: indices (N,), W (K, D) -> y (N, D), cache."""
    op = "embedding_forward"
    version = _launch.pick_version(op, version, 1, VERSIONS)
    Wc = _launch.arg(W, np.float32, f"{op}: W")
    if Wc.ndim != 2:
        raise ValueError(f"{op}: W must have shape (K, D), got {tuple(Wc.shape)}")
    k, d = Wc.shape
    idx = _launch.labels_arg(indices, k, op)
    n = idx.shape[0]
    y = _launch.empty((n, d))
    _launch.element_count(n * d, op)
    if n * d:
        grid, block = _launch.grid_for(n * d)
        _launch.function("embedding", f"embedding_forward_v{version}")(
            grid, block, (y, idx, Wc, _launch.i32(n), _launch.i32(k), _launch.i32(d)))
    return y, (idx, W.shape)


def embedding_backward_cuda(dy, cache, version=None, out=None):
    """As embedding_backward_numpy: dy (N, D) -> dW (K, D), repeated labels adding up; with
    out (a contiguous float32 (K, D) array) dW is added into it: by v1's scatter-add itself
    (no zeroed array), after v2 by one add, or by v3's sums themselves (the default with out)."""
    op = "embedding_backward"
    version = _launch.pick_version(op, version, 3 if out is not None else 2, BACKWARD_VERSIONS)
    if version == 3 and out is None:
        raise ValueError(f"{op}: kernel version 3 adds into `out`: give one")
    indices, w_shape = cache
    k, d = (int(s) for s in w_shape)
    idx = _launch.cached_labels_arg(indices, k, op)
    n = idx.shape[0]
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    if tuple(dyc.shape) != (n, d):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, expected ({n}, {d})")
    _launch.element_count(n * d, op)
    if out is not None:
        out_arr = _launch.arg(out, np.float32, f"{op}: out")
        if out_arr is not out or tuple(out_arr.shape) != (k, d):
            raise ValueError(f"{op}: out must be a contiguous ({k}, {d}) array, added to in place")
    args = (idx, dyc, _launch.i32(n), _launch.i32(k), _launch.i32(d))
    if version == 2:
        dW = _launch.empty((k, d))                     # every element written
        if k * d:
            _launch.function("embedding", "embedding_backward_v2")(
                (min(k, _MAX_ROW_BLOCKS),), (_launch.warp_block(d),), (dW,) + args)
        return dW if out is None else _launch.add_into(out, dW)
    if version == 3:
        if k * d:
            _launch.function("embedding", "embedding_backward_v3")(
                (min(k, _MAX_ROW_BLOCKS),), (_launch.warp_block(d),), (out,) + args)
        return out
    dW = _launch.zeros((k, d)) if out is None else out      # v1 scatter-adds: straight into out
    if n * d:
        grid, block = _launch.grid_for(n * d)
        _launch.function("embedding", "embedding_backward_v1")(grid, block, (dW,) + args)
    return dW


# ---------------------------------------------------------------- the label path, fused

def label_map_concat_forward_numpy(x, labels, emb_w, fc_w, fc_b, x_bias=None, negative_slope=None):
    """x (N, L), labels (N,) in [0, K), emb_w (K, E), fc_w (M, E), fc_b (M,) -> out (N, L + M)
    = [act(x + x_bias) | emb_w[labels] fc_w^T + fc_b] (act: LeakyReLU(negative_slope), or
    none when None), the unfused layers' arithmetic. Returns out, cache."""
    xp = backend.array_module(x)
    h = x + x_bias if x_bias is not None else x
    if negative_slope is not None:
        h = xp.where(h > 0, h, h * h.dtype.type(negative_slope))
    lab = emb_w[labels] @ fc_w.T + fc_b
    out = xp.concatenate([h, lab], axis=1)
    return out, (out, labels, emb_w, fc_w, int(x.shape[1]), negative_slope, x_bias is not None)


def label_map_concat_backward_numpy(d, cache, need_dx=True, need_label=True):
    """d (N, L + M) -> (dx (N, L) or None, dx_bias (L,) or None (no x_bias), demb_w (K, E),
    dfc_w (M, E), dfc_b (M,)) (the last three None unless need_label): the gradients of the
    unfused layers, the table's rows scattered back by label."""
    out, labels, emb_w, fc_w, L, slope, has_bx = cache
    xp = backend.array_module(d)
    g = d[:, :L]
    if slope is not None:
        g = xp.where(out[:, :L] > 0, g, g * g.dtype.type(slope))
    dx_bias = g.sum(axis=0) if has_bx else None
    if not need_label:
        return (g if need_dx else None), dx_bias, None, None, None
    dlab = d[:, L:]
    dT = xp.zeros((emb_w.shape[0], dlab.shape[1]), d.dtype)
    xp.add.at(dT, labels, dlab)
    return (g if need_dx else None), dx_bias, dT @ fc_w, dT.T @ emb_w, dlab.sum(axis=0)


LABEL_ROWS_PER_SPLIT = 32      # rows a backward thread sums (the row splits: parallelism over N)
LABEL_MAX_SPLITS = 64
LABEL_BLOCK = 256


def _label_check(x, emb_w, fc_w, fc_b, x_bias, op):
    xc = _launch.arg(x, np.float32, f"{op}: x")
    ec = _launch.arg(emb_w, np.float32, f"{op}: emb_w")
    wc = _launch.arg(fc_w, np.float32, f"{op}: fc_w")
    bc = _launch.arg(fc_b, np.float32, f"{op}: fc_b")
    if xc.ndim != 2 or ec.ndim != 2 or wc.ndim != 2 or wc.shape[1] != ec.shape[1] or tuple(bc.shape) != (wc.shape[0],):
        raise ValueError(f"{op}: expected x (N, L), emb_w (K, E), fc_w (M, E), fc_b (M,), got {tuple(xc.shape)}, "
                         f"{tuple(ec.shape)}, {tuple(wc.shape)}, {tuple(bc.shape)}")
    bxc = None
    if x_bias is not None:
        bxc = _launch.arg(x_bias, np.float32, f"{op}: x_bias")
        if tuple(bxc.shape) != (xc.shape[1],):
            raise ValueError(f"{op}: x_bias has shape {tuple(bxc.shape)}, expected ({xc.shape[1]},)")
    return xc, ec, wc, bc, bxc


LABEL_FORWARD_VERSIONS = (1, 2, 3)
LABEL_FORWARD_DEFAULT = 3      # the table's dot products in the kernel: one launch; any layout
LABEL_BACKWARD_VERSIONS = (1, 2)


def label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, x_bias=None, negative_slope=None, version=None,
                                  channel_major_hw=0):
    """As label_map_concat_forward_numpy: label_map_concat_forward_v3 (the default) or v2
    writes out (N, L + M), each label value its own dot product; v1 makes the (K, M) table by
    one GEMM first. channel_major_hw = hw > 0 (v3): out comes back as (C, N, hw) memory, C =
    (L + M) / hw, each row's planes of hw values (G's seed map, channel-major: the next
    convolution's GEMM operand as it lies); L and M must be multiples of hw."""
    op = "label_map_concat_forward"
    version = _launch.pick_version(op, version, LABEL_FORWARD_DEFAULT, LABEL_FORWARD_VERSIONS)
    hw = int(channel_major_hw)
    if hw and version != 3:
        raise ValueError(f"{op}: channel_major_hw needs version 3, got version={version}")
    if negative_slope is not None and not negative_slope >= 0:
        raise ValueError(f"{op}: the backward reads the LeakyReLU mask from the output: negative_slope >= 0, "
                         f"got {negative_slope}")
    xc, ec, wc, bc, bxc = _label_check(x, emb_w, fc_w, fc_b, x_bias, op)
    k, m, (n, ln) = int(ec.shape[0]), int(wc.shape[0]), (int(s) for s in xc.shape)
    idx = _launch.labels_arg(labels, k, op)
    if idx.shape[0] != n:
        raise ValueError(f"{op}: {idx.shape[0]} labels for {n} rows of x")
    if hw < 0 or (hw and (ln % hw or m % hw)):
        raise ValueError(f"{op}: channel_major_hw must divide L = {ln} and M = {m}, got {hw}")
    out = _launch.empty(((ln + m) // hw, n, hw) if hw else (n, ln + m))
    _launch.element_count(out.size, op)
    tail = (_launch.f32(negative_slope or 0.0), _launch.i32(negative_slope is not None), _launch.i32(bxc is not None))
    bx_arg = bxc if bxc is not None else bc
    if version == 1:
        table = gemm(ec, wc, trans_b=True)                                  # (K, M)
        if out.size:
            grid, block = _launch.grid_for(out.size, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
            _launch.function("embedding", "label_map_concat_forward_v1")(
                grid, block, (out, xc, bx_arg, table, bc, idx, _launch.i32(n), _launch.i32(ln), _launch.i32(m),
                              _launch.i32(k), *tail))
    elif out.size:
        grid, block = _launch.grid_for(out.size, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("embedding", f"label_map_concat_forward_v{version}")(
            grid, block, (out, xc, bx_arg, ec, wc, bc, idx, _launch.i32(n), _launch.i32(ln), _launch.i32(m),
                          _launch.i32(k), _launch.i32(ec.shape[1]), *tail) + ((_launch.i32(hw),) if version == 3 else ()))
    return out, (out, idx, ec, wc, ln, negative_slope, bxc is not None) + ((hw,) if hw else ())


def _grad_out(out, shape, op, name):
    if out is None:
        return None
    oc = _launch.arg(out, np.float32, f"{op}: {name}")
    if oc is not out or tuple(oc.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must be a contiguous float32 array of shape {tuple(shape)}, added to in place")
    return oc


TABLE_GRADS_VERSIONS = (1, 2)
TABLE_GRADS_DEFAULT = 2        # label_table_grads_v1: one launch for both weight gradients


def label_map_concat_backward_cuda(d, cache, need_dx=True, need_label=True, dx_bias_out=None, demb_out=None,
                                   dfc_w_out=None, dfc_b_out=None, splits=None, table_grads=None):
    """As label_map_concat_backward_numpy, in one launch (label_map_concat_backward_v1, or v2
    for a channel-major forward) and, with need_label, the weights' gradients from dT:
    table_grads 2 (the default) in one more launch (label_table_grads_v1), 1 by two GEMMs.
    The *_out arrays (the parameters' .grad) are added into, and their gradient comes back
    None."""
    op = "label_map_concat_backward"
    table_grads = _launch.pick_version(op, table_grads, TABLE_GRADS_DEFAULT, TABLE_GRADS_VERSIONS)
    out, idx, ec, wc, ln, slope, has_bx = cache[:7]
    hw = cache[7] if len(cache) > 7 else 0        # a channel-major forward (v3's channel_major_hw)
    version = 2 if hw else 1
    n, row = (int(out.shape[1]), int(out.shape[0] * out.shape[2])) if hw else (int(s) for s in out.shape)
    k, m = int(ec.shape[0]), row - ln
    if hw:
        # d as (C, N, hw) memory: an (N, C, H, W) channel-major view taken as it lies, else a copy
        if not backend.is_array(d) or d.ndim != 4 or d.shape[0] != n or d.shape[1] * d.shape[2] * d.shape[3] != row \
                or d.shape[2] * d.shape[3] != hw:
            raise ValueError(f"{op}: d has shape {tuple(getattr(d, 'shape', ()))}, the forward's map "
                             f"({n}, {row // hw}, h, w) with h*w = {hw}")
        dc = _launch.arg(d.transpose(1, 0, 2, 3), np.float32, f"{op}: d").reshape(row // hw, n, hw)
    else:
        dc = _launch.arg(d, np.float32, f"{op}: d")
        if tuple(dc.shape) != (n, row):
            raise ValueError(f"{op}: d has shape {tuple(dc.shape)}, the forward's output {(n, row)}")
    dbx_o = _grad_out(dx_bias_out, (ln,), op, "dx_bias_out") if has_bx else None
    db_o = _grad_out(dfc_b_out, (m,), op, "dfc_b_out") if need_label else None
    demb_o = _grad_out(demb_out, tuple(ec.shape), op, "demb_out") if need_label else None
    dw_o = _grad_out(dfc_w_out, tuple(wc.shape), op, "dfc_w_out") if need_label else None
    accumulate = dbx_o is not None or db_o is not None
    dbx = (dbx_o if dbx_o is not None else (_launch.zeros((ln,)) if accumulate else _launch.empty((ln,)))) \
        if has_bx else None
    db = (db_o if db_o is not None else (_launch.zeros((m,)) if accumulate else _launch.empty((m,)))) \
        if need_label else None
    dx = _launch.empty((n, ln)) if need_dx else None
    dT = _launch.empty((k, m)) if need_label else None
    if n and row:
        s = int(splits) if splits is not None else min(LABEL_MAX_SPLITS, -(-n // LABEL_ROWS_PER_SPLIT))
        s = max(1, min(s, n))
        partials = _launch.empty((s, row))
        partials_t = _launch.empty((s, k, m)) if need_label else partials
        dummy = partials
        grid = (max(1, min(-(-row // LABEL_BLOCK), _launch.MAX_ROW_BLOCKS)), s)
        _launch.function("embedding", f"label_map_concat_backward_v{version}")(
            grid, (LABEL_BLOCK,),
            (dx if dx is not None else dummy, dbx if dbx is not None else dummy, dT if dT is not None else dummy,
             db if db is not None else dummy, partials, partials_t, _launch.grid_counter(), dc, out, idx,
             _launch.i32(n), _launch.i32(ln), _launch.i32(m), _launch.i32(k), _launch.f32(slope or 0.0),
             _launch.i32(slope is not None), _launch.i32(need_dx), _launch.i32(has_bx), _launch.i32(need_label),
             _launch.i32(accumulate), _launch.i32(s)) + ((_launch.i32(hw),) if hw else ()))
    elif need_label:
        dT.fill(0)
    demb = dfc_w = None
    if need_label and table_grads == 1:
        demb = gemm(dT, wc, beta=1.0, out=demb_o) if demb_o is not None else gemm(dT, wc)
        dfc_w = gemm(dT, ec, trans_a=True, beta=1.0, out=dw_o) if dw_o is not None else gemm(dT, ec, trans_a=True)
    elif need_label:
        demb = demb_o if demb_o is not None else _launch.empty(tuple(ec.shape))
        dfc_w = dw_o if dw_o is not None else _launch.empty(tuple(wc.shape))
        e = int(ec.shape[1])
        total = (k + m) * e
        if total:
            grid, block = _launch.grid_for(total, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
            _launch.function("embedding", "label_table_grads_v1")(
                grid, block, (demb, dfc_w, dT, ec, wc, _launch.i32(k), _launch.i32(m), _launch.i32(e),
                              _launch.i32(demb_o is not None), _launch.i32(dw_o is not None)))
    return (dx, None if dbx_o is not None else dbx, None if demb_o is not None else demb,
            None if dw_o is not None else dfc_w, None if db_o is not None else db)


# ---------------------------------------------------------------- public ops: dispatch

def label_map_concat_forward(x, labels, emb_w, fc_w, fc_b, x_bias=None, negative_slope=None, channel_major_hw=0):
    """-> out (N, L + M), cache (see label_map_concat_forward_numpy); on the kernel backends
    with channel_major_hw > 0, out as (C, N, hw) memory (label_map_concat_forward_cuda)."""
    if backend.uses_kernels():
        return label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, x_bias, negative_slope,
                                             channel_major_hw=channel_major_hw)
    return label_map_concat_forward_numpy(x, labels, emb_w, fc_w, fc_b, x_bias, negative_slope)


def embedding_forward(indices, W):
    if backend.uses_kernels():
        return embedding_forward_cuda(indices, W)
    return embedding_forward_numpy(indices, W)


def embedding_backward(dy, cache, out=None):
    """dW (K, D), or with out: out += dW, returned."""
    if backend.uses_kernels():
        return embedding_backward_cuda(dy, cache, out=out)
    if scatter_add_uses_numba(dy if out is None else out, dy):
        indices, w_shape = cache
        return scatter_add_rows(np.zeros(w_shape, dtype=dy.dtype) if out is None else out, indices, dy)
    return embedding_backward_numpy(dy, cache, out)


def label_map_concat_backward(d, cache, need_dx=True, need_label=True, **grad_outs):
    """-> dx, dx_bias, demb_w, dfc_w, dfc_b; on the kernel backends the *_out arrays of
    label_map_concat_backward_cuda are added into (and their gradient is None)."""
    if backend.uses_kernels():
        return label_map_concat_backward_cuda(d, cache, need_dx, need_label, **grad_outs)
    grads = label_map_concat_backward_numpy(d, cache, need_dx, need_label)
    names = ("dx_bias_out", "demb_out", "dfc_w_out", "dfc_b_out")
    res = list(grads)
    for i, name in enumerate(names, start=1):
        if grad_outs.get(name) is not None and res[i] is not None:
            grad_outs[name] += res[i]
            res[i] = None
    return tuple(res)

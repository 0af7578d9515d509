"""The projection discriminator's label term (Miyato & Koyama 2018, "cGANs with Projection
Discriminator"): out[n] = <E[y[n]], h[n]>, h (N, F) the features D's last Linear reads and
E (K, F) a label embedding; D's logit is Linear(h) + out. For cganraw.nn.LabelProjection.

    label_projection_forward    _numpy, _cuda: kernels/label_projection.cu label_projection_forward_v1
    label_projection_backward   _numpy, _cuda: label_projection_backward_v1 (a deterministic
                                per-class pass: the default), _v2 (atomics)

Both directions can add into an existing array instead of returning a new one: the
forward into the Linear's output (out=), the backward's dh into the Linear's dx (dh_out=)
and dE into the weight's .grad (dE_out=); on the kernel backends that is the same launch.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch
from cganraw.ops.embedding import scatter_add_rows, scatter_add_uses_numba


def label_projection_forward_numpy(h, labels, E, out=None):
    """h (N, F), labels (N,) in [0, K), E (K, F) -> y (N, 1) = sum_f E[labels] * h; with
    out (N, 1) y is added into it and out returned. Returns y, cache (h, labels, E)."""
    y = (E[labels] * h).sum(axis=1, keepdims=True)
    if out is not None:
        out += y
        y = out
    return y, (h, labels, E)


def label_projection_backward_numpy(dy, cache, need_dh=True, need_dE=True, dh_out=None, dE_out=None):
    """dy (N, 1) -> dh (N, F) = dy E[labels], dE (K, F): dE[k] = sum over rows with label k
    of dy[n] h[n] (np.add.at: in row order, the same bits every run). Either is None when
    not needed; with dh_out / dE_out it is added into that array, which is returned."""
    h, labels, E = cache
    xp = backend.array_module(dy)
    dh = dE = None
    if need_dh:
        dh = dy * E[labels]
        if dh_out is not None:
            dh_out += dh
            dh = dh_out
    if need_dE:
        dE = xp.zeros(E.shape, dtype=dy.dtype) if dE_out is None else dE_out
        xp.add.at(dE, labels, dy * h)
    return dh, dE


# ---------------------------------------------------------------- CUDA kernels (kernels/label_projection.cu)

BACKWARD_VERSIONS = (1, 2)
FORWARD_BLOCK = 256


def _check(h, E, op):
    hc, ec = _launch.arg(h, np.float32, f"{op}: h"), _launch.arg(E, np.float32, f"{op}: E")
    if hc.ndim != 2 or ec.ndim != 2 or hc.shape[1] != ec.shape[1]:
        raise ValueError(f"{op}: expected h (N, F) and E (K, F), got {tuple(hc.shape)} and {tuple(ec.shape)}")
    return hc, ec


def _into(a, shape, op, name):
    # an array added into in place: contiguous float32 of the exact shape
    ac = _launch.arg(a, np.float32, f"{op}: {name}")
    if ac is not a or tuple(ac.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must be a contiguous float32 array of shape {tuple(shape)}, "
                         "added to in place")
    return ac


def label_projection_forward_cuda(h, labels, E, out=None):
    """As label_projection_forward_numpy: label_projection_forward_v1, one launch."""
    op = "label_projection_forward"
    hc, ec = _check(h, E, op)
    n, f = (int(v) for v in hc.shape)
    k = int(ec.shape[0])
    idx = _launch.labels_arg(labels, k, op)
    if idx.shape[0] != n:
        raise ValueError(f"{op}: {idx.shape[0]} labels for {n} rows of h")
    _launch.element_count(max(hc.size, ec.size), op)
    y = _into(out, (n, 1), op, "out") if out is not None else _launch.empty((n, 1))
    if n:
        _launch.function("label_projection", "label_projection_forward_v1")(
            (min(n, _launch.MAX_ROW_BLOCKS),), (_launch.warp_block(f, FORWARD_BLOCK),),
            (y, hc, ec, idx, _launch.i32(n), _launch.i32(f), _launch.i32(k), _launch.i32(out is not None)))
    return y, (hc, idx, ec)


def label_projection_backward_cuda(dy, cache, need_dh=True, need_dE=True, dh_out=None, dE_out=None, version=None):
    """As label_projection_backward_numpy, in one launch: v1 (the default) a thread per (k, f)
    summing its class's rows in order (the same bits every run), v2 a thread per (n, f) and
    atomicAdd into dE (zeroed first unless dE_out)."""
    op = "label_projection_backward"
    version = _launch.pick_version(op, version, 1, BACKWARD_VERSIONS)
    h, labels, E = cache
    hc, ec = _check(h, E, op)
    n, f = (int(v) for v in hc.shape)
    k = int(ec.shape[0])
    idx = _launch.cached_labels_arg(labels, k, op)
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    if tuple(dyc.shape) != (n, 1) or idx.shape[0] != n:
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, expected ({n}, 1) ({idx.shape[0]} labels)")
    _launch.element_count(max(hc.size, ec.size), op)
    dh = dE = None
    if need_dh:
        dh = _into(dh_out, (n, f), op, "dh_out") if dh_out is not None else _launch.empty((n, f))
    if need_dE:
        if dE_out is not None:
            dE = _into(dE_out, (k, f), op, "dE_out")
        else:
            dE = _launch.zeros((k, f)) if version == 2 else _launch.empty((k, f))
    if not (need_dh or need_dE):
        return None, None
    dummy = dyc
    flags = (_launch.i32(need_dh), _launch.i32(need_dE), _launch.i32(dh_out is not None))
    args = (dh if dh is not None else dummy, dE if dE is not None else dummy, dyc, hc, ec, idx,
            _launch.i32(n), _launch.i32(f), _launch.i32(k))
    if version == 1:
        if k * f:
            grid, block = _launch.grid_for(k * f, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
            _launch.function("label_projection", "label_projection_backward_v1")(
                grid, block, args + flags + (_launch.i32(dE_out is not None),))
    elif n * f:
        grid, block = _launch.grid_for(n * f, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("label_projection", "label_projection_backward_v2")(grid, block, args + flags)
    return dh, dE


# ---------------------------------------------------------------- public ops: dispatch

def label_projection_forward(h, labels, E, out=None):
    """h (N, F), labels (N,), E (K, F) -> (y (N, 1), cache); with out, y is added into it."""
    if backend.uses_kernels():
        return label_projection_forward_cuda(h, labels, E, out)
    return label_projection_forward_numpy(h, labels, E, out)


def label_projection_backward(dy, cache, need_dh=True, need_dE=True, dh_out=None, dE_out=None):
    """dy (N, 1) -> dh (N, F), dE (K, F), each None when not needed, or added into dh_out /
    dE_out when given (and then that array)."""
    if backend.uses_kernels():
        return label_projection_backward_cuda(dy, cache, need_dh, need_dE, dh_out, dE_out)
    h, labels, E = cache
    if need_dE and scatter_add_uses_numba(E, h) and dy.dtype == h.dtype and (dE_out is None or dE_out.dtype == h.dtype):
        # dE by the Numba scatter-add (np.add.at's bits), dh by the reference
        dh, _ = label_projection_backward_numpy(dy, cache, need_dh, False, dh_out)
        dE = np.zeros(E.shape, dtype=dy.dtype) if dE_out is None else dE_out
        return dh, scatter_add_rows(dE, labels, h, scale=dy)
    return label_projection_backward_numpy(dy, cache, need_dh, need_dE, dh_out, dE_out)

"""Embedding: a row gather, and its gradient as a scatter-add, for the layer
cganraw.nn.Embedding.

    embedding_forward    _numpy, _cuda: kernels/embedding.cu embedding_forward_v1
    embedding_backward   _numpy, _cuda: kernels/embedding.cu embedding_backward_v1 (atomics),
                         embedding_backward_v2 (segmented by label, deterministic: the default)
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


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


# ---------------------------------------------------------------- public ops: dispatch

def embedding_forward(indices, W):
    if backend.uses_kernels():
        return embedding_forward_cuda(indices, W)
    return embedding_forward_numpy(indices, W)


def embedding_backward(dy, cache, out=None):
    """dW (K, D), or with out: out += dW, returned."""
    if backend.uses_kernels():
        return embedding_backward_cuda(dy, cache, out=out)
    return embedding_backward_numpy(dy, cache, out)

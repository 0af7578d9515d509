"""Embedding: a row gather, and its gradient as a scatter-add."""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch
from cganraw.ops.activation import element_count


def embedding_forward_numpy(indices, W):
    """indices (N,) int, W (K, D) -> y (N, D)."""
    return W[indices], (indices, W.shape)


def embedding_backward_numpy(dy, cache):
    """dy (N, D) -> dW (K, D); repeated indices add up."""
    indices, w_shape = cache
    xp = backend.array_module(dy)
    dW = xp.zeros(w_shape, dtype=dy.dtype)
    xp.add.at(dW, indices, dy)
    return dW


# ---------------------------------------------------------------- CUDA kernels (kernels/embedding.cu)
# Labels arrive as int64 (any integer dtype is taken). The launcher checks they lie in
# [0, K) on the host (unlike NumPy indexing, a negative label is an error, not a row from
# the end) and hands the kernels int32: a batch of labels is tiny, so the copy is free,
# and the kernels index with int anyway. The cache keeps the int32 labels.

def _labels(indices, k, op):
    if not backend.is_array(indices):
        raise TypeError(f"{op}: indices must be an integer array, got {type(indices).__name__}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"{op}: indices must have shape (N,), got {tuple(indices.shape)}")
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"{op}: indices must lie in [0, {k}), got values from {lo} to {hi}")
    return _launch.arg(indices.astype(np.int32, copy=False), np.int32, f"{op}: indices")


def embedding_forward_kernel(indices, W):
    """As embedding_forward_numpy: indices (N,), W (K, D) -> y (N, D), cache."""
    op = "embedding_forward"
    Wc = _launch.arg(W, np.float32, f"{op}: W")
    if Wc.ndim != 2:
        raise ValueError(f"{op}: W must have shape (K, D), got {tuple(Wc.shape)}")
    k, d = Wc.shape
    idx = _labels(indices, k, op)
    n = idx.shape[0]
    y = _launch.empty((n, d))
    element_count(n * d, op)
    if n * d:
        grid, block = _launch.grid_for(n * d)
        _launch.function("embedding", "embedding_forward_kernel1")(
            grid, block, (y, idx, Wc, _launch.i32(n), _launch.i32(k), _launch.i32(d)))
    return y, (idx, W.shape)


def embedding_backward_kernel(dy, cache):
    """As embedding_backward_numpy: dy (N, D) -> dW (K, D), repeated labels adding up."""
    op = "embedding_backward"
    indices, w_shape = cache
    k, d = (int(s) for s in w_shape)
    if indices.dtype == np.int32:
        # the forward's own int32 labels, already range-checked: no second host sync
        # (and were one out of range, the kernel would drop it, never write out of bounds)
        idx = _launch.arg(indices, np.int32, f"{op}: indices")
    else:
        idx = _labels(indices, k, op)
    n = idx.shape[0]
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    if tuple(dyc.shape) != (n, d):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, expected ({n}, {d})")
    element_count(n * d, op)
    dW = _launch.zeros((k, d))
    if n * d:
        grid, block = _launch.grid_for(n * d)
        _launch.function("embedding", "embedding_backward_kernel1")(
            grid, block, (dW, idx, dyc, _launch.i32(n), _launch.i32(k), _launch.i32(d)))
    return dW


# ---------------------------------------------------------------- public ops: dispatch

def embedding_forward(indices, W):
    if backend.uses_kernels():
        return embedding_forward_kernel(indices, W)
    return embedding_forward_numpy(indices, W)


def embedding_backward(dy, cache):
    if backend.uses_kernels():
        return embedding_backward_kernel(dy, cache)
    return embedding_backward_numpy(dy, cache)

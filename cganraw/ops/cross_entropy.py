"""Softmax cross-entropy on logits, mean-reduced over the batch, and the softmax
helpers, all in the log-sum-exp form
    log_softmax(z)_k = z_k - m - log(sum_j exp(z_j - m)),   m = max_j z_j
which only exponentiates non-positive numbers, so logits of +-1e4 stay finite.
The loss function is cganraw.losses.softmax_cross_entropy.

    softmax_cross_entropy_forward    _numpy, _cuda: kernels/cross_entropy.cu
                                     softmax_cross_entropy_forward_v1 + _forward_reduce_v1
    softmax_cross_entropy_backward   _numpy, _cuda: softmax_cross_entropy_backward_v1
The helpers `softmax` and `log_softmax` (the classifier's float64 probabilities) run on
the reference path only, with whatever array module their input lives on.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


def log_softmax_numpy(logits):
    """(N, K) -> (N, K) log-probabilities along the last axis."""
    xp = backend.array_module(logits)
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def softmax_numpy(logits):
    """(N, K) -> (N, K) probabilities along the last axis (rows sum to 1)."""
    xp = backend.array_module(logits)
    e = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_cross_entropy_forward_numpy(logits, labels):
    """logits (N, K) float, labels (N,) int in [0, K) -> (mean loss 0-d, cache)."""
    xp = backend.array_module(logits)
    logp = log_softmax_numpy(logits)
    n = logits.shape[0]
    loss = -logp[xp.arange(n), labels].mean()
    return loss, (logp, labels)


def softmax_cross_entropy_backward_numpy(dloss, cache):
    # d/dz mean_n(-log p_n[y_n]) = (softmax(z) - onehot(y)) / N
    logp, labels = cache
    xp = backend.array_module(logp)
    n = logp.shape[0]
    dz = xp.exp(logp)
    dz[xp.arange(n), labels] -= 1
    dz *= logp.dtype.type(dloss / n)
    return dz


# ---------------------------------------------------------------- CUDA kernels (kernels/cross_entropy.cu)
# The cache is the reference's structure, (logp (N, K), labels), with the labels as int32:
# either backward consumes either forward's cache.

VERSIONS = (1,)
REDUCE_BLOCK = 256   # threads of the single block that averages the row losses


def softmax_cross_entropy_forward_cuda(logits, labels, version=None):
    """As softmax_cross_entropy_forward_numpy: logits (N, K) float32, labels (N,) integers
    in [0, K) -> (mean loss as a 0-d float32 array, cache (logp, int32 labels))."""
    op = "softmax_cross_entropy_forward"
    version = _launch.pick_version(op, version, 1, VERSIONS)
    zc = _launch.arg(logits, np.float32, f"{op}: logits")
    if zc.ndim != 2 or zc.shape[0] == 0 or zc.shape[1] == 0:
        raise ValueError(f"{op}: logits must have shape (N, K) with N, K >= 1, got {tuple(zc.shape)}")
    n, k = (int(v) for v in zc.shape)
    yc = _launch.labels_arg(labels, k, op)
    if yc.shape[0] != n:
        raise ValueError(f"{op}: labels have shape {tuple(yc.shape)}, expected ({n},)")
    _launch.element_count(n * k, op)
    logp, losses, loss = _launch.empty((n, k)), _launch.empty((n,)), _launch.empty((1,))
    grid, block = _launch.grid_for(n)
    _launch.function("cross_entropy", f"softmax_cross_entropy_forward_v{version}")(
        grid, block, (logp, losses, zc, yc, _launch.i32(n), _launch.i32(k)))
    _launch.function("cross_entropy", f"softmax_cross_entropy_forward_reduce_v{version}")(
        (1,), (REDUCE_BLOCK,), (loss, losses, _launch.i32(n)))
    return loss.reshape(()), (logp, yc)


def softmax_cross_entropy_backward_cuda(dloss, cache, version=None):
    """As softmax_cross_entropy_backward_numpy: dlogits (N, K) = (softmax - onehot) * dloss / N."""
    op = "softmax_cross_entropy_backward"
    version = _launch.pick_version(op, version, 1, VERSIONS)
    logp, labels = cache
    lc = _launch.arg(logp, np.float32, f"{op}: logp")
    if lc.ndim != 2:
        raise ValueError(f"{op}: logp must have shape (N, K), got {tuple(lc.shape)}")
    n, k = (int(v) for v in lc.shape)
    yc = _launch.cached_labels_arg(labels, k, op)
    if tuple(yc.shape) != (n,):
        raise ValueError(f"{op}: labels have shape {tuple(yc.shape)}, expected ({n},)")
    _launch.element_count(n * k, op)
    dz = _launch.empty((n, k))
    if n * k:
        grid, block = _launch.grid_for(n * k)
        # float(): dloss may be a Python number, a NumPy scalar or a 0-d array of either backend
        _launch.function("cross_entropy", f"softmax_cross_entropy_backward_v{version}")(
            grid, block, (dz, lc, yc, _launch.f32(float(dloss) / max(n, 1)), _launch.i32(n), _launch.i32(k)))
    return dz


# ---------------------------------------------------------------- public ops: dispatch

def log_softmax(logits):
    return log_softmax_numpy(logits)


def softmax(logits):
    return softmax_numpy(logits)


def softmax_cross_entropy_forward(logits, labels):
    """logits (N, K), labels (N,) -> (loss 0-d array, cache)."""
    if backend.uses_kernels():
        return softmax_cross_entropy_forward_cuda(logits, labels)
    return softmax_cross_entropy_forward_numpy(logits, labels)


def softmax_cross_entropy_backward(dloss, cache):
    """-> dlogits (N, K), the gradient of dloss * mean loss."""
    if backend.uses_kernels():
        return softmax_cross_entropy_backward_cuda(dloss, cache)
    return softmax_cross_entropy_backward_numpy(dloss, cache)

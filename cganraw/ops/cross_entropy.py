"""Softmax cross-entropy on logits, mean-reduced over the batch, and the softmax
helpers, all in the log-sum-exp form
    log_softmax(z)_k = z_k - m - log(sum_j exp(z_j - m)),   m = max_j z_j
which only exponentiates non-positive numbers, so logits of +-1e4 stay finite.
"""
from __future__ import annotations

from cganraw import backend


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


def log_softmax(logits):
    return log_softmax_numpy(logits)


def softmax(logits):
    return softmax_numpy(logits)


def softmax_cross_entropy_forward(logits, labels):
    """logits (N, K), labels (N,) -> (loss 0-d array, cache)."""
    return softmax_cross_entropy_forward_numpy(logits, labels)


def softmax_cross_entropy_backward(dloss, cache):
    """-> dlogits (N, K), the gradient of dloss * mean loss."""
    return softmax_cross_entropy_backward_numpy(dloss, cache)

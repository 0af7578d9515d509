"""Embedding: a row gather, and its gradient as a scatter-add."""
from __future__ import annotations

from cganraw import backend


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


def embedding_forward(indices, W):
    return embedding_forward_numpy(indices, W)


def embedding_backward(dy, cache):
    return embedding_backward_numpy(dy, cache)

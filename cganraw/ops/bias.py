"""Bias add and bias gradient over the channel axis 1 of (N, C) or (N, C, H, W)."""
from __future__ import annotations


def _channel_view(b, ndim):
    # (C,) -> (1, C) or (1, C, 1, 1), broadcastable against (N, C[, H, W])
    return b.reshape((1, -1) + (1,) * (ndim - 2))


def bias_add_numpy(y, b):
    y += _channel_view(b, y.ndim)
    return y


def bias_grad_numpy(dy):
    # db[c] = sum over batch and pixels of dy[:, c]
    if dy.ndim == 2:
        return dy.sum(axis=0)
    n, c = dy.shape[:2]
    return dy.reshape(n, c, -1).sum(axis=(0, 2))


def bias_add(y, b):
    """In place: y (N, C[, H, W]) += b (C,) along axis 1. Returns y."""
    return bias_add_numpy(y, b)


def bias_grad(dy):
    """dy (N, C[, H, W]) -> db (C,)."""
    return bias_grad_numpy(dy)

"""Inverted dropout: y = x * keep / (1 - p). The caller draws the keep mask, so the
op stays a pure function and a fixed mask makes it deterministic."""
from __future__ import annotations


def _scale(p, dtype):
    return dtype.type(1.0 / (1.0 - p))


def dropout_forward_numpy(x, keep, p):
    """x (any shape), keep (same shape, bool or uint8) -> y."""
    y = x * keep
    y *= _scale(p, x.dtype)
    return y, (keep, p)


def dropout_backward_numpy(dy, cache):
    keep, p = cache
    dx = dy * keep
    dx *= _scale(p, dy.dtype)
    return dx


def dropout_forward(x, keep, p):
    return dropout_forward_numpy(x, keep, p)


def dropout_backward(dy, cache):
    return dropout_backward_numpy(dy, cache)

"""Binary cross-entropy on logits, mean-reduced, in the stable form
    l(x, t) = max(x, 0) - x t + log1p(exp(-|x|))
which never exponentiates a positive number, so logits of +-1e4 stay finite.
Targets may be soft (label smoothing)."""
from __future__ import annotations

from cganraw import backend
from cganraw.ops.activation import sigmoid_numpy


def bce_with_logits_forward_numpy(logits, targets):
    xp = backend.array_module(logits)
    x, t = logits, targets
    per_item = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
    return per_item.mean(), (x, t)


def bce_with_logits_backward_numpy(dloss, cache):
    # d/dx mean(l) = (sigmoid(x) - t) / N
    x, t = cache
    return (sigmoid_numpy(x) - t) * x.dtype.type(dloss / x.size)


def bce_with_logits_forward(logits, targets):
    """logits, targets (same shape) -> (loss 0-d array, cache)."""
    return bce_with_logits_forward_numpy(logits, targets)


def bce_with_logits_backward(dloss, cache):
    return bce_with_logits_backward_numpy(dloss, cache)

"""Losses as (loss, dlogits) pairs: the value and the gradient of the mean loss."""
from __future__ import annotations

from cganraw import backend
from cganraw.ops.bce import bce_with_logits_backward, bce_with_logits_forward


def bce_with_logits(logits, targets):
    """Mean binary cross-entropy of logits against (possibly soft) targets in [0, 1].

    logits: floating array (N, ...); targets: scalar or array broadcastable to it.
    Returns (loss as a Python float, dlogits with the shape of logits).
    """
    if not backend.is_array(logits) or logits.dtype.kind != "f":
        raise TypeError(f"bce_with_logits: logits must be a floating-point array, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    xp = backend.array_module(logits)
    t = xp.asarray(targets, dtype=logits.dtype)
    if t.shape != logits.shape:
        try:
            t = xp.broadcast_to(t, logits.shape)
        except ValueError:
            raise ValueError(f"bce_with_logits: targets of shape {tuple(t.shape)} do not match logits of "
                             f"shape {tuple(logits.shape)}") from None
    if logits.size == 0:
        raise ValueError("bce_with_logits: empty logits")
    loss, cache = bce_with_logits_forward(logits, t)
    return float(loss), bce_with_logits_backward(1.0, cache)

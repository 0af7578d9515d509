"""Losses as (loss, dlogits) pairs: the value and the gradient of the mean loss.

Ops: bce_with_logits (cganraw.ops.bce), softmax_cross_entropy (cganraw.ops.cross_entropy)."""
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


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy of logits (N, K) against integer labels (N,) in [0, K),
    as torch.nn.functional.cross_entropy. Returns (loss as a Python float, dlogits (N, K))."""
    from cganraw.ops.cross_entropy import softmax_cross_entropy_backward, softmax_cross_entropy_forward
    if not backend.is_array(logits) or logits.dtype.kind != "f":
        raise TypeError(f"softmax_cross_entropy: logits must be a floating-point array (N, K), got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"softmax_cross_entropy: expected logits of shape (N, K) with N, K >= 1, "
                         f"got shape {tuple(logits.shape)}")
    n, k = logits.shape
    if not backend.is_array(labels) or labels.dtype.kind not in "iu":
        raise TypeError(f"softmax_cross_entropy: labels must be an integer array ({n},), got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (n,):
        raise ValueError(f"softmax_cross_entropy: expected labels of shape ({n},) for logits of shape "
                         f"{tuple(logits.shape)}, got shape {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {k}), got values from {lo} to {hi}")
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    return float(loss), softmax_cross_entropy_backward(1.0, cache)


def mode_seeking(images, z, eps=1e-5):
    """The mode-seeking term of MSGAN (Mao et al. 2019), which keeps a conditional G from
    drawing one image per label whatever its noise: the first and second halves of the
    batch share their labels, and G is rewarded for making their images differ as much
    as their noise does.

        ratio = mean |x_a - x_b| / mean |z_a - z_b|,   loss = 1 / (ratio + eps)

    images (2M, ...) and z (2M, L): row i pairs with row M + i. Returns (loss as a Python
    float, dimages with the shape of images); z is noise, so it gets no gradient.
    """
    for name, a in (("images", images), ("z", z)):
        if not backend.is_array(a) or a.dtype.kind != "f":
            raise TypeError(f"mode_seeking: {name} must be a floating-point array, got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
    n = images.shape[0]
    if n < 2 or n % 2 or z.shape[0] != n:
        raise ValueError(f"mode_seeking: need an even batch of at least 2 images with one noise row "
                         f"each, got images {tuple(images.shape)} and z {tuple(z.shape)}")
    xp = backend.array_module(images)
    m = n // 2
    diff = images[:m] - images[m:]                      # (M, ...)
    z_dist = float(xp.abs(z[:m] - z[m:]).mean())
    ratio = float(xp.abs(diff).mean()) / z_dist
    loss = 1.0 / (ratio + eps)
    # d loss / d x_a = -loss^2 / z_dist * sign(x_a - x_b) / diff.size, and its negative for x_b
    d_a = xp.sign(diff) * images.dtype.type(-loss * loss / (z_dist * diff.size))
    return loss, xp.concatenate([d_a, -d_a])

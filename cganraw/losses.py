"""Losses as (loss, dlogits) pairs: the value and the gradient of the mean loss.

The GAN losses stay on the device: bce_with_logits and mode_seeking return the loss as a
0-d array of the logits' backend, never a Python float, so a training step does not wait
for the GPU (float(loss) reads it when needed; cganraw.step gathers a step's losses into one
vector that the trainer reads every --log-every steps).

Ops: bce_with_logits (cganraw.ops.bce), softmax_cross_entropy (cganraw.ops.cross_entropy)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from cganraw import backend
from cganraw.ops.bce import bce_with_logits_backward, bce_with_logits_forward, bce_with_logits_segments_cuda

_TARGETS_KEPT = 16
ONE_LAUNCH_MAX = 1 << 16     # logits up to this many: a constant-target loss in one launch (one block)
_targets: OrderedDict = OrderedDict()   # (backend, shape, dtype, value) -> a constant target array


def _constant_targets(value, shape, dtype, xp):
    """A target array filled with `value`, made once per shape and kept: a scalar target
    costs no upload and no fill at later steps. Callers never write into it."""
    key = (backend.current(), id(xp), tuple(shape), np.dtype(dtype).str, float(value))
    t = _targets.get(key)
    if t is None:
        t = np.full(shape, value, dtype=dtype)
        if xp is not np or backend.current() != "numpy":
            t = backend.to_device(t)
        _targets[key] = t
        while len(_targets) > _TARGETS_KEPT:
            _targets.popitem(last=False)
    else:
        _targets.move_to_end(key)
    return t


def bce_with_logits(logits, targets, weight=1.0, out=None):
    """Mean binary cross-entropy of logits against (possibly soft) targets in [0, 1].

    logits: floating array (N, ...); targets: a number, or an array broadcastable to it.
    Returns (loss as a 0-d array on the logits' backend, d(weight * loss)/dlogits with the
    shape of logits, written into `out` when given): `weight` scales the gradient only.
    """
    if not backend.is_array(logits) or logits.dtype.kind != "f":
        raise TypeError(f"bce_with_logits: logits must be a floating-point array, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.size == 0:
        raise ValueError("bce_with_logits: empty logits")
    xp = backend.array_module(logits)
    scalar = isinstance(targets, (int, float, np.floating, np.integer))
    if scalar and backend.uses_kernels() and logits.dtype == np.float32 and logits.size <= ONE_LAUNCH_MAX:
        # a constant target: the loss and the gradient in one launch (one segment)
        losses, dx = bce_with_logits_segments_cuda(logits, (float(targets),), (float(weight),), out=out)
        return losses.reshape(()), dx
    if scalar:
        t = _constant_targets(targets, logits.shape, logits.dtype, xp)
    else:
        t = xp.asarray(targets, dtype=logits.dtype)
        if t.shape != logits.shape:
            try:
                t = xp.broadcast_to(t, logits.shape)
            except ValueError:
                raise ValueError(f"bce_with_logits: targets of shape {tuple(t.shape)} do not match logits of "
                                 f"shape {tuple(logits.shape)}") from None
    loss, cache = bce_with_logits_forward(logits, t)
    return xp.asarray(loss), bce_with_logits_backward(float(weight), cache, out=out)


def bce_with_logits_segments(logits, terms, out=None):
    """Several BCE terms on one logits array at once: logits (parts * n, ...) split along axis
    0 into parts = len(terms) equal segments, segment s scored against the constant target
    terms[s][0], its gradient weighted by terms[s][1] (D's [real | wrong | fake] batch).
    Returns (the losses, a list of 0-d arrays on the logits' backend; dlogits, written into
    `out` when given): on the kernel backends one launch for all terms; on NumPy, per segment,
    bit for bit bce_with_logits(segment, target, weight)."""
    if not backend.is_array(logits) or logits.dtype.kind != "f":
        raise TypeError(f"bce_with_logits_segments: logits must be a floating-point array, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    targets, weights = [float(t) for t, _ in terms], [float(w) for _, w in terms]
    if backend.uses_kernels():
        losses, dx = bce_with_logits_segments_cuda(logits, targets, weights, out=out)
        return [losses[s:s + 1].reshape(()) for s in range(len(terms))], dx
    xp = backend.array_module(logits)
    dx = out if out is not None else xp.empty_like(logits)
    parts = len(terms)
    if parts < 1 or logits.ndim < 1 or logits.shape[0] % parts or logits.size == 0:
        raise ValueError(f"bce_with_logits_segments: logits of shape {tuple(logits.shape)} do not split into "
                         f"{parts} equal, non-empty segments along axis 0")
    n = logits.shape[0] // parts
    losses = [bce_with_logits(logits[s * n:(s + 1) * n], t, weight=w, out=dx[s * n:(s + 1) * n])[0]
              for s, (t, w) in enumerate(zip(targets, weights))]
    return losses, dx


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

    images (2M, ...) and z (2M, L): row i pairs with row M + i. Returns (loss as a 0-d
    float32 array on the images' backend, dimages with the shape of images); z is noise, so
    it gets no gradient. Op: mode_seeking (cganraw.ops.mode_seeking).
    """
    from cganraw.ops.mode_seeking import mode_seeking_backward, mode_seeking_forward
    for name, a in (("images", images), ("z", z)):
        if not backend.is_array(a) or a.dtype.kind != "f":
            raise TypeError(f"mode_seeking: {name} must be a floating-point array, got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
    n = images.shape[0]
    if n < 2 or n % 2 or z.shape[0] != n:
        raise ValueError(f"mode_seeking: need an even batch of at least 2 images with one noise row "
                         f"each, got images {tuple(images.shape)} and z {tuple(z.shape)}")
    loss, cache = mode_seeking_forward(images, z, eps)
    return loss, mode_seeking_backward(cache)

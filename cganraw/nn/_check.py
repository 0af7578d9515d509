"""Input validation for layers: clear errors naming the layer, expected and given."""
from __future__ import annotations

from cganraw import backend


def _describe(x):
    return f"shape {tuple(x.shape)} dtype {x.dtype}"


def check_float_input(layer, x, ndim, channels=None, expected=None, dtype=None):
    """x must be a floating array with `ndim` axes and `channels` on axis 1
    (or `expected` features on the last axis), of the layer's parameter dtype."""
    name = type(layer).__name__
    if not backend.is_array(x):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got {_describe(x)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} differs from the layer's parameters ({dtype}); "
                        "cast the input or call module.to(dtype)")
    want = expected_shape(ndim, channels)
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected input of shape {want}, got {_describe(x)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected input of shape {want}, got {_describe(x)}")


def expected_shape(ndim, channels):
    c = str(channels) if channels is not None else "C"
    return {2: f"(N, {c})", 3: f"(N, {c}, L)", 4: f"(N, {c}, H, W)"}.get(ndim, f"{ndim}-D")


def check_index_input(layer, idx, num_embeddings):
    """idx must be an integer array (N,) with values in [0, num_embeddings)."""
    name = type(layer).__name__
    if not backend.is_array(idx):
        raise TypeError(f"{name}: expected an integer array of labels, got {type(idx).__name__}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer labels, got {_describe(idx)}")
    if idx.ndim != 1:
        raise ValueError(f"{name}: expected labels of shape (N,), got {_describe(idx)}")
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= num_embeddings:
            raise ValueError(f"{name}: labels must lie in [0, {num_embeddings}), got values from {lo} to {hi}")


def check_same_shape(layer, dy, shape, what="gradient"):
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"{type(layer).__name__}.backward: {what} has shape {tuple(dy.shape)}, "
                         f"expected {tuple(shape)}")

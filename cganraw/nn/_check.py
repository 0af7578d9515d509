"""Input validation for layers: clear errors naming the layer, expected and given."""
from __future__ import annotations

from cganraw import backend
from cganraw.ops import _launch


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
    """idx must be an integer array (N,) with values in [0, num_embeddings). The range check
    is skipped for labels already known to be in range (checked on the host before their
    upload, or drawn in range on the device: cganraw.ops._launch.mark_labels_checked); for
    other device arrays it reads back their min and max, a sync, so the training step never
    passes such labels."""
    name = type(layer).__name__
    if not backend.is_array(idx):
        raise TypeError(f"{name}: expected an integer array of labels, got {type(idx).__name__}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer labels, got {_describe(idx)}")
    if idx.ndim != 1:
        raise ValueError(f"{name}: expected labels of shape (N,), got {_describe(idx)}")
    _launch.check_labels_range(idx, num_embeddings, f"{name}: labels")


def accumulates_in_place(param, dy):
    """Whether a GEMM may add a weight gradient straight into param.grad (beta = 1): the
    parameter trains, and its .grad is a contiguous array of dy's dtype and backend."""
    g = param.grad
    return (param.requires_grad and g is not None and g.dtype == dy.dtype and g.flags.c_contiguous
            and backend.array_module(g) is backend.array_module(dy))


def check_same_shape(layer, dy, shape, what="gradient"):
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"{type(layer).__name__}.backward: {what} has shape {tuple(dy.shape)}, "
                         f"expected {tuple(shape)}")

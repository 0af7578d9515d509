"""Inverted dropout: y = x * keep / (1 - p), for the layer cganraw.nn.Dropout. The op stays a
pure function of its arguments: `keep` is either a mask array the caller drew, or a
cganraw.ops.philox.Stream that names the mask (element e kept iff its Philox word passes
the threshold of p), drawn inside the kernel on a GPU and by philox.keep_mask_numpy here,
identical on every backend. The stream form needs no mask in memory: its backward draws the
same words again.

    dropout_forward    _numpy, _cuda: kernels/dropout.cu dropout_forward_v1/v2 (a mask array),
                       dropout_forward_v3 (a stream)
    dropout_backward   _numpy, _cuda: kernels/dropout.cu dropout_backward_v1/v2, _v3
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch, _workspace
from cganraw.ops.philox import Stream, keep_mask_numpy, keep_threshold


def _scale(p, dtype):
    return dtype.type(1.0 / (1.0 - p))


def dropout_forward_numpy(x, keep, p):
    """x (any shape), keep (same shape, bool or uint8; or a philox.Stream) -> y."""
    if isinstance(keep, Stream):
        keep = keep_mask_numpy(x.shape, p, keep)
    y = _times_mask(x, keep)
    y *= _scale(p, x.dtype)
    return y, (keep, p)


def dropout_backward_numpy(dy, cache):
    keep, p = cache
    dx = _times_mask(dy, keep)
    dx *= _scale(p, dy.dtype)
    return dx


def _times_mask(a, keep):
    # a * keep, into a reused host buffer where both are host arrays of one shape
    if type(a) is np.ndarray and type(keep) is np.ndarray and a.shape == keep.shape:
        return np.multiply(a, keep, out=_workspace.empty(a.shape, np.result_type(a, keep)))
    return a * keep


# ---------------------------------------------------------------- CUDA kernels (kernels/dropout.cu)
# The mask stays the caller's (drawn on the CPU by the layer's NumPy generator and uploaded),
# so every backend drops the same elements. It goes to the kernel as bytes: a bool mask is
# reinterpreted as uint8 without a copy, a uint8 mask is taken as is.

def _stream_launch(op, a, stream, p, version):
    ac = _launch.arg(a, np.float32, f"{op}: {'x' if op.endswith('forward') else 'dy'}")
    _launch.pick_version(op, version, 3, (3,))
    out = _launch.empty(ac.shape)
    n = _launch.element_count(ac.size, op)
    if ac.size:
        grid, block = _launch.grid_for(-(-ac.size // 4), max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("dropout", f"{op}_v3")(
            grid, block, (out, ac, _launch.u32(keep_threshold(p)), _launch.f32(_scale(p, np.dtype(np.float32))), n)
            + stream.kernel_args()[:5])
    return out


def _mask_bytes(keep, shape, op):
    if not backend.is_array(keep):
        raise TypeError(f"{op}: keep must be an array, got {type(keep).__name__}")
    if keep.dtype == np.bool_:
        keep = keep.view(np.uint8)
    elif keep.dtype != np.uint8:
        raise TypeError(f"{op}: the kernels take a bool or uint8 keep mask, got {keep.dtype}")
    if tuple(keep.shape) != tuple(shape):
        raise ValueError(f"{op}: keep has shape {tuple(keep.shape)}, expected {tuple(shape)}")
    return _launch.arg(keep, np.uint8, f"{op}: keep")


def _dropout_launch(op, a, keep, p, version):
    ac = _launch.arg(a, np.float32, f"{op}: {'x' if op.endswith('forward') else 'dy'}")
    kc = _mask_bytes(keep, ac.shape, op)
    out = _launch.empty(ac.shape)
    _launch.elementwise_launch("dropout", op, _launch.pick_version(op, version, 2), ac.size,
                               (out, ac, kc, _launch.f32(_scale(p, np.dtype(np.float32))),
                                _launch.element_count(ac.size, op)))
    return out, kc


def dropout_forward_cuda(x, keep, p, version=None):
    """As dropout_forward_numpy. With a mask array the cache holds it as contiguous uint8
    (version None is 2: grid-stride, float4); with a philox.Stream, version 3, it holds the
    stream."""
    if isinstance(keep, Stream):
        return _stream_launch("dropout_forward", x, keep, p, version), (keep, p)
    y, kc = _dropout_launch("dropout_forward", x, keep, p, version)
    return y, (kc, p)


def dropout_backward_cuda(dy, cache, version=None):
    keep, p = cache
    if isinstance(keep, Stream):
        return _stream_launch("dropout_backward", dy, keep, p, version)
    dx, _ = _dropout_launch("dropout_backward", dy, keep, p, version)
    return dx


# ---------------------------------------------------------------- public ops: dispatch

def dropout_forward(x, keep, p):
    if backend.uses_kernels():
        return dropout_forward_cuda(x, keep, p)
    return dropout_forward_numpy(x, keep, p)


def dropout_backward(dy, cache):
    if backend.uses_kernels():
        return dropout_backward_cuda(dy, cache)
    return dropout_backward_numpy(dy, cache)

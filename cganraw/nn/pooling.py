"""AvgPool2d and Upsample (nearest), the resampling layers of progressive growing:
D average-pools real images down a size, G upsamples its smaller output up one.

Ops: avgpool2d_forward, avgpool2d_backward (cganraw.ops.avgpool); upsample_nearest2d_forward,
upsample_nearest2d_backward (cganraw.ops.upsample)."""
from __future__ import annotations

import numbers

import numpy as np

from cganraw.nn._check import check_float_input, check_same_shape
from cganraw.nn.module import Module
from cganraw.ops.avgpool import avgpool2d_backward, avgpool2d_forward, avgpool_output_size
from cganraw.ops.upsample import upsample_nearest2d_backward, upsample_nearest2d_forward


def _positive_int(layer, what, v):
    # int or a square pair, as torch accepts; square windows only
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"{layer}: {what} must be an int or a square pair, got {v!r}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{layer}: {what} must be an int, got {type(v).__name__}")
    if v <= 0:
        raise ValueError(f"{layer}: {what} must be positive, got {v}")
    return int(v)


class AvgPool2d(Module):
    """torch.nn.AvgPool2d(kernel_size, stride=None) with padding 0 and floor output size:
    the mean of each window (every window lies inside the input, so count_include_pad and
    divisor_override do not arise)."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _positive_int("AvgPool2d", "kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _positive_int("AvgPool2d", "stride", stride)

    def forward(self, x):
        check_float_input(self, x, 4)
        h, w = x.shape[2:]
        if min(h, w) < self.kernel_size:
            raise ValueError(f"AvgPool2d: input of shape {tuple(x.shape)} has spatial size {h}x{w}, "
                             f"smaller than the kernel ({self.kernel_size})")
        y, cache = avgpool2d_forward(x, self.kernel_size, self.stride)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, y_shape = self._pop_cache()
        check_same_shape(self, dy, y_shape)
        return avgpool2d_backward(dy, cache)

    def output_size(self, size):
        return avgpool_output_size(size, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Upsample(Module):
    """torch.nn.Upsample(scale_factor=s, mode="nearest") for a positive integer s:
    (N, C, H, W) -> (N, C, H*s, W*s), each pixel repeated as an s x s block."""

    def __init__(self, size=None, scale_factor=None, mode="nearest"):
        super().__init__()
        if size is not None:
            raise ValueError("Upsample: only scale_factor is supported, not size")
        if mode != "nearest":
            raise ValueError(f"Upsample: only mode='nearest' is supported, got {mode!r}")
        if isinstance(scale_factor, (tuple, list)):
            if len(scale_factor) != 2 or scale_factor[0] != scale_factor[1]:
                raise ValueError(f"Upsample: scale_factor must be a number or a square pair, got {scale_factor!r}")
            scale_factor = scale_factor[0]
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, numbers.Real) \
                or scale_factor != int(scale_factor) or scale_factor < 1:
            raise ValueError(f"Upsample: scale_factor must be a positive integer, got {scale_factor!r}")
        self.scale_factor = int(scale_factor)
        self.mode = mode

    def forward(self, x):
        check_float_input(self, x, 4)
        y, cache = upsample_nearest2d_forward(x, self.scale_factor)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, y_shape = self._pop_cache()
        check_same_shape(self, dy, y_shape)
        return upsample_nearest2d_backward(dy, cache)

    def extra_repr(self):
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"

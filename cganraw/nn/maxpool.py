"""MaxPool2d(kernel_size, stride=None) as torch.nn.MaxPool2d with padding 0, dilation 1
and floor output size; the backward routes each gradient to its window's argmax.

Ops: maxpool2d_forward, maxpool2d_backward (cganraw.ops.maxpool)."""
from __future__ import annotations

import numpy as np

from cganraw.nn._check import check_float_input, check_same_shape
from cganraw.nn.module import Module
from cganraw.ops.maxpool import maxpool2d_backward, maxpool2d_forward, maxpool_output_size


def _positive_int(what, v):
    # int or a square pair, as PyTorch accepts; square windows only
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"MaxPool2d: {what} must be an int or a square pair, got {v!r}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"MaxPool2d: {what} must be an int, got {type(v).__name__}")
    if v <= 0:
        raise ValueError(f"MaxPool2d: {what} must be positive, got {v}")
    return int(v)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _positive_int("stride", stride)

    def forward(self, x):
        check_float_input(self, x, 4)
        h, w = x.shape[2:]
        if min(h, w) < self.kernel_size:
            raise ValueError(f"MaxPool2d: input of shape {tuple(x.shape)} has spatial size {h}x{w}, "
                             f"smaller than the kernel ({self.kernel_size})")
        y, cache = maxpool2d_forward(x, self.kernel_size, self.stride)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, y_shape = self._pop_cache()
        check_same_shape(self, dy, y_shape)
        return maxpool2d_backward(dy, cache)

    def output_size(self, size):
        return maxpool_output_size(size, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

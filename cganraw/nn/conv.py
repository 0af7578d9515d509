"""Conv2d and ConvTranspose2d in torch.nn's layouts:
    Conv2d.weight          (out_channels, in_channels, k, k)
    ConvTranspose2d.weight (in_channels, out_channels, k, k)

Ops (cganraw.ops.conv): conv2d_forward/_backward and conv_transpose2d_forward/_backward,
built from im2col, col2im, gemm and bias_add (no convolution kernel of their own).
"""
from __future__ import annotations

import numpy as np

from cganraw.nn import init
from cganraw.nn._check import accumulates_in_place, check_float_input, check_same_shape
from cganraw.nn.module import Module, Parameter
from cganraw.ops.conv import (
    conv2d_backward,
    conv2d_forward,
    conv_output_size,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
)


def _square(name, what, v):
    # PyTorch accepts int or (a, b); we support square kernels/strides/paddings only
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"{name}: {what} must be an int or a square pair, got {v!r}")
        v = v[0]
    if not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: {what} must be an int, got {type(v).__name__}")
    return int(v)


class _ConvBase(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, bias, w_shape, rng, dtype):
        super().__init__()
        name = type(self).__name__
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _square(name, "kernel_size", kernel_size)
        self.stride = _square(name, "stride", stride)
        self.padding = _square(name, "padding", padding)
        if min(self.in_channels, self.out_channels, self.kernel_size, self.stride) <= 0 or self.padding < 0:
            raise ValueError(f"{name}: channels, kernel_size and stride must be positive and padding >= 0")
        self.weight = Parameter(init.normal(w_shape(self.kernel_size), rng=rng, dtype=dtype))
        self.bias = Parameter(init.zeros((self.out_channels,), dtype)) if bias else None

    def _check(self, x):
        check_float_input(self, x, 4, channels=self.in_channels, dtype=self.weight.dtype)

    def _dW_out(self, dy):
        """The weight's .grad for the GEMM to add into (beta = 1), or None."""
        return self.weight.grad if accumulates_in_place(self.weight, dy) else None

    def _db_out(self, dy):
        """The bias's .grad for the bias reduction to add into, or None."""
        return self.bias.grad if self.bias is not None and accumulates_in_place(self.bias, dy) else None

    def _accumulate(self, dW, db):
        self.weight.accumulate(dW)
        if self.bias is not None:
            self.bias.accumulate(db)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Conv2d(_ConvBase):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 *, rng=None, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias,
                         lambda k: (int(out_channels), int(in_channels), k, k), rng, dtype)

    def forward(self, x):
        self._check(x)
        h, w = x.shape[2:]
        if conv_output_size(h, self.kernel_size, self.stride, self.padding) <= 0 or \
                conv_output_size(w, self.kernel_size, self.stride, self.padding) <= 0:
            raise ValueError(f"Conv2d: input of spatial size {h}x{w} is smaller than the kernel "
                             f"({self.kernel_size}) with padding {self.padding}")
        y, cache = conv2d_forward(x, self.weight.data, self.bias.data if self.bias else None,
                                  self.stride, self.padding)
        self._save((cache, y.shape))
        return y

    def backward(self, dy, need_dx=True):
        """dy (N, O, Ho, Wo) -> dx (N, C, H, W), or None with need_dx=False (its GEMM and
        col2im skipped)."""
        cache, y_shape = self._pop_cache()
        check_same_shape(self, dy, y_shape)
        dx, dW, db = conv2d_backward(dy, cache, need_dx=need_dx, need_dW=self.weight.requires_grad,
                                     dW_out=self._dW_out(dy), db_out=self._db_out(dy))
        self._accumulate(dW, db)
        return dx


class ConvTranspose2d(_ConvBase):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 bias=True, *, rng=None, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias,
                         lambda k: (int(in_channels), int(out_channels), k, k), rng, dtype)
        self.output_padding = _square("ConvTranspose2d", "output_padding", output_padding)
        if not 0 <= self.output_padding < max(self.stride, 1):
            raise ValueError(f"ConvTranspose2d: output_padding must be in [0, stride), got {output_padding}")

    def forward(self, x):
        self._check(x)
        y, cache = conv_transpose2d_forward(x, self.weight.data, self.bias.data if self.bias else None,
                                            self.stride, self.padding, self.output_padding)
        if min(y.shape[2:]) <= 0:
            raise ValueError(f"ConvTranspose2d: output size {tuple(y.shape[2:])} is not positive")
        self._save((cache, y.shape))
        return y

    def backward(self, dy, need_dx=True):
        """dy (N, Cout, Ho, Wo) -> dx (N, Cin, H, W), or None with need_dx=False."""
        cache, y_shape = self._pop_cache()
        check_same_shape(self, dy, y_shape)
        dx, dW, db = conv_transpose2d_backward(dy, cache, need_dx=need_dx, need_dW=self.weight.requires_grad,
                                               dW_out=self._dW_out(dy), db_out=self._db_out(dy))
        self._accumulate(dW, db)
        return dx

    def extra_repr(self):
        return super().extra_repr() + (f", output_padding={self.output_padding}" if self.output_padding else "")

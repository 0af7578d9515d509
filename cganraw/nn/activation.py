"""Activation layers: LeakyReLU, ReLU, Tanh, Sigmoid (no parameters).

Ops (cganraw.ops.activation): leaky_relu, relu, tanh, sigmoid, each as <op>_forward and
<op>_backward."""
from __future__ import annotations

from cganraw import backend
from cganraw.nn._check import check_same_shape
from cganraw.nn.module import Module
from cganraw.ops import activation as A


class _Elementwise(Module):
    """Shared protocol: forward_op(x) -> (y, cache), backward_op(dy, cache) -> dx."""

    def _forward_op(self, x):
        raise NotImplementedError

    def _backward_op(self, dy, cache):
        raise NotImplementedError

    def forward(self, x):
        if not backend.is_array(x) or x.dtype.kind != "f":
            raise TypeError(f"{type(self).__name__}: expected a floating-point array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        y, cache = self._forward_op(x)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        return self._backward_op(dy, cache)


class LeakyReLU(_Elementwise):
    def __init__(self, negative_slope=0.2):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _forward_op(self, x):
        return A.leaky_relu_forward(x, self.negative_slope)

    def _backward_op(self, dy, cache):
        return A.leaky_relu_backward(dy, cache)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ReLU(_Elementwise):
    def _forward_op(self, x):
        return A.relu_forward(x)

    def _backward_op(self, dy, cache):
        return A.relu_backward(dy, cache)


class Tanh(_Elementwise):
    def _forward_op(self, x):
        return A.tanh_forward(x)

    def _backward_op(self, dy, cache):
        return A.tanh_backward(dy, cache)


class Sigmoid(_Elementwise):
    def _forward_op(self, x):
        return A.sigmoid_forward(x)

    def _backward_op(self, dy, cache):
        return A.sigmoid_backward(dy, cache)

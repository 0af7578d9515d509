"""Linear: y = x W^T + b, weight (out_features, in_features) as in torch.nn.Linear.

Ops: linear_forward, linear_backward (cganraw.ops.linear), which are gemm + bias_add:
Linear has no kernel of its own."""
from __future__ import annotations

import numpy as np

from cganraw.nn import init
from cganraw.nn._check import accumulates_in_place, check_float_input, check_same_shape
from cganraw.nn.module import Module, Parameter
from cganraw.ops.linear import linear_backward, linear_forward


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features <= 0 or self.out_features <= 0:
            raise ValueError(f"Linear: sizes must be positive, got ({in_features}, {out_features})")
        self.weight = Parameter(init.normal((self.out_features, self.in_features), rng=rng, dtype=dtype))
        self.bias = Parameter(init.zeros((self.out_features,), dtype)) if bias else None

    def forward(self, x):
        check_float_input(self, x, 2, dtype=self.weight.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear: expected input of shape (N, {self.in_features}), "
                             f"got shape {tuple(x.shape)}")
        y, cache = linear_forward(x, self.weight.data, self.bias.data if self.bias else None)
        self._save((cache, y.shape))
        return y

    def backward(self, dy, need_dx=True):
        """dy (N, out) -> dx (N, in), or None with need_dx=False (then its GEMM is skipped)."""
        cache, y_shape = self._pop_cache()
        check_same_shape(self, dy, y_shape)
        dx, dW, db = linear_backward(dy, cache, need_dx=need_dx, need_dW=self.weight.requires_grad,
                                     dW_out=self.weight.grad if accumulates_in_place(self.weight, dy) else None,
                                     db_out=self.bias.grad if self.bias is not None
                                     and accumulates_in_place(self.bias, dy) else None)
        self.weight.accumulate(dW)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

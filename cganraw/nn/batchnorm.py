"""BatchNorm1d (N, C) and BatchNorm2d (N, C, H, W), with PyTorch's defaults
(eps 1e-5, momentum 0.1), parameter names and buffers
(running_mean, running_var, num_batches_tracked).

Ops: batchnorm_forward, batchnorm_backward, batchnorm_running_update (cganraw.ops.batchnorm)."""
from __future__ import annotations

import numpy as np

from cganraw.nn import init
from cganraw.nn._check import check_float_input, check_same_shape
from cganraw.nn.module import Module, Parameter
from cganraw.ops.batchnorm import batchnorm_backward, batchnorm_forward, batchnorm_running_update


class _BatchNorm(Module):
    ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, rng=None, dtype=np.float32):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, got {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1], got {momentum} "
                             "(eps is the second positional argument's neighbour: pass eps= by name)")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        c = self.num_features
        self.weight = Parameter(init.normal((c,), mean=1.0, rng=rng, dtype=dtype))
        self.bias = Parameter(init.zeros((c,), dtype))
        if not affine:
            self.weight.data.fill(1)
            self.weight.requires_grad = self.bias.requires_grad = False
        self.register_buffer("running_mean", init.zeros((c,), dtype))
        self.register_buffer("running_var", init.ones((c,), dtype))
        # a counter only the host reads: kept on the host, so counting costs no launch
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))

    def forward(self, x):
        check_float_input(self, x, self.ndim, channels=self.num_features, dtype=self.weight.dtype)
        if self.training:
            count = x.size // self.num_features
            if count < 2:
                raise ValueError(f"{type(self).__name__}: training needs more than one value per channel, "
                                 f"got input of shape {tuple(x.shape)}")
            y, cache, mean, var_unbiased = batchnorm_forward(x, self.weight.data, self.bias.data, eps=self.eps)
            batchnorm_running_update(self.running_mean, self.running_var, mean, var_unbiased, self.momentum)
            self.num_batches_tracked += 1
        else:
            y, cache, _, _ = batchnorm_forward(x, self.weight.data, self.bias.data,
                                               self.running_mean, self.running_var, self.eps)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        dx, dgamma, dbeta = batchnorm_backward(dy, cache)
        self.weight.accumulate(dgamma)
        self.bias.accumulate(dbeta)
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    ndim = 2


class BatchNorm2d(_BatchNorm):
    ndim = 4

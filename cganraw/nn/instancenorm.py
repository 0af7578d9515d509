"""InstanceNorm2d as torch.nn.InstanceNorm2d, for every combination of its flags:

- affine: a per-channel weight and bias (parameters `weight`, `bias`); without it the layer
  has no parameters, as in torch.
- track_running_stats: buffers running_mean, running_var, num_batches_tracked (which
  InstanceNorm never increments, as in torch). Training updates them from the planes'
  statistics (torch's average over the instances); eval then normalises with them.
- Input statistics are used in training, and in eval when no running statistics are
  tracked. momentum=None leaves the running statistics where they are (torch passes 0).

Input (N, C, H, W) only. With input statistics a plane needs more than one pixel.

Ops: instancenorm_forward, instancenorm_backward, instancenorm_running_update
(cganraw.ops.instancenorm; eval with running statistics is batchnorm's eval path).
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.nn import init
from cganraw.nn._check import check_float_input, check_same_shape
from cganraw.nn.module import Module, Parameter
from cganraw.ops.instancenorm import instancenorm_backward, instancenorm_forward, instancenorm_running_update


class InstanceNorm2d(Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 *, rng=None, dtype=np.float32):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features <= 0:
            raise ValueError(f"InstanceNorm2d: num_features must be a positive int, got {num_features!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"InstanceNorm2d: momentum must be in [0, 1] or None, got {momentum} "
                             "(eps is the second positional argument's neighbour: pass eps= by name)")
        if not eps > 0:
            raise ValueError(f"InstanceNorm2d: eps must be positive, got {eps}")
        self.num_features, self.eps = int(num_features), float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        c = self.num_features
        if self.affine:
            # DCGAN's N(1, 0.02), as this package's BatchNorm (torch starts the weight at 1)
            self.weight = Parameter(init.normal((c,), mean=1.0, rng=rng, dtype=dtype))
            self.bias = Parameter(init.zeros((c,), dtype))
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", init.zeros((c,), dtype))
            self.register_buffer("running_var", init.ones((c,), dtype))
            self.register_buffer("num_batches_tracked", backend.get_xp().zeros((), dtype=np.int64))

    def _affine_arrays(self, x):
        if self.affine:
            return self.weight.data, self.bias.data
        xp = backend.array_module(x)
        return xp.ones((self.num_features,), x.dtype), xp.zeros((self.num_features,), x.dtype)

    def forward(self, x):
        dtype = self.weight.dtype if self.affine else (self.running_mean.dtype if self.track_running_stats else None)
        check_float_input(self, x, 4, channels=self.num_features, dtype=dtype)
        gamma, beta = self._affine_arrays(x)
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats:
            hw = x.shape[2] * x.shape[3]
            if hw <= 1:
                raise ValueError(f"InstanceNorm2d: expected more than 1 spatial element when using the input's "
                                 f"statistics, got input of shape {tuple(x.shape)}")
            y, cache, mean, var = instancenorm_forward(x, gamma, beta, eps=self.eps)
            if self.training and self.track_running_stats and self.momentum is not None:
                instancenorm_running_update(self.running_mean, self.running_var, mean, var, self.momentum, hw)
        else:
            y, cache, _, _ = instancenorm_forward(x, gamma, beta, self.running_mean, self.running_var, self.eps)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        dx, dgamma, dbeta = instancenorm_backward(dy, cache)
        if self.affine:
            self.weight.accumulate(dgamma)
            self.bias.accumulate(dbeta)
        return dx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

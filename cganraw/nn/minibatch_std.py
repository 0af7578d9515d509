"""MinibatchStdDev: ProGAN's minibatch standard deviation layer (Karras et al. 2018).

(N, C, H, W) -> (N, C + 1, H, W): the extra channel holds, for each sample's group, the
standard deviation over the group of every feature, averaged over the features. It lets D
see how varied a batch is, against mode collapse. Groups and an N the group size does not
divide: see cganraw.ops.minibatch_std (the largest divisor of N not above group_size).

Ops: minibatch_std_forward, minibatch_std_backward (cganraw.ops.minibatch_std).
"""
from __future__ import annotations

import contextlib

import numpy as np

from cganraw.nn._check import check_float_input, check_same_shape
from cganraw.nn.module import Module
from cganraw.ops.minibatch_std import effective_group_size, minibatch_std_backward, minibatch_std_forward


class MinibatchStdDev(Module):
    def __init__(self, group_size=4, eps=1e-8):
        super().__init__()
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size <= 0:
            raise ValueError(f"MinibatchStdDev: group_size must be a positive int, got {group_size!r}")
        if not eps > 0:
            raise ValueError(f"MinibatchStdDev: eps must be positive, got {eps}")
        self.group_size, self.eps = int(group_size), float(eps)
        self.segments = 1

    def group_for(self, n):
        """The group size a batch of n samples uses (a segment of n, when segmented)."""
        return effective_group_size(n // self.segments, self.group_size)

    def forward(self, x):
        check_float_input(self, x, 4)
        if x.shape[0] == 0:
            raise ValueError("MinibatchStdDev: the batch is empty")
        y, cache = minibatch_std_forward(x, self.group_size, self.eps, self.segments)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        return minibatch_std_backward(dy, cache)

    def extra_repr(self):
        return f"group_size={self.group_size}"


@contextlib.contextmanager
def segmented(module, segments):
    """Every MinibatchStdDev in `module` treats its batch as `segments` equal segments
    inside the block (each forward's cache keeps the count for its backward)."""
    layers = [m for _, m in module.named_modules() if isinstance(m, MinibatchStdDev)]
    before = [m.segments for m in layers]
    for m in layers:
        m.segments = int(segments)
    try:
        yield
    finally:
        for m, s in zip(layers, before):
            m.segments = s

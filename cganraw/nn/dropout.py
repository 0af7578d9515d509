"""Inverted dropout, its mask drawn from the layer's own seeded generator.

Ops: dropout_forward, dropout_backward (cganraw.ops.dropout)."""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.nn._check import check_same_shape
from cganraw.nn.module import Module
from cganraw.ops.dropout import dropout_backward, dropout_forward


class Dropout(Module):
    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        # the mask is drawn on the CPU from a NumPy generator so runs are reproducible
        # and resumable on every backend; its state goes into checkpoints
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def forward(self, x):
        if not backend.is_array(x) or x.dtype.kind != "f":
            raise TypeError(f"Dropout: expected a floating-point array, got {getattr(x, 'dtype', type(x).__name__)}")
        if not self.training or self.p == 0.0:
            self._save((None, x.shape))
            return x
        keep = backend.array_module(x).asarray(self.rng.random(x.shape) >= self.p)
        y, cache = dropout_forward(x, keep, self.p)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        return dy if cache is None else dropout_backward(dy, cache)

    def extra_repr(self):
        return f"p={self.p}"

"""Embedding: rows of weight (num_embeddings, embedding_dim) picked by integer labels.

Ops: embedding_forward, embedding_backward (cganraw.ops.embedding)."""
from __future__ import annotations

import numpy as np

from cganraw.nn import init
from cganraw.nn._check import accumulates_in_place, check_index_input, check_same_shape
from cganraw.nn.module import Module, Parameter
from cganraw.ops.embedding import embedding_backward, embedding_forward


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, *, rng=None, dtype=np.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if self.num_embeddings <= 0 or self.embedding_dim <= 0:
            raise ValueError(f"Embedding: sizes must be positive, got ({num_embeddings}, {embedding_dim})")
        self.weight = Parameter(init.normal((self.num_embeddings, self.embedding_dim), rng=rng, dtype=dtype))

    def forward(self, labels):
        # the range check is free for labels checked before upload or drawn on the device
        check_index_input(self, labels, self.num_embeddings)
        y, cache = embedding_forward(labels, self.weight.data)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        """Accumulates the weight gradient; labels have no gradient, so returns None."""
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        if accumulates_in_place(self.weight, dy):
            embedding_backward(dy, cache, out=self.weight.grad)     # scatter-added in place
        elif self.weight.requires_grad:
            self.weight.accumulate(embedding_backward(dy, cache))
        return None

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"

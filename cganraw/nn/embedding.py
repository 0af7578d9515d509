"""Embedding: rows of weight (num_embeddings, embedding_dim) picked by integer labels.
LabelProjection: an Embedding whose row for each label is dotted with a feature vector (the
projection discriminator's label term).

Ops: embedding_forward, embedding_backward (cganraw.ops.embedding); label_projection_forward,
label_projection_backward (cganraw.ops.label_projection)."""
from __future__ import annotations

import numpy as np

from cganraw.nn import init
from cganraw.nn._check import accumulates_in_place, check_float_input, check_index_input, check_same_shape
from cganraw.nn.module import Module, Parameter
from cganraw.ops.embedding import embedding_backward, embedding_forward
from cganraw.ops.label_projection import label_projection_backward, label_projection_forward


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


class LabelProjection(Embedding):
    """The projection discriminator's label term (Miyato & Koyama 2018): forward(h, labels)
    -> (N, 1), row n = <weight[labels[n]], h[n]>, with h (N, features) the features D's last
    Linear reads. As torch: nn.Embedding(num_classes, features) E and (E(y) * h).sum(1,
    keepdim=True); the state dict holds `weight` alone, and spectral_norm applies (it reads
    self.weight.data and accumulates into self.weight, as Embedding does).

    forward(h, labels, out=None): with out (N, 1) (the Linear's output) the term is added
    into it, in the same launch on the kernel backends, and out is returned.
    backward(dy) -> dh (N, features); the weight's gradient is added into weight.grad
    (skipped when frozen: D during G's step)."""

    def forward(self, h, labels, out=None):
        check_float_input(self, h, 2, dtype=self.weight.dtype)
        if h.shape[1] != self.embedding_dim:
            raise ValueError(f"LabelProjection: expected h of shape (N, {self.embedding_dim}), "
                             f"got shape {tuple(h.shape)}")
        check_index_input(self, labels, self.num_embeddings)
        if labels.shape[0] != h.shape[0]:
            raise ValueError(f"LabelProjection: {labels.shape[0]} labels for {h.shape[0]} rows of h")
        y, cache = label_projection_forward(h, labels, self.weight.data, out)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        w = self.weight
        into = accumulates_in_place(w, dy)
        dh, dE = label_projection_backward(dy, cache, need_dE=w.requires_grad, dE_out=w.grad if into else None)
        if not into:
            w.accumulate(dE)
        return dh

"""FiLM: a feature map scaled and shifted per sample and channel by a projection of a
condition vector (Perez et al. 2018; BigGAN's conditional norms, StyleGAN's AdaIN):
    [gamma | beta] = proj(cond)  (N, 2C),  y = x * (1 + gamma) + beta  (x (N, C, H, W)).

As torch: a module holding `proj = nn.Linear(cond_features, 2 * num_features)` (state keys
proj.weight, proj.bias), gamma the first C outputs, beta the last C.

The condition reaches the layer inside an nn.Sequential by `set_condition(cond)` before the
Sequential runs (G sets it on each of its FiLM layers before every forward; the next forward
consumes it), or as forward(x, cond). The forward
keeps one cache (the op's, with the condition's projection in proj's own cache); backward(dy)
adds proj's gradients into its .grad, returns dx and leaves d(cond) (N, cond_features) for
`pop_dcond()` (G adds its noise part into dz); with `need_dcond = False` it computes none.

Init: proj's weight and bias start at 0, so the layer starts as the identity exactly and a
model with FiLM layers computes what the same model without them does (G builds them after
every other layer; proj draws its weight from rng as any Linear, then it is zeroed). The
weight still learns from the first step: its gradient dgamma^T cond is not zero (only the
gradient reaching the condition is, until the weight moves). A small random start would
instead scale each image's channels by some 1 +- 0.2 at once (0.02 sqrt(latent + K)), a
style the untrained z imposes before D has said anything about it.

Ops: film_forward, film_backward (cganraw.ops.film); proj is a Linear (gemm + bias_add)."""
from __future__ import annotations

import numpy as np

from cganraw.nn._check import check_float_input, check_same_shape
from cganraw.nn.linear import Linear
from cganraw.nn.module import Module
from cganraw.ops import _launch
from cganraw.ops.film import film_backward, film_forward


class FiLM(Module):
    def __init__(self, cond_features, num_features, *, rng=None, dtype=np.float32):
        super().__init__()
        self.cond_features, self.num_features = int(cond_features), int(num_features)
        if self.cond_features <= 0 or self.num_features <= 0:
            raise ValueError(f"FiLM: sizes must be positive, got ({cond_features}, {num_features})")
        self.proj = Linear(self.cond_features, 2 * self.num_features, rng=rng, dtype=dtype)
        self.proj.weight.data[...] = 0
        object.__setattr__(self, "_condition", None)
        object.__setattr__(self, "_dcond", None)
        # False: backward skips d(cond) (its GEMM): G's training step needs no dz
        object.__setattr__(self, "need_dcond", True)

    def set_condition(self, cond):
        """cond (N, cond_features): what the next forward(x) projects to gamma, beta."""
        check_float_input(self, cond, 2, dtype=self.proj.weight.dtype)
        if cond.shape[1] != self.cond_features:
            raise ValueError(f"FiLM: expected a condition of shape (N, {self.cond_features}), "
                             f"got shape {tuple(cond.shape)}")
        object.__setattr__(self, "_condition", cond)
        return self

    def modulation(self, x, cond=None):
        """(gamma, beta), each (N, C): the condition's projection for input x (N, C, H, W),
        the condition consumed as forward consumes it. nn.fused's InstanceNorm2d + FiLM +
        LeakyReLU step calls this and modulation_backward around its own op."""
        if cond is not None:
            self.set_condition(cond)
        cond = self._condition
        object.__setattr__(self, "_condition", None)          # consumed: a stale one is never reused
        if cond is None:
            raise RuntimeError("FiLM.forward: no condition (call set_condition(cond) or pass forward(x, cond))")
        check_float_input(self, x, 4, channels=self.num_features, dtype=self.proj.weight.dtype)
        if cond.shape[0] != x.shape[0]:
            raise ValueError(f"FiLM: a condition of {cond.shape[0]} rows for a batch of {x.shape[0]}")
        c = self.num_features
        gb = self.proj(cond)                                   # (N, 2C)
        object.__setattr__(self, "_dcond", None)
        return gb[:, :c], gb[:, c:]

    def modulation_backward(self, dgb):
        """dgb (N, 2C) = [dgamma | dbeta]: proj's gradients added into its .grad, d(cond) kept
        for pop_dcond (none with need_dcond False)."""
        object.__setattr__(self, "_dcond", self.proj.backward(dgb, need_dx=self.need_dcond))

    def forward(self, x, cond=None):
        gamma, beta = self.modulation(x, cond)
        y, cache = film_forward(x, gamma, beta)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        dgb = _launch.empty((dy.shape[0], 2 * self.num_features), dy.dtype)
        dx, _, _ = film_backward(dy, cache, out=dgb)            # dgb = [dgamma | dbeta] (N, 2C)
        self.modulation_backward(dgb)
        return dx

    def pop_dcond(self):
        """d(cond) (N, cond_features) of the last backward, consumed (None if none ran since)."""
        d = self._dcond
        object.__setattr__(self, "_dcond", None)
        return d

    def extra_repr(self):
        return f"cond_features={self.cond_features}, num_features={self.num_features}"

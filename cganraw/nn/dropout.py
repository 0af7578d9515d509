"""Inverted dropout whose mask is named, not stored: a Philox4x32-10 stream keyed by the
layer's seed and id, the training step and the draw within that step (cganraw.ops.philox).

The mask is drawn where the data is (in the kernel on a GPU, by the NumPy twin on the CPU),
the same on every backend, and a resumed run draws exactly the masks an uninterrupted one
would: they depend on the step, which checkpoints hold, and on nothing else. The trainer
calls `set_step(step)` on every Dropout before a step (cganraw.step does); each training
forward in that step then draws the next call's mask. Without set_step the calls simply
count on, so repeated forwards draw fresh masks.

Ops: dropout_forward, dropout_backward (cganraw.ops.dropout), with a philox.Stream as mask."""
from __future__ import annotations

from cganraw import backend
from cganraw.nn._check import check_same_shape
from cganraw.nn.module import Module
from cganraw.ops.dropout import dropout_backward, dropout_forward
from cganraw.ops.philox import DROPOUT, Stream, seed_from

MAX_LAYER_ID = 2 ** 32 - 1 - DROPOUT


class Dropout(Module):
    """p: probability of zeroing an element. seed: None (fresh entropy), an int, a
    SeedSequence or a Generator (`rng=` is the same, for symmetry with the other layers);
    layer_id: tells this layer's masks from those of other layers sharing its seed."""

    def __init__(self, p=0.5, *, seed=None, layer_id=0, rng=None):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        if seed is not None and rng is not None:
            raise TypeError("Dropout: give seed= or rng=, not both")
        if not 0 <= int(layer_id) <= MAX_LAYER_ID:
            raise ValueError(f"Dropout: layer_id must lie in [0, {MAX_LAYER_ID}], got {layer_id}")
        self.p = float(p)
        self.seed = seed_from(seed if seed is not None else rng)
        self.layer_id = int(layer_id)
        self.step = 0       # the training step whose masks are drawn
        self.call = 0       # training forwards so far in this step

    def set_step(self, step):
        """Draw the masks of training step `step` from the next forward on."""
        self.step, self.call = int(step) % 2 ** 32, 0

    def stream(self, call=None):
        """The Philox stream of a forward (the next one by default)."""
        return Stream(self.seed, DROPOUT + self.layer_id, self.step, (self.call if call is None else call) % 2 ** 32)

    def forward(self, x):
        if not backend.is_array(x) or x.dtype.kind != "f":
            raise TypeError(f"Dropout: expected a floating-point array, got {getattr(x, 'dtype', type(x).__name__)}")
        if not self.training or self.p == 0.0:
            self._save((None, x.shape))
            return x
        stream = self.stream()
        self.call += 1
        y, cache = dropout_forward(x, stream, self.p)
        self._save((cache, y.shape))
        return y

    def backward(self, dy):
        cache, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        return dy if cache is None else dropout_backward(dy, cache)

    def extra_repr(self):
        return f"p={self.p}"


def set_step(module, step):
    """set_step(step) on every Dropout in `module`."""
    for _, m in module.named_modules():
        if isinstance(m, Dropout):
            m.set_step(step)

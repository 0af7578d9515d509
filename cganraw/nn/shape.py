"""Shape layers: Flatten, Reshape, and a differentiable channel Concat."""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.nn._check import check_same_shape
from cganraw.nn.module import Module
from cganraw.ops import _launch


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), as torch.nn.Flatten()."""

    def forward(self, x):
        if not backend.is_array(x) or x.ndim < 2:
            raise ValueError(f"Flatten: expected an array of shape (N, ...), got {getattr(x, 'shape', type(x).__name__)}")
        self._save(x.shape)
        if type(x) is np.ndarray and not x.flags.c_contiguous:
            x = _launch.contiguous(x)       # a channel-major conv output: one copy, into reused memory
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        shape = self._pop_cache()
        n = 1
        for d in shape[1:]:
            n *= d
        check_same_shape(self, dy, (shape[0], n))
        return dy.reshape(shape)


class Reshape(Module):
    """(N, ...) -> (N, *shape), keeping the batch axis."""

    def __init__(self, *shape):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x):
        n_in = 1
        for d in x.shape[1:]:
            n_in *= d
        n_out = 1
        for d in self.shape:
            n_out *= d
        if x.ndim < 1 or n_in != n_out:
            raise ValueError(f"Reshape: cannot reshape input of shape {tuple(x.shape)} to (N, "
                             f"{', '.join(map(str, self.shape))}): expected {n_out} values per item")
        self._save(x.shape)
        return x.reshape((x.shape[0],) + self.shape)

    def backward(self, dy):
        shape = self._pop_cache()
        check_same_shape(self, dy, (shape[0],) + self.shape)
        return dy.reshape(shape)

    def extra_repr(self):
        return ", ".join(map(str, self.shape))


class Concat(Module):
    """Concatenate along `axis` (channels by default); backward splits the gradient."""

    def __init__(self, axis=1):
        super().__init__()
        self.axis = int(axis)

    def forward(self, *xs):
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        if len(xs) < 2:
            raise ValueError("Concat: needs at least two arrays")
        ref = xs[0]
        for i, x in enumerate(xs):
            if x.ndim != ref.ndim or x.dtype != ref.dtype or \
                    any(a != b for d, (a, b) in enumerate(zip(x.shape, ref.shape)) if d != self.axis % ref.ndim):
                raise ValueError(f"Concat: input {i} has shape {tuple(x.shape)} dtype {x.dtype}, which does not "
                                 f"match input 0 ({tuple(ref.shape)}, {ref.dtype}) off axis {self.axis}")
        y = _launch.concatenate(xs, axis=self.axis)
        self._save(([x.shape[self.axis] for x in xs], y.shape))
        return y

    def backward(self, dy):
        sizes, shape = self._pop_cache()
        check_same_shape(self, dy, shape)
        xp = backend.array_module(dy)
        bounds = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
        return tuple(xp.split(dy, bounds, axis=self.axis))

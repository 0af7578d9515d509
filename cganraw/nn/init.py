"""Initialisation, from a seeded numpy.random.Generator.

DCGAN's scheme (Radford et al. 2015): conv, linear and embedding weights N(0, 0.02),
BatchNorm weights N(1, 0.02), biases 0. Layers take `rng=`; without it they draw
from this module's default generator, which `seed(s)` resets. To override, call
`module.apply(fn)` with your own initialiser, or assign into `param.data`.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend

DEFAULT_STD = 0.02
_default_rng = np.random.default_rng(0)


def seed(s: int):
    """Reset the generator used by layers created without rng=."""
    global _default_rng
    _default_rng = np.random.default_rng(s)


def get_rng(rng=None) -> np.random.Generator:
    if rng is None:
        return _default_rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")
    return rng


def normal(shape, std=DEFAULT_STD, mean=0.0, rng=None, dtype=np.float32):
    """A backend array of N(mean, std) samples (drawn in float64 on the CPU, so the
    values do not depend on the backend)."""
    a = get_rng(rng).normal(mean, std, size=shape).astype(dtype)
    return backend.asarray(a)


def zeros(shape, dtype=np.float32):
    return backend.get_xp().zeros(shape, dtype=dtype)


def ones(shape, dtype=np.float32):
    return backend.get_xp().ones(shape, dtype=dtype)


def normal_(param, mean=0.0, std=DEFAULT_STD, rng=None):
    """Refill a Parameter in place with N(mean, std)."""
    param.data[...] = normal(param.shape, std, mean, rng, param.dtype)
    return param


def zeros_(param):
    param.data.fill(0)
    return param

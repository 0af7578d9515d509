"""Argument checks shared by cganraw.metrics and cganraw.plots: every public function
there validates its arrays through these, so a bad call fails with one clear message
that names the function, the argument, the shape expected and the shape got.

Each check takes `fn`, the public function's name, as the message prefix. Device
(CuPy) arrays are copied to the host through backend.asnumpy first.
"""
from __future__ import annotations

import math

import numpy as np

from cganraw import backend

ROW_SUM_ATOL = 1e-3     # probability rows must sum to 1 within this (float32 softmax passes)
NEG_ATOL = 1e-6         # and may dip this far below 0 from rounding


def host(a) -> np.ndarray:
    """`a` as a NumPy array; device arrays are copied to the host."""
    return np.asarray(backend.asnumpy(a))


def numeric(fn: str, name: str, a: np.ndarray) -> None:
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{fn}: {name} must be a numeric array, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise TypeError(f"{fn}: {name} must be real, got dtype {a.dtype}")


def probs(fn: str, p) -> np.ndarray:
    """An (N, K) probability table as float64, rows renormalised to sum to exactly 1."""
    p = host(p)
    numeric(fn, "probs", p)
    if p.ndim != 2:
        raise ValueError(f"{fn}: probs must be a 2-D array of shape (N, K), got shape {p.shape}")
    if p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"{fn}: probs must have shape (N, K) with N >= 1 and K >= 1, got shape {p.shape}")
    p = p.astype(np.float64, copy=True)
    if not np.isfinite(p).all():
        raise ValueError(f"{fn}: probs contains NaN or infinite values")
    if p.min() < -NEG_ATOL:
        raise ValueError(f"{fn}: probs must be non-negative, got minimum {p.min():.3g}")
    np.clip(p, 0.0, None, out=p)
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > ROW_SUM_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{fn}: each row of probs (shape (N, K) = {p.shape}) must sum to 1 "
            f"(within {ROW_SUM_ATOL}); row {i} sums to {sums[i]:.6g} "
            f"({int(bad.sum())} bad rows) -- pass softmax probabilities, not logits")
    p /= sums[:, None]
    return p


def int_vector(fn: str, name: str, a, n: int | None, num_classes: int) -> np.ndarray:
    """A (N,) int64 vector of class indices in 0..num_classes-1 (N checked when given)."""
    v = host(a)
    if v.dtype == np.bool_ or not np.issubdtype(v.dtype, np.integer):
        if v.dtype != object and np.issubdtype(v.dtype, np.number) and v.size == 0:
            v = v.astype(np.int64)
        else:
            raise TypeError(f"{fn}: {name} must be an integer array, got dtype {v.dtype}")
    if v.ndim != 1:
        raise ValueError(f"{fn}: {name} must be a 1-D array of shape (N,), got shape {v.shape}")
    if n is not None and v.shape[0] != n:
        raise ValueError(f"{fn}: {name} must have shape ({n},) to match probs with N={n} rows, "
                         f"got shape {v.shape}")
    v = v.astype(np.int64, copy=False)
    if v.size and (v.min() < 0 or v.max() >= num_classes):
        raise ValueError(f"{fn}: {name} must lie in 0..{num_classes - 1}, "
                         f"got values in {int(v.min())}..{int(v.max())}")
    return v


def probs_labels(fn: str, p, labels):
    p = probs(fn, p)
    return p, int_vector(fn, "labels", labels, p.shape[0], p.shape[1])


def integer(fn: str, name: str, value, low: int, high: int | None = None) -> int:
    """A Python int in low..high (high None: no upper bound); bools are not ints here."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{fn}: {name} must be {span}, got {value}")
    return int(value)


def num_classes(fn: str, k) -> int:
    return integer(fn, "num_classes", k, 1)


def eps(fn: str, value) -> float:
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{fn}: eps must be a finite number >= 0, got {value}")
    return value


def features(fn: str, name: str, f) -> np.ndarray:
    """An (N, F) finite feature table with N >= 2 (a covariance needs two), as float64."""
    f = host(f)
    numeric(fn, name, f)
    if f.ndim != 2:
        raise ValueError(f"{fn}: {name} must be a 2-D array of shape (N, F), got shape {f.shape}")
    if f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"{fn}: {name} must have shape (N, F) with N >= 2 samples and F >= 1, "
                         f"got shape {f.shape}")
    f = f.astype(np.float64, copy=False)
    if not np.isfinite(f).all():
        raise ValueError(f"{fn}: {name} contains NaN or infinite values")
    return f


def finite(fn: str, name: str, a) -> np.ndarray:
    """Any finite real array, as float64."""
    a = host(a)
    numeric(fn, name, a)
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{fn}: {name} contains NaN or infinite values")
    return a


def class_names(fn: str, names, k: int) -> list[str]:
    """k display names; None gives '0'..'k-1'."""
    if names is None:
        return [str(i) for i in range(k)]
    out = [str(c) for c in names]
    if len(out) != k:
        raise ValueError(f"{fn}: class_names must have {k} entries, got {len(out)}")
    return out

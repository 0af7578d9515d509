"""Image conversion between the stored form (uint8 (N, 28, 28), white strokes on black,
as in MNIST) and the models' form (float32 (N, 1, 28, 28) in [-1, 1]): one home for both
directions, used by the data, the plots, sampling and evaluation."""
from __future__ import annotations

import numpy as np

from cganraw import backend


def to_float(images) -> np.ndarray:
    """uint8 images (N,28,28) or (N,1,28,28) -> float32 (N,1,28,28) in [-1,1], x/127.5 - 1."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 images, got {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"to_float expects images shaped (N,H,W) or (N,1,H,W), got {a.shape}")
    out = np.empty(a.shape, dtype=np.float32)
    np.divide(a, np.float32(127.5), out=out, dtype=np.float32)
    out -= np.float32(1.0)
    return out


def to_uint8(images) -> np.ndarray:
    """float images (N,1,28,28) or (N,28,28) in [-1,1] -> uint8 (N,28,28): the inverse of
    to_float, clipped to 0..255 and rounded (NaN becomes 0). Accepts CuPy arrays."""
    a = np.asarray(backend.asnumpy(images))
    if a.dtype.kind != "f":
        raise TypeError(f"to_uint8 expects float images, got {a.dtype}")
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim != 3:
        raise ValueError(f"to_uint8 expects images shaped (N,1,H,W) or (N,H,W), got {a.shape}")
    out = (a.astype(np.float32) + np.float32(1.0)) * np.float32(127.5)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)

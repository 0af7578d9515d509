"""FiLM (Perez et al. 2018): a per-sample, per-channel scale and shift of a feature map,
y = x * (1 + gamma) + beta, gamma and beta (N, C) broadcast over H, W. G's conditional
norms (cganraw.nn.FiLM computes gamma, beta from its condition; models: --g-film).

    film_forward    y = x (1 + gamma) + beta             _numpy, _cuda: kernels/film.cu film_forward_v1
    film_backward   dx = dy (1 + gamma), dgamma = sum_hw dy x, dbeta = sum_hw dy
                                                         _numpy, _cuda: film_backward_v1 (a block
                                                         per (n, c) plane), _v2 (a warp per plane)
"""
from __future__ import annotations


def _check(x, gamma, beta, op):
    if x.ndim != 4 or gamma.ndim != 2 or beta.ndim != 2 or tuple(gamma.shape) != tuple(x.shape[:2]) \
            or tuple(beta.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{op}: expected x (N, C, H, W), gamma and beta (N, C), got {tuple(x.shape)}, "
                         f"{tuple(gamma.shape)} and {tuple(beta.shape)}")


def film_forward_numpy(x, gamma, beta):
    """x (N, C, H, W), gamma, beta (N, C) -> y (N, C, H, W) = x * (1 + gamma) + beta,
    cache (x, gamma)."""
    _check(x, gamma, beta, "film_forward")
    one = x.dtype.type(1)
    y = x * (one + gamma)[:, :, None, None] + beta[:, :, None, None]
    return y, (x, gamma)


def film_backward_numpy(dy, cache, need_dx=True):
    """dy (N, C, H, W) -> dx (None unless need_dx), dgamma, dbeta (N, C)."""
    x, gamma = cache
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"film_backward: dy has shape {tuple(dy.shape)}, expected {tuple(x.shape)}")
    n, c = x.shape[:2]
    one = dy.dtype.type(1)
    dx = dy * (one + gamma)[:, :, None, None] if need_dx else None
    dgamma = (dy * x).reshape(n, c, -1).sum(axis=2)
    dbeta = dy.reshape(n, c, -1).sum(axis=2)
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- public ops: dispatch

def film_forward(x, gamma, beta):
    """x (N, C, H, W), gamma, beta (N, C) -> (y = x (1 + gamma) + beta, cache)."""
    return film_forward_numpy(x, gamma, beta)


def film_backward(dy, cache, need_dx=True):
    """dy -> (dx or None, dgamma (N, C), dbeta (N, C))."""
    return film_backward_numpy(dy, cache, need_dx)

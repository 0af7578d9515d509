"""Batch normalisation over axis 1 of (N, C) or (N, C, H, W).

Training normalises with the batch's biased variance and reports the unbiased one
for the running statistics, as PyTorch does; eval normalises with the running ones.
"""
from __future__ import annotations

from cganraw import backend


def _reduce_axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _channel_view(a, ndim):
    return a.reshape((1, -1) + (1,) * (ndim - 2))


def batchnorm_forward_numpy(x, gamma, beta, mean=None, var=None, eps=1e-5):
    """x (N, C[, H, W]), gamma/beta (C,). mean/var None: use the batch statistics
    (training); given: use them (eval). Returns y, cache, batch_mean, batch_var_unbiased."""
    xp = backend.array_module(x)
    axes = _reduce_axes(x)
    count = x.size // x.shape[1]
    if mean is None:
        mean = x.mean(axis=axes)
        centered = x - _channel_view(mean, x.ndim)
        var = (centered * centered).mean(axis=axes)
        var_unbiased = var * (count / max(count - 1, 1))
        training = True
    else:
        centered = x - _channel_view(mean, x.ndim)
        var_unbiased = None
        training = False
    invstd = 1 / xp.sqrt(var + x.dtype.type(eps))
    xhat = centered
    xhat *= _channel_view(invstd, x.ndim)
    y = xhat * _channel_view(gamma, x.ndim)
    y += _channel_view(beta, x.ndim)
    return y, (xhat, invstd, gamma, training), mean, var_unbiased


def batchnorm_backward_numpy(dy, cache):
    """dy -> dx, dgamma, dbeta."""
    xhat, invstd, gamma, training = cache
    axes = _reduce_axes(dy)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    scale = _channel_view(gamma * invstd, dy.ndim)
    if not training:
        return dy * scale, dgamma, dbeta
    count = dy.size // dy.shape[1]
    # dx = gamma invstd / n * (n dy - sum(dy) - xhat sum(dy xhat))
    dx = xhat * _channel_view(dgamma / count, dy.ndim)
    dx += _channel_view(dbeta / count, dy.ndim)
    xp = backend.array_module(dy)
    dx = xp.subtract(dy, dx, out=dx)
    dx *= scale
    return dx, dgamma, dbeta


def running_stats_update_numpy(running_mean, running_var, mean, var_unbiased, momentum):
    f = running_mean.dtype.type
    running_mean *= f(1 - momentum)
    running_mean += f(momentum) * mean
    running_var *= f(1 - momentum)
    running_var += f(momentum) * var_unbiased


def batchnorm_forward(x, gamma, beta, mean=None, var=None, eps=1e-5):
    return batchnorm_forward_numpy(x, gamma, beta, mean, var, eps)


def batchnorm_backward(dy, cache):
    return batchnorm_backward_numpy(dy, cache)


def running_stats_update(running_mean, running_var, mean, var_unbiased, momentum):
    """In place: r = (1 - momentum) r + momentum * batch statistic."""
    running_stats_update_numpy(running_mean, running_var, mean, var_unbiased, momentum)

"""Fused, bias-corrected Adam update in place (PyTorch's arithmetic):
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
"""
from __future__ import annotations

import math

from cganraw import backend


def adam_update_numpy(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0):
    xp = backend.array_module(param)
    f = param.dtype.type
    if weight_decay:
        grad = grad + f(weight_decay) * param
    m *= f(beta1)
    m += f(1 - beta1) * grad
    v *= f(beta2)
    v += f(1 - beta2) * (grad * grad)
    step_size = lr / (1 - beta1 ** step)
    denom = xp.sqrt(v)
    denom /= f(math.sqrt(1 - beta2 ** step))
    denom += f(eps)
    param -= f(step_size) * (m / denom)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0):
    """Update param, m and v in place for step number `step` (1-based)."""
    adam_update_numpy(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay)

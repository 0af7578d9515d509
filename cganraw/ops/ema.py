"""Exponential moving average in place, avg -= (1 - decay) (avg - value), for the moving
average of G (cganraw.step.update_ema). One op with no backward:

    ema_update   ema_update_numpy (reference), ema_update_cuda (kernels/ema.cu ema_update_v1/v2),
                 ema_update (dispatch)
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


def ema_update_numpy(avg, value, decay):
    avg -= avg.dtype.type(1 - decay) * (avg - value)


def ema_update_cuda(avg, value, decay, version=None):
    """As ema_update_numpy in one kernel. A strided avg is updated through a contiguous copy
    written back. version None is 2 (grid-stride)."""
    op = "ema_update"
    ac = _launch.writable(avg, op, "avg")
    vc = _launch.arg(value, np.float32, f"{op}: value")
    if tuple(vc.shape) != tuple(ac.shape):
        raise ValueError(f"{op}: value has shape {tuple(vc.shape)}, avg {tuple(ac.shape)}")
    _launch.elementwise_launch("ema", op, _launch.pick_version(op, version, 2), ac.size,
                               (ac, vc, _launch.f32(1 - decay), _launch.element_count(ac.size, op)))
    _launch.write_back(avg, ac)


def ema_update(avg, value, decay):
    """avg (any shape) moves towards value (same shape) by 1 - decay, in place."""
    if backend.uses_kernels():
        ema_update_cuda(avg, value, decay)
        return
    ema_update_numpy(avg, value, decay)

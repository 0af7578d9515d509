"""Exponential moving average in place, avg -= (1 - decay) (avg - value), for the moving
average of G (cganraw.step.update_ema). One op with no backward:

    ema_update   ema_update_numpy (reference), ema_update_cuda (kernels/ema.cu ema_update_v1/v2),
                 ema_update (dispatch); with copy=(dst, src) also dst[...] = src (v3: in the same
                 launch)
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


def ema_update_numpy(avg, value, decay):
    avg -= avg.dtype.type(1 - decay) * (avg - value)


def ema_update_cuda(avg, value, decay, version=None, copy=None):
    """As ema_update_numpy in one kernel. A strided avg is updated through a contiguous copy
    written back. version None is 2 (grid-stride); with copy = (dst, src), contiguous float32
    arrays of one size, 3: dst[...] = src in the same launch."""
    op = "ema_update"
    ac = _launch.writable(avg, op, "avg")
    vc = _launch.arg(value, np.float32, f"{op}: value")
    if tuple(vc.shape) != tuple(ac.shape):
        raise ValueError(f"{op}: value has shape {tuple(vc.shape)}, avg {tuple(ac.shape)}")
    if copy is not None:
        dst, src = _launch.writable(copy[0], op, "copy dst"), _launch.arg(copy[1], np.float32, f"{op}: copy src")
        if dst.size != src.size:
            raise ValueError(f"{op}: copy between arrays of {dst.size} and {src.size} values")
        _launch.pick_version(op, version, 3, (3,))
        total = _launch.element_count(ac.size + dst.size, op)
        grid, block = _launch.grid_for(int(total), max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("ema", "ema_update_v3")(
            grid, block, (ac, vc, _launch.f32(1 - decay), _launch.i32(ac.size), dst, src.reshape(-1),
                          _launch.i32(dst.size)))
        _launch.write_back(avg, ac)
        _launch.write_back(copy[0], dst)
        return
    _launch.elementwise_launch("ema", op, _launch.pick_version(op, version, 2), ac.size,
                               (ac, vc, _launch.f32(1 - decay), _launch.element_count(ac.size, op)))
    _launch.write_back(avg, ac)


def ema_update(avg, value, decay, copy=None):
    """avg (any shape) moves towards value (same shape) by 1 - decay, in place; with
    copy = (dst, src) also dst[...] = src (on the kernel backends in the same launch)."""
    if backend.uses_kernels():
        ema_update_cuda(avg, value, decay, copy=copy)
        return
    ema_update_numpy(avg, value, decay)
    if copy is not None:
        _launch.copy_into(copy[0], copy[1])

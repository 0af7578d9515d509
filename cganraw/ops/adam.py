"""Fused, bias-corrected Adam update in place (PyTorch's arithmetic), for cganraw.optim.Adam:
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

One op, `adam_update`, with no backward: `adam_update_numpy` (the reference),
`adam_update_numba` (one pass, the reference's bits), `adam_update_cuda` (kernels/adam.cu's
`adam_update_v1/v2`) and the dispatch `adam_update`.
"""
from __future__ import annotations

import math

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch, _workspace


def adam_update_numpy(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0):
    xp = backend.array_module(param)
    f = param.dtype.type
    if weight_decay:
        grad = grad + f(weight_decay) * param
    # one scratch array for every temporary (the same operations, so the same bits, as
    # m += (1 - b1) g; v += (1 - b2) (g g); param -= step_size (m / denom))
    t = _workspace.empty(param.shape, param.dtype) if xp is np and param.shape == grad.shape else None
    m *= f(beta1)
    m += xp.multiply(f(1 - beta1), grad, out=t)
    v *= f(beta2)
    if t is None:
        v += f(1 - beta2) * (grad * grad)
    else:
        v += xp.multiply(f(1 - beta2), xp.multiply(grad, grad, out=t), out=t)
    step_size = lr / (1 - beta1 ** step)
    denom = xp.sqrt(v) if t is None else xp.sqrt(v, out=t)
    denom /= f(math.sqrt(1 - beta2 ** step))
    denom += f(eps)
    param -= xp.multiply(f(step_size), xp.divide(m, denom, out=denom), out=denom)


# ---------------------------------------------------------------- Numba CPU path (cganraw.ops._cpu)
# One pass over param, grad, m, v where the reference makes about ten over 6 MB arrays (the
# MLPs' flat buffers): each element gets the reference's float32 operations in its order,
# with no FMA contraction (fastmath off), so the same bits. error_model="numpy": no
# division-by-zero check, which would keep the serial twin from vectorising.

@_cpu.kernel
def _adam_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True, error_model="numpy")
    def update(p, g, m, v, b1, b2, one_b1, one_b2, step_size, bias2, eps, wd, decay):  # all (n,), in place
        for i in nb.prange(p.size):
            gi = g[i] + wd * p[i] if decay else g[i]
            mi = m[i] * b1 + one_b1 * gi
            vi = v[i] * b2 + one_b2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = p[i] - step_size * (mi / (np.sqrt(vi) / bias2 + eps))
    return update


def _numba_ok(param, grad, m, v):
    return (_cpu.enabled() and _cpu.host_arrays(param, grad, m, v) and param.dtype in (np.float32, np.float64)
            and all(a.dtype == param.dtype and a.shape == param.shape and a.flags.c_contiguous
                    for a in (grad, m, v)) and param.flags.c_contiguous and param.flags.writeable)


def adam_update_numba(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0):
    """As adam_update_numpy, bit for bit, in one pass (C-contiguous arrays of one shape and dtype)."""
    f = param.dtype.type
    _adam_numba(param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), f(beta1), f(beta2),
                f(1 - beta1), f(1 - beta2), f(lr / (1 - beta1 ** step)), f(math.sqrt(1 - beta2 ** step)), f(eps),
                f(weight_decay if weight_decay else 0.0), bool(weight_decay), work=param.size)


# ---------------------------------------------------------------- CUDA kernel (kernels/adam.cu)

def adam_update_cuda(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0, version=None):
    """As adam_update_numpy, in one fused kernel. The scalars the reference computes on
    the host in double (step size, bias corrections, 1 - beta) are computed here the same
    way and passed as float32. A strided param/m/v is updated through a contiguous copy
    that is written back. version None is 2 (grid-stride)."""
    op = "adam_update"
    pc = _launch.writable(param, op, "param")
    mc = _launch.writable(m, op, "m")
    vc = _launch.writable(v, op, "v")
    gc = _launch.arg(grad, np.float32, f"{op}: grad")
    for name, a in (("grad", gc), ("m", mc), ("v", vc)):
        if tuple(a.shape) != tuple(pc.shape):
            raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, param {tuple(pc.shape)}")
    f32 = _launch.f32
    _launch.elementwise_launch("adam", op, _launch.pick_version(op, version, 2), pc.size,
                               (pc, mc, vc, gc, f32(beta1), f32(beta2), f32(1 - beta1), f32(1 - beta2),
                                f32(lr / (1 - beta1 ** step)), f32(math.sqrt(1 - beta2 ** step)), f32(eps),
                                f32(weight_decay if weight_decay else 0.0), _launch.element_count(pc.size, op)))
    _launch.write_back(param, pc)
    _launch.write_back(m, mc)
    _launch.write_back(v, vc)


# ---------------------------------------------------------------- public op: dispatch

def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0):
    """Update param, m and v in place for step number `step` (1-based)."""
    if backend.uses_kernels():
        adam_update_cuda(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay)
        return
    if _numba_ok(param, grad, m, v):
        adam_update_numba(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay)
        return
    adam_update_numpy(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay)

"""The arithmetic of the R1 penalty between D's passes, as an op, for cganraw.step.r1_penalty.
With g (N, ...) the gradient of the sum of D's logits at the real images x (N, ...):

    penalty = gamma / (2N) * sum g^2,   e = step / sqrt(max(mean g^2, tiny)),   c = gamma / (2N) / e
    images = [x + e g | x - e g] (2N, ...),   dlogits = [c | -c] (2N, 1)

    r1_scalars   _numpy, _cuda: kernels/r1.cu r1_scalars_v1 -> (penalty 0-d, scalars)
    r1_perturb   _numpy, _cuda: r1_perturb_v1 -> (images, dlogits)
scalars (3,) holds penalty, e and c, in g's dtype; on a GPU it stays on the device
(float32), so the step never waits. An empty g gives all three 0 (no penalty, no gradient).
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch

REDUCE_BLOCK = 256


def r1_scalars_numpy(g, gamma, step):
    """g (N, ...) -> (penalty 0-d, scalars (3,) = penalty, e, c), in g's dtype."""
    xp = backend.array_module(g)
    n = int(_check_g(g, "r1_scalars"))
    if g.size == 0:
        scalars = xp.zeros(3, dtype=g.dtype)
        return scalars[0:1].reshape(()), scalars
    sq = (g * g).sum()
    penalty = sq * (0.5 * gamma / n)
    rms = xp.sqrt(xp.maximum(sq / g.size, xp.finfo(g.dtype).tiny))
    e = g.dtype.type(step) / rms
    c = (gamma / (2 * n)) / e
    scalars = xp.asarray([penalty, e, c], dtype=g.dtype)    # each already of g's dtype: exact
    return scalars[0:1].reshape(()), scalars


def r1_perturb_numpy(real_images, g, scalars):
    """x (N, ...), g (N, ...), scalars of r1_scalars -> (images (2N, ...), dlogits (2N, 1))."""
    _check_shapes(real_images, g, scalars, "r1_perturb")
    xp = backend.array_module(g)
    n = real_images.shape[0]
    e, c = scalars[1], scalars[2]
    shift = e * g
    images = _launch.concatenate([real_images + shift, real_images - shift])
    dlogits = xp.empty((2 * n, 1), dtype=images.dtype)
    dlogits[:n] = c
    dlogits[n:] = -c
    return images, dlogits


def _check_g(g, op):
    if g.ndim < 1:
        raise ValueError(f"{op}: g must have shape (N, ...), got {tuple(g.shape)}")
    return _launch.i32(g.shape[0])


def _check_shapes(real_images, g, scalars, op):
    if g.shape != real_images.shape:
        raise ValueError(f"{op}: g has shape {tuple(g.shape)}, the images {tuple(real_images.shape)}")
    if scalars.shape != (3,):
        raise ValueError(f"{op}: scalars must have shape (3,) (r1_scalars'), got {tuple(scalars.shape)}")
    return _check_g(g, op)


def r1_scalars_cuda(g, gamma, step, version=None):
    op = "r1_scalars"
    _launch.pick_version(op, version, 1, (1,))
    gc = _launch.arg(g, np.float32, f"{op}: g")
    n = _check_g(gc, op)
    if gc.size == 0:
        scalars = _launch.zeros((3,))
    else:
        scalars = _launch.empty((3,))
        _launch.function("r1", "r1_scalars_v1")(
            (1,), (REDUCE_BLOCK,), (scalars, gc, _launch.i64(gc.size), n, _launch.f32(gamma), _launch.f32(step)))
    return scalars[0:1].reshape(()), scalars       # a 0-d view: no read-back


def r1_perturb_cuda(real_images, g, scalars, version=None):
    op = "r1_perturb"
    _launch.pick_version(op, version, 1, (1,))
    x = _launch.arg(real_images, np.float32, f"{op}: real_images")
    gc = _launch.arg(g, np.float32, f"{op}: g")
    sc = _launch.arg(scalars, np.float32, f"{op}: scalars")
    n = _check_shapes(x, gc, sc, op)
    images = _launch.empty((2 * x.shape[0],) + tuple(x.shape[1:]))
    dlogits = _launch.empty((2 * x.shape[0], 1))
    if x.size or n:
        # threads for the pixels and the rows alike (n > size only for images of no pixels)
        grid, block = _launch.grid_for(max(x.size, int(n)), max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("r1", "r1_perturb_v1")(
            grid, block, (images, dlogits, x, gc, sc, _launch.i64(x.size), n))
    return images, dlogits


def r1_scalars(g, gamma, step):
    if backend.uses_kernels():
        return r1_scalars_cuda(g, gamma, step)
    return r1_scalars_numpy(g, gamma, step)


def r1_perturb(real_images, g, scalars):
    if backend.uses_kernels():
        return r1_perturb_cuda(real_images, g, scalars)
    return r1_perturb_numpy(real_images, g, scalars)

"""Finite-difference gradient checks, in Chainer's manner.

Both checks compare the analytic gradient of L = sum(forward(...) * gy), for a
random gy, with central differences:
- `directional`: one random direction d over every input and parameter at once,
  floored so no component is tiny; numeric (L(a + eps d) - L(a - eps d)) / 2eps
  against sum <grad, d>. Cheap at any size, and a wrong term anywhere shows up.
- `elementwise`: every element of every array, one at a time; for tiny shapes,
  and it names the failing element.
Use float64: float32 differences cancel too much for tight tolerances.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend


class GradientCheckError(AssertionError):
    pass


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def _floored_direction(rng, shape, floor=0.1):
    # N(0,1) samples with |d| >= floor, so every component is exercised
    d = rng.standard_normal(shape)
    return np.sign(d + (d == 0)) * np.maximum(np.abs(d), floor)


def check_backward(forward, backward, inputs, params=(), grad_output=None, *, eps=1e-4,
                   atol=1e-6, rtol=1e-5, elementwise=None, elementwise_max=400, seed=0, name="function"):
    """Check `backward` against finite differences of `forward`.

    forward(*inputs) -> array (or tuple of arrays); inputs that are not floating-point
    (labels) are held constant. backward(gy) -> the gradients of the floating inputs, in
    order (one array, or a tuple; None for an input without one), and accumulates into
    each Parameter's `.grad`. `elementwise` None runs the element-wise check when the
    arrays hold at most `elementwise_max` values in all.
    """
    rng = np.random.default_rng(seed)
    xp = backend.get_xp()
    inputs = [xp.array(x, copy=True) if backend.is_array(x) else x for x in inputs]
    float_idx = [i for i, x in enumerate(inputs) if backend.is_array(x) and x.dtype.kind == "f"]
    # params: Parameters, or (name, Parameter) pairs for clearer failure messages
    params = [p if isinstance(p, tuple) else (p.name, p) for p in params]

    y = _as_tuple(forward(*inputs))
    if grad_output is None:
        gy = tuple(xp.asarray(rng.standard_normal(a.shape), dtype=a.dtype) for a in y)
    else:
        gy = _as_tuple(grad_output)
    for _, p in params:
        p.zero_grad()
    gx = _as_tuple(backward(gy if len(gy) > 1 else gy[0]))
    if not float_idx and gx == (None,):
        gx = ()  # e.g. Embedding: integer inputs, parameter gradients only
    if len(gx) != len(float_idx):
        raise GradientCheckError(f"{name}: backward returned {len(gx)} gradients for {len(float_idx)} "
                                 "floating-point inputs")

    # (label, array perturbed in place, analytic gradient)
    arrays = []
    for k, i in enumerate(float_idx):
        if gx[k] is not None:
            arrays.append((f"input {i}", inputs[i], backend.asnumpy(gx[k]).astype(np.float64)))
    for j, (pname, p) in enumerate(params):
        if p.requires_grad:
            arrays.append((f"param {pname or j}", p.data, backend.asnumpy(p.grad).astype(np.float64)))
    for label, a, g in arrays:
        if g.shape != tuple(a.shape):
            raise GradientCheckError(f"{name}: gradient of {label} has shape {g.shape}, expected {tuple(a.shape)}")

    def loss():
        out = _as_tuple(forward(*inputs))
        return sum(float(backend.asnumpy((o.astype(np.float64) * g.astype(np.float64)).sum()))
                   for o, g in zip(out, gy))

    # directional check
    dirs = [_floored_direction(rng, g.shape) for _, _, g in arrays]
    norm = np.sqrt(sum((d * d).sum() for d in dirs)) or 1.0
    dirs = [d / norm for d in dirs]
    originals = [backend.asnumpy(a).copy() for _, a, _ in arrays]

    def shift(scale):
        for (_, a, _), d, a0 in zip(arrays, dirs, originals):
            a[...] = xp.asarray(a0 + scale * d, dtype=a.dtype)

    shift(eps)
    up = loss()
    shift(-eps)
    down = loss()
    shift(0.0)
    numeric = (up - down) / (2 * eps)
    analytic = float(sum((g * d).sum() for (_, _, g), d in zip(arrays, dirs)))
    if not abs(numeric - analytic) <= atol + rtol * abs(numeric):
        raise GradientCheckError(
            f"{name}: directional derivative mismatch\n  numeric  = {numeric!r}\n  analytic = {analytic!r}\n"
            f"  |diff| = {abs(numeric - analytic):.3e}, allowed atol + rtol|numeric| with eps={eps}, "
            f"atol={atol}, rtol={rtol}\n  arrays: {[(lbl, g.shape) for lbl, _, g in arrays]}")

    total = sum(g.size for _, _, g in arrays)
    if elementwise is None:
        elementwise = total <= elementwise_max
    if elementwise:
        _check_elementwise(name, arrays, originals, loss, xp, eps, atol, rtol)
    return numeric, analytic


def _check_elementwise(name, arrays, originals, loss, xp, eps, atol, rtol):
    for (label, a, g), a0 in zip(arrays, originals):
        numeric = np.empty(g.shape, dtype=g.dtype)   # C order: g may be a strided (channel-major) gradient
        flat = a.reshape(-1)  # a view: arrays passed in are contiguous copies or parameters
        for idx in range(a.size):
            v = a0.reshape(-1)[idx]
            flat[idx] = v + eps
            up = loss()
            flat[idx] = v - eps
            down = loss()
            flat[idx] = v
            numeric.reshape(-1)[idx] = (up - down) / (2 * eps)
        bad = ~(np.abs(numeric - g) <= atol + rtol * np.abs(numeric))
        if bad.any():
            where = np.argwhere(bad)[:5]
            rows = "\n".join(f"    at {tuple(int(i) for i in w)}: numeric {numeric[tuple(w)]!r}, "
                             f"analytic {g[tuple(w)]!r}" for w in where)
            raise GradientCheckError(
                f"{name}: element-wise gradient mismatch in {label} ({int(bad.sum())} of {g.size} elements), "
                f"eps={eps}, atol={atol}, rtol={rtol}\n{rows}")


def check_module(module, *inputs, grad_output=None, before_forward=None, **kwargs):
    """check_backward for a Module: its forward, backward and every parameter.
    `before_forward()` runs before each forward (e.g. to re-seed a dropout mask)."""

    def forward(*xs):
        if before_forward is not None:
            before_forward()
        return module(*xs)

    kwargs.setdefault("name", type(module).__name__)
    return check_backward(forward, module.backward, inputs, list(module.named_parameters()), grad_output, **kwargs)

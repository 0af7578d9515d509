"""Adam, bias-corrected, with PyTorch's defaults swapped for the GAN literature's
betas (0.5, 0.999). Its state (m, v, t) round-trips through state_dict.

Adam keeps its parameters, their gradients and its moments in flat buffers (`flatten`):
each parameter's `.data` and `.grad` become views into one array, so a step is one
`adam_update` launch over all of them and zero_grad one memset, however many parameters
there are. Whoever replaces a parameter's array (Module.to, a manual assignment) breaks the
packing; Adam notices and goes on per parameter, with the same arithmetic.

Op: adam_update (cganraw.ops.adam)."""
from __future__ import annotations

import weakref

import numpy as np

from cganraw import backend
from cganraw.nn.module import Parameter
from cganraw.ops import _launch
from cganraw.ops.adam import adam_update

ALIGN = 64   # elements: every packed array starts on a 256-byte boundary (vector loads, cuBLAS)


class FlatParams:
    """Parameters whose `.data` (and `.grad`, when grads) are views into the flat buffers
    `data` and `grad`, in order, each slice aligned to ALIGN elements (the gaps stay 0)."""

    def __init__(self, params, grads=True):
        self.params = list(params)
        first = self.params[0].data
        xp, dtype = backend.array_module(first), first.dtype
        offsets, total = [], 0
        for p in self.params:
            offsets.append(total)
            total += -(-int(p.data.size) // ALIGN) * ALIGN
        self.layout = tuple((o, tuple(p.shape)) for o, p in zip(offsets, self.params))
        self.data = _launch.zeros((total,), dtype)
        self.grad = _launch.zeros((total,), dtype) if grads else None
        for p, (off, shape) in zip(self.params, self.layout):
            view = self.data[off:off + p.data.size].reshape(shape)
            _launch.copy_into(view, p.data)
            p.data = view
            if grads:
                gview = self.grad[off:off + p.data.size].reshape(shape)
                _launch.copy_into(gview, p.grad)
                p.grad = gview
        self._views = [(p.data, p.grad if grads else None) for p in self.params]
        self.xp = xp
        _packs[id(self.params[0].data)] = self

    def views(self, flat):
        """Views of another flat array of this layout (Adam's m and v), one per parameter."""
        return [flat[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape) for off, shape in self.layout]

    def intact(self, params=None):
        """True while every parameter still holds its views (and `params`, if given, are
        exactly the packed ones, in order)."""
        if params is not None and (len(params) != len(self.params) or
                                   any(a is not b for a, b in zip(params, self.params))):
            return False
        return all(p.data is d and (g is None or p.grad is g) for p, (d, g) in zip(self.params, self._views))


_packs: weakref.WeakValueDictionary[int, FlatParams] = weakref.WeakValueDictionary()


def packable(params):
    """Whether `params` can share flat buffers: one dtype, one backend, no empty array."""
    if not params:
        return False
    first = params[0].data
    xp = backend.array_module(first)
    return all(p.data.dtype == first.dtype and backend.array_module(p.data) is xp and p.data.size > 0
               and p.grad is not None and p.grad.shape == p.data.shape for p in params)


def flatten(params, grads=True):
    """Pack `params` into flat buffers (FlatParams); their values are kept."""
    params = list(params)
    if not packable(params):
        raise ValueError("flatten: parameters of one dtype and backend, none empty, are needed")
    return FlatParams(params, grads)


def flat_of(params):
    """The intact FlatParams holding exactly `params`, in order, or None."""
    params = list(params)
    if not params:
        return None
    fp = _packs.get(id(params[0].data))
    return fp if fp is not None and fp.intact(params) else None


class Adam:
    def __init__(self, params, lr=2e-4, betas=(0.5, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("Adam: got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"Adam: item {i} is {type(p).__name__}, not a Parameter")
        if not lr > 0:
            raise ValueError(f"Adam: lr must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Adam: betas must lie in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"Adam: eps must be positive, got {eps}")
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(map(float, betas)), float(eps), float(weight_decay)
        self.t = 0
        self.flat = flatten(self.params) if packable(self.params) else None
        if self.flat is not None:
            dtype = self.flat.data.dtype
            self._m = _launch.zeros(self.flat.data.shape, dtype)
            self._v = _launch.zeros(self.flat.data.shape, dtype)
            self.m, self.v = self.flat.views(self._m), self.flat.views(self._v)
        else:
            self.m = [backend.array_module(p.data).zeros_like(p.data) for p in self.params]
            self.v = [backend.array_module(p.data).zeros_like(p.data) for p in self.params]

    def _packed(self):
        return self.flat is not None and self.flat.intact()

    def zero_grad(self):
        if self._packed():
            _launch.fill_zero(self.flat.grad)
            return
        for p in self.params:
            p.zero_grad()

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        hyper = (self.lr, b1, b2, self.eps, self.t, self.weight_decay)
        if self._packed() and all(p.requires_grad for p in self.params):
            adam_update(self.flat.data, self.flat.grad, self._m, self._v, *hyper)   # one launch
            return
        for p, m, v in zip(self.params, self.m, self.v):
            if p.requires_grad:
                adam_update(p.data, p.grad, m, v, *hyper)

    def state_dict(self):
        out = {"t": np.int64(self.t), "lr": np.float64(self.lr),
               "betas": np.asarray(self.betas), "eps": np.float64(self.eps)}
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            out[f"m.{i}"] = np.array(backend.asnumpy(m), copy=True)
            out[f"v.{i}"] = np.array(backend.asnumpy(v), copy=True)
        return out

    def load_state_dict(self, state):
        """Restore m, v and t (the hyperparameters stay as constructed). Checks all
        shapes first, so a mismatched state leaves the optimiser untouched."""
        for i, p in enumerate(self.params):
            for key in (f"m.{i}", f"v.{i}"):
                if key not in state:
                    raise KeyError(f"Adam.load_state_dict: missing {key} (state for {len(self.params)} parameters expected)")
                if tuple(np.shape(state[key])) != tuple(p.shape):
                    raise ValueError(f"Adam.load_state_dict: {key} has shape {tuple(np.shape(state[key]))}, "
                                     f"expected {tuple(p.shape)} ({p.name})")
        extra = [k for k in state if k.startswith(("m.", "v.")) and int(k.split(".")[1]) >= len(self.params)]
        if extra:
            raise KeyError(f"Adam.load_state_dict: state for more parameters than this optimiser has: {extra[:4]}")
        self.t = int(state["t"])
        for i, p in enumerate(self.params):
            xp = backend.array_module(p.data)
            self.m[i][...] = xp.asarray(np.asarray(state[f"m.{i}"]), dtype=p.dtype)
            self.v[i][...] = xp.asarray(np.asarray(state[f"v.{i}"]), dtype=p.dtype)

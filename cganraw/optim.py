"""Adam, bias-corrected, with PyTorch's defaults swapped for the GAN literature's
betas (0.5, 0.999). Its state (m, v, t) round-trips through state_dict.

Op: adam_update (cganraw.ops.adam)."""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.nn.module import Parameter
from cganraw.ops.adam import adam_update


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
        self.m = [backend.array_module(p.data).zeros_like(p.data) for p in self.params]
        self.v = [backend.array_module(p.data).zeros_like(p.data) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            if p.requires_grad:
                adam_update(p.data, p.grad, m, v, self.lr, b1, b2, self.eps, self.t, self.weight_decay)

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

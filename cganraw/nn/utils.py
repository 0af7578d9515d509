"""spectral_norm and remove_spectral_norm, as torch.nn.utils.spectral_norm (Miyato et al.
2018): the weight a layer uses is W / sigma(W), sigma its largest singular value,
estimated by power iteration.

    spectral_norm(module, name="weight", n_power_iterations=1, eps=1e-12, dim=None, *, rng=None)
    remove_spectral_norm(module, name="weight")

As in torch:
- the parameter `weight` becomes `weight_orig` (the trainable raw weight), with buffers
  `weight_u` (H,) and `weight_v` (Wd,) for the singular vectors, drawn N(0, 1) and
  normalised (from `rng`, else nn.init's default generator). `module.weight` is the
  normalised weight, recomputed by every forward and not in the state dict;
- every forward in training mode first runs n_power_iterations steps of the power
  iteration, updating u and v in place; eval mode uses them as they are;
- sigma = u^T W v; the backward treats u and v as constants, so the gradient flows
  through sigma: dW = dW_sn / sigma - (<dW_sn, W> / sigma^2) u v^T;
- dim is 0, except 1 for ConvTranspose2d (whose weight is (in, out, k, k));
- it works on any layer that reads `self.<name>.data` in forward and accumulates into
  `self.<name>` in backward: Linear, Conv2d, ConvTranspose2d, Embedding.

The layer's own forward and backward run unchanged: the module gets instance-level
forward/backward that compute the normalised weight first and turn its gradient into the
raw weight's after (the counterpart of torch's forward pre-hook and autograd).

Ops: spectral_norm_forward, spectral_norm_backward (cganraw.ops.spectral_norm).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from cganraw import backend
from cganraw.nn import init
from cganraw.nn._check import accumulates_in_place
from cganraw.nn.conv import ConvTranspose2d
from cganraw.nn.module import Module, Parameter
from cganraw.ops import _launch
from cganraw.ops.spectral_norm import matrix_dims, spectral_norm_backward, spectral_norm_forward

_HOOKS = "_spectral_norm_hooks"


class SpectralNorm:
    """The settings of one normalised parameter (torch's hook object of the same name)."""

    def __init__(self, name, n_power_iterations, dim, eps):
        self.name, self.n_power_iterations, self.dim, self.eps = name, int(n_power_iterations), int(dim), float(eps)

    def compute(self, module, power_iteration):
        """The normalised weight from the current raw weight, u and v: sets module.<name>
        to it (a fresh gradient accumulator), stores the new u, v in the buffers when the
        power iteration ran, and returns the cache for `backward`."""
        orig = module._parameters[self.name + "_orig"]
        u, v = module._buffers[self.name + "_u"], module._buffers[self.name + "_v"]
        used = module.__dict__[self.name]
        w = orig.data
        reuse = used.grad is not None and used.grad.shape == w.shape and used.grad.dtype == w.dtype \
            and used.grad.flags.c_contiguous and backend.array_module(used.grad) is backend.array_module(w)
        # the new u, v go straight into the buffers, and the gradient accumulator is zeroed
        # in the same pass as W / sigma (on the kernel backends: two launches in all)
        w_sn, _, _, cache = spectral_norm_forward(w, u, v, self.dim, self.n_power_iterations, self.eps,
                                                  power_iteration, in_place=True,
                                                  zero=used.grad if reuse else None)
        if not reuse:
            used.grad = _launch.zeros(w_sn.shape, w_sn.dtype)
        used.data = w_sn
        used.requires_grad = orig.requires_grad
        return cache

    def backward(self, module, cache):
        """Adds the raw weight's gradient, from the normalised weight's the layer left."""
        orig = module._parameters[self.name + "_orig"]
        if not orig.requires_grad:
            return
        dw_sn = module.__dict__[self.name].grad
        if accumulates_in_place(orig, dw_sn):
            spectral_norm_backward(dw_sn, cache, out=orig.grad)     # added into .grad in the same pass
        else:
            orig.accumulate(spectral_norm_backward(dw_sn, cache))


class _SpectralNormHooks:
    """A module's normalised parameters and its wrapped forward/backward. Its bound methods
    are the module's instance attributes `forward` and `backward`; copy.deepcopy of the
    module copies it along (the module reference maps to the copy)."""

    def __init__(self, module):
        self.module = module
        self.norms = OrderedDict()
        self.caches = None

    def prepare(self):
        """Before the layer's own forward: the normalised weights (and the power iteration in
        training mode). Returns their caches (None when the module keeps no caches)."""
        m = self.module
        caches = [fn.compute(m, power_iteration=m.training) for fn in self.norms.values()]
        return caches if m._caching else None

    def finish(self, caches):
        """After the layer's own backward: the raw weights' gradients from the normalised ones."""
        m = self.module
        if caches is None:
            raise RuntimeError(f"{type(m).__name__}.backward: the spectral norm has no forward cache")
        for fn, cache in zip(self.norms.values(), caches):
            fn.backward(m, cache)

    def forward(self, *args, **kwargs):
        m = self.module
        self.caches = self.prepare()
        return type(m).forward(m, *args, **kwargs)

    def backward(self, dy):
        m = self.module
        caches, self.caches = self.caches, None
        dx = type(m).backward(m, dy)        # raises first when there was no forward
        self.finish(caches)
        return dx


def _default_dim(module):
    return 1 if isinstance(module, ConvTranspose2d) else 0


def _unit_vector(rng, n, dtype):
    a = rng.standard_normal(n)
    a = a / max(np.sqrt((a * a).sum()), 1e-12)
    return backend.asarray(a.astype(dtype))


def spectral_norm(module, name="weight", n_power_iterations=1, eps=1e-12, dim=None, *, rng=None):
    """Spectrally normalise `module.<name>` in place; returns the module."""
    if not isinstance(module, Module):
        raise TypeError(f"spectral_norm: expected a Module, got {type(module).__name__}")
    hooks = module.__dict__.get(_HOOKS)
    if hooks is not None and name in hooks.norms:
        raise RuntimeError(f"spectral_norm: {type(module).__name__}.{name} is already spectrally normalised "
                           "(cannot register two spectral_norm hooks on the same parameter)")
    p = module._parameters.get(name)
    if p is None:
        have = ", ".join(module._parameters) or "none"
        raise ValueError(f"spectral_norm: {type(module).__name__} has no parameter {name!r} (its parameters: {have})")
    if isinstance(n_power_iterations, bool) or int(n_power_iterations) != n_power_iterations \
            or n_power_iterations <= 0:
        raise ValueError(f"spectral_norm: n_power_iterations must be a positive int, got {n_power_iterations!r}")
    if not eps > 0:
        raise ValueError(f"spectral_norm: eps must be positive, got {eps}")
    dim = _default_dim(module) if dim is None else int(dim)
    if p.data.ndim < 1:
        raise ValueError(f"spectral_norm: {type(module).__name__}.{name} is a scalar")
    if dim < 0:
        dim += p.data.ndim
    outer, h, inner = matrix_dims(p.shape, dim)
    gen = init.get_rng(rng)
    u = _unit_vector(gen, h, p.dtype)
    v = _unit_vector(gen, outer * inner, p.dtype)

    del module._parameters[name]
    p.name = name + "_orig"
    setattr(module, name + "_orig", p)               # registered after the others, as in torch
    module.register_buffer(name + "_u", u)
    module.register_buffer(name + "_v", v)
    object.__setattr__(module, name, Parameter(p.data.copy(), name=name, requires_grad=p.requires_grad))
    fn = SpectralNorm(name, n_power_iterations, dim, eps)
    fn.compute(module, power_iteration=False)        # module.<name> is W / sigma from the start
    if hooks is None:
        hooks = _SpectralNormHooks(module)
        object.__setattr__(module, _HOOKS, hooks)
        object.__setattr__(module, "forward", hooks.forward)
        object.__setattr__(module, "backward", hooks.backward)
    hooks.norms[name] = fn
    return module


def remove_spectral_norm(module, name="weight"):
    """Undo spectral_norm: `module.<name>` becomes a plain parameter holding W / sigma at
    the current u and v (no power iteration), registered last, as torch does."""
    hooks = module.__dict__.get(_HOOKS) if isinstance(module, Module) else None
    if hooks is None or name not in hooks.norms:
        raise ValueError(f"remove_spectral_norm: spectral_norm of {name!r} not found in {type(module).__name__}")
    fn = hooks.norms.pop(name)
    orig = module._parameters.pop(name + "_orig")
    u = module._buffers.pop(name + "_u")
    v = module._buffers.pop(name + "_v")
    for attr in (name + "_orig", name + "_u", name + "_v", name):
        module.__dict__.pop(attr, None)
    w_sn, _, _, _ = spectral_norm_forward(orig.data, u, v, fn.dim, fn.n_power_iterations, fn.eps,
                                          power_iteration=False)
    setattr(module, name, Parameter(w_sn, name=name, requires_grad=orig.requires_grad))
    if not hooks.norms:
        for attr in (_HOOKS, "forward", "backward"):
            module.__dict__.pop(attr, None)
    return module


def only_spectral_norm_wraps(module):
    """True when `module` has no instance-level forward/backward, or only spectral norm's."""
    hooks = module.__dict__.get(_HOOKS) if isinstance(module, Module) else None
    own = {k: module.__dict__[k] for k in ("forward", "backward") if k in module.__dict__}
    if not own:
        return True
    return hooks is not None and own.get("forward") == hooks.forward and own.get("backward") == hooks.backward


def spectral_norm_hooks(module):
    """The module's _SpectralNormHooks (prepare/finish), or None when it has none."""
    return module.__dict__.get(_HOOKS) if isinstance(module, Module) else None


def is_spectrally_normalised(module, name="weight"):
    hooks = module.__dict__.get(_HOOKS) if isinstance(module, Module) else None
    return hooks is not None and name in hooks.norms

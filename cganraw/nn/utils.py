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
        self.prepared = None        # caches a SpectralNormGroup computed for the next forward

    def prepare(self):
        """Before the layer's own forward: the normalised weights (and the power iteration in
        training mode), unless a SpectralNormGroup computed them already. Returns their
        caches (None when the module keeps no caches)."""
        m = self.module
        if self.prepared is not None:
            caches, self.prepared = self.prepared, None
        else:
            caches = [fn.compute(m, power_iteration=m.training) for fn in self.norms.values()]
        return caches if m._caching else None

    def finish(self, caches):
        """After the layer's own backward: the raw weights' gradients from the normalised ones
        (for a group's layer: once every layer of the group is back, all at once)."""
        m = self.module
        if caches is None:
            raise RuntimeError(f"{type(m).__name__}.backward: the spectral norm has no forward cache")
        for fn, cache in zip(self.norms.values(), caches):
            if isinstance(cache, _GroupCache):
                cache.group.arrived(cache)
            else:
                fn.backward(m, cache)

    def forward(self, *args, **kwargs):
        m = self.module
        self.caches = self.prepare()
        return type(m).forward(m, *args, **kwargs)

    def backward(self, dy, **kwargs):
        m = self.module
        caches, self.caches = self.caches, None
        dx = type(m).backward(m, dy, **kwargs)        # raises first when there was no forward
        self.finish(caches)
        return dx


class _GroupCache:
    """A layer's forward cache when its SpectralNormGroup normalised it: `single`, the cache
    the single-layer backward takes (views into the group's arrays)."""

    __slots__ = ("group", "index", "single", "round")

    def __init__(self, group, index, single, round_):
        self.group, self.index, self.single, self.round = group, index, single, round_


class SpectralNormGroup:
    """Every spectrally normalised weight under `root`, normalised together on the kernel
    backends: two launches before root's forward (every power iteration, a block per layer,
    then every W / sigma; ops.spectral_norm.spectral_norm_multi_forward) and two once the
    backward has passed every layer (spectral_norm_multi_backward), where each layer took two
    of each. Arithmetic and semantics are the single-layer ones (the same kernels' bodies).

    The raw weights must be packed by root's optimiser (optim.flat_of(root.parameters())):
    their values and gradients are then views into two flat arrays at known offsets. The group
    packs u and v of every layer into one array of its own (the buffers become views: the state
    dict is unchanged) and holds the normalised weights and their gradient accumulators in two
    more. Made by spectral_norm_group(root), which remakes it when anything moved."""

    def __init__(self, root, flat):
        from cganraw.ops.spectral_norm import multi_table
        self.root, self.flat = root, flat
        self.items = [(m, h, fn) for _, m in root.named_modules() for h in (spectral_norm_hooks(m),)
                      if h is not None for fn in h.norms.values()]
        index = {id(p): i for i, p in enumerate(flat.params)}
        self.origs = [m._parameters[fn.name + "_orig"] for m, _, fn in self.items]
        layout, uv_total = [], 0
        for (m, _, fn), orig in zip(self.items, self.origs):
            u, v = m._buffers[fn.name + "_u"], m._buffers[fn.name + "_v"]
            layout.append((flat.layout[index[id(orig)]][0], tuple(orig.shape), fn.dim, uv_total, fn.n_power_iterations))
            uv_total += u.size + v.size
        tables = {}
        for training in (False, True):
            rows = [(o, sh, d, uv, it if training else 0) for o, sh, d, uv, it in layout]
            table, self.rows_total, wsn_total = multi_table(rows)
            tables[training] = (table, backend.to_device(table))
        self.tables = tables
        dtype = flat.data.dtype
        self.uv = _launch.zeros((uv_total,), dtype)
        self.w_sn = _launch.zeros((wsn_total,), dtype)
        self.zero = _launch.zeros((wsn_total,), dtype)
        self.views = []
        for (m, _, fn), orig, row in zip(self.items, self.origs, tables[True][0]):
            h, cols, uv_off, wsn_off = int(row[2]), int(row[1]) * int(row[3]), int(row[4]), int(row[7])
            u_view, v_view = self.uv[uv_off:uv_off + h], self.uv[uv_off + h:uv_off + h + cols]
            _launch.copy_into(u_view, m._buffers[fn.name + "_u"])
            _launch.copy_into(v_view, m._buffers[fn.name + "_v"])
            m.register_buffer(fn.name + "_u", u_view)
            m.register_buffer(fn.name + "_v", v_view)
            used = m.__dict__[fn.name]
            used.data = self.w_sn[wsn_off:wsn_off + orig.data.size].reshape(orig.shape)
            used.grad = self.zero[wsn_off:wsn_off + orig.data.size].reshape(orig.shape)
            self.views.append((u_view, v_view, used.data, used.grad))
        self.eps = {fn.eps for _, _, fn in self.items}
        self.round, self.back, self.state = 0, set(), None

    def intact(self, root):
        """Whether the group still describes root: the same layers, packing and views."""
        from cganraw import optim
        items = [(m, fn) for _, m in root.named_modules() for h in (spectral_norm_hooks(m),) if h is not None
                 for fn in h.norms.values()]
        return (root is self.root and [(m, fn) for m, _, fn in self.items] == items and self.flat.intact()
                and optim.flat_of(root.parameters()) is self.flat
                and all(m._parameters.get(fn.name + "_orig") is o for (m, _, fn), o in zip(self.items, self.origs))
                and all(m._buffers[fn.name + "_u"] is u and m._buffers[fn.name + "_v"] is v
                        and m.__dict__[fn.name].data is w and m.__dict__[fn.name].grad is g
                        for (m, _, fn), (u, v, w, g) in zip(self.items, self.views)))

    def prepare(self):
        """Every layer's W / sigma for the next forward (the power iteration for the layers in
        training mode): each layer's forward then takes it instead of computing its own."""
        from cganraw.ops.spectral_norm import spectral_norm_multi_forward_cuda
        training = {m.training for m, _, _ in self.items}
        if len(training) != 1 or len(self.eps) != 1:
            return False
        table, table_dev = self.tables[training.pop()]
        uv_out, sigma = spectral_norm_multi_forward_cuda(table_dev, self.flat.data, self.uv, self.w_sn, self.zero,
                                                         next(iter(self.eps)), True, self.rows_total)
        self.round += 1
        self.back = set()
        self.state = (uv_out, sigma, table_dev)
        per_module = OrderedDict()
        for i, ((m, h, fn), orig, row) in enumerate(zip(self.items, self.origs, table)):
            h_, cols, uv_off = int(row[2]), int(row[1]) * int(row[3]), int(row[4])
            single = (orig.data, uv_out[uv_off:uv_off + h_], uv_out[uv_off + h_:uv_off + h_ + cols],
                      sigma[i:i + 1], fn.dim)
            m.__dict__[fn.name].requires_grad = orig.requires_grad
            per_module.setdefault(id(h), (h, []))[1].append(_GroupCache(self, i, single, self.round))
        for h, caches in per_module.values():
            h.prepared = caches
        return True

    def arrived(self, cache):
        """A layer's backward is done: once every layer's is (of this forward), the raw
        weights' gradients of all of them in two launches."""
        if cache.round != self.round or cache.index in self.back:
            self._single(cache)            # a stale or repeated backward: on its own
            return
        self.back.add(cache.index)
        if len(self.back) < len(self.items):
            return
        from cganraw.ops.spectral_norm import spectral_norm_multi_backward_cuda
        train = [o.requires_grad for o in self.origs]
        if all(train):
            uv_out, sigma, table_dev = self.state
            spectral_norm_multi_backward_cuda(table_dev, self.flat.grad, self.zero, self.flat.data, uv_out, sigma)
        elif any(train):
            for i in range(len(self.items)):
                m, _, fn = self.items[i]
                fn.backward(m, self.state_single(i))

    def state_single(self, i):
        m, _, fn = self.items[i]
        uv_out, sigma, _ = self.state
        row = self.tables[True][0][i]
        h_, cols, uv_off = int(row[2]), int(row[1]) * int(row[3]), int(row[4])
        return (self.origs[i].data, uv_out[uv_off:uv_off + h_], uv_out[uv_off + h_:uv_off + h_ + cols],
                sigma[i:i + 1], fn.dim)

    def _single(self, cache):
        m, _, fn = self.items[cache.index]
        fn.backward(m, cache.single)


def spectral_norm_group(root):
    """root's SpectralNormGroup (made once, remade when its layers or packing changed), or
    None where the layers run on their own: on NumPy, without spectral norm, with a layer
    wrapped by anything else, or with the raw weights not packed by an optimiser."""
    from cganraw import optim
    if not backend.uses_kernels():
        return None
    group = root.__dict__.get("_spectral_norm_group")
    if group is not None and group.intact(root):
        return group
    hooks = [(m, h) for _, m in root.named_modules() for h in (spectral_norm_hooks(m),) if h is not None]
    flat = optim.flat_of(root.parameters())
    if not hooks or flat is None or flat.data.dtype != np.float32 or flat.grad is None:
        object.__setattr__(root, "_spectral_norm_group", None)
        return None
    packed = {id(p) for p in flat.params}
    if not all(only_spectral_norm_wraps(m) and all(id(m._parameters[fn.name + "_orig"]) in packed
                                                   for fn in h.norms.values()) for m, h in hooks):
        object.__setattr__(root, "_spectral_norm_group", None)
        return None
    group = SpectralNormGroup(root, flat)
    object.__setattr__(root, "_spectral_norm_group", group)
    return group


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

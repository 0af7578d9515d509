"""Parameter, Module and Sequential: the layer protocol.

A layer's forward keeps one cache; `backward(dy)` adds into each parameter's
`.grad` and returns the gradient of the input, then drops the cache, so a second
backward without a new forward is an error rather than a silent double count.
Parameters and buffers are kept in insertion order, so names, checkpoints and
optimiser state are deterministic. Names follow torch.nn, so a state dict maps
onto the equivalent PyTorch module one-to-one.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


class Parameter:
    """A trainable array with its gradient accumulator."""

    __slots__ = ("data", "grad", "name", "requires_grad")

    def __init__(self, data, name: str = "", requires_grad: bool = True):
        self.data = data
        self.grad = backend.array_module(data).zeros_like(data)
        self.name = name
        self.requires_grad = requires_grad

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self):
        _launch.fill_zero(self.grad)

    def accumulate(self, g):
        """grad += g, skipped when the parameter is frozen or g is None."""
        if g is not None and self.requires_grad:
            _launch.add_into(self.grad, g)

    def __repr__(self):
        return f"Parameter({self.name or '?'}, shape={tuple(self.shape)}, dtype={self.dtype})"


class Module:
    """Base class: registers parameters, buffers and submodules in insertion order."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_caching", True)

    # --- registration -------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if isinstance(value, Parameter):
            if not value.name:
                value.name = name
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """A persistent non-trainable array (e.g. BatchNorm's running statistics)."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    # --- traversal ----------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, mod in self._modules.items():
            yield from mod.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self):
        return list(self._modules.values())

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter), own parameters first, then each child in order."""
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def apply(self, fn):
        """Call fn(module) on every submodule and self (e.g. a custom initialiser)."""
        for _, mod in self.named_modules():
            fn(mod)
        return self

    # --- modes and gradients --------------------------------------------------------
    def train(self, mode: bool = True):
        for _, mod in self.named_modules():
            object.__setattr__(mod, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def requires_grad_(self, flag: bool = True):
        """Freeze (False) or unfreeze all parameters: a frozen layer skips its weight
        gradient GEMMs in backward but still returns the input gradient."""
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def to(self, dtype):
        """Cast floating parameters and buffers (float64 for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        for _, mod in self.named_modules():
            for name, b in list(mod._buffers.items()):
                if b.dtype.kind == "f":
                    mod.register_buffer(name, b.astype(dtype))
        return self

    # --- state --------------------------------------------------------------------
    def state_dict(self):
        """OrderedDict name -> NumPy copy, in PyTorch's order and naming: each module's
        parameters, then its buffers, then its children."""
        out = OrderedDict()
        for mod_name, mod in self.named_modules():
            for name, a in list(mod._parameters.items()) + list(mod._buffers.items()):
                arr = a.data if isinstance(a, Parameter) else a
                out[f"{mod_name}.{name}" if mod_name else name] = np.array(backend.asnumpy(arr), copy=True)
        return out

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays into this module's parameters and buffers. Checks every shape
        before writing anything, so a bad state dict leaves the module untouched."""
        own = OrderedDict()
        for mod_name, mod in self.named_modules():
            for name in list(mod._parameters) + list(mod._buffers):
                own[f"{mod_name}.{name}" if mod_name else name] = (mod, name)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        for key, (mod, name) in own.items():
            if key not in state:
                continue
            target = mod._parameters.get(name) or mod._buffers[name]
            cur = target.data if isinstance(target, Parameter) else target
            given = np.asarray(backend.asnumpy(state[key]))
            if tuple(given.shape) != tuple(cur.shape):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key} has shape "
                                 f"{tuple(given.shape)}, expected {tuple(cur.shape)}")
        for key, (mod, name) in own.items():
            if key not in state:
                continue
            xp = backend.array_module(
                mod._parameters[name].data if name in mod._parameters else mod._buffers[name])
            if name in mod._parameters:
                p = mod._parameters[name]
                p.data[...] = xp.asarray(np.asarray(backend.asnumpy(state[key])), dtype=p.data.dtype)
            else:
                buf = mod._buffers[name]
                buf[...] = xp.asarray(np.asarray(backend.asnumpy(state[key])), dtype=buf.dtype)
        return self

    # --- calling --------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def drop_caches(self):
        """Forget every forward cache in this module tree (frees the activations)."""
        for _, mod in self.named_modules():
            object.__setattr__(mod, "_cache", None)
        return self

    @contextlib.contextmanager
    def inference(self):
        """Eval mode with no forward caches kept, for drawing or scoring: inside it a
        forward holds no activations and backward is an error. Restores the mode."""
        mods = [mod for _, mod in self.named_modules()]
        was_training = self.training
        saved = [mod._caching for mod in mods]
        self.eval()
        self.drop_caches()
        for mod in mods:
            object.__setattr__(mod, "_caching", False)
        try:
            yield self
        finally:
            for mod, flag in zip(mods, saved):
                object.__setattr__(mod, "_caching", flag)
            self.drop_caches()
            self.train(was_training)

    def _save(self, cache):
        if self._caching:
            object.__setattr__(self, "_cache", cache)

    def _pop_cache(self):
        """The forward cache, consumed: backward without a forward raises."""
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward "
                               "(or twice for one forward)")
        object.__setattr__(self, "_cache", None)
        return cache

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, mod in self._modules.items():
            sub = repr(mod).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


def _first_trainable(layers, steps):
    """The index of the first step with a parameter that requires a gradient (len(steps): none)."""
    for i, step in enumerate(steps):
        if any(p.requires_grad for j in step for p in layers[j].parameters()):
            return i
    return len(steps)


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse. Children are named
    0, 1, 2, ... as in torch.nn.Sequential.

    fuse (default True): a layer followed by LeakyReLU runs as one fused op where one
    exists (cganraw.nn.fused: BatchNorm, Linear, Conv2d, ConvTranspose2d, and InstanceNorm2d
    + FiLM + LeakyReLU on the host); the modules and
    their state-dict names are unchanged, and the numpy backend gives the same bits. On the
    host, a Conv2d step before another Conv2d hands its output on batch-minor and gets its
    gradient back so (nn.fused.hands_batch_minor): the same values, two layout turns fewer
    each way."""

    def __init__(self, *layers, fuse=True):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)
        self.fuse = bool(fuse)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        from cganraw.nn import fused
        from cganraw.ops import conv
        layers = list(self._modules.values())
        steps = fused.plan(layers, self.fuse)
        pair_caches = {}
        for i, step in enumerate(steps):
            # a host convolution before another hands its output on batch-minor (and gets its
            # gradient back so); the last step's output leaves the Sequential in NCHW
            handoff = i + 1 < len(steps) and fused.hands_batch_minor(layers, step, steps[i + 1])
            with conv.batch_minor_handoff(handoff):
                if len(step) == 1:
                    x = layers[step[0]](x)
                else:
                    x, pair_caches[step] = fused.step_forward([layers[j] for j in step], x)
        self._save((steps, pair_caches))
        return x

    def backward(self, dy, need_dx=True):
        """dy (gradient of the output) -> dx, or None with need_dx=False: then the steps
        before the first with a trainable parameter are skipped (their caches dropped), and
        that step, a GEMM layer's, skips its input gradient's GEMM (as PyTorch's autograd
        does for an input that needs no gradient: D's images in D's step)."""
        from cganraw.nn import fused
        from cganraw.ops import conv
        layers = list(self._modules.values())
        steps, pair_caches = self._pop_cache()
        first = 0 if need_dx else _first_trainable(layers, steps)
        for i in range(len(steps) - 1, first - 1, -1):
            step = steps[i]
            last = i == first and not need_dx       # its input gradient is not needed
            # a convolution before an InstanceNorm2d pair hands its gradient on channel-major;
            # the first step's gradient leaves the Sequential: as the caller asked
            handoff = fused.hands_channel_major(layers, step, steps[i - 1]) if i else conv.handing_off()
            with conv.channel_major_handoff(handoff):
                if len(step) == 1:
                    layer = layers[step[0]]
                    dy = layer.backward(dy, need_dx=False) if last and fused.takes_need_dx(layer) else layer.backward(dy)
                else:
                    dy = fused.step_backward([layers[j] for j in step], dy, pair_caches[step], need_dx=not last)
        if need_dx:
            return dy
        for step in steps[:first]:
            for j in step:
                layers[j].drop_caches()
        return None

    def extra_repr(self):
        return "" if self.fuse else "fuse=False"

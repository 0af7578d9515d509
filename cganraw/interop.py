"""Exchange with PyTorch and safetensors: our modules' state dicts use PyTorch's names and
layouts, so converting is copying arrays name for name.

    tG = to_torch(G)                         # an equivalent torch.nn.Module, weights loaded
    from_torch(tG, G)                        # a torch state dict back into our module
    tG, tD = torch_models("cgan-conv", 10)   # the GAN models written plainly in PyTorch
    save_safetensors("mnist.safetensors", G, D, metadata={"dataset": "mnist"})
    G, D, meta = load_safetensors("mnist.safetensors")

torch and safetensors are optional: they are imported by the functions that need them,
never by `import cganraw` (pip install "cganraw[torch]" brings both).

A safetensors file holds `G.<name>` and `D.<name>` (the torch state-dict names behind a
prefix), and in its metadata `format` = "cganraw", the package version, and `G`/`D`: the
model configuration as JSON, enough to rebuild the module with `models.build`.
"""
from __future__ import annotations

import functools
import json
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from cganraw import __version__, fileio, models
from cganraw import nn as cnn

FORMAT = "cganraw"
_RESERVED_METADATA = ("format", "cganraw_version", "G", "D")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError('cganraw.interop needs PyTorch: pip install "cganraw[torch]"') from e
    return torch


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as e:
        raise ImportError('cganraw.interop needs safetensors: pip install "cganraw[torch]" '
                          '(or pip install safetensors)') from e
    return safetensors


# ------------------------------------------------------------------ model ports ------

@functools.cache
def torch_classes() -> SimpleNamespace:
    """The GAN models written plainly in PyTorch, attribute for attribute like ours (so the
    state dicts match name for name), and a Reshape layer. Built on first use: torch is
    imported here, not when cganraw.interop is."""
    torch = _torch()
    tnn, F = torch.nn, torch.nn.functional

    class Reshape(tnn.Module):
        """(N, ...) -> (N, *shape), as cganraw.nn.Reshape (torch has no module for it)."""

        def __init__(self, *shape):
            super().__init__()
            self.shape = tuple(int(s) for s in shape)

        def forward(self, x):
            return x.reshape(x.shape[0], *self.shape)

    class _Port(tnn.Module):
        def __init__(self, config):
            super().__init__()
            self.cganraw_config = dict(config)   # what from_torch needs to rebuild ours

    class MinibatchStdDev(tnn.Module):
        """ProGAN's layer as cganraw.nn.MinibatchStdDev: the group is the largest divisor of N
        not above group_size; (N, C, H, W) -> (N, C + 1, H, W)."""

        def __init__(self, group_size=models.MINIBATCH_STD_GROUP, eps=1e-8):
            super().__init__()
            self.group_size, self.eps = group_size, eps

        def forward(self, x):
            n, c, h, w = x.shape
            g = next(d for d in range(min(self.group_size, n), 0, -1) if n % d == 0)
            y = x.reshape(g, -1, c, h, w)
            y = ((y - y.mean(dim=0)).square().mean(dim=0) + self.eps).sqrt().mean(dim=[1, 2, 3])
            return torch.cat([x, y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)], dim=1)

    class FiLM(tnn.Module):
        """cganraw.nn.FiLM: [gamma | beta] = proj(cond), y = x * (1 + gamma) + beta per channel."""

        def __init__(self, cond_features, num_features):
            super().__init__()
            self.proj = tnn.Linear(cond_features, 2 * num_features)

        def forward(self, x, cond):
            gamma, beta = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
            return x * (1 + gamma) + beta

    def growth_buffers(module):
        module.register_buffer("growth_phase", torch.tensor(models.GROWTH_PHASES[0], dtype=torch.int64))
        module.register_buffer("growth_alpha", torch.tensor(1.0))

    def fade(module):
        """The 28x28 path's weight: 0 at phase 14, else growth_alpha."""
        return 0.0 if int(module.growth_phase) == models.GROWTH_PHASES[0] else float(module.growth_alpha)

    class ConvCGANGenerator(_Port):
        """cgan-conv's G with its options: norm "none", "batch" or "instance" after each
        transposed convolution; progressive: the ProGAN heads of models.ProgressiveConvCGANGenerator;
        film: a FiLM layer before each block's LeakyReLU, on [z, one_hot(labels)]."""

        def __init__(self, num_classes, latent_dim=100, width=128, batchnorm=False, *, norm=None, progressive=False,
                     film=False):
            norm = norm or ("batch" if batchnorm else "none")
            super().__init__({"model": "cgan-conv", "role": "G", "num_classes": num_classes, "latent_dim": latent_dim,
                              "width": width, "g_norm": norm, "progressive": progressive,
                              **({"g_film": True} if film else {})})
            w = self.width = width
            self.progressive = progressive
            self.num_classes = num_classes
            self.fc = tnn.Linear(latent_dim, w * 49)
            self.label_emb = tnn.Embedding(num_classes, models.LABEL_EMBED_DIM)
            self.label_fc = tnn.Linear(models.LABEL_EMBED_DIM, 49)

            def up(cin):
                # no bias before a norm, as in cganraw.models (the norm cancels it)
                layers = [tnn.ConvTranspose2d(cin, w, 4, 2, 1, bias=norm == "none"), tnn.LeakyReLU(0.2)]
                if norm != "none":
                    layers.insert(1, tnn.BatchNorm2d(w) if norm == "batch" else tnn.InstanceNorm2d(w, affine=True))
                if film:
                    layers.insert(len(layers) - 1, FiLM(latent_dim + num_classes, w))
                return layers
            if progressive:
                self.block14 = tnn.Sequential(*up(w + 1))
                self.to_img14 = tnn.Sequential(tnn.Conv2d(w, 1, 3, padding=1), tnn.Tanh())
                self.upsample = tnn.Upsample(scale_factor=2, mode="nearest")
                self.block28 = tnn.Sequential(*up(w))
                self.to_img28 = tnn.Sequential(tnn.Conv2d(w, 1, 7, padding=3), tnn.Tanh())
                growth_buffers(self)
            else:
                self.net = tnn.Sequential(*up(w + 1), *up(w), tnn.Conv2d(w, 1, 7, padding=3), tnn.Tanh())

        def forward(self, z, labels):
            h = F.leaky_relu(self.fc(z), 0.2).view(-1, self.width, 7, 7)       # (N, w, 7, 7)
            lab = self.label_fc(self.label_emb(labels)).view(-1, 1, 7, 7)      # (N, 1, 7, 7)
            h = torch.cat([h, lab], 1)
            cond = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1)     # (N, latent + K)

            def run(seq, h):        # a Sequential whose FiLM layers read cond
                for layer in seq:
                    h = layer(h, cond) if isinstance(layer, FiLM) else layer(h)
                return h
            if not self.progressive:
                return run(self.net, h)                                        # (N, 1, 28, 28)
            h14 = run(self.block14, h)                                         # (N, w, 14, 14)
            a = fade(self)
            if a == 0.0:
                return self.upsample(self.to_img14(h14))
            large = self.to_img28(run(self.block28, h14))
            return large if a == 1.0 else (1 - a) * self.upsample(self.to_img14(h14)) + a * large

    class ConvCGANDiscriminator(_Port):
        """cgan-conv's D with its options: spectral norm on the image path, minibatch standard
        deviation before Flatten, progressive: the stems of models.ProgressiveConvCGANDiscriminator;
        label "projection" or "both": the projection term <label_proj(y), h> on the last
        Linear's input h (spectrally normalised too with spectral), without or with the label map;
        stem C > 0: a stride-1 Conv2d(c, C, 3, 1, 1) -> LeakyReLU in front of the first stride-2
        conv (in from_img28 when progressive)."""

        def __init__(self, num_classes, width=128, dropout=0.4, *, spectral=False, minibatch_std=False,
                     progressive=False, label="concat", stem=0):
            super().__init__({"model": "cgan-conv", "role": "D", "num_classes": num_classes, "width": width,
                              "d_norm": "spectral" if spectral else "none", "minibatch_std": minibatch_std,
                              "progressive": progressive, **({"d_label": label} if label != "concat" else {}),
                              **({"d_stem": stem} if stem else {})})
            w = width
            self.progressive = progressive
            self.label = label
            c = 1 if label == "projection" else 2
            if label != "projection":
                self.label_emb = tnn.Embedding(num_classes, models.LABEL_EMBED_DIM)
                self.label_fc = tnn.Linear(models.LABEL_EMBED_DIM, models.IMAGE_SIZE)

            def sn(m):
                return tnn.utils.spectral_norm(m) if spectral else m
            features = (w + (1 if minibatch_std else 0)) * 49
            head = [sn(tnn.Conv2d(w, w, 3, 2, 1)), tnn.LeakyReLU(0.2), *([MinibatchStdDev()] if minibatch_std else []),
                    tnn.Flatten(), tnn.Dropout(dropout), sn(tnn.Linear(features, 1))]
            first = [*([sn(tnn.Conv2d(c, stem, 3, 1, 1)), tnn.LeakyReLU(0.2)] if stem else []),
                     sn(tnn.Conv2d(stem or c, w, 3, 2, 1)), tnn.LeakyReLU(0.2)]
            if progressive:
                self.from_img14 = tnn.Sequential(sn(tnn.Conv2d(c, w, 3, 1, 1)), tnn.LeakyReLU(0.2))
                self.from_img28 = tnn.Sequential(*first)
                self.net = tnn.Sequential(*head)
                growth_buffers(self)
            else:
                self.net = tnn.Sequential(*first, *head)
            if label != "concat":
                self.label_proj = sn(tnn.Embedding(num_classes, features))

        def forward(self, x, labels):
            if self.label == "projection":
                inp = x
            else:
                lab = self.label_fc(self.label_emb(labels)).view(-1, 1, 28, 28)    # (N, 1, 28, 28)
                inp = torch.cat([x, lab], 1)
            if not self.progressive:
                h = inp
            else:
                a = fade(self)
                if a == 0.0:
                    h = self.from_img14(F.avg_pool2d(inp, 2))
                elif a == 1.0:
                    h = self.from_img28(inp)
                else:
                    h = (1 - a) * self.from_img14(F.avg_pool2d(inp, 2)) + a * self.from_img28(inp)
            if self.label == "concat":
                return self.net(h)                                             # (N, 1)
            feats = self.net[:-1](h)                                           # (N, F)
            return self.net[-1](feats) + (self.label_proj(labels) * feats).sum(1, keepdim=True)

    def g_block(i, o, bn):
        return [tnn.Linear(i, o, bias=not bn)] + ([tnn.BatchNorm1d(o), tnn.ReLU()] if bn else [tnn.LeakyReLU(0.2)])

    def d_block(i, o, p):
        return [tnn.Linear(i, o), tnn.LeakyReLU(0.2), tnn.Dropout(p)]

    class MLPGenerator(_Port):
        """cgan-mlp with num_classes, gan-mlp without."""

        def __init__(self, num_classes=None, latent_dim=100):
            super().__init__({"model": "cgan-mlp" if num_classes else "gan-mlp", "role": "G",
                              "num_classes": num_classes, "latent_dim": latent_dim})
            self.k = k = num_classes or 0
            bn = k > 0
            self.net = tnn.Sequential(*g_block(latent_dim + k, 256, bn), *g_block(256, 512, bn),
                                      *g_block(512, 1024, bn), tnn.Linear(1024, models.IMAGE_SIZE), tnn.Tanh(),
                                      tnn.Unflatten(1, models.IMAGE_SHAPE))

        def forward(self, z, labels=None):
            if self.k:
                z = torch.cat([z, F.one_hot(labels, self.k).to(z.dtype)], 1)
            return self.net(z)

    class MLPDiscriminator(_Port):
        def __init__(self, num_classes=None, dropout=0.3):
            super().__init__({"model": "cgan-mlp" if num_classes else "gan-mlp", "role": "D",
                              "num_classes": num_classes})
            self.k = k = num_classes or 0
            self.net = tnn.Sequential(*d_block(models.IMAGE_SIZE + k, 1024, dropout), *d_block(1024, 512, dropout),
                                      *d_block(512, 256, dropout), tnn.Linear(256, 1))

        def forward(self, x, labels=None):
            h = x.flatten(1)
            if self.k:
                h = torch.cat([h, F.one_hot(labels, self.k).to(h.dtype)], 1)
            return self.net(h)

    class DCGANGenerator(_Port):
        def __init__(self, latent_dim=100, width=128):
            super().__init__({"model": "dcgan", "role": "G", "latent_dim": latent_dim, "width": width})
            w, h = width, max(width // 2, 1)
            self.net = tnn.Sequential(tnn.Linear(latent_dim, w * 49), Reshape(w, 7, 7), tnn.BatchNorm2d(w),
                                      tnn.ReLU(), tnn.ConvTranspose2d(w, h, 4, 2, 1, bias=False), tnn.BatchNorm2d(h), tnn.ReLU(),
                                      tnn.ConvTranspose2d(h, 1, 4, 2, 1), tnn.Tanh())

        def forward(self, z, labels=None):
            return self.net(z)

    class DCGANDiscriminator(_Port):
        def __init__(self, width=128):
            super().__init__({"model": "dcgan", "role": "D", "width": width})
            w, h = width, max(width // 2, 1)
            self.net = tnn.Sequential(tnn.Conv2d(1, h, 4, 2, 1), tnn.LeakyReLU(0.2), tnn.Conv2d(h, w, 4, 2, 1, bias=False),
                                      tnn.BatchNorm2d(w), tnn.LeakyReLU(0.2), tnn.Flatten(), tnn.Linear(w * 49, 1))

        def forward(self, x, labels=None):
            return self.net(x)

    return SimpleNamespace(Reshape=Reshape, MinibatchStdDev=MinibatchStdDev, FiLM=FiLM, ConvCGANGenerator=ConvCGANGenerator,
                           ConvCGANDiscriminator=ConvCGANDiscriminator, MLPGenerator=MLPGenerator,
                           MLPDiscriminator=MLPDiscriminator, DCGANGenerator=DCGANGenerator,
                           DCGANDiscriminator=DCGANDiscriminator)


def torch_models(name, num_classes, latent_dim=100, width=128, batchnorm=False, *, g_norm=None, d_norm="none",
                 minibatch_std=False, progressive=False, d_label="concat", g_film=False, d_stem=0):
    """(G, D) of model `name` as PyTorch modules with torch's own initialisation; the
    arguments are models.build's (num_classes is ignored by the unconditional models)."""
    t = torch_classes()
    if name == "cgan-conv":
        return (t.ConvCGANGenerator(num_classes, latent_dim, width, batchnorm, norm=g_norm, progressive=progressive,
                                    film=g_film),
                t.ConvCGANDiscriminator(num_classes, width, spectral=d_norm == "spectral",
                                        minibatch_std=minibatch_std, progressive=progressive, label=d_label,
                                        stem=d_stem))
    if name == "cgan-mlp":
        return t.MLPGenerator(num_classes, latent_dim), t.MLPDiscriminator(num_classes)
    if name == "dcgan":
        return t.DCGANGenerator(latent_dim, width), t.DCGANDiscriminator(width)
    if name == "gan-mlp":
        return t.MLPGenerator(None, latent_dim), t.MLPDiscriminator(None)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(models.MODELS)}")


# ------------------------------------------------------------------ configurations ---

def _dropout_p(module, default):
    ps = [m.p for _, m in module.named_modules() if isinstance(m, cnn.Dropout)]
    return ps[0] if ps else default


def model_config(module) -> dict:
    """The arguments that rebuild one of our G or D: model name, role, sizes and options."""
    if isinstance(module, models.ConvCGANGenerator):
        return {"model": "cgan-conv", "role": "G", "num_classes": module.num_classes, "latent_dim": module.latent_dim,
                "width": module.width, "g_norm": module.norm, "progressive": module.progressive,
                **({"g_film": True} if module.film else {})}
    if isinstance(module, models.ConvCGANDiscriminator):
        spectral = any(name.endswith("weight_orig") for name, _ in module.named_parameters())
        mbstd = any(isinstance(m, cnn.MinibatchStdDev) for _, m in module.named_modules())
        return {"model": "cgan-conv", "role": "D", "num_classes": module.num_classes, "width": module.width,
                "d_norm": "spectral" if spectral else "none", "minibatch_std": mbstd,
                "progressive": module.progressive,
                **({"d_label": module.label_mode} if module.label_mode != "concat" else {}),
                **({"d_stem": module.stem} if module.stem else {})}
    if isinstance(module, (models.MLPGenerator, models.MLPDiscriminator)):
        cfg = {"model": "cgan-mlp" if module.conditional else "gan-mlp", "num_classes": module.num_classes}
        if isinstance(module, models.MLPGenerator):
            return {**cfg, "role": "G", "latent_dim": module.latent_dim}
        return {**cfg, "role": "D"}
    if isinstance(module, models.DCGANGenerator):
        return {"model": "dcgan", "role": "G", "latent_dim": module.latent_dim, "width": module.width}
    if isinstance(module, models.DCGANDiscriminator):
        return {"model": "dcgan", "role": "D", "width": module.width}
    raise TypeError(f"{type(module).__name__} is not one of the GAN models of cganraw.models")


def build_from_config(config: dict):
    """Our G or D, freshly initialised, from a model_config() dict."""
    try:
        name, role = config["model"], config["role"]
    except (KeyError, TypeError):
        raise ValueError(f"not a cganraw model configuration: {config!r}") from None
    if role not in ("G", "D"):
        raise ValueError(f"model configuration: role must be G or D, got {role!r}")
    options = {k: config[k] for k in ("g_norm", "d_norm", "minibatch_std", "progressive", "d_label", "g_film",
                                      "d_stem")
               if k in config}
    G, D = models.build(name, config.get("num_classes"), latent_dim=config.get("latent_dim", 100),
                        width=config.get("width", 128), **options)
    return G if role == "G" else D


# ------------------------------------------------------------------ conversion -------

def _torch_layer(module):
    """A torch.nn layer for one of our layers (no weights yet), or None."""
    tnn = _torch().nn
    if isinstance(module, cnn.Linear):
        return tnn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    if isinstance(module, cnn.ConvTranspose2d):
        return tnn.ConvTranspose2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                   module.padding, module.output_padding, bias=module.bias is not None)
    if isinstance(module, cnn.Conv2d):
        return tnn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                          module.padding, bias=module.bias is not None)
    if isinstance(module, (cnn.BatchNorm1d, cnn.BatchNorm2d)):
        cls = tnn.BatchNorm1d if isinstance(module, cnn.BatchNorm1d) else tnn.BatchNorm2d
        return cls(module.num_features, eps=module.eps, momentum=module.momentum)
    if isinstance(module, cnn.Embedding):
        return tnn.Embedding(module.num_embeddings, module.embedding_dim)
    if isinstance(module, cnn.InstanceNorm2d):
        return tnn.InstanceNorm2d(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                                  track_running_stats=module.track_running_stats)
    if isinstance(module, cnn.MaxPool2d):
        return tnn.MaxPool2d(module.kernel_size, module.stride)
    if isinstance(module, cnn.AvgPool2d):
        return tnn.AvgPool2d(module.kernel_size, module.stride)
    if isinstance(module, cnn.Upsample):
        return tnn.Upsample(scale_factor=module.scale_factor, mode="nearest")
    if isinstance(module, cnn.MinibatchStdDev):
        return torch_classes().MinibatchStdDev(module.group_size, module.eps)
    if isinstance(module, cnn.FiLM):
        return torch_classes().FiLM(module.cond_features, module.num_features)
    if isinstance(module, cnn.LeakyReLU):
        return tnn.LeakyReLU(module.negative_slope)
    if isinstance(module, cnn.Dropout):
        return tnn.Dropout(module.p)
    if isinstance(module, cnn.Reshape):
        return torch_classes().Reshape(*module.shape)
    if isinstance(module, cnn.Sequential):
        children = [to_torch(child) for child in module.children()]
        return tnn.Sequential(*children)
    simple = {cnn.ReLU: tnn.ReLU, cnn.Tanh: tnn.Tanh, cnn.Sigmoid: tnn.Sigmoid, cnn.Flatten: tnn.Flatten}
    for ours, theirs in simple.items():
        if type(module) is ours:
            return theirs()
    return None


def _to_tensors(state):
    torch = _torch()
    return {k: torch.from_numpy(np.array(v, copy=True, order="C")) for k, v in state.items()}


def to_torch(module):
    """An equivalent torch.nn.Module holding a copy of `module`'s parameters and buffers, in
    the same train/eval mode and with the same frozen parameters: one of our GAN models
    (as its torch_classes() port), a layer, or a Sequential of layers."""
    try:
        config = model_config(module)
    except TypeError:
        theirs = _torch_layer(module)
        if theirs is None:
            raise TypeError(f"to_torch: no PyTorch equivalent for {type(module).__name__}; supported: the GAN "
                            f"models of cganraw.models, Sequential and the layers of cganraw.nn "
                            f"except Concat") from None
    else:
        t = torch_classes()
        role, name = config["role"], config["model"]
        dropout = {"cgan-conv": 0.4}.get(name, 0.3)
        if name == "cgan-conv":
            theirs = (t.ConvCGANGenerator(config["num_classes"], config["latent_dim"], config["width"],
                                          norm=config["g_norm"], progressive=config["progressive"],
                                          film=config.get("g_film", False)) if role == "G"
                      else t.ConvCGANDiscriminator(config["num_classes"], config["width"], _dropout_p(module, dropout),
                                                   spectral=config["d_norm"] == "spectral",
                                                   minibatch_std=config["minibatch_std"],
                                                   progressive=config["progressive"],
                                                   label=config.get("d_label", "concat"),
                                                   stem=config.get("d_stem", 0)))
        elif name in ("cgan-mlp", "gan-mlp"):
            theirs = (t.MLPGenerator(config["num_classes"], config["latent_dim"]) if role == "G"
                      else t.MLPDiscriminator(config["num_classes"], _dropout_p(module, dropout)))
        else:
            theirs = (t.DCGANGenerator(config["latent_dim"], config["width"]) if role == "G"
                      else t.DCGANDiscriminator(config["width"]))
    theirs.load_state_dict(_to_tensors(module.state_dict()), strict=True)
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    for name, p in theirs.named_parameters():
        p.requires_grad_(name not in frozen)
    return theirs.train(module.training)


def from_torch(torch_module, ours=None):
    """Copy `torch_module`'s state dict into our module `ours` (names one-to-one, shapes
    checked before anything is written) and return it. Without `ours`, the torch module
    must be one of the torch_classes() ports: ours is then built to match, in its mode."""
    state = {k: v.detach().cpu().numpy() for k, v in torch_module.state_dict().items()}
    if ours is None:
        config = getattr(torch_module, "cganraw_config", None)
        if config is None:
            raise TypeError(f"from_torch: {type(torch_module).__name__} is not a cganraw.interop port; "
                            f"pass the cganraw module to load into")
        ours = build_from_config(config).train(torch_module.training)
    return ours.load_state_dict(state, strict=True)


# ------------------------------------------------------------------ safetensors ------

class Exported(NamedTuple):
    G: object
    D: object
    metadata: dict


def save_safetensors(path, G, D=None, metadata=None):
    """Write G's (and D's) parameters and buffers to a safetensors file, atomically.
    metadata: extra str -> str pairs kept in the file's header."""
    st = _safetensors()
    extra = dict(metadata or {})
    bad = [k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"save_safetensors: metadata keys and values must be strings: {bad}")
    clash = [k for k in extra if k in _RESERVED_METADATA]
    if clash:
        raise ValueError(f"save_safetensors: metadata keys {clash} are reserved")
    header = {"format": FORMAT, "cganraw_version": __version__, **extra}
    tensors = {}
    for prefix, module in (("G", G), ("D", D)):
        if module is None:
            continue
        try:
            header[prefix] = json.dumps(model_config(module))
        except TypeError:
            pass   # any module can be saved; only the GAN models can be rebuilt from the file
        tensors.update({f"{prefix}.{k}": np.array(v, order="C") for k, v in module.state_dict().items()})
    return fileio.atomic_write(path, st.numpy.save(tensors, metadata=header))


def _split(arrays, prefix):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def load_safetensors(path, G=None, D=None) -> Exported:
    """Read a file written by save_safetensors into G and D (built from the file's
    configuration when not given). Returns (G, D, metadata); D is None when the file
    holds none. A missing key, an extra key or a wrong shape is an error."""
    st = _safetensors()
    with open(path, "rb"):   # a missing file or a folder: the usual OSError, naming the path
        pass
    try:
        with st.safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            arrays = {k: handle.get_tensor(k) for k in handle.keys()}
    except st.SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    unknown = [k for k in arrays if not k.startswith(("G.", "D."))]
    if unknown:
        raise ValueError(f"{path}: keys without a G. or D. prefix: {unknown[:5]}; not a cganraw export")
    out = []
    for prefix, module in (("G", G), ("D", D)):
        state = _split(arrays, prefix)
        if not state:
            if module is not None:
                raise ValueError(f"{path}: holds no {prefix} (keys {prefix}.*)")
            out.append(None)
            continue
        if module is None:
            if prefix not in metadata:
                raise ValueError(f"{path}: no {prefix} configuration in the metadata; pass the module to load into")
            module = build_from_config(json.loads(metadata[prefix])).eval()
        out.append(module.load_state_dict(state, strict=True))
    return Exported(out[0], out[1], metadata)

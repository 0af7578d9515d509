"""The GAN models of the literature, as generator/discriminator Module pairs.

    cgan-conv  conditional conv GAN; the label enters through Embedding -> Linear ->
               an extra image channel (7x7 in G, 28x28 in D). The default.
    cgan-mlp   conditional MLP GAN; the label enters as a one-hot vector.
    dcgan      unconditional DCGAN (Radford et al.).
    gan-mlp    unconditional MLP GAN (Goodfellow et al.).

cgan-conv options (`build(..., g_norm=, d_norm=, minibatch_std=, progressive=, d_label=, g_film=,
d_stem=)`; the defaults are the original model, bit for bit):
    g_norm         "none", "batch" (BatchNorm2d, = the old batchnorm=True) or "instance"
                   (InstanceNorm2d, affine) after each of G's transposed convolutions;
    d_norm         "none" or "spectral": spectral_norm on every conv and linear layer of
                   D's image path;
    minibatch_std  ProGAN's MinibatchStdDev(4) on D's last feature map, before Flatten;
    progressive    ProGAN-style growing from 14x14 to 28x28 (ProgressiveConvCGANGenerator,
                   ProgressiveConvCGANDiscriminator, `set_growth(phase, alpha)`);
    d_label        how D reads the label: "concat" (the label map as a second input
                   channel), "projection" (Miyato & Koyama 2018: no label map; the logit is
                   Linear(h) + <E[y], h>, h the features the last Linear reads, E =
                   `label_proj`, an nn.LabelProjection(K, F)) or "both".
    g_film         FiLM in G (Perez et al. 2018; BigGAN's conditional norms): each upsampling
                   block becomes ConvT -> [norm] -> nn.FiLM(cond) -> LeakyReLU, cond =
                   [z, one_hot(label)] (N, latent + K): a per-image, per-channel scale and
                   shift from the noise and the label. The FiLM layers are built last and
                   start as the identity (zero projection), so every other weight is the
                   plain model's and the untrained G computes what it does.
                   With progressive, the FiLM layers sit in block14 and block28.
    d_stem         channels C of a stride-1 Conv2d(c, C, 3, 1, 1) -> LeakyReLU at full
                   resolution (28x28) in front of D's first stride-2 convolution, which then
                   reads C channels (0: none, the original D). It draws its weights first,
                   then the stride-2 conv, then the rest, and spectral norm covers it too.
                   With progressive, it sits in from_img28 only.

Protocol: `G(z, labels) -> images (N, 1, 28, 28)` in [-1, 1], `G.backward(dimages) -> dz`;
`D(x, labels) -> logits (N, 1)`, `D.backward(dlogits) -> dx`. `G.backward(d, need_dz=False)`
and `D.backward(d, need_dx=False)` return None and skip the input gradient's own work (the
training step's: z and D's images need none). Unconditional models take labels=None.
Attribute names follow a plain PyTorch port, so state dicts map one-to-one.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend, nn
from cganraw.nn._check import accumulates_in_place
from cganraw.ops import _launch
from cganraw.ops.conv import channel_major_handoff
from cganraw.ops.embedding import embedding_forward, label_map_concat_backward, label_map_concat_forward
from cganraw.ops.linear import linear_backward, linear_forward

IMAGE_SHAPE = (1, 28, 28)
IMAGE_SIZE = 28 * 28
MODELS = ("cgan-conv", "cgan-mlp", "dcgan", "gan-mlp")
LABEL_EMBED_DIM = 50
G_NORMS = ("none", "batch", "instance")
D_NORMS = ("none", "spectral")
D_LABELS = ("concat", "projection", "both")
D_STEM_OFF = 0
GROWTH_PHASES = (14, 28)
MINIBATCH_STD_GROUP = 4


def _check_z(model, z):
    if not backend.is_array(z) or z.dtype.kind != "f":
        raise TypeError(f"{type(model).__name__}: z must be a floating-point array (N, {model.latent_dim}), "
                        f"got {getattr(z, 'dtype', type(z).__name__)}")
    if z.ndim != 2 or z.shape[1] != model.latent_dim:
        raise ValueError(f"{type(model).__name__}: expected z of shape (N, {model.latent_dim}), "
                         f"got shape {tuple(z.shape)}")


def _check_images(model, x):
    if not backend.is_array(x) or x.dtype.kind != "f":
        raise TypeError(f"{type(model).__name__}: images must be a floating-point array (N, 1, 28, 28), "
                        f"got {getattr(x, 'dtype', type(x).__name__)}")
    if tuple(x.shape[1:]) != IMAGE_SHAPE or x.ndim != 4:
        raise ValueError(f"{type(model).__name__}: expected images of shape (N, 1, 28, 28), "
                         f"got shape {tuple(x.shape)}")


def _check_labels(model, labels, n):
    if model.num_classes is None:
        if labels is not None:
            raise ValueError(f"{type(model).__name__} is unconditional: pass labels=None")
        return
    if labels is None:
        raise ValueError(f"{type(model).__name__} is conditional: labels (N,) are required")
    if not backend.is_array(labels) or labels.dtype.kind not in "iu":
        raise TypeError(f"{type(model).__name__}: labels must be an integer array (N,), "
                        f"got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (n,):
        raise ValueError(f"{type(model).__name__}: expected labels of shape ({n},), got shape {tuple(labels.shape)}")


_identities: dict = {}


def one_hot(labels, num_classes, dtype=np.float32):
    """labels (N,) int -> (N, K) float one-hot, on the labels' backend. With kernels it is
    the embedding gather from an identity matrix (made once): one launch."""
    xp = backend.array_module(labels)
    if backend.uses_kernels() and np.dtype(dtype) == np.float32:
        key = (backend.current(), int(num_classes))
        eye = _identities.get(key)
        if eye is None:
            eye = _identities[key] = backend.to_device(np.eye(num_classes, dtype=np.float32))
        return embedding_forward(labels, eye)[0]
    out = xp.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[xp.arange(labels.shape[0]), labels] = 1
    return out


def init_label_path(emb, fc, rng):
    """Start the label path as loud as the image path.

    With DCGAN's N(0, 0.02) in both Embedding and the Linear after it, the label map
    starts near 0.02 * 0.02 * sqrt(50) = 0.003: some 50x quieter than the noise path in G
    and than the image in D, and its gradients are damped by the same product. D then
    learns to ignore the label and G never learns to draw it, the conditioning collapse
    the source papers report. So the embedding starts at N(0, 1) (torch.nn.Embedding's
    own default) and the Linear at N(0, 1/fan_in), giving a label map of unit scale."""
    nn.init.normal_(emb.weight, std=1.0, rng=rng)
    nn.init.normal_(fc.weight, std=1.0 / np.sqrt(fc.in_features), rng=rng)


NORMS_CANCELLING_BIAS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)


def biases_folded_into_norms(module):
    """(layer key, norm key) for every Linear/Conv2d/ConvTranspose2d built without a bias
    because a BatchNorm or InstanceNorm follows it directly: the norm subtracts each
    channel's mean, which cancels a per-channel bias exactly, so the bias would cost two
    launches a pass for nothing."""
    pairs = []
    for prefix, mod in module.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        names = list(mod._modules)
        for a, b in zip(names, names[1:]):
            layer, norm = mod._modules[a], mod._modules[b]
            if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and layer.bias is None and \
                    isinstance(norm, NORMS_CANCELLING_BIAS):
                pairs.append((f"{prefix}.{a}" if prefix else a, f"{prefix}.{b}" if prefix else b))
    return pairs


def legacy_bias_keys(module, state):
    """The keys of `state` that are biases this model no longer has (biases_folded_into_norms)."""
    return [f"{layer}.bias" for layer, _ in biases_folded_into_norms(module) if f"{layer}.bias" in state]


def upgrade_state_dict(module, state):
    """A state dict saved before the biases in front of the norms were dropped, as this model
    takes it: each such bias b is folded into the norm's running mean (rm - b; an
    InstanceNorm keeps none), which leaves the outputs unchanged in both modes, and removed."""
    pairs = [(layer, norm) for layer, norm in biases_folded_into_norms(module) if f"{layer}.bias" in state]
    if not pairs:
        return state
    state = dict(state)
    for layer, norm in pairs:
        bias = np.asarray(backend.asnumpy(state.pop(f"{layer}.bias")))
        key = f"{norm}.running_mean"
        if key in state:
            state[key] = np.asarray(backend.asnumpy(state[key])) - bias.astype(np.asarray(state[key]).dtype)
    return state


def upgrade_optimizer_state(module, module_state, opt_state):
    """Adam's state saved alongside `module_state` (an old state dict, see upgrade_state_dict),
    renumbered to this model's parameters: the moments of dropped biases are left out."""
    dropped = set(legacy_bias_keys(module, module_state))
    if not dropped:
        return opt_state
    own = [name for name, _ in module.named_parameters()]
    old = [k for k in module_state if k in dropped or k in own]     # the old parameter order
    out = {k: v for k, v in opt_state.items() if not k.startswith(("m.", "v."))}
    for j, name in enumerate(own):
        if name not in old:
            raise KeyError(f"optimiser state has no entry for {name}")
        i = old.index(name)
        for part in ("m", "v"):
            out[f"{part}.{j}"] = opt_state[f"{part}.{i}"]
    return out


class _GAN(nn.Module):
    """Common attributes of both halves."""

    def __init__(self, latent_dim, num_classes):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.num_classes = None if num_classes is None else int(num_classes)

    @property
    def conditional(self):
        return self.num_classes is not None

    def load_state_dict(self, state, strict: bool = True):
        """Module.load_state_dict, taking old state dicts with the biases now dropped in
        front of the norms too (upgrade_state_dict)."""
        return super().load_state_dict(upgrade_state_dict(self, state), strict)


# ---------------------------------------------------------------- the label path, fused

def _plain(module, cls):
    # exactly that layer, its own forward and backward (no spectral norm, hook or spy)
    return type(module) is cls and "forward" not in vars(module) and "backward" not in vars(module)


def _label_path_fused(model, x):
    """Whether the conv models run their label path (Embedding -> Linear -> Reshape -> Concat
    after x; in G also the noise Linear's bias and LeakyReLU) as the fused op
    label_map_concat (cganraw.ops.embedding): on the kernel backends, float32, plain layers.
    The modules and state dicts are the same either way; on NumPy the layers run one by one
    (the same arithmetic, bit for bit, as before the fusion existed)."""
    if not backend.uses_kernels() or x.dtype != np.float32:
        return False
    parts = [(model.label_emb, nn.Embedding), (model.label_fc, nn.Linear), (model.label_map, nn.Reshape),
             (model.concat, nn.Concat)]
    if isinstance(model, ConvCGANGenerator):
        parts += [(model.fc, nn.Linear), (model.fc_act, nn.LeakyReLU), (model.to_map, nn.Reshape)]
        if model.fc.bias is None or not model.fc_act.negative_slope >= 0:
            return False
    return (all(_plain(m, cls) for m, cls in parts) and model.concat.axis == 1 and model.label_fc.bias is not None
            and all(p.dtype == np.float32 for m, _ in parts for p in m.parameters()))


_FUSED = "fused label path"


def _fused_cache(model):
    c = model.concat._cache
    return isinstance(c, tuple) and len(c) > 1 and isinstance(c[0], str) and c[0] == _FUSED


def _label_grads(model, d, cache, need_dx, x_bias=None):
    """The fused label path's backward: the label path's parameters' gradients (and x_bias's,
    G's noise Linear's bias), added into their .grad; returns the x part's gradient."""
    emb, fc = model.label_emb.weight, model.label_fc
    need_label = any(p.requires_grad for p in (emb, fc.weight, fc.bias))
    outs = {}
    for name, p in (("demb_out", emb), ("dfc_w_out", fc.weight), ("dfc_b_out", fc.bias), ("dx_bias_out", x_bias)):
        if p is not None and accumulates_in_place(p, d):
            outs[name] = p.grad
    dx, dbx, demb, dw, db = label_map_concat_backward(d, cache, need_dx, need_label, **outs)
    if x_bias is not None:
        x_bias.accumulate(dbx)
    for p, g in ((emb, demb), (fc.weight, dw), (fc.bias, db)):
        p.accumulate(g)
    return dx


# ---------------------------------------------------------------- cgan-conv ------

def _g_norm(kind, w, rng):
    """The normalisation after a transposed convolution of G: None, BatchNorm2d or an
    affine InstanceNorm2d (both start their weight at DCGAN's N(1, 0.02))."""
    if kind == "batch":
        return nn.BatchNorm2d(w, rng=rng)
    if kind == "instance":
        return nn.InstanceNorm2d(w, affine=True, rng=rng)
    return None


def _up_blocks(w, norm, rng):
    """G's two upsampling blocks [ConvT(w+1, w, 4, 2, 1), (norm), LeakyReLU] and [ConvT(w, w,
    4, 2, 1), (norm), LeakyReLU]: 7x7 -> 14x14 -> 28x28. Both transposed convolutions draw
    their weights before the norms, as the original model did (same seed, same weights)."""
    bias = norm not in ("batch", "instance")         # a norm right after would cancel it
    up1 = [nn.ConvTranspose2d(w + 1, w, 4, 2, 1, bias=bias, rng=rng), nn.LeakyReLU(0.2)]
    up2 = [nn.ConvTranspose2d(w, w, 4, 2, 1, bias=bias, rng=rng), nn.LeakyReLU(0.2)]
    for block in (up1, up2):
        layer = _g_norm(norm, w, rng)
        if layer is not None:
            block.insert(1, layer)
    return up1, up2


def _film_layers(blocks, cond_features, w, rng):
    """One nn.FiLM(cond_features, w) per upsampling block, put before its LeakyReLU (after its
    norm): ConvT -> [norm] -> FiLM -> LeakyReLU. Returns them in order."""
    films = []
    for block in blocks:
        films.append(nn.FiLM(cond_features, w, rng=rng))
        block.insert(len(block) - 1, films[-1])
    return films


class ConvCGANGenerator(_GAN):
    """z (N, latent) -> Linear -> w*7*7 -> LeakyReLU -> (w, 7, 7); label -> Embedding(K, 50)
    -> Linear(50, 49) -> (1, 7, 7); concat -> ConvT(w+1, w, 4, 2, 1) [-> norm] -> LeakyReLU
    -> ConvT(w, w, 4, 2, 1) [-> norm] -> LeakyReLU -> Conv2d(w, 1, 7, p=3) -> tanh.
    norm: "none", "batch" or "instance"; None takes `batchnorm` (True = "batch").
    film: an nn.FiLM before each block's LeakyReLU, on cond = [z, one_hot(labels)] (N, latent
    + K), set on the layers before net runs; backward adds their d(cond)[:, :latent] into dz."""

    progressive = False
    films = ()          # the FiLM layers of the upsampling blocks, in order (g_film)

    def __init__(self, num_classes, latent_dim=100, width=128, batchnorm=False, rng=None, *, norm=None, film=False):
        super().__init__(latent_dim, num_classes)
        w = int(width)
        self.width = w
        self.norm = _resolve_g_norm(norm, batchnorm)
        self._seed_layers(latent_dim, num_classes, w, rng)
        up1, up2 = _up_blocks(w, self.norm, rng)
        last = nn.Conv2d(w, 1, 7, padding=3, rng=rng)
        # FiLM layers after every existing layer: the shared weights are the plain model's
        self.films = _film_layers((up1, up2), self.latent_dim + self.num_classes, w, rng) if film else []
        self.net = nn.Sequential(*up1, *up2, last, nn.Tanh())

    @property
    def film(self):
        return bool(self.films)

    def _seed_layers(self, latent_dim, num_classes, w, rng):
        # the noise path and the label path up to their 7x7 maps
        self.fc = nn.Linear(latent_dim, w * 7 * 7, rng=rng)
        self.fc_act = nn.LeakyReLU(0.2)
        self.to_map = nn.Reshape(w, 7, 7)
        self.label_emb = nn.Embedding(num_classes, LABEL_EMBED_DIM, rng=rng)
        self.label_fc = nn.Linear(LABEL_EMBED_DIM, 7 * 7, rng=rng)
        init_label_path(self.label_emb, self.label_fc, rng)
        self.label_map = nn.Reshape(1, 7, 7)
        self.concat = nn.Concat(axis=1)

    def _seed_map(self, z, labels):
        """(N, w + 1, 7, 7): the noise map and the label map, concatenated."""
        _check_z(self, z)
        _check_labels(self, labels, z.shape[0])
        if _label_path_fused(self, z):
            # one GEMM for the noise Linear (its bias and LeakyReLU go into the fused op), one
            # for the label table, one launch for the concatenation
            raw, _ = linear_forward(z, self.fc.weight.data)              # (N, w*49), no bias yet
            # written channel-major (w + 1, N, 49): the transposed conv after it takes that as it lies
            out, cache = label_map_concat_forward(raw, labels, self.label_emb.weight.data, self.label_fc.weight.data,
                                                  self.label_fc.bias.data, self.fc.bias.data,
                                                  self.fc_act.negative_slope, channel_major_hw=49)
            self.concat._save((_FUSED, cache, z))       # in the concatenation's cache slot
            return out.reshape(self.width + 1, z.shape[0], 7, 7).transpose(1, 0, 2, 3)
        h = self.to_map(self.fc_act(self.fc(z)))                       # (N, w, 7, 7)
        lab = self.label_map(self.label_fc(self.label_emb(labels)))    # (N, 1, 7, 7)
        return self.concat(h, lab)

    def _seed_map_backward(self, d, need_dz=True):
        if _fused_cache(self):
            _, cache, z = self.concat._pop_cache()
            dpre = _label_grads(self, d, cache, True, x_bias=self.fc.bias)        # d (N, w + 1, 7, 7)
            w = self.fc.weight
            dz, dW, _ = linear_backward(dpre, (z, w.data, False), need_dx=need_dz, need_dW=w.requires_grad,
                                        dW_out=w.grad if accumulates_in_place(w, dpre) else None)
            w.accumulate(dW)
            return dz
        dh, dlab = self.concat.backward(d)
        self.label_emb.backward(self.label_fc.backward(self.label_map.backward(dlab)))
        return self.fc.backward(self.fc_act.backward(self.to_map.backward(dh)), need_dx=need_dz)

    def _set_film_condition(self, z, labels):
        """Each FiLM layer's condition for the next forward: [z, one_hot(labels)] (N, latent + K)."""
        if self.films:
            cond = _launch.concatenate([z, one_hot(labels, self.num_classes, z.dtype)], axis=1)
            for f in self.films:
                f.set_condition(cond)

    def _film_need_dz(self, need_dz):
        # the FiLM layers' d(cond) only matters for dz
        for f in self.films:
            f.need_dcond = bool(need_dz)

    def _film_dz(self, dz):
        """dz plus the FiLM layers' d(cond)[:, :latent] (their conditions hold z); with dz None
        (need_dz=False) their d(cond) is dropped."""
        for f in self.films:
            dcond = f.pop_dcond()
            if dz is not None and dcond is not None:
                _launch.add_into(dz, dcond[:, :self.latent_dim])
        return dz

    def forward(self, z, labels):
        seed = self._seed_map(z, labels)
        self._set_film_condition(z, labels)
        return self.net(seed)                                          # (N, 1, 28, 28)

    def backward(self, dy, need_dz=True):
        """dy (N, 1, 28, 28) -> dz (N, latent), or None with need_dz=False (the training step:
        z is no parameter; the fused label path then skips that GEMM)."""
        # the first transposed conv hands its input gradient on channel-major, as the fused
        # label path reads it (ops.conv.channel_major_handoff)
        self._film_need_dz(need_dz)
        with channel_major_handoff(_fused_cache(self)):
            d = self.net.backward(dy)
        return self._film_dz(self._seed_map_backward(d, need_dz))


class ConvCGANDiscriminator(_GAN):
    """label -> Embedding(K, 50) -> Linear(50, 784) -> (1, 28, 28), concat with the image
    [-> Conv2d(2, stem, 3, 1, 1) -> LeakyReLU] -> Conv2d(2 | stem, w, 3, 2, 1) -> LeakyReLU
    -> Conv2d(w, w, 3, 2, 1) -> LeakyReLU [-> MinibatchStdDev(4)] -> Flatten -> Dropout(0.4)
    -> Linear(w*7*7 [+ 49], 1).
    stem: the channels of the stride-1 convolution at 28x28 (0: none); with it, net.0 is
    that conv and net.2 the stride-2 one, drawn in that order before the rest.
    spectral: spectral_norm on the convolutions and the last Linear (`spectral_rng` draws u, v).
    label: "concat" (the above), "projection" (no label map: Conv2d(1, w, ...) on the image;
    logit = Linear(h) + <label_proj.weight[y], h>, h (N, F) the last Linear's input) or
    "both" (the label map and the projection term). label_proj draws its weights last
    (DCGAN's N(0, 0.02), the last Linear's scale), so every other weight is the concat
    model's for the same rng ("both") and, with spectral, is normalised too (Miyato's D)."""

    progressive = False

    def __init__(self, num_classes, width=128, dropout=0.4, rng=None, dropout_seed=None, *, spectral=False,
                 minibatch_std=False, spectral_rng=None, label="concat", stem=D_STEM_OFF):
        super().__init__(0, num_classes)
        w = int(width)
        self.width = w
        self.label_mode = _check_d_label(label)
        self.stem = _check_d_stem(stem)
        if self.label_mode != "projection":
            self._label_path(num_classes, rng)
        self.net = nn.Sequential(
            *_d_first(self._in_channels, w, self.stem, rng),
            *_d_head(w, dropout, rng, dropout_seed, minibatch_std))
        if spectral:
            _spectral_image_path(self.net, spectral_rng)
        self._projection(num_classes, rng, spectral, spectral_rng)

    @property
    def _in_channels(self):
        # the image, and the label map unless D reads the label by projection alone
        return 1 if self.label_mode == "projection" else 2

    def _projection(self, num_classes, rng, spectral, spectral_rng):
        if self.label_mode == "concat":
            return
        self.label_proj = nn.LabelProjection(num_classes, self.net[-1].in_features, rng=rng)
        if spectral:
            nn.utils.spectral_norm(self.label_proj, rng=spectral_rng)

    def _head(self, h, labels):
        """net on h (N, C, 14|28, ...) -> (logits (N, 1), cache for _head_backward). With a
        projection term the layers before the last Linear run as one Sequential (the same
        fused pairs), whose output h (N, F) both the Linear and label_proj read; the term
        is added into the Linear's output (in its launch on the kernel backends)."""
        if self.label_mode == "concat":
            return self.net(h), None
        layers = list(self.net)
        trunk = nn.Sequential(*layers[:-1], fuse=self.net.fuse)   # unregistered: the layers are net's
        feats = trunk(h)
        return self.label_proj(feats, labels, out=layers[-1](feats)), trunk

    def _head_backward(self, dy, trunk, need_dx=True):
        if trunk is None:
            return self.net.backward(dy, need_dx=need_dx)
        dfeats = self.net[-1].backward(dy)
        _launch.add_into(dfeats, self.label_proj.backward(dy))     # both read h: the gradients add
        return trunk.backward(dfeats, need_dx=need_dx)

    def _needs_input_gradient(self, need_dx):
        # the label map's gradient is a slice of the input's: a concatenated map needs it always
        return need_dx or self.label_mode != "projection"

    def _label_path(self, num_classes, rng):
        self.label_emb = nn.Embedding(num_classes, LABEL_EMBED_DIM, rng=rng)
        self.label_fc = nn.Linear(LABEL_EMBED_DIM, IMAGE_SIZE, rng=rng)
        init_label_path(self.label_emb, self.label_fc, rng)
        self.label_map = nn.Reshape(*IMAGE_SHAPE)
        self.concat = nn.Concat(axis=1)

    def _with_label(self, x, labels):
        """(N, 2, 28, 28): the image and the label map (the image alone with projection)."""
        _check_images(self, x)
        _check_labels(self, labels, x.shape[0])
        if self.label_mode == "projection":
            return x
        if _label_path_fused(self, x):
            # one GEMM for the label table, one launch for the concatenation
            out, cache = label_map_concat_forward(x.reshape(x.shape[0], -1), labels, self.label_emb.weight.data,
                                                  self.label_fc.weight.data, self.label_fc.bias.data)
            self.concat._save((_FUSED, cache))          # in the concatenation's cache slot
            return out.reshape((x.shape[0], 2) + IMAGE_SHAPE[1:])
        lab = self.label_map(self.label_fc(self.label_emb(labels)))    # (N, 1, 28, 28)
        return self.concat(x, lab)

    def _with_label_backward(self, d):
        if self.label_mode == "projection":
            return d
        if _fused_cache(self):
            _, cache = self.concat._pop_cache()
            dx = _label_grads(self, d.reshape(d.shape[0], -1), cache, True)
            return dx.reshape((d.shape[0],) + IMAGE_SHAPE)
        dx, dlab = self.concat.backward(d)
        if any(p.requires_grad for m in (self.label_emb, self.label_fc) for p in m.parameters()):
            self.label_emb.backward(self.label_fc.backward(self.label_map.backward(dlab)))
        else:       # a frozen label path (D during G's step): its gradients would be dropped
            for m in (self.label_map, self.label_fc, self.label_emb):
                m.drop_caches()
        return dx

    def forward(self, x, labels):
        inp = self._with_label(x, labels)
        group = nn.utils.spectral_norm_group(self)      # every normalised weight at once (kernel backends)
        if group is not None:
            group.prepare()
        y, trunk = self._head(inp, labels)                             # (N, 1)
        if trunk is not None:
            self._save(trunk)
        return y

    def backward(self, dy, need_dx=True):
        """dy (N, 1) -> dx (N, 1, 28, 28), or None with need_dx=False (D's own step: the
        images need no gradient, and the first convolution's input GEMM is skipped unless the
        label map needs it)."""
        trunk = self._pop_cache() if self.label_mode != "concat" else None
        need = self._needs_input_gradient(need_dx)
        dx = self._with_label_backward(self._head_backward(dy, trunk, need))
        return dx if need_dx else None


def _check_d_label(label):
    if label not in D_LABELS:
        raise ValueError(f"d_label must be one of {', '.join(D_LABELS)}, got {label!r}")
    return label


def _check_d_stem(stem):
    if isinstance(stem, bool) or not isinstance(stem, (int, np.integer)) or stem < 0:
        raise ValueError(f"d_stem must be an integer >= 0 (channels of D's stride-1 stem; 0: none), got {stem!r}")
    return int(stem)


def _d_first(c, w, stem, rng):
    """D's layers from the c-channel 28x28 input to the first (14x14) feature map:
    [Conv2d(c, stem, 3, 1, 1) -> LeakyReLU ->] Conv2d(c | stem, w, 3, 2, 1) -> LeakyReLU,
    drawn in that order (stem 0: the original single stride-2 conv)."""
    layers = [nn.Conv2d(c, stem, 3, 1, 1, rng=rng), nn.LeakyReLU(0.2)] if stem else []
    return [*layers, nn.Conv2d(stem or c, w, 3, 2, 1, rng=rng), nn.LeakyReLU(0.2)]


def _d_head(w, dropout, rng, dropout_seed, minibatch_std):
    """D's layers after the first (14x14) feature map: Conv2d(w, w, 3, 2, 1) -> LeakyReLU
    [-> MinibatchStdDev] -> Flatten -> Dropout -> Linear -> (N, 1)."""
    conv = nn.Conv2d(w, w, 3, 2, 1, rng=rng)
    mbstd = [nn.MinibatchStdDev(MINIBATCH_STD_GROUP)] if minibatch_std else []
    features = (w + (1 if minibatch_std else 0)) * 7 * 7
    return [conv, nn.LeakyReLU(0.2), *mbstd, nn.Flatten(), nn.Dropout(dropout, seed=dropout_seed, layer_id=0),
            nn.Linear(features, 1, rng=rng)]


def _spectral_image_path(layers, rng):
    """Spectral norm on every conv and linear layer between the image and the logit, in
    the given order (u, v are drawn in it: the progressive D lists the plain D's layers
    first, so both get the same vectors). The label path (Embedding, Linear) is left
    alone: it does not touch x, so it has no part in D's Lipschitz constant in x, and
    normalising its Linear would quiet the label map some 5x, undoing init_label_path."""
    for mod in layers:
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.utils.spectral_norm(mod, rng=rng)


# ---------------------------------------------------------------- progressive cgan-conv

def _growth_buffers(module):
    # host arrays, in the state dict (checkpoints and G's moving average carry them)
    module.register_buffer("growth_phase", np.array(GROWTH_PHASES[0], dtype=np.int64))
    module.register_buffer("growth_alpha", np.array(1.0, dtype=np.float32))


def _set_growth(module, phase, alpha):
    if phase not in GROWTH_PHASES:
        raise ValueError(f"{type(module).__name__}.set_growth: phase must be one of {GROWTH_PHASES}, got {phase!r}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{type(module).__name__}.set_growth: alpha must lie in [0, 1], got {alpha}")
    module.growth_phase[...] = phase
    module.growth_alpha[...] = 1.0 if phase == GROWTH_PHASES[0] else alpha
    return module


def _growth(module):
    return int(module.growth_phase), float(module.growth_alpha)


def _route(phase, alpha):
    """Which heads/stems run: "small" (14x14 only), "large" (28x28 only) or "fade" (both)."""
    if phase == 14:
        return "small"
    return "large" if alpha >= 1.0 else "fade"


def _mix(small, large, alpha):
    """(1 - alpha) small + alpha large, in the arrays' dtype."""
    f = large.dtype.type
    out = small * f(1.0 - alpha)
    out += large * f(alpha)
    return out


class ProgressiveConvCGANGenerator(ConvCGANGenerator):
    """The cgan-conv generator grown as in ProGAN (Karras et al. 2018). The seed map and the
    first upsampling block are shared; then two heads:
        to_img14: Conv2d(w, 1, 3, p=1) -> tanh on the 14x14 features, upsampled (nearest) to 28x28;
        block28 -> to_img28: ConvT(w, w, 4, 2, 1) [-> norm] -> LeakyReLU -> Conv2d(w, 1, 7, p=3) -> tanh.
    `set_growth(14)`: the 14x14 head only; `set_growth(28, alpha)`: image =
    (1 - alpha) upsample(img14) + alpha img28 (alpha 1: the 28x28 head only). The output is
    (N, 1, 28, 28) at every phase. Same seed, same weights as ConvCGANGenerator for every
    shared layer (to_img14 draws last)."""

    progressive = True

    def __init__(self, num_classes, latent_dim=100, width=128, batchnorm=False, rng=None, *, norm=None, film=False):
        _GAN.__init__(self, latent_dim, num_classes)
        w = int(width)
        self.width = w
        self.norm = _resolve_g_norm(norm, batchnorm)
        self._seed_layers(latent_dim, num_classes, w, rng)
        up1, up2 = _up_blocks(w, self.norm, rng)
        to_img28 = nn.Sequential(nn.Conv2d(w, 1, 7, padding=3, rng=rng), nn.Tanh())
        to_img14 = nn.Sequential(nn.Conv2d(w, 1, 3, padding=1, rng=rng), nn.Tanh())
        # FiLM layers last, as in the plain G: every other weight is the one without them
        self.films = _film_layers((up1, up2), self.latent_dim + self.num_classes, w, rng) if film else []
        self.block14 = nn.Sequential(*up1)
        self.to_img14 = to_img14
        self.upsample = nn.Upsample(scale_factor=2)
        self.block28 = nn.Sequential(*up2)
        self.to_img28 = to_img28
        _growth_buffers(self)

    def set_growth(self, phase, alpha=1.0):
        """phase 14 or 28; alpha in [0, 1], the 28x28 head's weight during the fade (ignored at 14)."""
        return _set_growth(self, phase, alpha)

    @property
    def growth(self):
        return _growth(self)

    def forward(self, z, labels):
        phase, alpha = self.growth
        route = _route(phase, alpha)
        seed = self._seed_map(z, labels)
        self._set_film_condition(z, labels)     # block28's FiLM (if any) consumes its own only when it runs
        h14 = self.block14(seed)                                       # (N, w, 14, 14)
        self._save((route, alpha))
        if route == "small":
            return self.upsample(self.to_img14(h14))
        large = self.to_img28(self.block28(h14))                       # (N, 1, 28, 28)
        if route == "large":
            return large
        return _mix(self.upsample(self.to_img14(h14)), large, alpha)

    def backward(self, dy, need_dz=True):
        route, alpha = self._pop_cache()
        self._film_need_dz(need_dz)
        f = dy.dtype.type
        if route == "small":
            dh14 = self.to_img14.backward(self.upsample.backward(dy))
        elif route == "large":
            dh14 = self.block28.backward(self.to_img28.backward(dy))
        else:
            dh14 = self.block28.backward(self.to_img28.backward(dy * f(alpha)))
            dh14 += self.to_img14.backward(self.upsample.backward(dy * f(1.0 - alpha)))
        return self._film_dz(self._seed_map_backward(self.block14.backward(dh14), need_dz))


class ProgressiveConvCGANDiscriminator(ConvCGANDiscriminator):
    """The cgan-conv discriminator grown as in ProGAN: one input stem per size, both giving
    (N, w, 14, 14) features for the shared rest of D (`net`):
        from_img28: [Conv2d(2, stem, 3, 1, 1) -> LeakyReLU ->] Conv2d(2 | stem, w, 3, 2, 1)
                    -> LeakyReLU on [image, label map] at 28x28 (d_stem: the bracket);
        from_img14: AvgPool2d(2) of that input -> Conv2d(2, w, 3, 1, 1) -> LeakyReLU.
    `set_growth(14)`: D sees the input average-pooled to 14x14 only; `set_growth(28, alpha)`:
    features = (1 - alpha) from_img14(pool(input)) + alpha from_img28(input). Input images
    are (N, 1, 28, 28) at every phase. Same seed, same weights as ConvCGANDiscriminator for
    every shared layer (from_img14 draws last)."""

    progressive = True

    def __init__(self, num_classes, width=128, dropout=0.4, rng=None, dropout_seed=None, *, spectral=False,
                 minibatch_std=False, spectral_rng=None, label="concat", stem=D_STEM_OFF):
        _GAN.__init__(self, 0, num_classes)
        w = int(width)
        self.width = w
        self.label_mode = _check_d_label(label)
        self.stem = _check_d_stem(stem)
        if self.label_mode != "projection":
            self._label_path(num_classes, rng)
        c = self._in_channels
        from_img28 = nn.Sequential(*_d_first(c, w, self.stem, rng))
        net = nn.Sequential(*_d_head(w, dropout, rng, dropout_seed, minibatch_std))
        self.pool = nn.AvgPool2d(2)
        self.from_img14 = nn.Sequential(nn.Conv2d(c, w, 3, 1, 1, rng=rng), nn.LeakyReLU(0.2))
        self.from_img28 = from_img28
        self.net = net
        _growth_buffers(self)
        if spectral:
            _spectral_image_path([*from_img28, *net, *self.from_img14], spectral_rng)
        self._projection(num_classes, rng, spectral, spectral_rng)

    def set_growth(self, phase, alpha=1.0):
        """phase 14 or 28; alpha in [0, 1], the 28x28 stem's weight during the fade (ignored at 14)."""
        return _set_growth(self, phase, alpha)

    @property
    def growth(self):
        return _growth(self)

    def forward(self, x, labels):
        phase, alpha = self.growth
        route = _route(phase, alpha)
        inp = self._with_label(x, labels)                              # (N, 2 (1: projection), 28, 28)
        if route == "small":
            h = self.from_img14(self.pool(inp))
        elif route == "large":
            h = self.from_img28(inp)
        else:
            h = _mix(self.from_img14(self.pool(inp)), self.from_img28(inp), alpha)
        y, trunk = self._head(h, labels)                               # (N, 1)
        self._save((route, alpha, trunk))
        return y

    def backward(self, dy, need_dx=True):
        """As ConvCGANDiscriminator.backward, through the route of the forward."""
        route, alpha, trunk = self._pop_cache()
        dh = self._head_backward(dy, trunk)
        f = dh.dtype.type
        if not self._needs_input_gradient(need_dx):
            if route != "small":
                self.from_img28.backward(dh if route == "large" else dh * f(alpha), need_dx=False)
            if route != "large":
                self.from_img14.backward(dh if route == "small" else dh * f(1.0 - alpha), need_dx=False)
                self.pool.drop_caches()
            return None
        if route == "small":
            dinp = self.pool.backward(self.from_img14.backward(dh))
        elif route == "large":
            dinp = self.from_img28.backward(dh)
        else:
            dinp = self.from_img28.backward(dh * f(alpha))
            dinp += self.pool.backward(self.from_img14.backward(dh * f(1.0 - alpha)))
        dx = self._with_label_backward(dinp)
        return dx if need_dx else None


# ---------------------------------------------------------------- MLP models -----

def _mlp_block_g(n_in, n_out, rng, batchnorm):
    layers = [nn.Linear(n_in, n_out, bias=not batchnorm, rng=rng)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(n_out, rng=rng))
    layers.append(nn.ReLU() if batchnorm else nn.LeakyReLU(0.2))
    return layers


def _mlp_block_d(n_in, n_out, rng, dropout, dropout_seed, layer_id):
    return [nn.Linear(n_in, n_out, rng=rng), nn.LeakyReLU(0.2), nn.Dropout(dropout, seed=dropout_seed, layer_id=layer_id)]


class MLPGenerator(_GAN):
    """[z, one-hot(K)] -> 256 -> 512 -> 1024 -> 784 -> tanh -> (1, 28, 28).
    Conditional: Linear -> BatchNorm1d -> ReLU blocks; unconditional (gan-mlp): Linear ->
    LeakyReLU(0.2) blocks, as in the original papers."""

    def __init__(self, num_classes=None, latent_dim=100, rng=None):
        super().__init__(latent_dim, num_classes)
        k = num_classes or 0
        bn = num_classes is not None
        self.concat = nn.Concat(axis=1)
        self.net = nn.Sequential(
            *_mlp_block_g(latent_dim + k, 256, rng, bn), *_mlp_block_g(256, 512, rng, bn),
            *_mlp_block_g(512, 1024, rng, bn), nn.Linear(1024, IMAGE_SIZE, rng=rng), nn.Tanh(),
            nn.Reshape(*IMAGE_SHAPE))

    def forward(self, z, labels=None):
        _check_z(self, z)
        _check_labels(self, labels, z.shape[0])
        if self.conditional:
            z = self.concat(z, one_hot(labels, self.num_classes, z.dtype))
        return self.net(z)

    def backward(self, dy, need_dz=True):
        """dy (N, 1, 28, 28) -> dz (N, latent), or None with need_dz=False (the training
        step: the first Linear's input GEMM is skipped)."""
        dz = self.net.backward(dy, need_dx=need_dz)
        if not need_dz:
            self.concat.drop_caches()
            return None
        if self.conditional:
            dz, _ = self.concat.backward(dz)
        return dz


class MLPDiscriminator(_GAN):
    """[x (784), one-hot(K)] -> 1024 -> 512 -> 256 -> 1, LeakyReLU(0.2) and Dropout(0.3)."""

    def __init__(self, num_classes=None, dropout=0.3, rng=None, dropout_seed=None):
        super().__init__(0, num_classes)
        k = num_classes or 0
        # one seed, three layer ids: three independent Philox mask streams
        seed = dropout_seed if isinstance(dropout_seed, np.random.SeedSequence) else np.random.SeedSequence(dropout_seed)
        self.flatten = nn.Flatten()
        self.concat = nn.Concat(axis=1)
        self.net = nn.Sequential(
            *_mlp_block_d(IMAGE_SIZE + k, 1024, rng, dropout, seed, 0),
            *_mlp_block_d(1024, 512, rng, dropout, seed, 1),
            *_mlp_block_d(512, 256, rng, dropout, seed, 2),
            nn.Linear(256, 1, rng=rng))

    def forward(self, x, labels=None):
        _check_images(self, x)
        _check_labels(self, labels, x.shape[0])
        h = self.flatten(x)
        if self.conditional:
            h = self.concat(h, one_hot(labels, self.num_classes, x.dtype))
        return self.net(h)

    def backward(self, dy, need_dx=True):
        """dy (N, 1) -> dx (N, 1, 28, 28), or None with need_dx=False (the one-hot labels
        need no gradient either: the first Linear's input GEMM is skipped)."""
        dh = self.net.backward(dy, need_dx=need_dx)
        if not need_dx:
            self.concat.drop_caches()
            self.flatten.drop_caches()
            return None
        if self.conditional:
            dh, _ = self.concat.backward(dh)
        return self.flatten.backward(dh)


# ---------------------------------------------------------------- dcgan ----------

class DCGANGenerator(_GAN):
    """z -> Linear -> (w, 7, 7) -> BN -> ReLU -> ConvT(w, w/2, 4, 2, 1) -> BN -> ReLU
    -> ConvT(w/2, 1, 4, 2, 1) -> tanh."""

    def __init__(self, latent_dim=100, width=128, rng=None):
        super().__init__(latent_dim, None)
        w, h = int(width), max(int(width) // 2, 1)
        self.width = w
        self.net = nn.Sequential(
            nn.Linear(latent_dim, w * 7 * 7, rng=rng), nn.Reshape(w, 7, 7), nn.BatchNorm2d(w, rng=rng), nn.ReLU(),
            nn.ConvTranspose2d(w, h, 4, 2, 1, bias=False, rng=rng), nn.BatchNorm2d(h, rng=rng), nn.ReLU(),
            nn.ConvTranspose2d(h, 1, 4, 2, 1, rng=rng), nn.Tanh())

    def forward(self, z, labels=None):
        _check_z(self, z)
        _check_labels(self, labels, z.shape[0])
        return self.net(z)

    def backward(self, dy, need_dz=True):
        """dy (N, 1, 28, 28) -> dz (N, latent), or None with need_dz=False."""
        return self.net.backward(dy, need_dx=need_dz)


class DCGANDiscriminator(_GAN):
    """Conv(1, w/2, 4, 2, 1) -> LeakyReLU -> Conv(w/2, w, 4, 2, 1) -> BN -> LeakyReLU -> Linear -> 1."""

    def __init__(self, width=128, rng=None):
        super().__init__(0, None)
        w, h = int(width), max(int(width) // 2, 1)
        self.width = w
        self.net = nn.Sequential(
            nn.Conv2d(1, h, 4, 2, 1, rng=rng), nn.LeakyReLU(0.2),
            nn.Conv2d(h, w, 4, 2, 1, bias=False, rng=rng), nn.BatchNorm2d(w, rng=rng), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(w * 7 * 7, 1, rng=rng))

    def forward(self, x, labels=None):
        _check_images(self, x)
        _check_labels(self, labels, x.shape[0])
        return self.net(x)

    def backward(self, dy, need_dx=True):
        """dy (N, 1) -> dx (N, 1, 28, 28), or None with need_dx=False."""
        return self.net.backward(dy, need_dx=need_dx)


# ---------------------------------------------------------------- factory --------

def _resolve_g_norm(norm, batchnorm):
    """g_norm from the new name or the old `batchnorm` flag (True = "batch")."""
    if norm is None:
        return "batch" if batchnorm else "none"
    if norm not in G_NORMS:
        raise ValueError(f"g_norm must be one of {', '.join(G_NORMS)}, got {norm!r}")
    if batchnorm and norm != "batch":
        raise ValueError(f"batchnorm=True means g_norm='batch', which contradicts g_norm={norm!r}")
    return norm


def build(name, num_classes, latent_dim=100, width=128, seed=0, batchnorm=False, *, g_norm=None, d_norm="none",
          minibatch_std=False, progressive=False, d_label="concat", g_film=False, d_stem=D_STEM_OFF):
    """(G, D) for model `name`, initialised from `seed` (DCGAN's N(0, 0.02)).
    num_classes is ignored by the unconditional models. g_norm, d_norm, minibatch_std,
    progressive, d_label, g_film and d_stem are cgan-conv's options (see the module docstring);
    `batchnorm` is the old name of g_norm="batch". Every option at its default gives the
    original model."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if latent_dim <= 0 or width <= 0:
        raise ValueError(f"latent_dim and width must be positive, got {latent_dim} and {width}")
    conditional = not (name == "dcgan" or name == "gan-mlp")
    if conditional and (num_classes is None or int(num_classes) < 2):
        raise ValueError(f"{name} needs num_classes >= 2, got {num_classes}")
    if d_norm not in D_NORMS:
        raise ValueError(f"d_norm must be one of {', '.join(D_NORMS)}, got {d_norm!r}")
    _check_d_label(d_label)
    d_stem = _check_d_stem(d_stem)
    norm = _resolve_g_norm(g_norm, batchnorm if name == "cgan-conv" else False)
    if name != "cgan-conv":
        extra = [k for k, on in (("g_norm", norm != "none"), ("d_norm", d_norm != "none"),
                                 ("minibatch_std", minibatch_std), ("progressive", progressive),
                                 ("d_label", d_label != "concat"), ("g_film", g_film),
                                 ("d_stem", d_stem != D_STEM_OFF)) if on]
        if extra:
            raise ValueError(f"{', '.join(extra)}: options of cgan-conv only, not of {name}")
    ss = np.random.SeedSequence(seed)
    g_seed, d_seed, drop_seed = ss.spawn(3)
    rg, rd = np.random.default_rng(g_seed), np.random.default_rng(d_seed)
    if name == "cgan-conv":
        # u, v of the spectral norm from a fourth child: the weights stay those of the plain model
        sn_rng = np.random.default_rng(ss.spawn(1)[0]) if d_norm == "spectral" else None
        g_cls, d_cls = ((ProgressiveConvCGANGenerator, ProgressiveConvCGANDiscriminator) if progressive
                        else (ConvCGANGenerator, ConvCGANDiscriminator))
        g_extra = {"film": True} if g_film else {}
        return (g_cls(num_classes, latent_dim, width, rng=rg, norm=norm, **g_extra),
                d_cls(num_classes, width, rng=rd, dropout_seed=drop_seed, spectral=d_norm == "spectral",
                      minibatch_std=bool(minibatch_std), spectral_rng=sn_rng, label=d_label, stem=d_stem))
    if name == "cgan-mlp":
        return MLPGenerator(num_classes, latent_dim, rg), MLPDiscriminator(num_classes, rng=rd, dropout_seed=drop_seed)
    if name == "dcgan":
        return DCGANGenerator(latent_dim, width, rg), DCGANDiscriminator(width, rd)
    return MLPGenerator(None, latent_dim, rg), MLPDiscriminator(None, rng=rd, dropout_seed=drop_seed)


def generate(G, labels=None, z=None, n=None, seed=0, batch=256):
    """Images from G in eval mode with no forward caches kept: the one drawing path of
    train, sample, evaluate and the text renderer.

    labels: (N,) int class indices, or None for an unconditional G (then give n or z).
    z: (N, latent_dim) float noise; drawn as N(0, 1) float32 from `seed` when None.
    Returns float32 (N, 1, 28, 28) in [-1, 1] on the host; G's mode is restored.
    """
    if labels is not None:
        labels = np.asarray(backend.asnumpy(labels))
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"generate: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64, copy=False)
    count = len(labels) if labels is not None else (len(z) if z is not None else n)
    if count is None or int(count) < 0:
        raise ValueError("generate: give labels, z or n")
    count = int(count)
    if z is None:
        z = np.random.default_rng(seed).standard_normal((count, G.latent_dim), dtype=np.float32)
    else:
        z = np.asarray(backend.asnumpy(z), dtype=np.float32)
        if z.shape != (count, G.latent_dim):
            raise ValueError(f"generate: expected z of shape ({count}, {G.latent_dim}), got {z.shape}")
    if int(batch) <= 0:
        raise ValueError(f"generate: batch must be positive, got {batch}")
    xp = backend.array_module(G.parameters()[0].data)
    out = []
    with G.inference():
        for lo in range(0, count, batch):
            lab = None if labels is None else xp.asarray(labels[lo:lo + batch])
            out.append(np.asarray(backend.asnumpy(G(xp.asarray(z[lo:lo + batch]), lab)), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, *IMAGE_SHAPE), np.float32)


def dropout_layers(module):
    """The Dropout layers of a model, in order (their masks are Philox streams of the step)."""
    return [m for _, m in module.named_modules() if isinstance(m, nn.Dropout)]

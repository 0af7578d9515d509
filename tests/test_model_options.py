"""cgan-conv's issue-12 options: g_norm, d_norm, minibatch_std and progressive growing (and
d_label, d_stem).
Float64 finite differences of G and D with each option, the growth semantics (phases, the
fade, the shared weights), state dicts that load into a plain PyTorch port with the same
function, and a training step with every option. The emulator parity is in
tests/kernels/test_model_options_parity.py."""
import copy
import hashlib

import numpy as np
import pytest

from cganraw import models, nn
from cganraw.gradcheck import check_backward
from cganraw.optim import Adam
from cganraw.step import train_step, update_ema

K = 4


def f64(*mods):
    for m in mods:
        m.to(np.float64)


def randomise(module, rng, scale=0.3):
    for name, p in module.named_parameters():
        if p.data.ndim == 1 and name.endswith("weight"):
            p.data[...] = 1 + rng.normal(size=p.shape) * scale       # norm weights around 1
        else:
            p.data[...] = rng.normal(size=p.shape) * scale


G_OPTIONS = [dict(g_norm="none"), dict(g_norm="batch"), dict(g_norm="instance"),
             dict(progressive=True, growth=(14, 1.0)), dict(progressive=True, growth=(28, 0.3)),
             dict(progressive=True, growth=(28, 1.0)), dict(progressive=True, g_norm="instance", growth=(28, 0.6)),
             dict(progressive=True, g_norm="batch", growth=(28, 0.5))]
D_OPTIONS = [dict(d_norm="spectral"), dict(minibatch_std=True), dict(d_norm="spectral", minibatch_std=True),
             dict(progressive=True, growth=(14, 1.0)), dict(progressive=True, growth=(28, 0.3)),
             dict(progressive=True, growth=(28, 1.0)),
             dict(progressive=True, d_norm="spectral", minibatch_std=True, growth=(28, 0.7)),
             dict(d_label="projection"), dict(d_label="both"),
             dict(d_label="projection", d_norm="spectral", minibatch_std=True),
             dict(d_label="both", d_norm="spectral"),
             dict(progressive=True, d_label="projection", growth=(28, 0.4)),
             dict(progressive=True, d_label="both", d_norm="spectral", minibatch_std=True, growth=(14, 1.0)),
             dict(d_stem=2), dict(d_stem=3, d_label="projection"), dict(d_stem=2, d_norm="spectral"),
             dict(d_stem=2, minibatch_std=True),
             dict(d_stem=2, d_label="projection", d_norm="spectral", minibatch_std=True),
             dict(progressive=True, d_stem=2, growth=(28, 0.3)),
             dict(progressive=True, d_stem=2, d_label="projection", d_norm="spectral", minibatch_std=True,
                  growth=(28, 1.0))]


def _build(opts, width=3, seed=0):
    opts = dict(opts)
    growth = opts.pop("growth", None)
    G, D = models.build("cgan-conv", K, width=width, seed=seed, **opts)
    if growth:
        G.set_growth(*growth)
        D.set_growth(*growth)
    return G, D


def _ids(options):
    return ["-".join(f"{k}={v}" for k, v in o.items()) for o in options]


@pytest.mark.parametrize("opts", G_OPTIONS, ids=_ids(G_OPTIONS))
def test_generator_gradients(opts, rng):
    G, _ = _build(opts)
    f64(G)
    randomise(G, rng)
    z = rng.normal(size=(3, 100))      # training mode: the norms use batch/instance statistics
    labels = np.array([0, 2, 3])
    check_backward(lambda a: G(a, labels), G.backward, [z], list(G.named_parameters()), name=f"G {opts}",
                   eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("opts", D_OPTIONS, ids=_ids(D_OPTIONS))
def test_discriminator_gradients(opts, rng):
    _, D = _build(opts)
    D.eval()    # dropout off and spectral norm's u, v fixed: a deterministic function
    f64(D)
    randomise(D, rng)
    x = rng.normal(size=(5, 1, 28, 28))     # 5 samples: minibatch std groups of 1 (5 is prime)
    labels = np.array([1, 3, 0, 2, 1])
    check_backward(lambda a: D(a, labels), D.backward, [x], list(D.named_parameters()), name=f"D {opts}",
                   eps=1e-6, atol=1e-8, rtol=1e-6)
    x = rng.normal(size=(4, 1, 28, 28))     # 4 samples: one group of 4
    check_backward(lambda a: D(a, labels[:4]), D.backward, [x], list(D.named_parameters()), name=f"D {opts} N=4",
                   eps=1e-6, atol=1e-8, rtol=1e-6)


def test_defaults_and_aliases():
    G, D = models.build("cgan-conv", K, width=3)
    assert type(G) is models.ConvCGANGenerator and type(D) is models.ConvCGANDiscriminator
    assert G.norm == "none" and not G.progressive and not D.progressive
    Gb, _ = models.build("cgan-conv", K, width=3, batchnorm=True)
    Gn, _ = models.build("cgan-conv", K, width=3, g_norm="batch")
    assert Gb.norm == Gn.norm == "batch"
    sb, sn = Gb.state_dict(), Gn.state_dict()
    assert list(sb) == list(sn) and all(np.array_equal(sb[k], sn[k]) for k in sb)
    assert list(sb) == list(models.build("cgan-conv", K, width=3, g_norm="batch", batchnorm=True)[0].state_dict())
    # the options leave every shared weight as the plain model draws it
    _, Dp = models.build("cgan-conv", K, width=3)
    _, Ds = models.build("cgan-conv", K, width=3, d_norm="spectral")
    for k, v in Dp.state_dict().items():
        key = k.replace(".weight", ".weight_orig") if k.startswith("net.") and k.endswith("weight") else k
        np.testing.assert_array_equal(Ds.state_dict()[key], v, err_msg=k)


def test_state_dict_names():
    G, D = models.build("cgan-conv", K, width=3, g_norm="instance", d_norm="spectral", minibatch_std=True)
    assert "net.1.weight" in G.state_dict() and "net.1.running_mean" not in G.state_dict()
    assert [k for k in D.state_dict() if k.startswith("net.")] == [
        "net.0.bias", "net.0.weight_orig", "net.0.weight_u", "net.0.weight_v",
        "net.2.bias", "net.2.weight_orig", "net.2.weight_u", "net.2.weight_v",
        "net.7.bias", "net.7.weight_orig", "net.7.weight_u", "net.7.weight_v"]
    assert "label_fc.weight" in D.state_dict()       # the label path is not normalised
    assert isinstance(D.net[4], nn.MinibatchStdDev)
    Gp, Dp = models.build("cgan-conv", K, width=3, progressive=True)
    assert list(Gp.state_dict())[:2] == ["growth_phase", "growth_alpha"]
    assert {k.split(".")[0] for k in Gp.state_dict()} >= {"block14", "to_img14", "block28", "to_img28"}
    assert {k.split(".")[0] for k in Dp.state_dict()} >= {"from_img14", "from_img28", "net"}


def test_bad_options():
    with pytest.raises(ValueError, match="g_norm must be one of none, batch, instance"):
        models.build("cgan-conv", K, g_norm="layer")
    with pytest.raises(ValueError, match="d_norm must be one of none, spectral"):
        models.build("cgan-conv", K, d_norm="batch")
    with pytest.raises(ValueError, match="batchnorm=True means g_norm='batch'"):
        models.build("cgan-conv", K, batchnorm=True, g_norm="instance")
    with pytest.raises(ValueError, match="d_norm, minibatch_std: options of cgan-conv only, not of cgan-mlp"):
        models.build("cgan-mlp", K, d_norm="spectral", minibatch_std=True)
    with pytest.raises(ValueError, match="progressive: options of cgan-conv only"):
        models.build("dcgan", None, progressive=True)
    models.build("cgan-mlp", K, g_norm="none", batchnorm=True)       # batchnorm was always ignored there
    G, D = models.build("cgan-conv", K, width=3, progressive=True)
    with pytest.raises(ValueError, match=r"set_growth: phase must be one of \(14, 28\), got 21"):
        G.set_growth(21)
    with pytest.raises(ValueError, match=r"set_growth: alpha must lie in \[0, 1\], got 1.5"):
        D.set_growth(28, 1.5)


# ---------------------------------------------------------------- d_label: the projection discriminator

@pytest.mark.parametrize("progressive", [False, True])
def test_d_label_state_dicts(progressive):
    w, feats = 3, 3 * 49
    first = "from_img28.0.weight" if progressive else "net.0.weight"
    _, Dc = models.build("cgan-conv", K, width=w, progressive=progressive)
    _, Dp = models.build("cgan-conv", K, width=w, progressive=progressive, d_label="projection")
    _, Db = models.build("cgan-conv", K, width=w, progressive=progressive, d_label="both")
    sc, sp, sb = Dc.state_dict(), Dp.state_dict(), Db.state_dict()
    assert "label_proj.weight" not in sc
    # projection: no label map, a 1-channel first conv, the embedding last
    assert not any(k.startswith(("label_emb", "label_fc")) for k in sp)
    assert sp[first].shape == (w, 1, 3, 3) and list(sp)[-1] == "label_proj.weight"
    assert sp["label_proj.weight"].shape == (K, feats)
    # both: the concat model's every weight as drawn from the same seed, and the embedding after
    assert list(sb) == [*sc, "label_proj.weight"]
    for k, v in sc.items():
        np.testing.assert_array_equal(sb[k], v, err_msg=k)
    _, Ds = models.build("cgan-conv", K, width=w, progressive=progressive, d_label="projection", d_norm="spectral",
                         minibatch_std=True)
    assert list(Ds.state_dict())[-3:] == ["label_proj.weight_orig", "label_proj.weight_u", "label_proj.weight_v"]
    assert Ds.state_dict()["label_proj.weight_orig"].shape == (K, 4 * 49)      # minibatch std's extra channel


def test_d_label_frozen_d_passes_dx_and_takes_no_gradient(rng):
    # D during G's step (step.py freezes it): dx flows through the projection term, no
    # parameter of D gets a gradient; dx equals the unfrozen D's
    for opts in (dict(d_label="projection", d_norm="spectral"), dict(d_label="both")):
        _, D = _build(opts, width=4)
        D.eval()
        randomise(D, rng, 0.2)
        x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
        labels = np.array([1, 3, 0, 3, 1])
        dy = rng.standard_normal((5, 1)).astype(np.float32)
        D(x, labels)
        dx_free = D.backward(dy)
        D.zero_grad()
        D.requires_grad_(False)
        y = D(x, labels)
        dx = D.backward(dy)
        D.requires_grad_(True)
        assert all(not p.grad.any() for p in D.parameters())
        np.testing.assert_allclose(dx, dx_free, rtol=1e-6, atol=1e-7)
        # and the projection term does reach y and dx: with another E both differ
        E = D.label_proj._parameters.get("weight_orig") or D.label_proj.weight
        E.data[...] = rng.standard_normal(E.shape)
        D.requires_grad_(False)
        y0 = D(x, labels)
        dx0 = D.backward(dy)
        assert np.isfinite(dx0).all() and not np.allclose(y0, y) and not np.allclose(dx0, dx)


def test_d_label_bad_options():
    with pytest.raises(ValueError, match="d_label must be one of concat, projection, both"):
        models.build("cgan-conv", K, d_label="hinge")
    with pytest.raises(ValueError, match="d_label: options of cgan-conv only, not of cgan-mlp"):
        models.build("cgan-mlp", K, d_label="projection")


# ---------------------------------------------------------------- progressive growing

def _inputs(rng, n=4):
    return rng.standard_normal((n, 100), dtype=np.float32), rng.integers(0, K, n)


def test_phase_14_is_a_14x14_image_upsampled_and_d_sees_it_pooled(rng):
    G, D = models.build("cgan-conv", K, width=4, progressive=True, seed=1)
    assert G.growth == D.growth == (14, 1.0)
    z, labels = _inputs(rng)
    img = G(z, labels)
    assert img.shape == (4, 1, 28, 28)
    blocks = img.reshape(4, 1, 14, 2, 14, 2)
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :, :, :1, :, :1], blocks.shape))
    # D at phase 14 reads the 2x2 means only: a zero-mean change inside each block is invisible
    D.eval()
    x = rng.uniform(-1, 1, (4, 1, 28, 28)).astype(np.float32)
    wiggle = np.tile(np.array([[1, -1], [-1, 1]], np.float32), (14, 14)) * 0.25
    np.testing.assert_allclose(D(x + wiggle, labels), D(x, labels), rtol=1e-5, atol=1e-6)
    D.set_growth(28)
    assert not np.allclose(D(x + wiggle, labels), D(x, labels), rtol=1e-5, atol=1e-6)


def test_full_growth_equals_the_plain_model(rng):
    # set_growth(28, 1): the shared layers hold the plain model's weights (same seed), so
    # both compute the same function
    for opts in (dict(), dict(g_norm="batch", d_norm="spectral", minibatch_std=True), dict(g_norm="instance"),
                 dict(d_stem=3, d_norm="spectral", minibatch_std=True)):
        G, D = models.build("cgan-conv", K, width=4, seed=5, **opts)
        Gp, Dp = models.build("cgan-conv", K, width=4, seed=5, progressive=True, **opts)
        Gp.set_growth(28), Dp.set_growth(28, 1.0)
        z, labels = _inputs(rng)
        x, xp_ = G(z, labels), Gp(z, labels)
        np.testing.assert_array_equal(xp_, x)
        D.eval(), Dp.eval()
        np.testing.assert_array_equal(Dp(x, labels), D(x, labels))


def test_fade_mixes_the_two_heads_and_stems(rng):
    G, D = models.build("cgan-conv", K, width=4, seed=2, progressive=True, g_norm="instance")
    randomise(G, rng, 0.2), randomise(D, rng, 0.2)
    G.eval(), D.eval()
    z, labels = _inputs(rng)
    x = rng.uniform(-1, 1, (4, 1, 28, 28)).astype(np.float32)
    outs = {}
    for growth in ((14, 1.0), (28, 1.0), (28, 0.25)):
        G.set_growth(*growth), D.set_growth(*growth)
        outs[growth] = G(z, labels)
    np.testing.assert_allclose(outs[(28, 0.25)], 0.75 * outs[(14, 1.0)] + 0.25 * outs[(28, 1.0)], rtol=1e-5, atol=1e-6)
    # D mixes its stems' features (before the nonlinear rest of D)
    D.set_growth(28, 0.25)
    inp = D._with_label(x, labels)
    want = D.net(0.75 * D.from_img14(D.pool(inp)) + 0.25 * D.from_img28(inp))
    D.drop_caches()
    np.testing.assert_allclose(D(x, labels), want, rtol=1e-5, atol=1e-6)
    D.drop_caches()
    # alpha 0 at phase 28 is phase 14's picture
    G.set_growth(28, 0.0)
    np.testing.assert_allclose(G(z, labels), outs[(14, 1.0)], rtol=0, atol=0)


def test_unused_heads_get_no_gradient(rng):
    G, D = models.build("cgan-conv", K, width=3, progressive=True)
    z, labels = _inputs(rng)
    for growth, idle_g, idle_d in (((14, 1.0), ("block28", "to_img28"), ("from_img28",)),
                                   ((28, 1.0), ("to_img14",), ("from_img14",))):
        G.set_growth(*growth), D.set_growth(*growth)
        G.zero_grad(), D.zero_grad()
        x = G(z, labels)
        G.backward(D.backward(D(x, labels)))
        for mod, idle in ((G, idle_g), (D, idle_d)):
            for name, p in mod.named_parameters():
                assert p.grad.any() != name.startswith(idle), (growth, name)


def test_growth_travels_with_the_state_dict_and_the_moving_average(rng):
    G, _ = models.build("cgan-conv", K, width=3, progressive=True)
    G.set_growth(28, 0.375)
    G2, _ = models.build("cgan-conv", K, width=3, progressive=True, seed=9)
    assert G2.growth == (14, 1.0)
    G2.load_state_dict(G.state_dict())
    assert G2.growth == (28, 0.375)
    G3, _ = models.build("cgan-conv", K, width=3, progressive=True)
    update_ema(G3, G, 0.999)
    assert G3.growth == (28, 0.375)
    G4 = copy.deepcopy(G)
    G4.set_growth(14)
    assert G.growth == (28, 0.375)


@pytest.mark.parametrize("opts", [dict(g_norm="instance"), dict(d_norm="spectral"), dict(minibatch_std=True),
                                  dict(progressive=True, growth=(14, 1.0)),
                                  dict(progressive=True, growth=(28, 0.5), g_norm="batch", d_norm="spectral",
                                       minibatch_std=True),
                                  dict(d_label="projection", d_norm="spectral"), dict(d_label="both"),
                                  dict(progressive=True, growth=(28, 0.5), d_label="projection"),
                                  dict(d_stem=3, d_label="projection", minibatch_std=True),
                                  dict(progressive=True, growth=(28, 0.5), d_stem=3, d_norm="spectral")],
                         ids=lambda o: "-".join(map(str, o.values())))
def test_train_step_with_options(opts, rng):
    G, D = _build(opts, width=4)
    opt_g, opt_d = Adam(G.parameters()), Adam(D.parameters())
    before = {k: v.copy() for k, v in D.state_dict().items()}
    x = rng.uniform(-1, 1, (6, 1, 28, 28)).astype(np.float32)
    stats = train_step(G, D, opt_g, opt_d, x, rng.integers(0, K, 6), np.random.default_rng(0), mismatch=1.0)
    assert all(np.isfinite(v) for v in stats.values())
    after = D.state_dict()
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    if opts.get("d_norm") == "spectral":
        assert any(k.endswith("weight_u") for k in moved)       # the power iteration ran in training
    if opts.get("d_label", "concat") != "concat":               # the projection embedding trained
        assert any(k.startswith("label_proj.weight") and not k.endswith(("_u", "_v")) for k in moved), moved
    if opts.get("d_stem"):                                      # the stem conv trained
        stem = "from_img28.0." if opts.get("progressive") else "net.0."
        assert any(k.startswith(stem) for k in moved), moved


# ---------------------------------------------------------------- PyTorch

TORCH_OPTIONS = [dict(g_norm="batch"), dict(g_norm="instance", d_norm="spectral", minibatch_std=True),
                 dict(progressive=True, growth=(14, 1.0)),
                 dict(progressive=True, g_norm="instance", d_norm="spectral", minibatch_std=True, growth=(28, 0.4)),
                 dict(progressive=True, g_norm="batch", growth=(28, 1.0)),
                 dict(d_label="projection", d_norm="spectral", minibatch_std=True), dict(d_label="both"),
                 dict(progressive=True, d_label="projection", growth=(28, 0.4)),
                 dict(progressive=True, d_label="both", d_norm="spectral", growth=(14, 1.0)),
                 dict(d_stem=5, d_label="projection", d_norm="spectral", minibatch_std=True), dict(d_stem=4),
                 dict(progressive=True, d_stem=4, d_norm="spectral", growth=(28, 0.4))]


@pytest.mark.parametrize("opts", TORCH_OPTIONS, ids=_ids(TORCH_OPTIONS))
def test_state_dicts_load_into_a_pytorch_port(opts, rng):
    torch = pytest.importorskip("torch")
    from cganraw.interop import torch_models
    opts = dict(opts)
    growth = opts.pop("growth", None)
    G, D = _build(dict(opts, growth=growth) if growth else opts, width=6, seed=4)
    randomise(G, rng, 0.2), randomise(D, rng, 0.2)
    tG, tD = torch_models("cgan-conv", K, width=6, **opts)
    for ours, theirs in ((G, tG), (D, tD)):
        sd = ours.state_dict()
        assert list(sd) == list(theirs.state_dict())
        theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    D.eval(), tD.eval()                  # dropout off (spectral norm then uses u, v as they are)
    n = 6
    z, labels = rng.standard_normal((n, 100), dtype=np.float32), rng.integers(0, K, n)
    zt = torch.from_numpy(z).requires_grad_()
    x_t = tG(zt, torch.from_numpy(labels))       # G in training mode: batch/instance statistics
    y_t = tD(x_t, torch.from_numpy(labels))
    x = G(z, labels)
    y = D(x, labels)
    np.testing.assert_allclose(x, x_t.detach().numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-4, atol=2e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    G.zero_grad(), D.zero_grad()
    dz = G.backward(D.backward(dy))
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=2e-3, atol=2e-5)
    for ours, theirs in ((G, tG), (D, tD)):
        tgrads = dict(theirs.named_parameters())
        scale = max(float(np.abs(p.grad).max()) for p in ours.parameters())
        for k, p in ours.named_parameters():
            g = tgrads[k].grad      # None where torch's graph did not reach (an idle head)
            g = np.zeros_like(p.grad) if g is None else g.numpy()
            np.testing.assert_allclose(p.grad, g, rtol=2e-3, atol=2e-5 * scale, err_msg=k)
    for k, v in G.state_dict().items():       # BatchNorm's running statistics moved alike
        np.testing.assert_allclose(v, tG.state_dict()[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


# ---------------------------------------------------------------- d_stem: a stride-1 conv at 28x28 in D

def _digest(module):
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


# sha256 over (name, bytes) of D's state dict (10 classes, width 8, seed 3), computed on main
# before d_stem existed
D_DIGESTS = {
    (): "616ae26a703b74071d4198782c656745bb31374ad5b77f4a0efe5069240985a6",
    (("d_label", "projection"), ("minibatch_std", True)):
        "d4b47b280899eefa19fa62c34cbeaabaf64836ec52d9e9e3c31c6aa9ecedca3b",
    (("d_label", "both"), ("d_norm", "spectral")): "fb4755cd76875cd12d3b0b1cbdd0f059a56371af93cf0ecba7dea4d9e75c8f82",
    (("d_label", "projection"), ("minibatch_std", True), ("progressive", True)):
        "60e2d9abe2a6f7c2ea558ba95e493cc7ebcab21d0a870bb07dd996f41cd54faf",
    (("d_norm", "spectral"), ("progressive", True)): "69c292e6a0fe343d5a3e5864beb6f4d571981f385a879fc73abcfc8ac68e82a4"}
# the same of the experiment's D: main with its patch (the stem conv, stem = 16, in front of
# ConvCGANDiscriminator's stride-2 conv), which `d_stem=16` must rebuild bit for bit
D_STEM16_DIGESTS = {
    (): "cdd3955e94c884ec955cf5dd4d69ca19ba1bd6042b249006d516753f53135f39",
    (("d_label", "projection"), ("minibatch_std", True)):
        "566f6ecd763e8aabf83079c5d290dcf749418c3b11b5da68cb2828afaf550897",
    (("d_label", "both"), ("d_norm", "spectral")): "56696b6f6cda1f4c250f2a3fb7c22af4f600aa57dee558fcf82c0bc36ef652e5"}


@pytest.mark.parametrize("opts", list(D_DIGESTS), ids=_ids(map(dict, D_DIGESTS)))
def test_d_stem_off_is_the_d_of_before(opts):
    for kwargs in (dict(opts), dict(opts, d_stem=0)):
        _, D = models.build("cgan-conv", 10, width=8, seed=3, **kwargs)
        assert _digest(D) == D_DIGESTS[opts] and D.stem == 0


@pytest.mark.parametrize("opts", list(D_STEM16_DIGESTS), ids=_ids(map(dict, D_STEM16_DIGESTS)))
def test_d_stem_16_is_the_experiments_d(opts):
    G0, _ = models.build("cgan-conv", 10, width=8, seed=3, **dict(opts))
    G, D = models.build("cgan-conv", 10, width=8, seed=3, d_stem=16, **dict(opts))
    assert _digest(D) == D_STEM16_DIGESTS[opts] and D.stem == 16
    assert _digest(G) == _digest(G0)          # G draws from its own stream: untouched


@pytest.mark.parametrize("label", ["concat", "projection"])
def test_d_stem_layout_and_shared_weights(label):
    w, stem, c = 5, 3, 1 if label == "projection" else 2
    _, D0 = models.build("cgan-conv", K, width=w, seed=2, d_label=label)
    _, D = models.build("cgan-conv", K, width=w, seed=2, d_label=label, d_stem=stem)
    kinds = [type(m).__name__ for m in D.net]
    assert kinds[:6] == ["Conv2d", "LeakyReLU", "Conv2d", "LeakyReLU", "Conv2d", "LeakyReLU"]
    assert (D.net[0].stride, D.net[0].padding, D.net[2].stride, D.net[2].padding) == (1, 1, 2, 1)
    sd, sd0 = D.state_dict(), D0.state_dict()
    assert sd["net.0.weight"].shape == (stem, c, 3, 3) and sd["net.0.bias"].shape == (stem,)
    assert sd["net.2.weight"].shape == (w, stem, 3, 3)
    # the rest is the plain D's, two places on; its stride-2 conv reads stem channels now
    renamed = {k: k for k in sd0 if not k.startswith("net.")}
    renamed.update({k: f"net.{int(k.split('.')[1]) + 2}.{k.split('.', 2)[2]}" for k in sd0 if k.startswith("net.")})
    assert set(sd) == set(renamed.values()) | {"net.0.weight", "net.0.bias"}
    for k, v in sd0.items():
        assert sd[renamed[k]].shape == v.shape or k == "net.0.weight", k
    assert [type(m).__name__ for m in D.net][2:] == [type(m).__name__ for m in D0.net]
    # the stem widens nothing after the first 14x14 map
    assert D.net[-1].in_features == D0.net[-1].in_features
    # spectral norm covers the stem conv, u, v drawn in net's order
    _, Ds = models.build("cgan-conv", K, width=w, seed=2, d_label=label, d_stem=stem, d_norm="spectral")
    convs = [k.rsplit(".", 1)[0] for k in Ds.state_dict() if k.endswith("weight_orig")]
    assert convs[:3] == ["net.0", "net.2", "net.4"] and Ds.state_dict()["net.0.weight_u"].shape == (stem,)
    for k, v in sd.items():          # the same weights, normalised
        key = k.replace(".weight", ".weight_orig") if k.startswith(("net.", "label_proj.")) and \
            k.endswith("weight") else k
        np.testing.assert_array_equal(Ds.state_dict()[key], v, err_msg=k)


def test_d_stem_in_the_progressive_d():
    w, stem = 5, 3
    _, D = models.build("cgan-conv", K, width=w, seed=2, d_stem=stem, d_norm="spectral")
    _, Dp = models.build("cgan-conv", K, width=w, seed=2, d_stem=stem, d_norm="spectral", progressive=True)
    _, Dp0 = models.build("cgan-conv", K, width=w, seed=2, d_norm="spectral", progressive=True)
    sp, sp0, s = Dp.state_dict(), Dp0.state_dict(), D.state_dict()
    assert [type(m).__name__ for m in Dp.from_img28] == ["Conv2d", "LeakyReLU", "Conv2d", "LeakyReLU"]
    assert sp["from_img28.0.weight_orig"].shape == (stem, 2, 3, 3)
    assert sp["from_img28.2.weight_orig"].shape == (w, stem, 3, 3)
    assert Dp.from_img28[0].stride == 1 and Dp.from_img28[2].stride == 2
    # from_img14 as before: one conv on the pooled input, its key and shape unchanged
    assert [k for k in sp if k.startswith("from_img14.")] == [k for k in sp0 if k.startswith("from_img14.")]
    assert sp["from_img14.0.weight_orig"].shape == sp0["from_img14.0.weight_orig"].shape == (w, 2, 3, 3)
    # from_img28 draws first, then net, then from_img14: every shared weight (and u, v) is
    # the plain D's with the same stem
    for k, v in s.items():
        i = k.split(".")[1] if k.startswith("net.") else None
        key = k if i is None else (f"from_img28.{k.split('.', 1)[1]}" if int(i) < 4 else
                                   f"net.{int(i) - 4}.{k.split('.', 2)[2]}")
        np.testing.assert_array_equal(sp[key], v, err_msg=k)


@pytest.mark.parametrize("bad", [-1, 1.5, "16", True, None])
def test_d_stem_bad_values(bad):
    with pytest.raises(ValueError, match="d_stem must be an integer >= 0"):
        models.build("cgan-conv", K, d_stem=bad)


def test_d_stem_is_a_cgan_conv_option():
    for name, k in (("cgan-mlp", K), ("dcgan", None), ("gan-mlp", None)):
        with pytest.raises(ValueError, match=f"d_stem: options of cgan-conv only, not of {name}"):
            models.build(name, k, d_stem=8)
        models.build(name, k, d_stem=0)         # off is every model's
    assert models.build("cgan-conv", K, width=3, d_stem=np.int64(2))[1].stem == 2

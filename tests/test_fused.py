"""Layer + LeakyReLU pairs fused inside nn.Sequential (cganraw.nn.fused): the same bits as
unfused on the numpy backend (outputs and every gradient, whole models included), float64
finite-difference checks of each fused pair, unchanged state dicts, and the fused ops'
references against the unfused chains."""
import numpy as np
import pytest

from cganraw import models, nn
from cganraw.gradcheck import check_module
from cganraw.nn import fused
from cganraw.ops import activation as A
from cganraw.ops import batchnorm as BN
from cganraw.ops import bias as B


def away_from_zero(rng, shape, gap=0.05):
    x = rng.normal(size=shape)
    return np.where(np.abs(x) < gap, np.sign(x + 1e-12) * gap + x, x)


def _pairs(rng, dtype=np.float32):
    return {
        "linear": (nn.Linear(7, 5, rng=rng, dtype=dtype), (3, 7)),
        "conv2d": (nn.Conv2d(2, 3, 3, 2, 1, rng=rng, dtype=dtype), (2, 2, 7, 7)),
        "conv_transpose2d": (nn.ConvTranspose2d(3, 2, 4, 2, 1, rng=rng, dtype=dtype), (2, 3, 3, 3)),
        "batchnorm2d": (nn.BatchNorm2d(3, rng=rng, dtype=dtype), (3, 3, 5, 5)),
        "batchnorm1d": (nn.BatchNorm1d(6, rng=rng, dtype=dtype), (5, 6)),
    }


def _randomise(layer, rng):
    for p in layer.parameters():
        p.data[...] = rng.normal(size=p.shape) * (0.3 if p.data.ndim > 1 else 1.0)


def test_plan_finds_the_pairs(rng):
    lin, act, bn = nn.Linear(3, 4, rng=rng), nn.LeakyReLU(0.2), nn.BatchNorm1d(4, rng=rng)
    seq = nn.Sequential(lin, act, bn, nn.LeakyReLU(0.1), nn.ReLU(), nn.Linear(4, 2, bias=False, rng=rng),
                        nn.LeakyReLU(0.2), nn.Tanh(), nn.LeakyReLU(-0.5))
    assert fused.plan(list(seq), seq.fuse) == [(0, 1), (2, 3), (4,), (5,), (6,), (7,), (8,)]
    seq.fuse = False
    assert fused.plan(list(seq), seq.fuse) == [(i,) for i in range(9)]
    assert "fuse=False" in repr(seq)


@pytest.mark.parametrize("name", ["linear", "conv2d", "conv_transpose2d", "batchnorm2d", "batchnorm1d"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_pair_is_bit_identical_to_unfused(name, training, rng):
    layer, shape = _pairs(rng)[name]
    _randomise(layer, rng)
    seq = nn.Sequential(layer, nn.LeakyReLU(0.2))
    seq.train(training)
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=seq(x).shape).astype(np.float32)
    seq.drop_caches()
    results = []
    for fuse in (True, False):
        seq.fuse = fuse
        seq.zero_grad()
        state = {k: v.copy() for k, v in seq.state_dict().items()}
        y = seq(x)
        dx = seq.backward(dy)
        results.append((y, dx, [p.grad.copy() for p in seq.parameters()], seq.state_dict()))
        seq.load_state_dict(state)           # the same running statistics for the second pass
    (y1, dx1, g1, s1), (y2, dx2, g2, s2) = results
    assert np.array_equal(y1, y2) and np.array_equal(dx1, dx2)
    assert all(np.array_equal(a, b) for a, b in zip(g1, g2))
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)


@pytest.mark.parametrize("name", ["linear", "conv2d", "conv_transpose2d", "batchnorm2d", "batchnorm1d"])
def test_fused_pair_gradcheck_float64(name, rng):
    layer, shape = _pairs(rng, np.float64)[name]
    _randomise(layer, rng)
    seq = nn.Sequential(layer, nn.LeakyReLU(0.2))
    if isinstance(layer, nn.BatchNorm2d) or isinstance(layer, nn.BatchNorm1d):
        x = rng.normal(size=shape)
        # keep the normalised pre-activations off the kink: shift beta away from -xhat*gamma
        seq.eval()
        layer.running_mean[...] = rng.normal(size=layer.num_features)
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.num_features)
        check_module(seq, away_from_zero(rng, shape))
        seq.train()
        check_module(seq, x, before_forward=lambda: None)
    else:
        check_module(seq, away_from_zero(rng, shape))
    assert fused.plan(list(seq), True) == [(0, 1)]


def test_pair_modules_hold_no_cache_and_names_are_unchanged(rng):
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.LeakyReLU(0.2), nn.BatchNorm2d(2, rng=rng), nn.LeakyReLU(0.2))
    names = list(seq.state_dict())
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "2.running_mean", "2.running_var",
                     "2.num_batches_tracked"]
    seq(np.ones((2, 1, 5, 5), np.float32))
    assert all(m._cache is None for m in seq)
    with pytest.raises(RuntimeError, match="without a forward"):
        seq[0].backward(np.ones((2, 2, 3, 3), np.float32))
    seq.backward(np.ones((2, 2, 3, 3), np.float32))
    with pytest.raises(RuntimeError, match="Sequential.backward called without a forward"):
        seq.backward(np.ones((2, 2, 3, 3), np.float32))
    with seq.inference():
        seq(np.ones((2, 1, 5, 5), np.float32))
        assert seq._cache is None


# Host convolutions (numpy with Numba) run their pair on batch-minor columns with the layout
# turn (Conv2d) or the bias and activation (ConvTranspose2d) inside the column passes
# (ops.conv_leaky): the unfused bits, at sizes that take the serial and the parallel kernels,
# on an NCHW and a channel-major input, gradients added into ones already there, and with
# the layer frozen (no weight or bias gradient).
HOST_PAIRS = [
    ("conv2d", (2, 3, 3, 2, 1), (3, 2, 9, 7)),            # odd sizes, a window over the far edge
    ("conv2d", (5, 24, 4, 2, 1), (33, 5, 14, 14)),         # columns past the parallel threshold
    ("conv_transpose2d", (3, 5, 4, 2, 1), (2, 3, 3, 5)),
    ("conv_transpose2d", (9, 24, 4, 2, 1), (17, 9, 14, 14)),
    ("conv_transpose2d", (4, 3, 3, 2, 1), (3, 4, 5, 4)),   # a geometry the phase split never takes
]


@pytest.mark.parametrize("name,args,shape", HOST_PAIRS)
@pytest.mark.parametrize("channel_major", [False, True])
@pytest.mark.parametrize("frozen", [False, True])
def test_host_column_pairs_fuse_bit_identically(name, args, shape, channel_major, frozen, rng, monkeypatch):
    from cganraw.ops import _cpu
    from cganraw.ops import conv as C
    if not _cpu.enabled():
        pytest.skip("numba not installed")
    monkeypatch.setattr(C, "_transpose_override", "col2im")
    layer = (nn.Conv2d if name == "conv2d" else nn.ConvTranspose2d)(*args, rng=rng)
    _randomise(layer, rng)
    layer.weight.requires_grad = layer.bias.requires_grad = not frozen
    seq = nn.Sequential(layer, nn.LeakyReLU(0.2))
    x = rng.normal(size=shape).astype(np.float32)
    if channel_major:
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    dy = rng.normal(size=seq(x).shape).astype(np.float32)
    seq.drop_caches()
    runs = []
    for fuse in (True, False):
        seq.fuse = fuse
        for p in seq.parameters():
            p.grad[...] = 0.25                     # gradients add into what is there
        y = seq(x).copy()
        if fuse:
            assert seq._cache[1][(0, 1)][0][0] == "batch_minor"     # the pair took the host column path
        dx = seq.backward(dy)
        runs.append([y, dx] + [p.grad.copy() for p in seq.parameters()])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    assert frozen == all(np.all(p.grad == 0.25) for p in seq.parameters())


@pytest.mark.parametrize("model,kw", [("cgan-conv", {"width": 8, "batchnorm": True}), ("cgan-conv", {"width": 8}),
                                      ("dcgan", {"width": 8}), ("cgan-mlp", {}), ("gan-mlp", {})])
def test_models_are_bit_identical_fused_and_unfused(model, kw, rng):
    G, D = models.build(model, num_classes=10 if model.startswith("cgan") else None, seed=3, **kw)
    D.eval()          # Dropout would draw new masks on the second pass (G keeps training-mode BatchNorm)
    n = 5
    z = rng.normal(size=(n, G.latent_dim)).astype(np.float32)
    labels = rng.integers(0, 10, n) if G.conditional else None
    seqs = [m for root in (G, D) for _, m in root.named_modules() if isinstance(m, nn.Sequential)]
    assert any(fused.plan(list(s), True) != [(i,) for i in range(len(s))] for s in seqs)
    runs = []
    for fuse in (True, False):
        for s in seqs:
            s.fuse = fuse
        states = (G.state_dict(), D.state_dict())
        G.zero_grad()
        D.zero_grad()
        img = G(z, labels)
        logits = D(img, labels)
        dimg = D.backward(np.ones_like(logits))
        dz = G.backward(dimg)
        runs.append([img, logits, dimg, dz] + [p.grad.copy() for p in G.parameters() + D.parameters()]
                    + list(G.state_dict().values()))
        G.load_state_dict(states[0])
        D.load_state_dict(states[1])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


# ---------------------------------------------------------------- the fused ops' references
def test_bias_leaky_relu_reference_is_the_unfused_chain(rng):
    y = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    dy = rng.normal(size=y.shape).astype(np.float32)
    pre = B.bias_add_forward_numpy(y.copy(), b)
    want, cache = A.leaky_relu_forward_numpy(pre, 0.2)
    got, fcache = B.bias_leaky_relu_forward_numpy(y.copy(), b, 0.2)
    assert np.array_equal(got, want)
    dpre, db = B.bias_leaky_relu_backward_numpy(dy, fcache)
    want_dpre = A.leaky_relu_backward_numpy(dy, cache)
    assert np.array_equal(dpre, want_dpre) and np.array_equal(db, B.bias_add_backward_numpy(want_dpre))
    with pytest.raises(ValueError, match="negative_slope >= 0"):
        B.bias_leaky_relu_forward_numpy(y.copy(), b, -0.1)


def test_batchnorm_leaky_relu_reference_is_the_unfused_chain(rng):
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    g, b = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y_bn, cache_bn, m, v = BN.batchnorm_forward_numpy(x, g, b)
    want, cache_act = A.leaky_relu_forward_numpy(y_bn, 0.1)
    got, cache, m2, v2 = BN.batchnorm_leaky_relu_forward_numpy(x, g, b, negative_slope=0.1)
    assert np.array_equal(got, want) and np.array_equal(m, m2) and np.array_equal(v, v2)
    dx, dg, db = BN.batchnorm_leaky_relu_backward_numpy(dy, cache)
    wdx, wdg, wdb = BN.batchnorm_backward_numpy(A.leaky_relu_backward_numpy(dy, cache_act), cache_bn)
    assert np.array_equal(dx, wdx) and np.array_equal(dg, wdg) and np.array_equal(db, wdb)


def test_spectrally_normalised_layers_fuse_bit_identically(rng):
    # the fused pair runs the spectral norm's own steps around the fused op: outputs, input
    # gradients, the raw weight's and the bias's gradients and the power iteration's u, v
    # are the unfused ones, bit for bit, over two training steps and in eval mode
    conv = nn.utils.spectral_norm(nn.Conv2d(2, 3, 3, rng=rng), rng=np.random.default_rng(0))
    seq = nn.Sequential(conv, nn.LeakyReLU(0.2), nn.Linear(3, 2, rng=rng), nn.LeakyReLU(0.2))
    assert fused.plan(list(seq), True) == [(0, 1), (2, 3)]
    for name in ("linear", "conv2d", "conv_transpose2d"):
        layer, shape = _pairs(rng)[name]
        _randomise(layer, rng)
        nn.utils.spectral_norm(layer, rng=np.random.default_rng(1))
        seq = nn.Sequential(layer, nn.LeakyReLU(0.2))
        xs = [rng.normal(size=shape).astype(np.float32) for _ in range(3)]
        state = {k: v.copy() for k, v in seq.state_dict().items()}
        results = []
        for fuse in (True, False):
            seq.fuse = fuse
            seq.load_state_dict(state)
            seq.train()
            seq.zero_grad()
            out = []
            for i, x in enumerate(xs):
                if i == 2:
                    seq.eval()
                y = seq(x)
                out += [y, seq.backward(np.cos(y)), layer.weight_orig.grad.copy(), layer.bias.grad.copy(),
                        layer.weight_u.copy(), layer.weight_v.copy()]
            results.append(out)
        assert fused.plan(list(seq), True) == [(0, 1)]
        for i, (a, b) in enumerate(zip(*results)):
            assert np.array_equal(a, b), f"{name}: result {i} differs fused/unfused"


def test_spectrally_normalised_pair_gradcheck_float64(rng):
    layer = nn.Conv2d(2, 3, 3, 2, 1, rng=rng, dtype=np.float64)
    _randomise(layer, rng)
    nn.utils.spectral_norm(layer, rng=np.random.default_rng(2))
    seq = nn.Sequential(layer, nn.LeakyReLU(0.2)).eval()     # eval: u, v fixed, sigma depends on W alone
    assert fused.plan(list(seq), True) == [(0, 1)]
    check_module(seq, away_from_zero(rng, (2, 2, 7, 7)))


def test_other_wrapped_layers_run_unfused(rng):
    # an instance-level forward that is not spectral norm's (a spy): the fused op would skip it
    conv = nn.Conv2d(2, 3, 3, rng=rng)
    conv.forward = lambda x: nn.Conv2d.forward(conv, x)
    seq = nn.Sequential(conv, nn.LeakyReLU(0.2), nn.Linear(3, 2, rng=rng), nn.LeakyReLU(0.2))
    assert fused.plan(list(seq), True) == [(0,), (1,), (2, 3)]

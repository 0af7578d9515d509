"""The four models: shapes, errors and gradient checks end to end (the PyTorch mapping: test_interop.py)."""
import numpy as np
import pytest

from cganraw import models
from cganraw.bench.profile import _MatmulTimer
from cganraw.gradcheck import check_backward
from cganraw.nn.dropout import set_step as set_dropout_step


def f64(*mods):
    for m in mods:
        m.to(np.float64)
    return mods


@pytest.mark.parametrize("name", models.MODELS)
def test_shapes_and_ranges(name, rng):
    G, D = models.build(name, 10, width=8, seed=1)
    n = 3
    labels = rng.integers(0, 10, n) if G.conditional else None
    x = G(rng.standard_normal((n, 100), dtype=np.float32), labels)
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert np.all(np.abs(x) <= 1)
    y = D(x, labels)
    assert y.shape == (n, 1)
    dx = D.backward(np.ones_like(y))
    assert G.backward(dx).shape == (n, 100)


def test_build_is_seeded():
    a, _ = models.build("cgan-conv", 10, width=4, seed=3)
    b, _ = models.build("cgan-conv", 10, width=4, seed=3)
    c, _ = models.build("cgan-conv", 10, width=4, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["fc.weight"], sc["fc.weight"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'vae'.*cgan-conv"):
        models.build("vae", 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.build("cgan-conv", None)
    G, D = models.build("cgan-conv", 10, width=4)
    z = np.zeros((2, 100), np.float32)
    with pytest.raises(ValueError, match=r"is conditional: labels \(N,\) are required"):
        G(z, None)
    with pytest.raises(ValueError, match=r"expected labels of shape \(2,\), got shape \(3,\)"):
        G(z, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"expected z of shape \(N, 100\), got shape \(2, 99\)"):
        G(np.zeros((2, 99), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        G(z, np.array([0, 10]))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 28, 28\)"):
        D(np.zeros((2, 28, 28), np.float32), np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="integer array"):
        D(np.zeros((2, 1, 28, 28), np.float32), np.zeros(2))
    G2, _ = models.build("dcgan", None, width=4)
    with pytest.raises(ValueError, match="unconditional"):
        G2(z, np.zeros(2, np.int64))


def test_conv_cgan_discriminator_gradients(rng):
    # embedding -> linear -> reshape -> concat with the image -> two strided convs -> linear
    _, D = models.build("cgan-conv", 4, width=3, seed=0)
    D.eval()  # dropout off: the function must be deterministic for finite differences
    f64(D)
    for p in D.parameters():
        p.data[...] = rng.normal(size=p.shape) * 0.3
    x = rng.normal(size=(2, 1, 28, 28))
    labels = np.array([1, 3])
    check_backward(lambda a: D(a, labels), D.backward, [x], list(D.named_parameters()), name="cgan-conv D",
                   eps=1e-5, atol=1e-7, rtol=1e-6)


def test_conv_cgan_generator_gradients(rng):
    # linear -> reshape, concat label map -> two ConvTranspose2d(4, 2, 1) -> Conv2d(7, p=3) -> tanh
    G, _ = models.build("cgan-conv", 4, width=3, seed=0)
    f64(G)
    for p in G.parameters():
        p.data[...] = rng.normal(size=p.shape) * 0.3
    z = rng.normal(size=(2, 100))
    labels = np.array([0, 2])
    check_backward(lambda a: G(a, labels), G.backward, [z], list(G.named_parameters()), name="cgan-conv G",
                   eps=1e-5, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", ["cgan-mlp", "dcgan", "gan-mlp"])
def test_other_models_gradients(name, rng):
    G, D = models.build(name, 3, width=4, seed=0)
    f64(G, D)
    D.eval()
    n = 4  # BatchNorm needs > 1 value per channel in training mode
    labels = rng.integers(0, 3, n) if G.conditional else None
    z = rng.normal(size=(n, 100))

    def forward(a):
        return D(G(a, labels), labels)

    def backward(g):
        return G.backward(D.backward(g))
    # eps small enough that no ReLU unit after BatchNorm crosses its kink
    check_backward(forward, backward, [z], list(G.named_parameters("G")) + list(D.named_parameters("D")), name=name,
                   eps=1e-6, atol=1e-8, rtol=1e-6)


D_WITHOUT_DX = [("cgan-mlp", {}), ("gan-mlp", {}), ("dcgan", {}), ("cgan-conv", dict(d_label="projection")),
                ("cgan-conv", dict(d_label="concat")), ("cgan-conv", dict(d_label="both", d_norm="spectral")),
                ("cgan-conv", dict(d_label="projection", d_stem=0, minibatch_std=True)),
                ("cgan-conv", dict(d_label="projection", progressive=True, growth=(14, 1.0))),
                ("cgan-conv", dict(d_label="projection", progressive=True, growth=(28, 0.5))),
                ("cgan-conv", dict(d_label="concat", progressive=True, growth=(28, 0.5)))]


@pytest.mark.parametrize("name, options", D_WITHOUT_DX)
def test_discriminator_backward_without_the_input_gradient(name, options, rng):
    # D's own step (need_dx=False, as D on detached images): the same weight gradients, bit for
    # bit, no input gradient, and no forward cache left behind (a second backward is an error)
    options = dict(options)
    growth = options.pop("growth", None)
    n = 4
    labels = rng.integers(0, 10, n)
    x = np.tanh(rng.standard_normal((n, 1, 28, 28))).astype(np.float32)
    dy = rng.standard_normal((n, 1)).astype(np.float32)
    grads, counts = [], []
    for need_dx in (True, False):
        _, D = models.build(name, 10, width=8, seed=2, **options)      # the same D each time
        if growth:
            D.set_growth(*growth)
        set_dropout_step(D, 7)                                          # and the same dropout masks
        D(x, labels if D.conditional else None)
        with _MatmulTimer() as products:
            dx = D.backward(dy, need_dx=need_dx)
        counts.append(sum(products.calls.values()))
        assert (dx is None) == (not need_dx)
        if need_dx:
            assert dx.shape == x.shape
        grads.append([p.grad.copy() for p in D.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
    # the first layer's input GEMM (one per stem the route runs), unless a label map needs it
    label_map = name == "cgan-conv" and D.label_mode != "projection"
    stems = 2 if growth and growth[0] == 28 and growth[1] < 1 else 1
    assert counts[1] == counts[0] - (0 if label_map else stems)
    assert all(m._cache is None for _, m in D.named_modules())
    with pytest.raises(RuntimeError, match="without a forward"):
        D.backward(dy, need_dx=False)


@pytest.mark.parametrize("name", models.MODELS)
def test_generator_backward_without_the_noise_gradient(name, rng):
    # G's step (need_dz=False): the same weight gradients, bit for bit, one GEMM fewer (the first
    # layer's input GEMM; cgan-conv's seed map skips its own), no dz, no cache left behind
    n = 3
    z = rng.standard_normal((n, 100)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    dy = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    grads, counts = [], []
    for need_dz in (True, False):
        G, _ = models.build(name, 10, width=8, seed=3)
        G(z, labels if G.conditional else None)
        with _MatmulTimer() as products:
            dz = G.backward(dy, need_dz=need_dz)
        counts.append(sum(products.calls.values()))
        assert (dz is None) != need_dz
        grads.append([p.grad.copy() for p in G.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
    assert counts[1] == counts[0] - 1
    assert all(m._cache is None for _, m in G.named_modules())

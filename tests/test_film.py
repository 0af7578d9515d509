"""FiLM (--g-film, issue 12) on the numpy backend: the op y = x (1 + gamma) + beta and
nn.FiLM by float64 finite differences (element-wise and directional; the projection's
gradients and d(cond) included), cgan-conv's G with g_film for several option combinations
(dz includes the FiLM layers' d(cond)), the same functions as the PyTorch port, and the
default-off model unchanged (the same weights as before the option, by a pinned digest).
The kernels through the emulator: tests/kernels/test_film.py."""
import hashlib

import numpy as np
import pytest

from cganraw import models, nn
from cganraw.gradcheck import check_backward, check_module
from cganraw.ops.film import film_backward, film_backward_numpy, film_forward, film_forward_numpy
from tests.test_model_options import randomise

K = 4


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 1, 1), (3, 5, 2, 3), (1, 2, 7, 7), (2, 1, 4, 4)])
def test_op_gradients(shape, rng):
    n, c = shape[:2]
    x, gamma, beta = rng.normal(size=shape), rng.normal(size=(n, c)), rng.normal(size=(n, c))

    def backward(dy):
        return film_backward(dy, cache[0])[:3]

    cache = [None]

    def forward(a, g, b):
        y, cache[0] = film_forward(a, g, b)
        return y
    check_backward(forward, backward, [x, gamma, beta], name=f"film {shape}", eps=1e-6, atol=1e-8, rtol=1e-6,
                   elementwise=True)


def test_op_values_and_out(rng):
    x = rng.normal(size=(3, 4, 2, 5)).astype(np.float32)
    gb = rng.normal(size=(3, 8)).astype(np.float32)
    gamma, beta = gb[:, :4], gb[:, 4:]                         # views of one array, as nn.FiLM passes them
    y, cache = film_forward_numpy(x, gamma, beta)
    want = x * (1 + gamma)[:, :, None, None] + beta[:, :, None, None]
    np.testing.assert_array_equal(y, want)
    dy = rng.normal(size=x.shape).astype(np.float32)
    dx, dg, db = film_backward_numpy(dy, cache)
    np.testing.assert_array_equal(dx, dy * (1 + gamma)[:, :, None, None])
    np.testing.assert_allclose(dg, (dy * x).sum(axis=(2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(db, dy.sum(axis=(2, 3)), rtol=1e-6, atol=1e-6)
    out = np.full((3, 8), np.nan, np.float32)
    none, dg2, db2 = film_backward_numpy(dy, cache, need_dx=False, out=out)
    assert none is None and np.shares_memory(dg2, out) and np.shares_memory(db2, out)
    np.testing.assert_array_equal(out, np.concatenate([dg, db], axis=1))
    with pytest.raises(ValueError, match=r"out must be a contiguous array of shape \(3, 8\)"):
        film_backward_numpy(dy, cache, out=np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match=r"expected x \(N, C, H, W\), gamma and beta \(N, C\)"):
        film_forward_numpy(x, gamma[:, :3], beta)
    with pytest.raises(ValueError, match="dy has shape"):
        film_backward_numpy(dy[:, :, :1], cache)


def test_an_empty_batch(rng):
    x = np.zeros((0, 3, 2, 2), np.float32)
    y, cache = film_forward_numpy(x, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    dx, dg, db = film_backward_numpy(y, cache)
    assert y.shape == dx.shape == (0, 3, 2, 2) and dg.shape == db.shape == (0, 3)


def _film(rng, cond_features=6, c=3):
    layer = nn.FiLM(cond_features, c, rng=rng)
    layer.to(np.float64)
    randomise(layer, rng, scale=0.5)
    return layer


def test_layer_gradients_with_projection_and_condition(rng):
    layer = _film(rng)
    x, cond = rng.normal(size=(2, 3, 2, 3)), rng.normal(size=(2, 6))
    dconds = []

    def backward(dy):
        dx = layer.backward(dy)
        dconds.append(layer.pop_dcond())
        return dx, dconds[-1]
    check_backward(lambda a, c: layer(a, c), backward, [x, cond], list(layer.named_parameters()), name="FiLM",
                   eps=1e-6, atol=1e-8, rtol=1e-6, elementwise=True)
    assert dconds[0].shape == (2, 6)


def test_layer_through_set_condition(rng):
    layer = _film(rng)
    cond = rng.normal(size=(3, 6))

    def before():
        layer.set_condition(cond)
    check_module(layer, rng.normal(size=(3, 3, 1, 2)), before_forward=before, eps=1e-6, atol=1e-8, rtol=1e-6,
                 elementwise=True)


def test_layer_starts_as_the_identity_and_checks_its_inputs(rng):
    layer = nn.FiLM(5, 3, rng=np.random.default_rng(0))
    assert list(layer.state_dict()) == ["proj.weight", "proj.bias"]
    assert layer.proj.weight.shape == (6, 5) and not layer.proj.weight.data.any() and not layer.proj.bias.data.any()
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(layer(x, rng.normal(size=(2, 5)).astype(np.float32)), x)
    layer.backward(np.ones_like(x))
    # the zero weight still learns: dW = dgamma^T cond is not zero
    assert np.abs(layer.proj.weight.grad).max() > 0 and not layer.pop_dcond().any()
    assert layer.pop_dcond() is None                               # consumed
    with pytest.raises(RuntimeError, match="no condition"):
        layer(x)                                                    # the last forward consumed it
    with pytest.raises(ValueError, match=r"condition of shape \(N, 5\)"):
        layer.set_condition(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="a condition of 3 rows for a batch of 2"):
        layer(x, np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="sizes must be positive"):
        nn.FiLM(0, 3)
    layer(x, np.zeros((2, 5), np.float32))
    layer.need_dcond = False
    layer.backward(x)
    assert layer.pop_dcond() is None


def test_frozen_layer_passes_dx_and_takes_no_gradient(rng):
    layer = _film(rng)
    layer.requires_grad_(False)
    x, cond = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 6))
    layer(x, cond)
    dx = layer.backward(np.ones_like(x))
    assert dx.shape == x.shape and layer.pop_dcond().shape == (2, 6)
    assert not any(p.grad.any() for p in layer.parameters())


FILM_OPTIONS = [dict(g_norm="none"), dict(g_norm="batch"), dict(g_norm="instance"),
                dict(progressive=True, g_norm="instance", growth=(28, 0.6)),
                dict(progressive=True, growth=(14, 1.0))]


def _ids(options):
    return ["-".join(f"{k}={v}" for k, v in o.items()) for o in options]


def _film_g(opts, width=3, seed=0):
    opts = dict(opts)
    growth = opts.pop("growth", None)
    G, _ = models.build("cgan-conv", K, width=width, seed=seed, g_film=True, **opts)
    if growth:
        G.set_growth(*growth)
    return G


@pytest.mark.parametrize("opts", FILM_OPTIONS, ids=_ids(FILM_OPTIONS))
def test_generator_gradients_with_film(opts, rng):
    G = _film_g(opts)
    G.to(np.float64)
    randomise(G, rng)
    z = rng.normal(size=(3, 100))
    labels = np.array([0, 2, 3])
    check_backward(lambda a: G(a, labels), G.backward, [z], list(G.named_parameters()), name=f"G film {opts}",
                   eps=1e-6, atol=1e-8, rtol=1e-6)


def test_dz_includes_the_film_conditions_gradient(rng):
    # only FiLM's path from z: with the noise Linear's weight at 0, dz is the FiLM layers' d(cond)[:, :latent]
    G = _film_g(dict(g_norm="instance"))
    G.to(np.float64)
    randomise(G, rng)
    G.fc.weight.data[...] = 0
    z, labels = rng.normal(size=(2, 100)), np.array([1, 3])
    check_backward(lambda a: G(a, labels), G.backward, [z], name="G dz via FiLM", eps=1e-6, atol=1e-8, rtol=1e-6,
                   elementwise=True)
    G(z, labels)
    assert np.abs(G.backward(np.ones((2, 1, 28, 28)))).max() > 0
    G(z, labels)
    assert G.backward(np.ones((2, 1, 28, 28)), need_dz=False) is None
    assert all(not f.need_dcond and f.pop_dcond() is None for f in G.films)


def test_film_generator_layout_and_shared_weights():
    G0, _ = models.build("cgan-conv", K, width=5, seed=2, g_norm="instance")
    G, _ = models.build("cgan-conv", K, width=5, seed=2, g_norm="instance", g_film=True)
    assert [type(m).__name__ for m in G.net] == ["ConvTranspose2d", "InstanceNorm2d", "FiLM", "LeakyReLU",
                                                 "ConvTranspose2d", "InstanceNorm2d", "FiLM", "LeakyReLU",
                                                 "Conv2d", "Tanh"]
    assert G.film and not G0.film and G.films == [G.net[2], G.net[6]]
    assert G.films[0].proj.weight.shape == (10, 100 + K)
    # every layer but the FiLM ones holds the plain model's weights (they are drawn last)
    plain = [m for m in G.net if type(m) is not nn.FiLM]
    for a, b in zip(plain, G0.net):
        for (ka, pa), (kb, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert ka == kb and np.array_equal(pa.data, pb.data)
    for k in ("fc.weight", "label_emb.weight", "label_fc.weight"):
        assert np.array_equal(G.state_dict()[k], G0.state_dict()[k])
    # so the untrained G draws exactly what the plain one draws
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 100), dtype=np.float32)
    labels = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(G(z, labels), G0(z, labels))
    Gp0, _ = models.build("cgan-conv", K, width=5, seed=2, progressive=True)
    Gp, _ = models.build("cgan-conv", K, width=5, seed=2, progressive=True, g_film=True)
    sp0, sp = Gp0.state_dict(), Gp.state_dict()
    assert set(sp) - set(sp0) == {"block14.1.proj.weight", "block14.1.proj.bias", "block28.1.proj.weight",
                                  "block28.1.proj.bias"}        # no norm: ConvT -> FiLM -> LeakyReLU
    assert all(np.array_equal(sp[k], v) for k, v in sp0.items())


# sha256 over (name, bytes) of G's state dict, computed on main before g_film existed
DIGESTS = {(): "354030f605ce379dbff827a936c535af4256988698ffa3c78de001f73b237676",
           (("g_norm", "instance"),): "360bded01472fb07e93b99578020341ae5b83af20568637dd2bca40231c4c04f",
           (("g_norm", "batch"), ("progressive", True)):
               "8f87c6ef73acb9e0c4c1719031b9dee360dc2c9d5b31caaa37d56f93782dc9bc"}


@pytest.mark.parametrize("opts", list(DIGESTS), ids=["plain", "instance", "progressive-batch"])
def test_default_off_is_the_model_of_before(opts):
    for kwargs in (dict(opts), dict(opts, g_film=False)):
        G, _ = models.build("cgan-conv", 10, width=8, seed=3, **kwargs)
        h = hashlib.sha256()
        for k, v in G.state_dict().items():
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes())
        assert h.hexdigest() == DIGESTS[opts] and not G.film


def test_g_film_is_a_cgan_conv_option():
    with pytest.raises(ValueError, match="g_film: options of cgan-conv only, not of cgan-mlp"):
        models.build("cgan-mlp", K, g_film=True)


@pytest.mark.parametrize("opts", FILM_OPTIONS, ids=_ids(FILM_OPTIONS))
def test_film_generator_equals_the_pytorch_port(opts, rng):
    torch = pytest.importorskip("torch")
    from cganraw import interop
    G = _film_g(opts)
    randomise(G, rng, scale=0.2)
    tG = interop.to_torch(G)
    assert list(tG.state_dict()) == list(G.state_dict())
    back = interop.from_torch(tG)         # before the forwards move BatchNorm's running statistics
    assert back.film and all(np.array_equal(a, b) for a, b in zip(back.state_dict().values(),
                                                                   G.state_dict().values()))
    z = rng.standard_normal((5, 100), dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 1])
    want = tG(torch.from_numpy(z), torch.from_numpy(labels)).detach().numpy()
    np.testing.assert_allclose(G(z, labels), want, rtol=1e-4, atol=1e-5)
    config = interop.model_config(G)
    assert config["g_film"] is True and tG.cganraw_config == config
    tG2, _ = interop.torch_models("cgan-conv", K, width=3, g_norm=opts.get("g_norm"),
                                  progressive=opts.get("progressive", False), g_film=True)
    assert list(tG2.state_dict()) == list(G.state_dict())


def test_film_layer_equals_torch(rng):
    torch = pytest.importorskip("torch")
    from cganraw import interop
    layer = _film(rng)
    tl = interop.to_torch(layer).double()
    tl.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})    # float64 values
    x, cond = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 6))
    tx, tc = torch.from_numpy(x).requires_grad_(), torch.from_numpy(cond).requires_grad_()
    ty = tl(tx, tc)
    dy = rng.normal(size=ty.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer(x, cond), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.pop_dcond(), tc.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.proj.weight.grad, tl.proj.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.proj.bias.grad, tl.proj.bias.grad.numpy(), rtol=1e-12, atol=1e-12)

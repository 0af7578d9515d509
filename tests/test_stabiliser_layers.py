"""The stabiliser layers (issue 12): AvgPool2d, Upsample, InstanceNorm2d, MinibatchStdDev and
spectral_norm. Float64 finite differences (element-wise and directional) of every input
and parameter gradient, the semantics torch documents, and clear errors on bad input.
PyTorch equality lives in test_stabiliser_torch.py, the kernels in tests/kernels/."""
import copy

import numpy as np
import pytest

from cganraw import nn
from cganraw.gradcheck import check_backward, check_module
from cganraw.ops.minibatch_std import effective_group_size


def f64(module):
    return module.to(np.float64)


# ---------------------------------------------------------------- AvgPool2d, Upsample

@pytest.mark.parametrize("shape,k,s", [((1, 1, 2, 2), 2, None), ((3, 5, 7, 7), 2, None), ((2, 3, 14, 14), 2, 2),
                                       ((1, 2, 9, 7), 3, 2), ((2, 1, 7, 6), 3, 1), ((1, 3, 5, 8), 2, 3)])
def test_avgpool2d_gradients(shape, k, s, rng):
    layer = nn.AvgPool2d(k, s)
    check_module(layer, rng.normal(size=shape), elementwise=True)


def test_avgpool2d_values_and_shape(rng):
    x = rng.normal(size=(3, 5, 7, 7))
    y = nn.AvgPool2d(2)(x)
    assert y.shape == (3, 5, 3, 3)      # floor: the 7th row and column fall out
    np.testing.assert_allclose(y, x[:, :, :6, :6].reshape(3, 5, 3, 2, 3, 2).mean(axis=(3, 5)), rtol=1e-12)
    y = nn.AvgPool2d(3, stride=1)(x)
    np.testing.assert_allclose(y[1, 2, 4, 0], x[1, 2, 4:7, 0:3].mean(), rtol=1e-12)


@pytest.mark.parametrize("shape,s", [((1, 1, 1, 1), 2), ((3, 5, 7, 7), 2), ((2, 3, 14, 14), 2), ((1, 2, 3, 5), 3)])
def test_upsample_gradients(shape, s, rng):
    check_module(nn.Upsample(scale_factor=s), rng.normal(size=shape), elementwise=True)


def test_upsample_values_and_pool_inverse(rng):
    x = rng.normal(size=(3, 2, 7, 7)).astype(np.float32)
    y = nn.Upsample(scale_factor=2)(x)
    assert y.shape == (3, 2, 14, 14)
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))
    # average-pooling a nearest upsample gives the image back (progressive growing's
    # D sees G's 14x14 image exactly at phase 14)
    np.testing.assert_allclose(nn.AvgPool2d(2)(y), x, rtol=1e-6)
    assert nn.Upsample(scale_factor=2.0).scale_factor == 2


def test_pool_and_upsample_bad_input():
    with pytest.raises(ValueError, match="smaller than the kernel"):
        nn.AvgPool2d(2)(np.zeros((1, 1, 1, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        nn.AvgPool2d(2)(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="positive"):
        nn.AvgPool2d(0)
    with pytest.raises(TypeError, match="int"):
        nn.AvgPool2d(2.5)
    with pytest.raises(ValueError, match="positive integer"):
        nn.Upsample(scale_factor=1.5)
    with pytest.raises(ValueError, match="nearest"):
        nn.Upsample(scale_factor=2, mode="bilinear")
    with pytest.raises(ValueError, match="only scale_factor"):
        nn.Upsample(size=28)
    with pytest.raises(TypeError, match="floating"):
        nn.Upsample(scale_factor=2)(np.zeros((1, 1, 2, 2), np.int64))
    up = nn.Upsample(scale_factor=2)
    up(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="gradient has shape"):
        up.backward(np.zeros((1, 1, 2, 2), np.float32))


# ---------------------------------------------------------------- InstanceNorm2d

FLAGS = [(affine, track) for affine in (False, True) for track in (False, True)]


def _instancenorm(c, affine, track, rng, momentum=0.1):
    layer = f64(nn.InstanceNorm2d(c, affine=affine, track_running_stats=track, momentum=momentum, rng=rng))
    if affine:
        layer.weight.data[...] = rng.normal(1.0, 0.3, size=c)
        layer.bias.data[...] = rng.normal(0.0, 0.3, size=c)
    return layer


@pytest.mark.parametrize("affine,track", FLAGS)
@pytest.mark.parametrize("shape", [(1, 1, 2, 1), (3, 5, 7, 7), (2, 3, 4, 5)])
def test_instancenorm_gradients_training(shape, affine, track, rng):
    layer = _instancenorm(shape[1], affine, track, rng)
    x = rng.normal(size=shape) * 2 + 0.5
    check_module(layer, x, elementwise=x.size <= 200, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("affine,track", FLAGS)
def test_instancenorm_gradients_eval(affine, track, rng):
    # eval: running statistics (constants) when tracked, the input's own otherwise
    layer = _instancenorm(3, affine, track, rng)
    if track:
        layer.running_mean[...] = rng.normal(size=3)
        layer.running_var[...] = rng.uniform(0.5, 2, size=3)
    layer.eval()
    check_module(layer, rng.normal(size=(3, 3, 5, 5)), elementwise=True)


def test_instancenorm_semantics(rng):
    x = rng.normal(size=(3, 4, 5, 6)) * 3 + 1
    plain = nn.InstanceNorm2d(4).to(np.float64)
    assert list(plain.state_dict()) == [] and plain.parameters() == []
    y = plain(x)
    np.testing.assert_allclose(y.mean(axis=(2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(2, 3)), 1 / (1 + 1e-5 / x.var(axis=(2, 3))), rtol=1e-10)
    plain.eval()   # untracked: eval still uses the input's statistics
    np.testing.assert_array_equal(plain(x), y)

    tracked = nn.InstanceNorm2d(4, momentum=0.25, track_running_stats=True).to(np.float64)
    assert list(tracked.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    tracked(x)
    hw = 30
    np.testing.assert_allclose(tracked.running_mean, 0.25 * x.mean(axis=(2, 3)).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(tracked.running_var, 0.75 + 0.25 * (x.var(axis=(2, 3)) * hw / (hw - 1)).mean(axis=0),
                               rtol=1e-12)
    assert int(tracked.num_batches_tracked) == 0       # InstanceNorm never counts, as in torch
    tracked.eval()
    np.testing.assert_allclose(tracked(x), (x - tracked.running_mean[None, :, None, None])
                               / np.sqrt(tracked.running_var[None, :, None, None] + 1e-5), rtol=1e-12)
    frozen = nn.InstanceNorm2d(4, momentum=None, track_running_stats=True).to(np.float64)
    frozen(x)
    np.testing.assert_array_equal(frozen.running_mean, 0)
    np.testing.assert_array_equal(frozen.running_var, 1)

    affine = nn.InstanceNorm2d(4, affine=True)
    assert list(affine.state_dict()) == ["weight", "bias"]


def test_instancenorm_bad_input():
    layer = nn.InstanceNorm2d(3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        layer(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        layer(np.zeros((2, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="momentum"):
        nn.InstanceNorm2d(3, 0.1, 2.0)
    with pytest.raises(ValueError, match="num_features"):
        nn.InstanceNorm2d(0)
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.zeros((2, 3, 3, 3), np.float32))
    tracked = nn.InstanceNorm2d(3, track_running_stats=True).eval()
    tracked(np.zeros((2, 3, 1, 1), np.float32))          # running statistics: one pixel is fine


# ---------------------------------------------------------------- MinibatchStdDev

@pytest.mark.parametrize("shape,group", [((4, 2, 3, 3), 4), ((8, 3, 2, 2), 4), ((6, 2, 3, 3), 4), ((7, 2, 2, 3), 4),
                                         ((5, 3, 2, 2), 2), ((1, 2, 3, 3), 4), ((9, 1, 7, 7), 3)])
def test_minibatch_std_gradients(shape, group, rng):
    layer = nn.MinibatchStdDev(group)
    x = rng.normal(size=shape)
    check_module(layer, x, elementwise=x.size <= 300)


def test_minibatch_std_values(rng):
    x = rng.normal(size=(8, 3, 4, 5))
    y = nn.MinibatchStdDev(4)(x)
    assert y.shape == (8, 4, 4, 5)
    np.testing.assert_array_equal(y[:, :3], x)
    # ProGAN: groups are the strided sets {m, m + M, m + 2M, ...}, M = N / G
    for m in range(2):
        members = x[m::2]
        want = np.sqrt(members.var(axis=0) + 1e-8).mean()
        np.testing.assert_allclose(y[m::2, 3], want, rtol=1e-12)
    # a batch of identical samples has the smallest possible statistic, sqrt(eps)
    same = np.repeat(x[:1], 4, axis=0)
    np.testing.assert_allclose(nn.MinibatchStdDev(4)(same)[:, 3], 1e-4, rtol=1e-9)


@pytest.mark.parametrize("n,g,want", [(1, 4, 1), (2, 4, 2), (3, 4, 3), (5, 4, 1), (6, 4, 3), (7, 4, 1), (8, 4, 4),
                                      (9, 4, 3), (10, 4, 2), (12, 4, 4), (128, 4, 4), (6, 1, 1), (100, 8, 5)])
def test_effective_group_size(n, g, want):
    assert effective_group_size(n, g) == want
    assert nn.MinibatchStdDev(g).group_for(n) == want


def test_minibatch_std_bad_input():
    with pytest.raises(ValueError, match="group_size"):
        nn.MinibatchStdDev(0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        nn.MinibatchStdDev()(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        nn.MinibatchStdDev()(np.zeros((0, 1, 2, 2), np.float32))


# ---------------------------------------------------------------- spectral_norm

SN_LAYERS = {
    "linear": (lambda rng: nn.Linear(5, 4, rng=rng), lambda rng: rng.normal(size=(3, 5))),
    "conv2d": (lambda rng: nn.Conv2d(3, 4, 3, 2, 1, rng=rng), lambda rng: rng.normal(size=(2, 3, 5, 5))),
    "conv_transpose2d": (lambda rng: nn.ConvTranspose2d(3, 2, 4, 2, 1, rng=rng),
                         lambda rng: rng.normal(size=(2, 3, 3, 3))),
    "embedding": (lambda rng: nn.Embedding(6, 3, rng=rng), lambda rng: np.array([0, 5, 5, 2, 1])),
}


def _sn_layer(kind, rng, **kwargs):
    make, inputs = SN_LAYERS[kind]
    layer = f64(make(rng))
    layer.weight.data[...] = rng.normal(size=layer.weight.shape)
    return nn.utils.spectral_norm(layer, rng=rng, **kwargs), inputs(rng)


@pytest.mark.parametrize("kind", SN_LAYERS)
def test_spectral_norm_gradients_eval(kind, rng):
    # eval: u and v fixed, so W / (u^T W v) is the whole function and its gradient exact
    layer, x = _sn_layer(kind, rng)
    layer.eval()
    check_module(layer, x, elementwise=True, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kind", SN_LAYERS)
def test_spectral_norm_training_gradient_holds_u_v_fixed(kind, rng):
    # training: the power iteration moves u and v, then the backward treats them as
    # constants (torch's rule); that gradient is eval mode's at the updated u and v
    layer, x = _sn_layer(kind, rng, n_power_iterations=2)
    u0 = layer.weight_u.copy()
    y = layer(x)
    assert not np.allclose(layer.weight_u, u0)
    dy = rng.normal(size=y.shape)
    layer.zero_grad()
    layer.backward(dy)
    g_train = {k: p.grad.copy() for k, p in layer.named_parameters()}
    layer.eval()
    check_module(layer, x, grad_output=dy, elementwise=True, atol=1e-7, rtol=1e-5)
    for k, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, g_train[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("kind", SN_LAYERS)
def test_spectral_norm_normalises(kind, rng):
    layer, x = _sn_layer(kind, rng)
    dim = 1 if kind == "conv_transpose2d" else 0
    for _ in range(60):          # the power iteration converges over the forwards
        layer(x)
        layer.drop_caches()
    wm = np.moveaxis(layer.weight.data, dim, 0).reshape(layer.weight.shape[dim], -1)
    assert np.linalg.norm(wm, 2) == pytest.approx(1.0, rel=1e-6)
    orig = np.moveaxis(layer.weight_orig.data, dim, 0).reshape(wm.shape)
    assert np.linalg.norm(orig, 2) == pytest.approx(float(layer.weight_u @ orig @ layer.weight_v), rel=1e-6)


def test_spectral_norm_state_power_iteration_and_remove(rng):
    layer, x = _sn_layer("conv_transpose2d", rng)
    assert list(layer.state_dict()) == ["bias", "weight_orig", "weight_u", "weight_v"]
    assert [k for k, _ in layer.named_parameters()] == ["bias", "weight_orig"]
    assert layer.weight_u.shape == (2,) and layer.weight_v.shape == (3 * 16,)     # dim 1: (out, in*k*k)
    assert layer.weight_orig.name == "weight_orig"
    np.testing.assert_allclose(np.linalg.norm(layer.weight_u), 1, rtol=1e-12)
    u, v = layer.weight_u.copy(), layer.weight_v.copy()
    layer.eval()
    layer(x)
    np.testing.assert_array_equal(layer.weight_u, u)          # eval: no power iteration
    layer.train()
    layer.drop_caches()
    layer(x)
    assert not np.array_equal(layer.weight_u, u) and not np.array_equal(layer.weight_v, v)
    u, v = layer.weight_u.copy(), layer.weight_v.copy()
    w_sn = layer.weight.data.copy()
    nn.utils.remove_spectral_norm(layer)
    assert list(layer.state_dict()) == ["bias", "weight"]
    assert not nn.utils.is_spectrally_normalised(layer)
    np.testing.assert_allclose(layer.weight.data, w_sn, rtol=1e-12)   # W / sigma at the current u, v
    assert "forward" not in vars(layer) and "backward" not in vars(layer)
    check_module(layer, x)                                   # a plain ConvTranspose2d again


def test_spectral_norm_frozen_and_accumulating(rng):
    layer, x = _sn_layer("linear", rng)
    layer.requires_grad_(False)
    y = layer(x)
    layer.backward(np.ones_like(y))
    assert not layer.weight_orig.grad.any()
    layer.requires_grad_(True)
    layer.eval()
    dy = rng.normal(size=y.shape)
    layer.zero_grad()
    layer(x)
    layer.backward(dy)
    once = layer.weight_orig.grad.copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight_orig.grad, 2 * once, rtol=1e-12)


def test_spectral_norm_deepcopy_is_independent(rng):
    layer, x = _sn_layer("conv2d", rng)
    twin = copy.deepcopy(layer)
    np.testing.assert_array_equal(twin(x), layer(x))
    twin.weight_orig.data *= 2
    twin.drop_caches(), layer.drop_caches()
    layer.eval(), twin.eval()
    # sigma scales with W: the normalised outputs agree up to the bias; the copy's hooks
    # read the copy's own weight (not the original's)
    assert not np.shares_memory(twin.weight_orig.data, layer.weight_orig.data)
    assert twin._spectral_norm_hooks.module is twin
    np.testing.assert_allclose(twin(x), layer(x), rtol=1e-10)


def test_spectral_norm_inference_keeps_no_cache(rng):
    layer, x = _sn_layer("linear", rng)
    with layer.inference():
        layer(x)
        with pytest.raises(RuntimeError, match="without a forward"):
            layer.backward(np.zeros((3, 4)))


def test_spectral_norm_errors(rng):
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"Linear has no parameter 'kernel' \(its parameters: weight, bias\)"):
        nn.utils.spectral_norm(layer, name="kernel")
    nn.utils.spectral_norm(layer)
    with pytest.raises(RuntimeError, match="Linear.weight is already spectrally normalised"):
        nn.utils.spectral_norm(layer)
    with pytest.raises(ValueError, match="spectral_norm of 'bias' not found in Linear"):
        nn.utils.remove_spectral_norm(layer, "bias")
    with pytest.raises(ValueError, match="not found in Conv2d"):
        nn.utils.remove_spectral_norm(nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="n_power_iterations"):
        nn.utils.spectral_norm(nn.Linear(3, 2), n_power_iterations=0)
    with pytest.raises(TypeError, match="Module"):
        nn.utils.spectral_norm(np.zeros(3))
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.zeros((1, 2), np.float32))


def test_spectral_norm_load_state_dict_round_trip(rng):
    a, x = _sn_layer("linear", rng)
    a(x)
    b = f64(nn.utils.spectral_norm(nn.Linear(5, 4), rng=np.random.default_rng(9)))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    np.testing.assert_array_equal(b(x), a(x))


def test_spectral_norm_backward_function_directly(rng):
    # the op alone, both dims, against finite differences of W / (u^T Wm v)
    from cganraw.ops.spectral_norm import spectral_norm_backward_numpy, spectral_norm_forward_numpy
    for shape, dim in [((4, 3, 2, 2), 0), ((3, 5, 2, 3), 1), ((7, 3), 0)]:
        w = rng.normal(size=shape)
        h = shape[dim]
        u = rng.normal(size=h)
        v = rng.normal(size=w.size // h)
        check_backward(lambda a: spectral_norm_forward_numpy(a, u, v, dim, power_iteration=False)[0],
                       lambda g: spectral_norm_backward_numpy(g, spectral_norm_forward_numpy(w, u, v, dim,
                                                                                             power_iteration=False)[3]),
                       [w], elementwise=True, name=f"spectral_norm {shape} dim {dim}")

"""Finite-difference checks, in float64, of every layer's input and parameter gradients."""
import numpy as np
import pytest

from cganraw import nn
from cganraw.gradcheck import check_module


def f64(module):
    return module.to(np.float64)


def away_from_zero(rng, shape, gap=0.05):
    # inputs kept away from the ReLU kinks so a central difference never straddles one
    x = rng.normal(size=shape)
    return np.where(np.abs(x) < gap, np.sign(x + 1e-12) * gap + x, x)


@pytest.mark.parametrize("n,i,o,bias", [(1, 1, 1, True), (3, 5, 4, True), (2, 7, 3, False), (5, 17, 9, True),
                                        (6, 11, 1, True)])     # one output: dx as a broadcast product on the host
def test_linear(n, i, o, bias, rng):
    layer = f64(nn.Linear(i, o, bias=bias, rng=rng))
    layer.weight.data[...] = rng.normal(size=(o, i))
    check_module(layer, rng.normal(size=(n, i)))


CONV_CASES = [  # (N, Cin, Cout, H, W, k, s, p)
    (1, 1, 1, 5, 5, 1, 1, 0),
    (2, 2, 3, 5, 6, 3, 1, 1),
    (1, 3, 2, 7, 7, 3, 2, 1),
    (2, 2, 3, 6, 6, 4, 2, 1),
    (1, 2, 1, 7, 7, 7, 1, 3),
    (2, 3, 2, 8, 5, 3, 2, 0),
    (1, 1, 4, 9, 9, 4, 2, 3),
]


def _host_conv_path(monkeypatch, path):
    """Run the host convolutions on `path`: "batch_minor" (Numba's batch-minor columns, the
    default with Numba), "nchw" (NCHW columns, as without Numba) or "phase" (the phase-split
    transposed conv), for one test."""
    from cganraw.ops import _cpu
    from cganraw.ops import conv as conv_mod
    if path == "batch_minor" and not _cpu.enabled():
        pytest.skip("numba not installed")
    if path != "batch_minor":
        monkeypatch.setattr(conv_mod, "_batch_minor", lambda x, W: False)
    monkeypatch.setattr(conv_mod, "_transpose_override", "phase" if path == "phase" else "col2im")


def _mode(layer, x):
    # the path the layer's forward took (its cache's tag)
    layer(x)
    mode = layer._cache[0][0]
    layer._cache = None
    return mode


@pytest.mark.parametrize("path", ["batch_minor", "nchw"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case, path, rng, monkeypatch):
    n, cin, cout, h, w, k, s, p = case
    _host_conv_path(monkeypatch, path)
    layer = f64(nn.Conv2d(cin, cout, k, s, p, rng=rng))
    layer.weight.data[...] = rng.normal(size=layer.weight.shape)
    layer.bias.data[...] = rng.normal(size=cout)
    x = rng.normal(size=(n, cin, h, w))
    expanded = s == 1 and cout < cin and p <= k - 1       # the expanded-outputs path: a transposed conv
    assert _mode(layer, x) == ("expand_outputs" if expanded else "batch_minor" if path == "batch_minor" else "im2col")
    if expanded:    # its transposed conv keeps channel-major columns on the host (k*k*O rows are few)
        layer(x)
        assert layer._cache[0][1][0] == "col2im"
        layer._cache = None
    check_module(layer, x)


@pytest.mark.parametrize("case,path", [(c, path) for c in CONV_CASES for path in ("batch_minor", "nchw", "phase")
                                       if path != "phase" or c[5:] == (4, 2, 1)])   # the phase split: k4 s2 p1 only
def test_conv_transpose2d(case, path, rng, monkeypatch):
    n, cin, cout, h, w, k, s, p = case
    h, w = max(h // 2, 2), max(w // 2, 2)
    _host_conv_path(monkeypatch, path)
    layer = f64(nn.ConvTranspose2d(cin, cout, k, s, p, rng=rng))
    if layer(np.zeros((1, cin, h, w))).shape[2] <= 0:
        pytest.skip("empty output")
    layer._cache = None
    layer.weight.data[...] = rng.normal(size=layer.weight.shape)
    layer.bias.data[...] = rng.normal(size=cout)
    x = rng.normal(size=(n, cin, h, w))
    assert _mode(layer, x) == {"batch_minor": "batch_minor", "nchw": "col2im", "phase": "phase"}[path]
    check_module(layer, x)


def test_conv_transpose2d_output_padding(rng):
    layer = f64(nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, rng=rng))
    check_module(layer, rng.normal(size=(2, 2, 3, 4)))


def test_conv_without_bias(rng):
    check_module(f64(nn.Conv2d(2, 3, 3, 2, 1, bias=False, rng=rng)), rng.normal(size=(2, 2, 5, 5)))
    check_module(f64(nn.ConvTranspose2d(2, 3, 4, 2, 1, bias=False, rng=rng)), rng.normal(size=(2, 2, 3, 3)))


def test_embedding(rng):
    layer = f64(nn.Embedding(5, 3, rng=rng))
    labels = np.array([0, 4, 4, 2, 0, 0])  # repeats must add up
    check_module(layer, labels)  # parameter only: labels carry no gradient

    def fwd_bwd(dy):
        layer.zero_grad()
        layer(labels)
        layer.backward(dy)
        return layer.weight.grad.copy()
    dy = rng.normal(size=(6, 3))
    g = fwd_bwd(dy)
    np.testing.assert_allclose(g[0], dy[0] + dy[4] + dy[5])
    np.testing.assert_allclose(g[1], 0)


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (6, 4)), (nn.BatchNorm1d, (2, 3)),
                                       (nn.BatchNorm2d, (3, 2, 4, 5)), (nn.BatchNorm2d, (1, 3, 3, 3))])
def test_batchnorm_train(cls, shape, rng):
    layer = f64(cls(shape[1], rng=rng))
    layer.bias.data[...] = rng.normal(size=shape[1])
    check_module(layer, rng.normal(size=shape) * 2 + 1)


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (5, 4)), (nn.BatchNorm2d, (2, 3, 4, 4))])
def test_batchnorm_eval(cls, shape, rng):
    layer = f64(cls(shape[1], rng=rng))
    layer.running_mean[...] = rng.normal(size=shape[1])
    layer.running_var[...] = rng.uniform(0.5, 2.0, size=shape[1])
    layer.eval()
    check_module(layer, rng.normal(size=shape))


@pytest.mark.parametrize("cls", [nn.LeakyReLU, nn.ReLU])
def test_relus_away_from_kink(cls, rng):
    check_module(cls(), away_from_zero(rng, (3, 4, 5)), eps=1e-3)


def test_leaky_relu_slope(rng):
    check_module(nn.LeakyReLU(0.1), away_from_zero(rng, (4, 7)), eps=1e-3)


@pytest.mark.parametrize("cls", [nn.Tanh, nn.Sigmoid])
def test_smooth_activations(cls, rng):
    check_module(cls(), rng.normal(size=(3, 2, 4, 4)) * 2)


def test_dropout_with_fixed_mask(rng):
    layer = nn.Dropout(0.4, seed=7)

    def same_mask():
        layer.set_step(3)  # the first call of step 3: the same Philox mask at every forward
    check_module(layer, rng.normal(size=(4, 6)), before_forward=same_mask)


def test_concat_and_reshape(rng):
    check_module(nn.Concat(axis=1), rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 1, 4, 4)))
    check_module(nn.Reshape(2, 3, 2), rng.normal(size=(3, 12)))
    check_module(nn.Flatten(), rng.normal(size=(3, 2, 2, 2)))


def test_sequential(rng):
    seq = f64(nn.Sequential(nn.Conv2d(2, 3, 3, 2, 1, rng=rng), nn.LeakyReLU(0.2), nn.Flatten(),
                            nn.Linear(3 * 3 * 3, 2, rng=rng), nn.Tanh()))
    check_module(seq, rng.normal(size=(2, 2, 5, 5)), elementwise=True)


@pytest.mark.parametrize("act", [nn.LeakyReLU(0.2), nn.ReLU()])
@pytest.mark.parametrize("after_conv", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_activation_pair(act, after_conv, training, rng):
    # the fused pair (the Numba kernels on the numpy backend) on an NCHW input, or after a
    # Conv2d, whose output the numpy backend leaves channel-major; pre-activations away from the kink
    from cganraw.nn import fused
    from cganraw.ops import _cpu
    from cganraw.ops.conv import conv2d_forward
    layers = [nn.Conv2d(2, 3, 3, 1, 1, bias=False, rng=rng)] if after_conv else []
    seq = f64(nn.Sequential(*layers, nn.BatchNorm2d(3, rng=rng), act))
    pair = (1, 2) if after_conv else (0, 1)
    if _cpu.enabled() or type(act) is nn.LeakyReLU:     # BatchNorm2d + ReLU fuses with Numba only
        assert fused.plan(list(seq)) == ([(0,)] if after_conv else []) + [pair]
    bn = seq[len(layers)]
    bn.bias.data[...] = [0.3, -0.2, 0.1]
    if not training:
        bn.running_mean[...] = rng.normal(size=3)
        bn.running_var[...] = rng.uniform(0.5, 2.0, size=3)
        seq.eval()
    for _ in range(200):        # an input whose pre-activations keep clear of the kink
        x = rng.normal(size=(3, 2 if after_conv else 3, 4, 5)) * 2 + 1
        h = conv2d_forward(x, seq[0].weight.data, None, 1, 1)[0] if after_conv else x
        mean = h.mean(axis=(0, 2, 3), keepdims=True) if training else bn.running_mean.reshape(1, 3, 1, 1)
        var = h.var(axis=(0, 2, 3), keepdims=True) if training else bn.running_var.reshape(1, 3, 1, 1)
        pre = (h - mean) / np.sqrt(var + bn.eps) * bn.weight.data.reshape(1, 3, 1, 1) + bn.bias.data.reshape(1, 3, 1, 1)
        if np.abs(pre).min() > 0.02:
            break
    assert np.abs(pre).min() > 0.02 and (not h.flags.c_contiguous) == after_conv
    # a smaller step than the default: through the batch statistics a conv weight's
    # difference quotient carries a second-order error of some 1e-5 at eps 1e-4
    check_module(seq, x, eps=1e-6)

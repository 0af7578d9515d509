"""Convolution at the conv cGAN's real layer shapes (width 128): im2col/col2im as each
layer calls them (GB/s), and conv2d / conv_transpose2d forward and backward (GFLOP/s of
the direct convolution's 2*N*Ho*Wo*O*C*k*k; backward = dx + dW = twice that).

    pytest bench/bench_conv.py --benchmark-enable --benchmark-only
"""
import numpy as np
import pytest

import _benchlib as bl
from cganraw import ops

LAYERS = [pytest.param(layer, id=layer[0].split()[0]) for layer in bl.CONV_LAYERS]


def _layer_tag(layer):
    return layer[0].split(" ", 1)[1]


@pytest.mark.parametrize("layer", LAYERS)
def test_im2col(benchmark, bench_ctx, use_backend, batch, layer):
    name, xp = use_backend
    shape, k, s, p, out_hw = bl.im2col_calls(layer, batch)
    x = xp.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    cols = ops.im2col(x, k, s, p, out_hw=out_hw)
    out = bl.measure(benchmark, lambda: ops.im2col(x, k, s, p, out_hw=out_hw), op="im2col",
                     shape=f"{'x'.join(map(str, shape))} k{k}s{s}p{p} [{layer[0].split()[0]}]", backend=name,
                     family="im2col", ctx=bench_ctx, bytes_moved=x.nbytes + cols.nbytes)
    assert out.shape == cols.shape


@pytest.mark.parametrize("layer", LAYERS)
def test_col2im(benchmark, bench_ctx, use_backend, batch, layer):
    name, xp = use_backend
    shape, k, s, p, out_hw = bl.im2col_calls(layer, batch)
    n, c = shape[:2]
    cols = xp.asarray(np.random.default_rng(0).standard_normal((c * k * k, n * out_hw[0] * out_hw[1]),
                                                               dtype=np.float32))
    out = bl.measure(benchmark, lambda: ops.col2im(cols, shape, k, s, p, out_hw=out_hw), op="col2im",
                     shape=f"{'x'.join(map(str, shape))} k{k}s{s}p{p} [{layer[0].split()[0]}]", backend=name,
                     family="im2col", ctx=bench_ctx, bytes_moved=cols.nbytes + int(np.prod(shape)) * bl.F32)
    assert out.shape == shape


def _conv_setup(xp, layer, batch):
    x_shape, w_shape, y_shape, flops = bl.conv_layer_dims(layer, batch)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal(x_shape, dtype=np.float32))
    W = xp.asarray(0.02 * rng.standard_normal(w_shape, dtype=np.float32))
    b = xp.zeros(w_shape[0] if layer[1] == "conv" else w_shape[1], dtype=xp.float32)
    dy = xp.asarray(rng.standard_normal(y_shape, dtype=np.float32))
    return x, W, b, dy, y_shape, flops


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("layer", LAYERS)
def test_conv_layer(benchmark, bench_ctx, use_backend, batch, layer, direction):
    name, xp = use_backend
    _, kind, c, o, k, s, p, h = layer
    x, W, b, dy, y_shape, flops = _conv_setup(xp, layer, batch)
    if kind == "conv":
        fwd = lambda: ops.conv2d_forward(x, W, b, s, p)  # noqa: E731
        bwd = ops.conv2d_backward
        op = "conv2d"
    else:
        fwd = lambda: ops.conv_transpose2d_forward(x, W, b, s, p)  # noqa: E731
        bwd = ops.conv_transpose2d_backward
        op = "conv_transpose2d"
    y, cache = fwd()
    assert y.shape == y_shape
    if direction == "fwd":
        fn = lambda: fwd()[0]  # noqa: E731
    else:
        fn = lambda: bwd(dy, cache)  # noqa: E731
        flops *= 2
    out = bl.measure(benchmark, fn, op=f"{op} {direction}", shape=f"N={batch} {_layer_tag(layer)}", backend=name,
                     family="conv", ctx=bench_ctx, flops=flops, extra={"layer": layer[0].split()[0]})
    if direction == "bwd":
        dx, dW, db = out
        assert dx.shape == x.shape and dW.shape == W.shape

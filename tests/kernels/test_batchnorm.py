"""kernels/batchnorm.cu against cganraw.ops.batchnorm's NumPy reference, through the
emulator: statistics, normalise + affine (train and eval), backward (dx, dgamma, dbeta)
and the running-statistics update, both versions, on (N, C) and (N, C, H, W) shapes that
break tiling and on the GAN's real BatchNorm inputs at batch 3. The block-per-channel
kernels (barriers and shuffles) run under every thread order."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import batchnorm as BN
from tests.kernels.conftest import assert_close

VERSIONS = (1, 2, 3)

# (N, C) and (N, C, H, W): tiny and odd sizes (17*33*15, 45*7*129 values), batch 1, then
# the conv cGAN's BatchNorm2d inputs (width 128, batch 3: after each ConvT, and D-sized
# 7x7 maps) and the MLP generator's BatchNorm1d inputs (3, 256), (3, 512), (3, 1024)
SHAPES = [(2, 1), (2, 7), (1, 1, 1, 2), (17, 33, 3, 5), (45, 7, 129, 1), (1, 7, 3, 3), (1, 128, 7, 7),
          (3, 128, 7, 7), (3, 128, 14, 14), (3, 128, 28, 28), (3, 256), (3, 512), (3, 1024)]

TOL_STATS = (2e-5, 1e-4)    # float32 sums in another order than NumPy's pairwise ones
TOL_OUT = (5e-5, 1e-4)


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


def _params(rng, c):
    gamma = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(c)).astype(np.float32)
    return gamma, beta


def _input(rng, shape):
    # an offset and a scale per channel, so that mean and variance both matter
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    loc = rng.uniform(-2, 2, c).reshape(view)
    scale = rng.uniform(0.5, 3, c).reshape(view)
    return (rng.standard_normal(shape) * scale + loc).astype(np.float32)


def _check_forward_train(shape, version, rng, label):
    x = _input(rng, shape)
    gamma, beta = _params(rng, shape[1])
    y, cache, mean, var_u = BN.batchnorm_forward_cuda(x, gamma, beta, version=version)
    y_r, cache_r, mean_r, var_u_r = BN.batchnorm_forward_numpy(x, gamma, beta)
    assert_close(mean, mean_r, *TOL_STATS, f"{label} mean")
    assert_close(var_u, var_u_r, *TOL_STATS, f"{label} unbiased var")
    assert_close(cache[1], cache_r[1], 1e-4, 1e-4, f"{label} invstd")
    assert_close(cache[0], cache_r[0], *TOL_OUT, f"{label} xhat")
    assert_close(y, y_r, *TOL_OUT, f"{label} y")
    assert cache[3] is True and cache[2] is gamma
    return x, gamma, beta, y, cache


def _check_backward(shape, version, cache, rng, label):
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dgamma, dbeta = BN.batchnorm_backward_cuda(dy, cache, version=version)
    # the reference fed the same cache: this checks the backward kernel alone
    dx_r, dgamma_r, dbeta_r = BN.batchnorm_backward_numpy(dy, cache)
    assert_close(dbeta, dbeta_r, 1e-4, 1e-5, f"{label} dbeta")
    assert_close(dgamma, dgamma_r, 1e-4, 1e-5, f"{label} dgamma")
    assert_close(dx, dx_r, 2e-5, 1e-4, f"{label} dx")


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_train_forward_backward_v1(shape, rng):
    *_, cache = _check_forward_train(shape, 1, rng, f"v1 train {shape}")
    _check_backward(shape, 1, cache, rng, f"batchnorm_backward_v1 train {shape}")


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_train_forward_backward_v2(shape, all_orders, rng):
    label = f"v2 train {shape} ({all_orders} order)"
    *_, cache = _check_forward_train(shape, 2, rng, label)
    _check_backward(shape, 2, cache, rng, label)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_train_forward_backward_v3(shape, all_orders, rng):
    # v3's own split choice (1 split for most of these small shapes); forced splits: test_reductions.py
    label = f"v3 train {shape} ({all_orders} order)"
    *_, cache = _check_forward_train(shape, 3, rng, label)
    _check_backward(shape, 3, cache, rng, label)


@pytest.mark.parametrize("shape", [(2, 7), (17, 33, 3, 5), (1, 128, 7, 7), (3, 128, 14, 14), (3, 256)],
                         ids=_ids([(2, 7), (17, 33, 3, 5), (1, 128, 7, 7), (3, 128, 14, 14), (3, 256)]))
@pytest.mark.parametrize("version", VERSIONS)
def test_eval_forward_backward(version, shape, order, rng):
    c = shape[1]
    x = _input(rng, shape)
    gamma, beta = _params(rng, c)
    running_mean = rng.standard_normal(c).astype(np.float32)
    running_var = rng.uniform(0.2, 3, c).astype(np.float32)
    y, cache, mean, var_u = BN.batchnorm_forward_cuda(x, gamma, beta, running_mean, running_var, version=version)
    y_r, cache_r, _, _ = BN.batchnorm_forward_numpy(x, gamma, beta, running_mean, running_var)
    assert mean is running_mean and var_u is None and cache[3] is False
    assert_close(cache[1], cache_r[1], 1e-6, 1e-6, "eval invstd")
    assert_close(y, y_r, 1e-6, 1e-5, f"eval y {shape} v{version}")
    _check_backward(shape, version, cache, rng, f"eval backward {shape} v{version} ({order} order)")


@pytest.mark.parametrize("version", VERSIONS)
def test_end_to_end_against_numpy_forward_and_backward(version, order, rng):
    # the whole op chain against the whole reference chain (looser: errors compound)
    shape = (3, 128, 7, 7)
    x = _input(rng, shape)
    gamma, beta = _params(rng, shape[1])
    dy = rng.standard_normal(shape).astype(np.float32)
    y, cache, _, _ = BN.batchnorm_forward_cuda(x, gamma, beta, version=version)
    dx, dgamma, dbeta = BN.batchnorm_backward_cuda(dy, cache, version=version)
    y_r, cache_r, _, _ = BN.batchnorm_forward_numpy(x, gamma, beta)
    dx_r, dgamma_r, dbeta_r = BN.batchnorm_backward_numpy(dy, cache_r)
    assert_close(y, y_r, *TOL_OUT, "y")
    assert_close(dx, dx_r, 1e-4, 1e-3, "dx")
    assert_close(dgamma, dgamma_r, 1e-3, 1e-4, "dgamma")
    assert_close(dbeta, dbeta_r, 1e-4, 1e-5, "dbeta")


def test_v2_block_stride_over_channels(monkeypatch, all_orders, rng):
    # more channels than blocks: the shared-memory broadcasts must not race between the
    # channels one block handles in turn (the grid cap is lowered to keep this cheap)
    monkeypatch.setattr(BN, "MAX_CHANNEL_BLOCKS", 3)
    for shape in [(3, 11, 5, 7), (5, 10)]:
        label = f"block-strided {shape} ({all_orders} order)"
        *_, cache = _check_forward_train(shape, 2, rng, label)
        _check_backward(shape, 2, cache, rng, label)


def test_batchnorm_running_update(rng):
    c = 129
    rm, rv = rng.standard_normal(c).astype(np.float32), rng.uniform(0.1, 2, c).astype(np.float32)
    mean, var_u = rng.standard_normal(c).astype(np.float32), rng.uniform(0.1, 2, c).astype(np.float32)
    rm_r, rv_r = rm.copy(), rv.copy()
    BN.batchnorm_running_update_numpy(rm_r, rv_r, mean, var_u, 0.1)
    BN.batchnorm_running_update_cuda(rm, rv, mean, var_u, 0.1)
    assert_close(rm, rm_r, 1e-7, 1e-6, "running mean")
    assert_close(rv, rv_r, 1e-7, 1e-6, "running var")
    # buffers that are strided views are updated through a copy written back
    big_m, big_v = np.zeros(2 * c, np.float32), np.ones(2 * c, np.float32)
    BN.batchnorm_running_update_cuda(big_m[::2], big_v[::2], mean, var_u, 0.3)
    assert_close(big_m[::2], 0.3 * mean, 1e-7, 1e-6, "strided running mean")
    assert_close(big_v[::2], 0.7 + 0.3 * var_u, 1e-7, 1e-6, "strided running var")
    assert np.all(big_m[1::2] == 0) and np.all(big_v[1::2] == 1)


def test_public_ops_dispatch_to_the_kernels(launches, rng):
    assert backend.uses_kernels()
    x = _input(rng, (3, 128, 14, 14))
    gamma, beta = _params(rng, 128)
    y, cache, mean, var_u = BN.batchnorm_forward(x, gamma, beta)
    BN.batchnorm_running_update(np.zeros(128, np.float32), np.ones(128, np.float32), mean, var_u, 0.1)
    BN.batchnorm_backward(np.ones_like(y), cache)
    BN.batchnorm_forward(x[:, :, 0, 0].copy(), gamma, beta, mean, var_u)
    # v3 throughout: the split statistics and their ordered finish inside the normalise pass
    assert launches == ["batchnorm_forward_stats_v3", "batchnorm_forward_stats_centered_v3", "batchnorm_forward_v3",
                        "batchnorm_running_update_v1",
                        "batchnorm_backward_partial_v3", "batchnorm_backward_v3", "batchnorm_forward_invstd_v1",
                        "batchnorm_forward_v3"]


@pytest.mark.parametrize("layer_cls, shape", [(nn.BatchNorm2d, (3, 128, 7, 7)), (nn.BatchNorm1d, (3, 256))])
def test_layer_on_emu_matches_numpy_backend(layer_cls, shape, rng):
    # two training steps (running statistics move), then eval, on both backends
    xs = [_input(rng, shape) for _ in range(3)]
    dy = rng.standard_normal(shape).astype(np.float32)
    out = {}
    for name in ("emu", "numpy"):
        backend.use(name)
        layer = layer_cls(shape[1], rng=np.random.default_rng(5))
        rec = []
        for x in xs[:2]:
            rec += [layer(x), layer.backward(dy)]
        rec += [layer.weight.grad.copy(), layer.bias.grad.copy(), layer.running_mean.copy(), layer.running_var.copy()]
        layer.eval()
        rec += [layer(xs[2]), layer.backward(dy)]
        out[name] = rec
    backend.use("emu")
    for i, (a, b) in enumerate(zip(out["emu"], out["numpy"])):
        assert_close(a, b, 2e-4, 1e-3, f"{layer_cls.__name__} emu vs numpy, result {i}")


def test_bad_inputs_are_rejected_or_made_contiguous(rng):
    x = _input(rng, (3, 4, 5, 5))
    gamma, beta = _params(rng, 4)
    with pytest.raises(TypeError, match="batchnorm_forward: x: kernels take float32, got float64"):
        BN.batchnorm_forward(x.astype(np.float64), gamma, beta)
    with pytest.raises(TypeError, match="batchnorm_forward: gamma: kernels take float32, got float64"):
        BN.batchnorm_forward_cuda(x, gamma.astype(np.float64), beta)
    with pytest.raises(ValueError, match=r"batchnorm_forward: beta has shape \(3,\), expected \(4,\)"):
        BN.batchnorm_forward_cuda(x, gamma, beta[:3])
    with pytest.raises(ValueError, match="version"):
        BN.batchnorm_forward_cuda(x, gamma, beta, version=5)
    _, cache, _, _ = BN.batchnorm_forward_cuda(x, gamma, beta)
    with pytest.raises(ValueError, match="batchnorm_backward: dy has shape"):
        BN.batchnorm_backward_cuda(np.ones((3, 4, 5, 4), np.float32), cache)
    # strided views in, correct values out
    big = _input(rng, (3, 4, 5, 10))
    view = big[:, :, :, ::2]
    y, cache, _, _ = BN.batchnorm_forward_cuda(view, gamma, beta)
    y_r = BN.batchnorm_forward_numpy(view, gamma, beta)[0]
    assert_close(y, y_r, *TOL_OUT, "forward of a strided view")
    dx, _, _ = BN.batchnorm_backward_cuda(big[:, :, :, 1::2], cache)
    assert_close(dx, BN.batchnorm_backward_numpy(big[:, :, :, 1::2], cache)[0], 2e-5, 1e-4, "backward of a strided dy")


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 6, 4, 4), (7, 9), (1, 3, 5, 3)], ids=str)
def test_leaky_forward_v2_updates_the_running_statistics_in_its_pass(shape, all_orders, rng):
    # batchnorm_leaky_relu_forward_v2: v1 and batchnorm_running_update_v1 in one launch, the same bits
    from cganraw.ops import _launch
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    c = shape[1]
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm0, rv0 = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    for splits in (None, 2):
        y1, cache1, mean1, var1 = BN.batchnorm_leaky_relu_forward_cuda(x, gamma, beta, negative_slope=0.2,
                                                                       splits=splits)
        rm1, rv1 = rm0.copy(), rv0.copy()
        BN.batchnorm_running_update_cuda(rm1, rv1, mean1, var1, 0.1)
        rm2, rv2 = _launch.arg(rm0.copy()), _launch.arg(rv0.copy())
        y2, cache2, mean2, var2 = BN.batchnorm_leaky_relu_forward_cuda(x, gamma, beta, negative_slope=0.2,
                                                                       splits=splits, running=(rm2, rv2, 0.1))
        for a, b in ((y1, y2), (mean1, mean2), (var1, var2), (cache1[0], cache2[0]), (cache1[1], cache2[1]),
                     (rm1, rm2), (rv1, rv2)):
            np.testing.assert_array_equal(backend.asnumpy(a), backend.asnumpy(b))
    # the public op: the same running statistics as the numpy backend's (the reference update)
    rm_r, rv_r = rm0.copy(), rv0.copy()
    backend_prev = backend.current()
    backend.use("numpy")
    try:
        BN.batchnorm_leaky_relu_forward(x, gamma, beta, negative_slope=0.2, running=(rm_r, rv_r, 0.1))
    finally:
        backend.use(backend_prev)
    assert_close(rm2, rm_r, 1e-6, 1e-5, "running mean")
    assert_close(rv2, rv_r, 1e-6, 1e-5, "running var")
    with pytest.raises(ValueError, match="running_mean is updated in place"):
        BN.batchnorm_leaky_relu_forward_cuda(x, gamma, beta, running=(_launch.arg(rm0[:-1].copy()), rv2, 0.1))

"""The split per-channel reductions (kernels/channels.cuh: bias_add_backward_v3, batchnorm
v3) and the fused bias + LeakyReLU / BatchNorm + LeakyReLU kernels through the emulator,
against the NumPy references: awkward shapes (HW not a multiple of 4, C not a multiple of
4 or of 128, batch 1), forced split counts, float4 and scalar (misaligned) paths, every
thread order; the results are bit-identical from run to run, order to order and with two
emulator workers running blocks in parallel (no float atomics anywhere)."""
import numpy as np
import pytest

from cganraw import backend, cuda_emu, nn
from cganraw.ops import _launch
from cganraw.ops import batchnorm as BN
from cganraw.ops import bias as B

from .conftest import assert_close

# (N, C) rows layout and (N, C, H, W) planes layout: float4 (HW % 4 == 0, C % 4 == 0) and not
SHAPES = [(2, 7), (5, 130), (9, 256), (1, 3, 1, 2), (17, 5, 3, 5), (3, 6, 4, 4), (2, 3, 7, 7), (1, 4, 28, 28)]
SPLITS = [1, 2, 3, 7]


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


def _input(rng, shape, loc=1.0):
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    return (rng.standard_normal(shape) * rng.uniform(0.5, 3, c).reshape(view)
            + loc * rng.uniform(-2, 2, c).reshape(view)).astype(np.float32)


def _params(rng, c):
    return (1 + 0.3 * rng.standard_normal(c)).astype(np.float32), (0.5 * rng.standard_normal(c)).astype(np.float32)


def _misaligned(a):
    """A C-contiguous copy of a whose data starts 4 bytes past a 16-byte boundary."""
    buf = np.empty(a.size + 4, a.dtype)
    off = (-(buf.ctypes.data // 4) + 1) % 4
    view = buf[off:off + a.size].reshape(a.shape)
    view[...] = a
    assert view.ctypes.data % 16 == 4 and view.flags.c_contiguous
    return view


# ---------------------------------------------------------------- bias gradient v3
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("splits", SPLITS)
def test_bias_backward_v3(shape, splits, order, rng):
    dy = _input(rng, shape)
    ref = B.bias_add_backward_numpy(dy.astype(np.float64))
    for arr in (dy, _misaligned(dy)):
        assert_close(B.bias_add_backward_cuda(arr, version=3, splits=splits), ref, 1e-5, 1e-5,
                     f"bias v3 {shape} splits={splits}")


def test_bias_backward_v3_many_channel_groups_and_large_offsets(rng):
    # 300 channels = 3 groups of 128 in the rows layout; values around 1000 (as test_bias)
    dy = (1000 + rng.standard_normal((37, 300))).astype(np.float32)
    assert_close(B.bias_add_backward_cuda(dy, version=3, splits=5), B.bias_add_backward_numpy(dy.astype(np.float64)),
                 1e-2, 2e-6, "rows layout, 3 channel groups")


# ---------------------------------------------------------------- batchnorm v3
def _bn_train(x, gamma, beta, splits):
    y, cache, mean, var_u = BN.batchnorm_forward_cuda(x, gamma, beta, version=3, splits=splits)
    y_r, cache_r, mean_r, var_r = BN.batchnorm_forward_numpy(x.astype(np.float64), gamma, beta)
    return y, cache, mean, var_u, y_r, cache_r, mean_r, var_r


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("splits", [1, 3])
def test_batchnorm_v3_train(shape, splits, order, rng):
    if shape[0] * (shape[2] * shape[3] if len(shape) == 4 else 1) < 2:
        pytest.skip("training needs two values per channel")
    x = _input(rng, shape)
    gamma, beta = _params(rng, shape[1])
    dy = rng.standard_normal(shape).astype(np.float32)
    for xa, dya in ((x, dy), (_misaligned(x), _misaligned(dy))):
        y, cache, mean, var_u, y_r, cache_r, mean_r, var_r = _bn_train(xa, gamma, beta, splits)
        label = f"bn v3 {shape} splits={splits}"
        assert_close(mean, mean_r, 2e-5, 1e-5, f"{label} mean")
        assert_close(var_u, var_r, 2e-5, 1e-4, f"{label} var")
        assert_close(cache[0], cache_r[0], 5e-5, 1e-4, f"{label} xhat")
        assert_close(y, y_r, 5e-5, 1e-4, f"{label} y")
        dx, dg, db = BN.batchnorm_backward_cuda(dya, cache, version=3, splits=splits)
        c64 = tuple(a.astype(np.float64) if hasattr(a, "astype") else a for a in cache)
        dx_r, dg_r, db_r = BN.batchnorm_backward_numpy(dya.astype(np.float64), c64)
        assert_close(db, db_r, 1e-4, 1e-5, f"{label} dbeta")
        assert_close(dg, dg_r, 1e-4, 1e-5, f"{label} dgamma")
        assert_close(dx, dx_r, 5e-5, 1e-4, f"{label} dx")


def test_batchnorm_v3_statistics_survive_a_large_offset(rng):
    # shifted sums around the channel's first value: a mean of 1e3 with unit spread keeps
    # the variance to float32 rounding (E[x^2] - E[x]^2 in float32 would lose it all)
    x = (1000 + rng.standard_normal((64, 3, 5, 5))).astype(np.float32)
    gamma, beta = _params(rng, 3)
    _, _, mean, var_u, _, _, mean_r, var_r = _bn_train(x, gamma, beta, 4)
    assert_close(var_u, var_r, 0, 1e-4, "offset variance")
    assert_close(mean, mean_r, 0, 1e-6, "offset mean")


# ---------------------------------------------------------------- fused kernels
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_leaky_relu(shape, training, all_orders, rng):
    if training and shape[0] * (shape[2] * shape[3] if len(shape) == 4 else 1) < 2:
        pytest.skip("training needs two values per channel")
    c = shape[1]
    x = _input(rng, shape)
    gamma, beta = _params(rng, c)
    stats = () if training else (rng.standard_normal(c).astype(np.float32), rng.uniform(0.3, 2, c).astype(np.float32))
    dy = rng.standard_normal(shape).astype(np.float32)
    for splits in (None, 3):
        y, cache, mean, var_u = BN.batchnorm_leaky_relu_forward_cuda(x, gamma, beta, *stats, negative_slope=0.2,
                                                                     splits=splits)
        y_r, cache_r, mean_r, var_r = BN.batchnorm_leaky_relu_forward_numpy(x, gamma, beta, *stats, negative_slope=0.2)
        label = f"bn+leaky {shape} training={training} splits={splits}"
        assert_close(y, y_r, 5e-5, 1e-4, f"{label} y")
        assert_close(cache[0], cache_r[0], 5e-5, 1e-4, f"{label} xhat")
        if training:
            assert_close(mean, mean_r, 2e-5, 1e-5, f"{label} mean")
            assert_close(var_u, var_r, 2e-5, 1e-4, f"{label} var")
        else:
            assert mean is stats[0] and var_u is None
        # the backward against the reference fed the kernel's own cache (the mask from its xhat)
        dx, dg, db = BN.batchnorm_leaky_relu_backward_cuda(dy, cache, splits=splits)
        dx_r, dg_r, db_r = BN.batchnorm_leaky_relu_backward_numpy(dy, cache)
        assert_close(db, db_r, 1e-4, 1e-5, f"{label} dbeta")
        assert_close(dg, dg_r, 1e-4, 1e-5, f"{label} dgamma")
        assert_close(dx, dx_r, 5e-5, 1e-4, f"{label} dx")
        # batchnorm_leaky_relu_backward_v2: dgamma, dbeta added into the parameters' .grad,
        # the bits of v1's added to them; dx unchanged
        before = rng.standard_normal((2, c)).astype(np.float32)
        out = (before[0].copy(), before[1].copy())
        dx2, dg2, db2 = BN.batchnorm_leaky_relu_backward_cuda(dy, cache, splits=splits, out=out)
        assert dg2 is None and db2 is None
        np.testing.assert_array_equal(dx2, dx)
        np.testing.assert_array_equal(out[0], before[0] + dg)
        np.testing.assert_array_equal(out[1], before[1] + db)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_bias_leaky_relu(shape, all_orders, rng):
    y0 = _input(rng, shape)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y_r, cache_r = B.bias_leaky_relu_forward_numpy(y0.copy(), b, 0.1)
    for splits in (None, 2):
        for arr in (y0.copy(), _misaligned(y0)):
            y, cache = B.bias_leaky_relu_forward_cuda(arr, b, 0.1, splits=splits)
            assert y is arr and cache[0] is arr
            assert_close(y, y_r, 1e-7, 1e-6, f"bias+leaky {shape} forward")
        dpre_r, db_r = B.bias_leaky_relu_backward_numpy(dy, cache_r)
        for one_launch in (True, False):
            dpre, db = B.bias_leaky_relu_backward_cuda(dy, cache_r, splits=splits, one_launch=one_launch)
            assert np.array_equal(dpre, dpre_r)          # a select and a multiply: exact
            assert_close(db, db_r, 1e-5, 1e-5, f"bias+leaky {shape} db (one launch {one_launch})")
        assert B.bias_leaky_relu_backward_cuda(dy, cache_r, need_db=False)[1] is None
    with pytest.raises(ValueError, match="negative_slope >= 0"):
        B.bias_leaky_relu_forward_cuda(y0.copy(), b, -0.2)


def test_fused_ops_dispatch_to_their_kernels(launches, rng):
    x = _input(rng, (3, 8, 7, 7))
    gamma, beta = _params(rng, 8)
    y, cache, _, _ = BN.batchnorm_leaky_relu_forward(x, gamma, beta, negative_slope=0.2)
    BN.batchnorm_leaky_relu_backward(np.ones_like(y), cache)
    yb, cb = B.bias_leaky_relu_forward(x.copy(), beta, 0.2)
    B.bias_leaky_relu_backward(np.ones_like(yb), cb)
    assert launches == ["batchnorm_forward_stats_v3", "batchnorm_forward_stats_centered_v3",
                        "batchnorm_leaky_relu_forward_v1",
                        "batchnorm_leaky_relu_backward_partial_v1", "batchnorm_leaky_relu_backward_v1",
                        "bias_leaky_relu_forward_v1", "bias_leaky_relu_backward_v3"]


# ---------------------------------------------------------------- determinism
def test_split_reductions_are_bit_identical_across_orders_and_workers(rng):
    x = _input(rng, (6, 5, 9, 9))
    gamma, beta = _params(rng, 5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    runs = []
    for order, workers in (("forward", 1), ("reverse", 1), ("random", 2), ("random", 2)):
        with cuda_emu.settings(order=order, seed=len(runs), workers=workers):
            y, cache, mean, var_u = BN.batchnorm_leaky_relu_forward_cuda(x, gamma, beta, negative_slope=0.2, splits=5)
            grads = BN.batchnorm_leaky_relu_backward_cuda(dy, cache, splits=5)
            db = B.bias_add_backward_cuda(dy, splits=5)
            runs.append([y, mean, var_u, *grads, db])
    for other in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], other))


# ---------------------------------------------------------------- fused layers on emu
@pytest.mark.parametrize("make, shape", [
    (lambda r: nn.BatchNorm2d(6, rng=r), (3, 6, 7, 7)),
    (lambda r: nn.BatchNorm1d(10, rng=r), (4, 10)),
    (lambda r: nn.Linear(9, 12, rng=r), (5, 9)),
    (lambda r: nn.Conv2d(3, 4, 3, 2, 1, rng=r), (2, 3, 7, 7)),
    (lambda r: nn.ConvTranspose2d(3, 4, 4, 2, 1, rng=r), (2, 3, 5, 5)),
], ids=["bn2d", "bn1d", "linear", "conv2d", "convT2d"])
def test_fused_pair_on_emu_matches_numpy(make, shape, rng):
    x = _input(rng, shape)
    out = {}
    for name in ("emu", "numpy"):
        backend.use(name)
        seq = nn.Sequential(make(np.random.default_rng(4)), nn.LeakyReLU(0.2))
        for p in seq.parameters():
            p.data[...] = np.random.default_rng(6).standard_normal(p.shape) * 0.3 + (1 if p.data.ndim == 1 else 0)
        y = seq(x)
        dy = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
        out[name] = [y, seq.backward(dy)] + [p.grad.copy() for p in seq.parameters()]
    backend.use("emu")
    for i, (a, b) in enumerate(zip(out["emu"], out["numpy"])):
        assert_close(a, b, 2e-4, 1e-3, f"fused pair emu vs numpy, result {i}")


def test_channel_split_launch():
    # splits from the shape alone: 4 blocks per SM of an H100, >= 2048 values per block
    assert _launch.channel_split_launch(128, 128, 784)[2] == 5        # G's 28x28 BatchNorm at batch 128
    assert _launch.channel_split_launch(3, 128, 49)[2] == 1
    assert _launch.channel_split_launch(128, 1024, 1)[2] == 8         # 8 channel groups x 8 row splits
    grid, block, s = _launch.channel_split_launch(5, 300, 1, splits=9)
    assert grid == (3, 5) and block == (256,) and s == 5              # at most one split per row

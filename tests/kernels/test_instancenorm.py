"""kernels/instancenorm.cu against cganraw.ops.instancenorm's NumPy reference, through the
emulator: forward (y, xhat, statistics), backward (dx and the parameter gradients) and the
running-statistics update, both versions, on odd batches, channel counts that are not
powers of two, 7x7, 14x14 and 28x28 planes, planes smaller than a warp, and the conv
cGAN's real G shapes. The block-per-plane kernels run under every thread order."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import instancenorm as IN
from tests.kernels.conftest import assert_close

SHAPES = [(1, 1, 2, 1), (3, 5, 7, 7), (5, 3, 14, 14), (1, 7, 28, 28), (3, 33, 3, 5), (2, 6, 1, 40),
          (3, 64, 14, 14), (3, 64, 28, 28)]


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


def _input(rng, shape):
    loc = rng.uniform(-2, 2, shape[:2] + (1, 1))
    scale = rng.uniform(0.5, 3, shape[:2] + (1, 1))
    return (rng.standard_normal(shape) * scale + loc).astype(np.float32)


def _params(rng, c):
    return ((1 + 0.2 * rng.standard_normal(c)).astype(np.float32), (0.2 * rng.standard_normal(c)).astype(np.float32))


def _check(shape, version, rng, label):
    x = _input(rng, shape)
    gamma, beta = _params(rng, shape[1])
    y, cache, mean, var = IN.instancenorm_forward_cuda(x, gamma, beta, version=version)
    y_r, cache_r, mean_r, var_r = IN.instancenorm_forward_numpy(x, gamma, beta)
    assert_close(mean, mean_r, 2e-5, 1e-5, f"{label} mean")
    assert_close(var, var_r, 2e-5, 1e-4, f"{label} var")
    assert_close(cache[2], cache_r[2], 1e-4, 1e-4, f"{label} invstd")
    assert_close(cache[1], cache_r[1], 5e-5, 1e-4, f"{label} xhat")
    assert_close(y, y_r, 5e-5, 1e-4, f"{label} y")
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dgamma, dbeta = IN.instancenorm_backward_cuda(dy, cache, version=version)
    dx_r, dgamma_r, dbeta_r = IN.instancenorm_backward_numpy(dy, cache)    # the same cache: the backward alone
    assert_close(dbeta, dbeta_r, 1e-4, 1e-5, f"{label} dbeta")
    assert_close(dgamma, dgamma_r, 1e-4, 1e-5, f"{label} dgamma")
    assert_close(dx, dx_r, 2e-5, 1e-4, f"{label} dx")
    return mean, var


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_forward_backward_v1(shape, rng):
    _check(shape, 1, rng, f"instancenorm v1 {shape}")


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_forward_backward_v2(shape, all_orders, rng):
    _check(shape, 2, rng, f"instancenorm v2 {shape} ({all_orders} order)")


def test_v2_block_strides_over_planes(monkeypatch, all_orders, rng):
    # more planes than blocks: the shared broadcasts must not race between planes
    from cganraw.ops import _launch
    monkeypatch.setattr(_launch, "MAX_ROW_BLOCKS", 3)
    _check((3, 5, 7, 7), 2, rng, f"block-strided ({all_orders} order)")


def test_running_update(rng):
    n, c, hw = 5, 7, 49
    rm, rv = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    mean, var = rng.standard_normal((n, c)).astype(np.float32), rng.uniform(0.1, 2, (n, c)).astype(np.float32)
    rm_r, rv_r = rm.copy(), rv.copy()
    IN.instancenorm_running_update_numpy(rm_r, rv_r, mean, var, 0.1, hw)
    IN.instancenorm_running_update_cuda(rm, rv, mean, var, 0.1, hw)
    assert_close(rm, rm_r, 1e-7, 1e-6, "running mean")
    assert_close(rv, rv_r, 1e-7, 1e-6, "running var")
    big_m, big_v = np.zeros(2 * c, np.float32), np.ones(2 * c, np.float32)
    IN.instancenorm_running_update_cuda(big_m[::2], big_v[::2], mean, var, 0.5, hw)
    assert_close(big_m[::2], 0.5 * mean.mean(axis=0), 1e-7, 1e-6, "strided running mean")
    assert np.all(big_m[1::2] == 0) and np.all(big_v[1::2] == 1)


def test_public_op_dispatch(launches, rng):
    assert backend.uses_kernels()
    x = _input(rng, (3, 5, 14, 14))
    gamma, beta = _params(rng, 5)
    y, cache, mean, var = IN.instancenorm_forward(x, gamma, beta)
    IN.instancenorm_backward(np.ones_like(y), cache)
    IN.instancenorm_running_update(np.zeros(5, np.float32), np.ones(5, np.float32), mean, var, 0.1, 196)
    y, cache, _, _ = IN.instancenorm_forward(x[:, :, :2, :2].copy(), gamma, beta)    # 4-pixel planes: v1
    IN.instancenorm_forward(x, gamma, beta, np.zeros(5, np.float32), np.ones(5, np.float32))   # BatchNorm's eval
    assert launches == ["instancenorm_forward_v2", "instancenorm_backward_v2", "instancenorm_backward_param_grad_v1",
                        "instancenorm_running_update_v1", "instancenorm_forward_v1",
                        "batchnorm_forward_invstd_v1", "batchnorm_forward_v3"]


@pytest.mark.parametrize("affine,track", [(False, False), (True, False), (False, True), (True, True)])
def test_layer_on_emu_matches_numpy_backend(affine, track, rng):
    # two training steps, then eval, on both backends
    xs = [_input(rng, (3, 5, 7, 7)) for _ in range(3)]
    dy = rng.standard_normal((3, 5, 7, 7)).astype(np.float32)
    out = {}
    for name in ("emu", "numpy"):
        backend.use(name)
        layer = nn.InstanceNorm2d(5, affine=affine, track_running_stats=track, rng=np.random.default_rng(5))
        rec = []
        for x in xs[:2]:
            rec += [layer(x), layer.backward(dy)]
        rec += [backend.asnumpy(b).copy() for _, b in layer.named_buffers()]
        rec += [p.grad.copy() for p in layer.parameters()]
        layer.eval()
        rec += [layer(xs[2]), layer.backward(dy)]
        out[name] = rec
    backend.use("emu")
    assert len(out["emu"]) == len(out["numpy"])
    for i, (a, b) in enumerate(zip(out["emu"], out["numpy"])):
        assert_close(a, b, 2e-4, 1e-3, f"InstanceNorm2d(affine={affine}, track={track}) emu vs numpy, result {i}")


def test_bad_inputs(rng):
    x = _input(rng, (2, 3, 4, 4))
    gamma, beta = _params(rng, 3)
    with pytest.raises(TypeError, match="instancenorm_forward: x: kernels take float32, got float64"):
        IN.instancenorm_forward_cuda(x.astype(np.float64), gamma, beta)
    with pytest.raises(ValueError, match=r"instancenorm_forward: beta has shape \(2,\), expected \(3,\)"):
        IN.instancenorm_forward_cuda(x, gamma, beta[:2])
    with pytest.raises(ValueError, match="version"):
        IN.instancenorm_forward_cuda(x, gamma, beta, version=4)
    _, cache, _, _ = IN.instancenorm_forward_cuda(x, gamma, beta)
    with pytest.raises(ValueError, match="instancenorm_backward: dy has shape"):
        IN.instancenorm_backward_cuda(np.ones((2, 3, 4, 5), np.float32), cache)


# ---------------------------------------------------------------- fused with LeakyReLU

@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_leaky_relu_fused_matches_reference(shape, all_orders, rng):
    x = _input(rng, shape)
    gamma, beta = _params(rng, shape[1])
    y, cache, mean, var = IN.instancenorm_leaky_relu_forward_cuda(x, gamma, beta, 1e-5, 0.2)
    y_r, cache_r, mean_r, var_r = IN.instancenorm_leaky_relu_forward_numpy(x, gamma, beta, 1e-5, 0.2)
    assert_close(y, y_r, 1e-5, 1e-4, "y")
    assert_close(mean, mean_r, 1e-5, 1e-4, "mean")
    assert_close(var, var_r, 1e-5, 1e-4, "var")
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dg, db = IN.instancenorm_leaky_relu_backward_cuda(dy, cache)
    dx_r, dg_r, db_r = IN.instancenorm_leaky_relu_backward_numpy(dy, cache_r)
    assert_close(dx, dx_r, 1e-4, 1e-3, "dx")
    assert_close(dg, dg_r, 1e-4, 1e-4, "dgamma")
    assert_close(db, db_r, 1e-4, 1e-4, "dbeta")
    # into the parameters' .grad: the same sums added
    before = [rng.standard_normal(shape[1]).astype(np.float32) for _ in range(2)]
    out = [b.copy() for b in before]
    dx2, none_g, none_b = IN.instancenorm_leaky_relu_backward_cuda(dy, cache, out=out)
    assert none_g is None and none_b is None
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(out[0], before[0] + dg)
    np.testing.assert_array_equal(out[1], before[1] + db)


def test_leaky_relu_fused_reference_is_the_two_layers_and_its_gradient_by_finite_differences(rng):
    # numpy: the pair's reference is the unfused arithmetic (bit for bit); float64 central
    # differences of <y, R> prove its backward
    from cganraw.ops.activation import leaky_relu_forward_numpy
    x = _input(rng, (2, 3, 4, 5))
    gamma, beta = _params(rng, 3)
    y, _, _, _ = IN.instancenorm_leaky_relu_forward_numpy(x, gamma, beta, 1e-5, 0.2)
    y1, _, _, _ = IN.instancenorm_forward_numpy(x, gamma, beta, 1e-5)
    np.testing.assert_array_equal(y, leaky_relu_forward_numpy(y1, 0.2)[0])
    x64, g64, b64 = (a.astype(np.float64) for a in (x, gamma, beta))
    R = rng.standard_normal(x.shape)

    def f(x_, g_, b_):
        return float((IN.instancenorm_leaky_relu_forward_numpy(x_, g_, b_, 1e-5, 0.2)[0] * R).sum())
    _, cache, _, _ = IN.instancenorm_leaky_relu_forward_numpy(x64, g64, b64, 1e-5, 0.2)
    grads = IN.instancenorm_leaky_relu_backward_numpy(R, cache)
    for k, (base, g) in enumerate(zip((x64, g64, b64), grads)):
        for _ in range(3):
            e = rng.standard_normal(base.shape)
            args = [x64, g64, b64]
            args[k] = base + 1e-6 * e
            up = f(*args)
            args[k] = base - 1e-6 * e
            fd = (up - f(*args)) / 2e-6
            assert fd == pytest.approx(float((g * e).sum()), rel=1e-5, abs=1e-7), k


def test_leaky_relu_fused_is_reproducible_and_the_pair_fuses_on_the_kernel_backends(launches, rng):
    from cganraw import cuda_emu
    x = _input(rng, (6, 5, 9, 9))
    gamma, beta = _params(rng, 5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, cache, _, _ = IN.instancenorm_leaky_relu_forward_cuda(x, gamma, beta, 1e-5, 0.2)
    runs = set()
    for order, workers in (("forward", 1), ("reverse", 1), ("random", 2), ("random", 2)):
        with cuda_emu.settings(order=order, seed=3, workers=workers):
            runs.add(b"".join(backend.asnumpy(a).tobytes() for a in IN.instancenorm_leaky_relu_backward_cuda(dy, cache)))
    assert len(runs) == 1
    # G's InstanceNorm2d + LeakyReLU in a Sequential: one launch each way on emu, the unfused
    # layers' values and gradients (numpy backend)
    def run(bk):
        backend.use(bk)
        seq = nn.Sequential(nn.InstanceNorm2d(5, affine=True, rng=np.random.default_rng(1)), nn.LeakyReLU(0.2))
        y = seq(x)
        dx = seq.backward(dy)
        return [backend.asnumpy(a) for a in (y, dx, seq[0].weight.grad, seq[0].bias.grad)]
    launches.clear()
    got = run("emu")
    assert launches == ["instancenorm_leaky_relu_forward_v2", "instancenorm_leaky_relu_backward_v2"]
    ref = run("numpy")
    backend.use("emu")
    for a, b, name in zip(got, ref, ("y", "dx", "dgamma", "dbeta")):
        assert_close(a, b, 1e-4, 1e-3, name)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_leaky_relu_fused_channel_major_versions(shape, rng):
    # v2 writes y channel-major (an NCHW view of (C, N, H, W) memory) and reads a channel-major
    # dy in place: the values of v1, bit for bit; flag 0 is v1 exactly
    x = _input(rng, shape)
    gamma, beta = _params(rng, shape[1])
    y1, cache1, mean1, var1 = IN.instancenorm_leaky_relu_forward_cuda(x, gamma, beta, 1e-5, 0.2, version=1)
    y2, cache2, mean2, var2 = IN.instancenorm_leaky_relu_forward_cuda(x, gamma, beta, 1e-5, 0.2, version=2)
    yc, cachec, _, _ = IN.instancenorm_leaky_relu_forward_cuda(x, gamma, beta, 1e-5, 0.2, channel_major=True)
    for a in (y2, yc, mean2, var2, cache2[1], cachec[1]):
        assert backend.asnumpy(a).dtype == np.float32
    np.testing.assert_array_equal(backend.asnumpy(y2), backend.asnumpy(y1))
    np.testing.assert_array_equal(backend.asnumpy(yc), backend.asnumpy(y1))
    assert yc.shape == tuple(shape) and yc.transpose(1, 0, 2, 3).flags.c_contiguous
    dy = rng.standard_normal(shape).astype(np.float32)
    ref = [backend.asnumpy(a) for a in IN.instancenorm_leaky_relu_backward_cuda(dy, cache1, version=1)]
    dy_cm = backend.get_xp().asarray(np.ascontiguousarray(dy.transpose(1, 0, 2, 3))).transpose(1, 0, 2, 3)
    for d in (dy, dy_cm):
        got = [backend.asnumpy(a) for a in IN.instancenorm_leaky_relu_backward_cuda(d, cachec)]
        for a, b, name in zip(got, ref, ("dx", "dgamma", "dbeta")):
            np.testing.assert_array_equal(a, b, err_msg=name)
    with pytest.raises(ValueError, match="channel_major needs version 2"):
        IN.instancenorm_leaky_relu_forward_cuda(x, gamma, beta, 1e-5, 0.2, channel_major=True, version=1)
    if min(shape[0], shape[1]) > 1:
        with pytest.raises(ValueError, match="dy has shape"):
            IN.instancenorm_leaky_relu_backward_cuda(dy_cm[:, :-1], cachec)


def test_generator_blocks_on_emu_hand_activations_on_channel_major(launches, rng):
    # G's [ConvT -> InstanceNorm2d -> LeakyReLU -> Conv2d(-> 1) -> Tanh]: no layout copy between
    # the convolutions and the norm either way, the values of the numpy backend (the layers
    # unfused there) and of the unfused layers on emu
    from cganraw import devicelog
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    results = {}
    for bk, fuse in (("emu", True), ("emu", False), ("numpy", True)):
        backend.use(bk)
        r = np.random.default_rng(4)
        seq = nn.Sequential(nn.ConvTranspose2d(4, 3, 4, 2, 1, bias=False, rng=r), nn.InstanceNorm2d(3, affine=True, rng=r),
                            nn.LeakyReLU(0.2), nn.Conv2d(3, 1, 7, padding=3, rng=r), nn.Tanh(), fuse=fuse)
        for p in seq.parameters():
            p.data[...] = r.normal(size=p.shape) * 0.3
        with devicelog.recording() as log:
            y = seq(x)
            dx = seq.backward(np.cos(3 * backend.asnumpy(y)).astype(np.float32))
        results[(bk, fuse)] = [backend.asnumpy(a) for a in (y, dx, *(p.grad for p in seq.parameters()))]
        if bk == "emu" and fuse:
            # the ConvT's input to channel-major, its gradient back: the only layout copies
            assert log.launches_by_name()["copy"] == 2, log.launches_by_name()
    backend.use("emu")
    for a, b, r in zip(results[("emu", True)], results[("emu", False)], results[("numpy", True)]):
        assert_close(a, b, 1e-5, 1e-4, "fused vs unfused on emu")
        assert_close(a, r, 2e-5, 1e-3, "emu vs numpy")

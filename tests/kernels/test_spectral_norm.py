"""kernels/spectral_norm.cu against cganraw.ops.spectral_norm's NumPy reference, through the
emulator: the power iteration (u, v), sigma, the normalised weight and the weight gradient,
every version (v3: the fused power iteration, W / sigma with the gradient accumulator
zeroed, the gradient added into .grad), for weights read along dim 0 (Linear, Conv2d, Embedding) and dim 1
(ConvTranspose2d), with row counts and lengths that are not multiples of a warp, and the
conv cGAN's D layers at width 64."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import spectral_norm as SN
from tests.kernels.conftest import assert_close

CASES = [((4, 6), 0), ((1, 3136), 0), ((784, 50), 0), ((7, 3, 3, 3), 0), ((64, 64, 3, 3), 0),
         ((3, 5, 4, 4), 1), ((65, 33, 4, 4), 1), ((10, 50), 0), ((2, 3, 5), 2), ((1, 1), 0)]


def _ids(cases):
    return ["x".join(map(str, s)) + f"-d{d}" for s, d in cases]


def _vectors(rng, shape, dim):
    h = shape[dim]
    u = rng.standard_normal(h).astype(np.float32)
    v = rng.standard_normal(int(np.prod(shape)) // h).astype(np.float32)
    return u / np.linalg.norm(u), v / np.linalg.norm(v)


def _check(shape, dim, version, n_iter, rng, label):
    w = rng.standard_normal(shape).astype(np.float32)
    u, v = _vectors(rng, shape, dim)
    w_sn, u1, v1, cache = SN.spectral_norm_forward_cuda(w, u, v, dim, n_iter, version=version)
    w_sn_r, u1_r, v1_r, cache_r = SN.spectral_norm_forward_numpy(w, u, v, dim, n_iter)
    assert_close(u1, u1_r, 1e-5, 1e-4, f"{label} u")
    assert_close(v1, v1_r, 1e-5, 1e-4, f"{label} v")
    assert SN.sigma_of(cache) == pytest.approx(SN.sigma_of(cache_r), rel=1e-5)
    assert_close(w_sn, w_sn_r, 1e-6, 1e-5, f"{label} W / sigma")
    g = rng.standard_normal(shape).astype(np.float32)
    if version == 3:        # adds into .grad
        before = rng.standard_normal(shape).astype(np.float32)
        dw = SN.spectral_norm_backward_cuda(g, cache, out=before.copy(), version=version) - before
    else:
        dw = SN.spectral_norm_backward_cuda(g, cache, version=version)
    assert_close(dw, SN.spectral_norm_backward_numpy(g, cache), 1e-5, 1e-4, f"{label} dW")
    # eval: no power iteration, u and v come back unchanged
    _, u2, v2, _ = SN.spectral_norm_forward_cuda(w, u, v, dim, n_iter, power_iteration=False, version=version)
    np.testing.assert_array_equal(u2, u)
    np.testing.assert_array_equal(v2, v)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_v1(case, rng):
    _check(*case, 1, 1, rng, f"spectral_norm v1 {case}")


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_v2(case, order, rng):
    _check(*case, 2, 2, rng, f"spectral_norm v2 {case} ({order} order)")


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_v3_fused(case, all_orders, rng):
    _check(*case, 3, 1, rng, f"spectral_norm v3 {case} ({all_orders} order)")


@pytest.mark.parametrize("n_iter", [2, 3])
def test_v3_several_iterations(n_iter, rng):
    for shape, dim in [((37, 45), 0), ((5, 70, 3, 3), 1)]:
        _check(shape, dim, 3, n_iter, rng, f"spectral_norm v3 {shape} x{n_iter}")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_in_place_and_zero(version, rng):
    # the new u, v written into the buffers given, the gradient accumulator zeroed
    for shape, dim, power in [((33, 20), 0, True), ((4, 9, 3, 3), 1, True), ((6, 5), 0, False)]:
        w = rng.standard_normal(shape).astype(np.float32)
        u, v = _vectors(rng, shape, dim)
        bu, bv, zero = u.copy(), v.copy(), np.ones(shape, np.float32)
        w_sn, u1, v1, _ = SN.spectral_norm_forward_cuda(w, bu, bv, dim, 1, power_iteration=power, in_place=True,
                                                        zero=zero, version=version)
        ru, rv, rzero = u.copy(), v.copy(), np.ones(shape, np.float32)
        w_sn_r, u1_r, _, _ = SN.spectral_norm_forward_numpy(w, ru, rv, dim, 1, power_iteration=power, in_place=True,
                                                            zero=rzero)
        assert not zero.any() and not rzero.any()
        np.testing.assert_array_equal(bu, u1)
        np.testing.assert_array_equal(bv, v1)
        np.testing.assert_array_equal(ru, u1_r)
        assert_close(bu, ru, 1e-5, 1e-4, f"v{version} {shape} buffer u")
        assert_close(bv, rv, 1e-5, 1e-4, f"v{version} {shape} buffer v")
        if not power:
            np.testing.assert_array_equal(bu, u)
        assert_close(w_sn, w_sn_r, 1e-6, 1e-5, f"v{version} {shape} W / sigma")
        assert u1 is not bu and v1 is not bv      # the cache keeps its own vectors


def test_v2_block_strides_over_rows(monkeypatch, all_orders, rng):
    from cganraw.ops import _launch
    monkeypatch.setattr(_launch, "MAX_ROW_BLOCKS", 3)
    _check((37, 45), 0, 2, 1, rng, f"block-strided ({all_orders} order)")


def test_zero_weight_uses_eps(rng):
    # normalize divides by max(||x||, eps): a zero weight gives zero vectors, not NaN
    w = np.zeros((3, 4), np.float32)
    u, v = _vectors(rng, (3, 4), 0)
    _, u1, v1, _ = SN.spectral_norm_forward_cuda(w, u, v, 0, 1)
    assert not u1.any() and not v1.any()


def test_layer_on_emu_matches_numpy_backend(rng):
    # three training forwards/backwards of a spectrally normalised ConvTranspose2d (dim 1)
    xs = [rng.standard_normal((3, 5, 7, 7)).astype(np.float32) for _ in range(3)]
    out = {}
    for name in ("emu", "numpy"):
        backend.use(name)
        layer = nn.utils.spectral_norm(nn.ConvTranspose2d(5, 3, 4, 2, 1, rng=np.random.default_rng(1)),
                                       rng=np.random.default_rng(2))
        rec = []
        for x in xs:
            y = layer(x)
            rec += [y, layer.backward(np.ones_like(y)), layer.weight_u.copy(), layer.weight_v.copy()]
        rec.append(layer.weight_orig.grad.copy())
        out[name] = rec
    backend.use("emu")
    for i, (a, b) in enumerate(zip(out["emu"], out["numpy"])):
        assert_close(a, b, 1e-4, 1e-3, f"spectral-normalised ConvTranspose2d emu vs numpy, result {i}")


def test_public_op_dispatch(launches, rng):
    assert backend.uses_kernels()
    layer = nn.utils.spectral_norm(nn.Linear(40, 3), rng=rng)
    launches.clear()
    y = layer(rng.standard_normal((2, 40)).astype(np.float32))
    layer.backward(np.ones_like(y))
    # the fused kernels: two launches a forward, two a backward (the second adds into .grad)
    assert launches[:2] == ["spectral_norm_power_v1", "spectral_norm_forward_v3"]
    assert launches[-2:] == ["spectral_norm_dot_v1", "spectral_norm_backward_v3"]
    from cganraw import devicelog
    x = rng.standard_normal((2, 40)).astype(np.float32)
    with devicelog.recording() as log:
        nn.utils.SpectralNorm.compute(layer._spectral_norm_hooks.norms["weight"], layer, power_iteration=True)
    assert [e.name for e in log.launches] == ["spectral_norm_power_v1", "spectral_norm_forward_v3"]
    assert layer(x).shape == (2, 3)


def test_bad_inputs(rng):
    w = rng.standard_normal((3, 4)).astype(np.float32)
    u, v = _vectors(rng, (3, 4), 0)
    with pytest.raises(ValueError, match=r"u and v must have shapes \(3,\) and \(4,\)"):
        SN.spectral_norm_forward_cuda(w, v, u, 0)
    with pytest.raises(TypeError, match="spectral_norm_forward: weight: kernels take float32"):
        SN.spectral_norm_forward_cuda(w.astype(np.float64), u, v, 0)
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        SN.spectral_norm_forward_cuda(w, u, v, 2)
    _, _, _, cache = SN.spectral_norm_forward_cuda(w, u, v, 0)
    with pytest.raises(ValueError, match="spectral_norm_backward: dw_sn has shape"):
        SN.spectral_norm_backward_cuda(np.ones((4, 3), np.float32), cache)
    with pytest.raises(ValueError, match="kernel version 3 adds into `out`: give one"):
        SN.spectral_norm_backward_cuda(w, cache, version=3)
    with pytest.raises(ValueError, match=r"zero must have the weight's shape \(3, 4\)"):
        SN.spectral_norm_forward_cuda(w, u, v, 0, zero=np.zeros((4, 3), np.float32))


# ---------------------------------------------------------------- every layer at once (*_multi_v1)
# layers of one table: a Linear (dim 0), a conv (dim 0), a ConvTranspose2d (dim 1), a
# single-row weight and D's layers at width 4 (Conv2d(2, 4, 3), Conv2d(4, 4, 3), Linear(245, 1))
MULTI = [[((4, 6), 0), ((7, 3, 3, 3), 0), ((3, 5, 4, 4), 1), ((1, 33), 0)],
         [((4, 2, 3, 3), 0), ((4, 4, 3, 3), 0), ((1, 245), 0)], [((65, 33), 0)]]


def _multi(rng, layers, iterations, gap=5):
    """Flat W (with gaps, as the optimiser's aligned packing leaves), uv, the table."""
    rows, w_parts, uv_parts, off, uv_off = [], [], [], 0, 0
    for shape, dim in layers:
        w = rng.standard_normal(shape).astype(np.float32)
        u, v = _vectors(rng, shape, dim)
        rows.append((off, shape, dim, uv_off, iterations))
        w_parts += [w.reshape(-1), np.zeros(gap, np.float32)]
        uv_parts += [u, v]
        off += w.size + gap
        uv_off += u.size + v.size
    table, rows_total, wsn_total = SN.multi_table(rows)
    return np.concatenate(w_parts), np.concatenate(uv_parts), table, rows_total, wsn_total


@pytest.mark.parametrize("iterations", [0, 1, 2])
@pytest.mark.parametrize("layers", MULTI, ids=["mixed", "D-width4", "one"])
def test_multi_forward_and_backward_match_reference(layers, iterations, all_orders, rng):
    W, uv, table, rows_total, wsn_total = _multi(rng, layers, iterations)
    uv_r, uv_k = uv.copy(), uv.copy()
    wsn_r, zero_r = np.empty(wsn_total, np.float32), np.ones(wsn_total, np.float32)
    wsn_k, zero_k = np.empty(wsn_total, np.float32), np.ones(wsn_total, np.float32)
    uv_out_r, sigma_r = SN.spectral_norm_multi_forward_numpy(table, W, uv_r, wsn_r, zero_r, 1e-12)
    uv_out_k, sigma_k = SN.spectral_norm_multi_forward_cuda(table, W, uv_k, wsn_k, zero_k, 1e-12, True, rows_total)
    assert_close(sigma_k, sigma_r, 1e-5, 1e-4, "sigma")
    assert_close(uv_out_k, uv_out_r, 1e-5, 1e-4, "u, v")
    assert_close(uv_k, uv_r, 1e-5, 1e-4, "u, v written back")
    if iterations == 0:
        np.testing.assert_array_equal(uv_k, uv)
    assert_close(wsn_k, wsn_r, 1e-5, 1e-4, "W / sigma")
    assert not zero_k.any()
    # the reference is the single-layer op, layer by layer
    for (shape, dim), row in zip(layers, table):
        w = W[row[0]:row[0] + int(np.prod(shape))].reshape(shape)
        u, v = uv[row[4]:row[4] + shape[dim]], uv[row[4] + shape[dim]:row[4] + w.size // shape[dim] + shape[dim]]
        w_sn, _, _, cache = SN.spectral_norm_forward_numpy(w, u.copy(), v.copy(), dim, max(iterations, 1), 1e-12,
                                                           power_iteration=iterations > 0)
        np.testing.assert_array_equal(wsn_r[row[7]:row[7] + w.size].reshape(shape), w_sn)
    dw_sn = rng.standard_normal(wsn_total).astype(np.float32)
    before = rng.standard_normal(W.size).astype(np.float32)
    dW_r, dW_k = before.copy(), before.copy()
    SN.spectral_norm_multi_backward_numpy(table, dW_r, dw_sn, W, uv_out_r, sigma_r)
    SN.spectral_norm_multi_backward_cuda(table, dW_k, dw_sn, W, uv_out_k, sigma_k)
    assert_close(dW_k, dW_r, 1e-5, 1e-4, "dW")
    gaps = np.ones(W.size, bool)
    for row in table:
        gaps[row[0]:row[0] + int(row[1] * row[2] * row[3])] = False
    np.testing.assert_array_equal(dW_k[gaps], before[gaps])          # nothing written between layers


def test_multi_backward_by_finite_differences(rng):
    # float64, no power iteration (u, v fixed: sigma = u^T W v exactly): the multi backward
    # is the gradient of sum_l <W_l / sigma_l(W_l), R_l>
    W, uv, table, rows_total, wsn_total = _multi(rng, MULTI[0], 0)
    W, uv = W.astype(np.float64), uv.astype(np.float64)
    R = rng.standard_normal(wsn_total)

    def f(w):
        wsn, zero = np.empty(wsn_total), np.empty(wsn_total)
        SN.spectral_norm_multi_forward_numpy(table, w, uv.copy(), wsn, zero, 1e-12)
        return float(wsn @ R)
    uv_out, sigma = SN.spectral_norm_multi_forward_numpy(table, W, uv.copy(), np.empty(wsn_total),
                                                         np.empty(wsn_total), 1e-12)
    dW = SN.spectral_norm_multi_backward_numpy(table, np.zeros_like(W), R, W, uv_out, sigma)
    for _ in range(4):                                         # directional derivatives
        e = rng.standard_normal(W.size)
        fd = (f(W + 1e-6 * e) - f(W - 1e-6 * e)) / 2e-6
        assert fd == pytest.approx(float(dW @ e), rel=1e-6, abs=1e-8)


def test_group_on_a_packed_d_equals_the_layers_one_by_one(rng):
    # D as the trainer builds it, on emu: with its Adam (packed) the group runs; without
    # packing (no optimiser) each layer normalises itself: the same u, v, W / sigma, output
    # and raw weight gradients (up to the order of float sums)
    from cganraw import devicelog, models
    from cganraw.optim import Adam

    def run(packed):
        D = models.build("cgan-conv", 5, width=4, seed=2, d_norm="spectral", minibatch_std=True)[1]
        opt = Adam(D.parameters()) if packed else None      # kept alive: its packing stays
        for p in D.parameters():
            p.grad[...] = 0
        x = rng.uniform(-1, 1, (6, 1, 28, 28)).astype(np.float32)
        with devicelog.recording() as log:
            y = D(x, np.array([0, 1, 2, 3, 4, 0]))
            D.backward(np.ones_like(y))
        names = [e.name for e in log.launches if e.name.startswith("spectral_norm")]
        state = {k: backend.asnumpy(v).copy() for k, v in D.state_dict().items()}
        state.update({k + ".grad": backend.asnumpy(p.grad).copy() for k, p in D.named_parameters()})
        assert (opt is not None) == (nn.utils.spectral_norm_group(D) is not None)
        return names, backend.asnumpy(y), state
    rng = np.random.default_rng(4)
    names_g, y_g, s_g = run(True)
    rng = np.random.default_rng(4)
    names_1, y_1, s_1 = run(False)
    assert names_g == ["spectral_norm_power_multi_v1", "spectral_norm_forward_multi_v1",
                       "spectral_norm_dot_multi_v1", "spectral_norm_backward_multi_v1"]
    assert names_1.count("spectral_norm_power_v1") == 3 and "spectral_norm_power_multi_v1" not in names_1
    assert_close(y_g, y_1, 1e-5, 1e-4, "D(x)")
    assert s_g.keys() == s_1.keys()
    for k in s_g:
        assert_close(s_g[k], s_1[k], 1e-6, 1e-4, k)

"""kernels/spectral_norm.cu against cganraw.ops.spectral_norm's NumPy reference, through the
emulator: the power iteration (u, v), sigma, the normalised weight and the weight gradient,
both versions, for weights read along dim 0 (Linear, Conv2d, Embedding) and dim 1
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
    assert launches[:6] == ["spectral_norm_forward_matvec_t_v1", "spectral_norm_forward_normalize_v1",
                            "spectral_norm_forward_matvec_v2", "spectral_norm_forward_normalize_v1",
                            "spectral_norm_forward_matvec_v2", "spectral_norm_dot_v1"]
    assert launches[6] == "spectral_norm_forward_v2"
    assert launches[-2:] == ["spectral_norm_dot_v1", "spectral_norm_backward_v2"]


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

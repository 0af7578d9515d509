"""kernels/maxpool.cu (maxpool2d_forward_v1, maxpool2d_backward_v1 scatter, _v2 gather)
through the emulator against cganraw.ops.maxpool's NumPy reference: odd sizes that drop a
last row or column, overlapping windows (s < k), gaps (s > k), one window, a batch of 1,
the evaluation classifier's 2x2 pools, ties, NaN, and a grid too small for the work."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import maxpool as MP
from tests.kernels.conftest import assert_close

# (N, C, H, W, k, s)
CASES = [
    (1, 1, 1, 1, 1, 1),
    (1, 1, 4, 4, 2, 2),
    (3, 2, 7, 7, 2, 2),        # odd size: the last row and column belong to no window
    (1, 2, 7, 7, 3, 2),        # overlapping windows
    (2, 1, 6, 5, 3, 1),        # overlapping, stride 1, non-square
    (1, 2, 8, 9, 2, 3),        # gaps between windows
    (3, 2, 5, 5, 5, 5),        # one window
    (5, 3, 13, 11, 3, 2),
    (1, 1, 9, 9, 4, 1),        # 16 windows cover the centre pixel
    (3, 32, 28, 28, 2, 2),     # the classifier's first pool at batch 3
    (3, 64, 14, 14, 2, 2),     # and its second
]
IDS = ["N{}C{}H{}W{}-k{}s{}".format(*c) for c in CASES]


def _input(rng, n, c, h, w):
    return (rng.standard_normal((n, c, h, w)) * 3).astype(np.float32)


@pytest.mark.parametrize("n,c,h,w,k,s", CASES, ids=IDS)
def test_forward_matches_reference(n, c, h, w, k, s, rng):
    x = _input(rng, n, c, h, w)
    y, (tap, shape, kk, ss) = MP.maxpool2d_forward_cuda(x, k, s)
    y_r, (tap_r, *_) = MP.maxpool2d_forward_numpy(x, k, s)
    assert (shape, kk, ss) == (x.shape, k, s) and tap.dtype == np.int32
    assert_close(y, y_r, 0, 0, f"maxpool2d_forward_v1 {(n, c, h, w, k, s)} (a max: exact)")
    np.testing.assert_array_equal(tap, tap_r)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("n,c,h,w,k,s", CASES, ids=IDS)
def test_backward_matches_reference(version, n, c, h, w, k, s, rng):
    x = _input(rng, n, c, h, w)
    y, cache = MP.maxpool2d_forward_cuda(x, k, s)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ref = MP.maxpool2d_backward_numpy(dy, MP.maxpool2d_forward_numpy(x, k, s)[1])
    # at most ceil(k/s)^2 float32 terms per pixel, added in another order by v1's atomics
    atol = 0 if version == 2 else 1e-6 * (-(-k // s)) ** 2
    assert_close(MP.maxpool2d_backward_cuda(dy, cache, version=version), ref, atol, 1e-6,
                 f"maxpool2d_backward_v{version} {(n, c, h, w, k, s)}")


@pytest.mark.parametrize("version", [1, 2])
def test_overlapping_backward_under_block_orders(version, all_orders, rng):
    # k4 s1: up to 16 windows route into one pixel; v1's atomics change order with the blocks
    x = rng.integers(0, 3, (2, 3, 9, 8)).astype(np.float32)     # many ties
    y, cache = MP.maxpool2d_forward_cuda(x, 4, 1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ref = MP.maxpool2d_backward_numpy(dy, MP.maxpool2d_forward_numpy(x, 4, 1)[1])
    assert_close(MP.maxpool2d_backward_cuda(dy, cache, version=version), ref, 2e-5, 1e-6,
                 f"v{version} k4 s1 ({all_orders} order)")


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (3, 2)])
def test_ties_go_to_the_first_tap(k, s, rng):
    x = rng.integers(0, 3, (2, 3, 7, 8)).astype(np.float32)
    _, (tap, *_) = MP.maxpool2d_forward_cuda(x, k, s)
    _, (tap_r, *_) = MP.maxpool2d_forward_windows_numpy(x, k, s)
    np.testing.assert_array_equal(tap, tap_r)


def test_nan_wins_its_window_and_gets_the_gradient():
    x = np.zeros((1, 1, 4, 6), np.float32)
    x[0, 0, 1, 0] = np.nan                 # window (0, 0): a NaN after a number
    x[0, 0, 0, 2] = np.nan                 # window (0, 1): two NaNs, the first one wins
    x[0, 0, 1, 3] = np.nan
    x[0, 0, 0, 5] = 2.0                    # window (0, 2): a plain max
    x[0, 0, 2:, :2] = [[-1.0, -3.0], [-5.0, -0.5]]
    y, cache = MP.maxpool2d_forward_cuda(x, 2)
    y_r, (tap_r, *_) = MP.maxpool2d_forward_windows_numpy(x, 2, 2)
    np.testing.assert_array_equal(y, y_r)                  # NaN == NaN for array_equal
    np.testing.assert_array_equal(cache[0], tap_r)
    for version in (1, 2):
        dx = MP.maxpool2d_backward_cuda(np.ones_like(y), cache, version=version)
        np.testing.assert_array_equal(dx, MP.maxpool2d_backward_numpy(np.ones_like(y_r), (tap_r, x.shape, 2, 2)))


def test_caches_cross_between_backends(rng):
    # the reference's uint8 taps feed the kernel backward, the kernel's int32 taps the reference's
    x = _input(rng, 3, 2, 7, 7)
    dy = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    _, cache_r = MP.maxpool2d_forward_numpy(x, 3, 2)
    _, cache_k = MP.maxpool2d_forward_cuda(x, 3, 2)
    assert cache_r[0].dtype == np.uint8
    ref = MP.maxpool2d_backward_numpy(dy, cache_r)
    assert_close(MP.maxpool2d_backward_cuda(dy, cache_r), ref, 0, 0, "kernel backward, reference cache")
    assert_close(MP.maxpool2d_backward_numpy(dy, cache_k), ref, 0, 0, "reference backward, kernel cache")


def test_any_grid_works(rng, monkeypatch):
    # every loop grid-strides: one block of 256 threads still covers all the work
    monkeypatch.setattr(MP, "_MAX_BLOCKS", 1)
    x = _input(rng, 3, 5, 13, 11)
    y, cache = MP.maxpool2d_forward_cuda(x, 3, 2)
    y_r, cache_r = MP.maxpool2d_forward_numpy(x, 3, 2)
    assert y.size > 256 and x.size > 256
    assert_close(y, y_r, 0, 0, "forward, one block")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for version in (1, 2):
        assert_close(MP.maxpool2d_backward_cuda(dy, cache, version=version), MP.maxpool2d_backward_numpy(dy, cache_r),
                     1e-6, 1e-6, f"backward v{version}, one block")


def test_public_ops_and_layer_dispatch_to_the_kernels(launches, rng):
    assert backend.uses_kernels()
    x = _input(rng, 3, 4, 9, 7)
    dy = rng.standard_normal((3, 4, 4, 3)).astype(np.float32)
    out = {}
    for name in ("emu", "numpy"):
        backend.use(name)
        layer = nn.MaxPool2d(3, 2)
        out[name] = (layer(x), layer.backward(dy))
    backend.use("emu")
    assert launches == ["maxpool2d_forward_v1", "maxpool2d_backward_v2"]
    assert_close(out["emu"][0], out["numpy"][0], 0, 0, "layer forward emu vs numpy")
    assert_close(out["emu"][1], out["numpy"][1], 0, 1e-7, "layer backward emu vs numpy")


def test_bad_inputs_are_rejected_or_made_contiguous(rng):
    x = _input(rng, 2, 3, 6, 6)
    with pytest.raises(TypeError, match="maxpool2d_forward: x: kernels take float32, got float64"):
        MP.maxpool2d_forward(x.astype(np.float64), 2)
    with pytest.raises(ValueError, match=r"maxpool2d_forward: x must have shape \(N, C, H, W\)"):
        MP.maxpool2d_forward_cuda(x[0], 2)
    with pytest.raises(ValueError, match="does not fit a 6x6 input"):
        MP.maxpool2d_forward_cuda(x, 7)
    with pytest.raises(ValueError, match="stride >= 1"):
        MP.maxpool2d_forward_cuda(x, 2, 0)
    with pytest.raises(ValueError, match="version"):
        MP.maxpool2d_forward_cuda(x, 2, version=2)
    y, cache = MP.maxpool2d_forward_cuda(x, 2)
    with pytest.raises(ValueError, match=r"maxpool2d_backward: dy has shape \(2, 3, 2, 3\)"):
        MP.maxpool2d_backward_cuda(np.zeros((2, 3, 2, 3), np.float32), cache)
    with pytest.raises(TypeError, match="maxpool2d_backward: dy: kernels take float32"):
        MP.maxpool2d_backward_cuda(np.zeros(y.shape), cache)
    with pytest.raises(ValueError, match="version"):
        MP.maxpool2d_backward_cuda(np.zeros(y.shape, np.float32), cache, version=3)
    # strided views are made contiguous
    big = _input(rng, 2, 6, 6, 12)
    view = big[:, ::2, :, 1::2]
    y, cache = MP.maxpool2d_forward_cuda(view, 2)
    y_r, cache_r = MP.maxpool2d_forward_numpy(view, 2, 2)
    assert_close(y, y_r, 0, 0, "forward of a strided view")
    dyv = rng.standard_normal((2, 3, 3, 6)).astype(np.float32)[:, :, :, ::2]
    assert_close(MP.maxpool2d_backward_cuda(dyv, cache), MP.maxpool2d_backward_numpy(dyv, cache_r), 0, 0,
                 "backward of a strided dy")


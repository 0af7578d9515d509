"""kernels/avgpool.cu and kernels/upsample.cu against cganraw.ops' NumPy references,
through the emulator: both versions, forward and backward, on shapes that break tiling
(odd N, C not a power of two, 7x7 and 14x14 maps, inputs the windows do not cover) and at
progressive growing's real sizes."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import avgpool as AP
from cganraw.ops import upsample as UP
from tests.kernels.conftest import assert_close

VERSIONS = (1, 2)
POOL_CASES = [((1, 1, 2, 2), 2, 2), ((3, 5, 7, 7), 2, 2), ((3, 3, 14, 14), 2, 2), ((5, 1, 28, 28), 2, 2),
              ((2, 7, 9, 7), 3, 2), ((1, 3, 7, 6), 3, 1), ((3, 2, 5, 8), 2, 3), ((1, 1, 1, 5), 1, 1)]
UP_CASES = [((1, 1, 1, 1), 2), ((3, 5, 7, 7), 2), ((3, 1, 14, 14), 2), ((1, 3, 3, 5), 3), ((2, 2, 4, 4), 1)]


def _ids(cases):
    return ["x".join(map(str, c[0])) + "-" + "-".join(map(str, c[1:])) for c in cases]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", POOL_CASES, ids=_ids(POOL_CASES))
def test_avgpool2d(case, version, rng):
    shape, k, s = case
    x = rng.standard_normal(shape).astype(np.float32)
    y, cache = AP.avgpool2d_forward_cuda(x, k, s, version=version)
    y_r, cache_r = AP.avgpool2d_forward_numpy(x, k, s)
    assert_close(y, y_r, 1e-7, 1e-6, f"avgpool2d_forward_v{version} {case}")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = AP.avgpool2d_backward_cuda(dy, cache, version=version)
    assert_close(dx, AP.avgpool2d_backward_numpy(dy, cache_r), 1e-7, 1e-6, f"avgpool2d_backward_v{version} {case}")
    if s >= k:      # disjoint windows: the same sums in the same order, bit for bit
        np.testing.assert_array_equal(y, y_r)
        np.testing.assert_array_equal(dx, AP.avgpool2d_backward_numpy(dy, cache_r))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", UP_CASES, ids=_ids(UP_CASES))
def test_upsample_nearest2d(case, version, rng):
    shape, s = case
    x = rng.standard_normal(shape).astype(np.float32)
    y, cache = UP.upsample_nearest2d_forward_cuda(x, s, version=version)
    y_r, cache_r = UP.upsample_nearest2d_forward_numpy(x, s)
    np.testing.assert_array_equal(y, y_r)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = UP.upsample_nearest2d_backward_cuda(dy, cache, version=version)
    np.testing.assert_array_equal(dx, UP.upsample_nearest2d_backward_numpy(dy, cache_r))


def test_grid_stride_covers_more_elements_than_the_grid(monkeypatch, rng):
    # v2 with a 2-block grid must still visit every element
    from cganraw.ops import _launch
    monkeypatch.setattr(_launch, "ELEMENTWISE_MAX_BLOCKS", 2)
    x = rng.standard_normal((3, 5, 28, 28)).astype(np.float32)
    y, cache = AP.avgpool2d_forward_cuda(x, 2, 2, version=2)
    np.testing.assert_array_equal(y, AP.avgpool2d_forward_numpy(x, 2, 2)[0])
    u, _ = UP.upsample_nearest2d_forward_cuda(x, 2, version=2)
    np.testing.assert_array_equal(u, UP.upsample_nearest2d_forward_numpy(x, 2)[0])
    dx = UP.upsample_nearest2d_backward_cuda(u, ((3, 5, 28, 28), 2), version=2)
    np.testing.assert_array_equal(dx, 4 * x)


def test_public_ops_and_layers_dispatch_to_the_kernels(launches, rng):
    assert backend.uses_kernels()
    x = rng.standard_normal((3, 2, 14, 14)).astype(np.float32)
    pool, up = nn.AvgPool2d(2), nn.Upsample(scale_factor=2)
    y = up(pool(x))
    pool.backward(up.backward(np.ones_like(y)))
    assert launches == ["avgpool2d_forward_v2", "upsample_nearest2d_forward_v2",
                        "upsample_nearest2d_backward_v2", "avgpool2d_backward_v2"]


def test_bad_inputs(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    with pytest.raises(TypeError, match="avgpool2d_forward: x: kernels take float32, got float64"):
        AP.avgpool2d_forward_cuda(x.astype(np.float64), 2, 2)
    with pytest.raises(ValueError, match="version"):
        AP.avgpool2d_forward_cuda(x, 2, 2, version=3)
    _, cache = UP.upsample_nearest2d_forward_cuda(x, 2)
    with pytest.raises(ValueError, match="upsample_nearest2d_backward: dy has shape"):
        UP.upsample_nearest2d_backward_cuda(x, cache)
    # a strided view goes in as a contiguous copy
    big = rng.standard_normal((2, 3, 6, 12)).astype(np.float32)
    y, _ = AP.avgpool2d_forward_cuda(big[..., ::2], 2, 2)
    np.testing.assert_array_equal(y, AP.avgpool2d_forward_numpy(big[..., ::2], 2, 2)[0])

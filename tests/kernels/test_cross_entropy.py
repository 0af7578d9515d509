"""kernels/cross_entropy.cu (softmax_cross_entropy_forward_v1 + _forward_reduce_v1,
softmax_cross_entropy_backward_v1) through the emulator against cganraw.ops.cross_entropy's
NumPy reference: one class, one row, odd sizes, the classifier's K = 10, 26 and 47 at odd
batches, more rows than the reduction block has threads, logits of +-1e4, and a grid too
small for the work."""
import numpy as np
import pytest

from cganraw import backend, cuda_emu
from cganraw.losses import softmax_cross_entropy
from cganraw.ops import _launch
from cganraw.ops import cross_entropy as CE
from tests.kernels.conftest import assert_close

# (N, K)
CASES = [(1, 1), (1, 10), (3, 10), (7, 3), (17, 47), (64, 26), (300, 10), (33, 129)]
IDS = ["N{}-K{}".format(*c) for c in CASES]


def _data(rng, n, k, scale=4.0):
    z = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    return z, rng.integers(0, k, n)


@pytest.mark.parametrize("n,k", CASES, ids=IDS)
def test_forward_and_backward_match_reference(n, k, rng):
    z, y = _data(rng, n, k)
    loss, cache = CE.softmax_cross_entropy_forward_cuda(z, y)
    loss_r, cache_r = CE.softmax_cross_entropy_forward_numpy(z, y)
    assert loss.shape == () and loss.dtype == np.float32
    assert cache[1].dtype == np.int32
    assert_close(cache[0], cache_r[0], 2e-6, 2e-6, f"softmax_cross_entropy_forward_v1 logp {(n, k)}")
    # a mean of float32 row losses summed in another order: relative tolerance on the mean
    assert_close(loss, np.asarray(loss_r), 1e-6, 1e-5, f"softmax_cross_entropy_forward_reduce_v1 {(n, k)}")
    for dloss in (1.0, 0.5):
        assert_close(CE.softmax_cross_entropy_backward_cuda(dloss, cache),
                     CE.softmax_cross_entropy_backward_numpy(dloss, cache_r), 1e-8, 2e-6,
                     f"softmax_cross_entropy_backward_v1 {(n, k)} dloss {dloss}")


def test_loss_is_reproducible_across_orders(rng):
    # a fixed-order block reduction, no atomics: the same bits whatever the thread order
    z, y = _data(rng, 300, 10)
    losses = []
    for o in ("forward", "reverse", "random"):
        with cuda_emu.order(o, seed=3):
            losses.append(float(CE.softmax_cross_entropy_forward_cuda(z, y)[0]))
    assert losses[0] == losses[1] == losses[2]


def test_extreme_logits_stay_finite():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, 0.0, 0.0]], np.float32)
    for y in (np.array([0, 1, 2]), np.array([1, 0, 0])):
        loss, cache = CE.softmax_cross_entropy_forward_cuda(z, y)
        loss_r, cache_r = CE.softmax_cross_entropy_forward_numpy(z, y)
        assert np.isfinite(float(loss))
        assert_close(loss, np.asarray(loss_r), 1e-3, 1e-6, f"loss at +-1e4, labels {y}")
        assert_close(CE.softmax_cross_entropy_backward_cuda(1.0, cache),
                     CE.softmax_cross_entropy_backward_numpy(1.0, cache_r), 1e-8, 1e-6, "dz at +-1e4")


def test_nan_logit_poisons_its_row_as_in_the_reference():
    z = np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]], np.float32)
    y = np.array([0, 2])
    _, (logp, _) = CE.softmax_cross_entropy_forward_cuda(z, y)
    _, (logp_r, _) = CE.softmax_cross_entropy_forward_numpy(z, y)
    assert np.all(np.isnan(logp[0])) and np.all(np.isnan(logp_r[0]))
    assert_close(logp[1], logp_r[1], 1e-6, 1e-6, "clean row")


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.int16])
def test_label_dtypes_and_caches_cross_between_backends(dtype, rng):
    z, y = _data(rng, 9, 10)
    y = y.astype(dtype)
    loss, cache = CE.softmax_cross_entropy_forward_cuda(z, y)
    loss_r, cache_r = CE.softmax_cross_entropy_forward_numpy(z, y)
    assert_close(loss, np.asarray(loss_r), 1e-6, 1e-5, f"labels of {np.dtype(dtype)}")
    ref = CE.softmax_cross_entropy_backward_numpy(1.0, cache_r)
    assert_close(CE.softmax_cross_entropy_backward_cuda(1.0, cache_r), ref, 1e-8, 2e-6, "kernel backward, ref cache")
    assert_close(CE.softmax_cross_entropy_backward_numpy(1.0, cache), ref, 1e-8, 2e-6, "ref backward, kernel cache")


def test_any_grid_works(rng):
    # each kernel grid-strides: one block of 32 threads covers 300 rows / 3000 elements
    n, k = 300, 10
    z, y = _data(rng, n, k)
    yc = y.astype(np.int32)
    logp, losses = np.empty((n, k), np.float32), np.empty(n, np.float32)
    i32 = _launch.i32
    _launch.function("cross_entropy", "softmax_cross_entropy_forward_v1")(
        (1,), (32,), (logp, losses, z, yc, i32(n), i32(k)))
    _, (logp_r, _) = CE.softmax_cross_entropy_forward_numpy(z, y)
    assert_close(logp, logp_r, 2e-6, 2e-6, "forward, one block")
    assert_close(losses, -logp_r[np.arange(n), y], 2e-6, 2e-6, "row losses, one block")
    dz = np.empty((n, k), np.float32)
    _launch.function("cross_entropy", "softmax_cross_entropy_backward_v1")(
        (1,), (32,), (dz, logp, yc, _launch.f32(1.0 / n), i32(n), i32(k)))
    assert_close(dz, CE.softmax_cross_entropy_backward_numpy(1.0, (logp, y)), 1e-8, 1e-6, "backward, one block")


def test_loss_function_dispatches_to_the_kernels(launches, rng):
    assert backend.uses_kernels()
    z, y = _data(rng, 5, 10)
    loss, dz = softmax_cross_entropy(z, y)
    assert launches == ["softmax_cross_entropy_forward_v1", "softmax_cross_entropy_forward_reduce_v1",
                        "softmax_cross_entropy_backward_v1"]
    backend.use("numpy")
    loss_r, dz_r = softmax_cross_entropy(z, y)
    backend.use("emu")
    assert isinstance(loss, float) and abs(loss - loss_r) <= 1e-6 + 1e-5 * abs(loss_r)
    assert_close(dz, dz_r, 1e-8, 2e-6, "dlogits")


def test_bad_inputs(rng):
    z, y = _data(rng, 4, 6)
    with pytest.raises(TypeError, match="softmax_cross_entropy_forward: logits: kernels take float32, got float64"):
        CE.softmax_cross_entropy_forward(z.astype(np.float64), y)
    with pytest.raises(ValueError, match=r"logits must have shape \(N, K\)"):
        CE.softmax_cross_entropy_forward_cuda(z.reshape(-1), y)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\), got values from -1"):
        CE.softmax_cross_entropy_forward_cuda(z, np.array([0, -1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels have shape \(3,\), expected \(4,\)"):
        CE.softmax_cross_entropy_forward_cuda(z, y[:3])
    with pytest.raises(TypeError, match="indices must be integers"):
        CE.softmax_cross_entropy_forward_cuda(z, y.astype(np.float32))
    with pytest.raises(ValueError, match="version"):
        CE.softmax_cross_entropy_forward_cuda(z, y, version=2)
    _, cache = CE.softmax_cross_entropy_forward_cuda(z, y)
    with pytest.raises(ValueError, match=r"labels have shape \(3,\), expected \(4,\)"):
        CE.softmax_cross_entropy_backward_cuda(1.0, (cache[0], cache[1][:3]))
    # a strided view of logits is made contiguous
    big = (rng.standard_normal((4, 12)) * 3).astype(np.float32)
    loss, _ = CE.softmax_cross_entropy_forward_cuda(big[:, ::2], y)
    assert_close(loss, np.asarray(CE.softmax_cross_entropy_forward_numpy(big[:, ::2], y)[0]), 1e-6, 1e-5, "view")

"""The training step's own kernels against their NumPy references, through the emulator:
kernels/ema.cu (the moving average), kernels/stats.cu (the step's statistics and loss flag)
and kernels/mode_seeking.cu, on odd sizes, strided views and bad values."""
import numpy as np
import pytest

from cganraw import backend
from cganraw.ops import ema as EMA
from cganraw.ops import instancenorm as IN
from cganraw.ops import mode_seeking as MS
from cganraw.ops import stats as ST
from tests.kernels.conftest import assert_close

SIZES = (1, 7, 257, 4099)
BOUNDED = ST.bounded_mask(("d_loss", "d_loss_real", "d_loss_fake", "d_loss_mismatch", "g_loss"))


@pytest.mark.parametrize("version", (1, 2))
@pytest.mark.parametrize("n", SIZES)
def test_ema_update_equals_reference(version, n, rng):
    avg, value = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    ref = avg.copy()
    EMA.ema_update_numpy(ref, value, 0.999)
    EMA.ema_update_cuda(avg, value, 0.999, version=version)
    assert_close(avg, ref, 0, 0, f"ema v{version}")        # the reference's operations: exact
    wide = np.zeros((n, 3), np.float32)
    EMA.ema_update_cuda(wide[:, 1], value, 0.5, version=version)   # a strided view, written back
    assert_close(wide[:, 1], 0.5 * value, 0, 0, "ema strided")
    assert not wide[:, ::2].any()


def test_ema_dispatch_and_errors(rng):
    a = rng.standard_normal(5).astype(np.float32)
    EMA.ema_update(a, np.zeros(5, np.float32), 0.0)
    assert not np.asarray(backend.asnumpy(a)).any()
    with pytest.raises(ValueError, match="value has shape"):
        EMA.ema_update_cuda(a, np.zeros(4, np.float32), 0.5)
    with pytest.raises(TypeError, match="float32"):
        EMA.ema_update_cuda(a.astype(np.float64), np.zeros(5), 0.5)


def _losses(*values):
    return [None if v is None else np.array(v, np.float32) for v in values]


@pytest.mark.parametrize("n", (1, 3, 300))
@pytest.mark.parametrize("present", ("all", "none"))
def test_step_stats_equal_reference(n, present, rng):
    xr = (rng.standard_normal((n, 1)) * 4).astype(np.float32)
    xf = (rng.standard_normal((n, 1)) * 4).astype(np.float32)
    mm, ms = (0.3, 1.7) if present == "all" else (None, None)
    args = (*_losses(0.6, 0.8, mm, 1.1, ms), 0.7, xr, xf)
    h_k, h_r = np.zeros(4, np.int32), np.zeros(4, np.int32)
    got = backend.asnumpy(ST.step_stats_cuda(*args, h_k, 12, 1e4, BOUNDED))
    ref = ST.step_stats_numpy(*args, h_r, 12, 1e4, BOUNDED)
    assert_close(got, ref, 1e-6, 1e-5, "stats")
    assert got[3] == (0.3 if mm else 0) and got[5] == pytest.approx(1.7 if ms else 0)
    assert not h_k.any() and not h_r.any()


@pytest.mark.parametrize("bad,code,index", [((np.nan, 0.8, None, 1.1), 1, 0), ((0.6, 0.8, None, np.inf), 1, 4),
                                            ((0.6, 0.8, 3e4, 1.1), 2, 0), ((0.6, 0.8, None, -2e4), 2, 4)])
def test_step_stats_flag_the_first_bad_value(bad, code, index, rng):
    x = rng.standard_normal((4, 1)).astype(np.float32)
    for fn in (ST.step_stats_cuda, ST.step_stats_numpy):
        health = np.zeros(4, np.int32)
        fn(*_losses(*bad, None), 1.0, x, x, health, 5, 1e4, BOUNDED)
        assert tuple(health[:3]) == (code, 5, index), fn.__name__
        # a later step never overwrites the first bad one
        fn(*_losses(np.nan, np.nan, None, np.nan, None), 1.0, x, x, health, 6, 1e4, BOUNDED)
        assert tuple(health[:3]) == (code, 5, index), fn.__name__


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (6, 5), (10, 3, 7, 7)])
def test_mode_seeking_kernels_equal_reference(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    z = rng.standard_normal((shape[0], 9)).astype(np.float32)
    loss, cache = MS.mode_seeking_forward_cuda(x, z)
    loss_r, cache_r = MS.mode_seeking_forward_numpy(x, z)
    assert_close(np.asarray(backend.asnumpy(loss)).reshape(()), loss_r, 1e-7, 1e-5, "mode seeking loss")
    assert_close(MS.mode_seeking_backward_cuda(cache), MS.mode_seeking_backward_numpy(cache_r), 1e-12, 1e-5,
                 "mode seeking dimages")


def test_instancenorm_running_update_on_strided_statistics(rng):
    mean, var = rng.standard_normal((3, 4)).astype(np.float32), rng.uniform(1, 2, (3, 4)).astype(np.float32)
    stats = np.zeros((2, 4, 2), np.float32)
    stats[1] = 1
    ref_m, ref_v = stats[0, :, 0].copy(), stats[1, :, 0].copy()
    IN.instancenorm_running_update_numpy(ref_m, ref_v, mean, var, 0.1, 9)
    IN.instancenorm_running_update_cuda(stats[0, :, 0], stats[1, :, 0], mean, var, 0.1, 9)
    assert_close(stats[0, :, 0], ref_m, 1e-7, 1e-6, "running mean (a strided view)")
    assert_close(stats[1, :, 0], ref_v, 1e-7, 1e-6, "running var (a strided view)")
    assert (stats[0, :, 1] == 0).all() and (stats[1, :, 1] == 1).all()     # the other column untouched


@pytest.mark.parametrize("n, m", [(1, 1), (7, 3), (1000, 257), (5000, 0)])
def test_ema_update_v3_averages_and_copies_in_one_launch(n, m, launches, rng):
    # the moving average of G and the copy of its running statistics: v2's average and a
    # plain copy, bit for bit, in one launch
    avg, value = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    dst, src = rng.standard_normal(m).astype(np.float32), rng.standard_normal(m).astype(np.float32)
    ref = avg.copy()
    EMA.ema_update_numpy(ref, value, 0.999)
    got = avg.copy()
    EMA.ema_update_cuda(got, value, 0.999, copy=(dst, src))
    assert launches == ["ema_update_v3"]
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(dst, src)
    two = avg.copy()
    EMA.ema_update_cuda(two, value, 0.999)
    np.testing.assert_array_equal(two, got)
    with pytest.raises(ValueError, match="copy between arrays"):
        EMA.ema_update_cuda(got, value, 0.9, copy=(dst, np.zeros(m + 1, np.float32)))

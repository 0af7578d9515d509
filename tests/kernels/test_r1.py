"""kernels/r1.cu against cganraw.ops.r1's NumPy reference, through the emulator: R1's scalars
(penalty, e, c: a one-block reduction, under every thread order) and the perturbed batch
[x + e g | x - e g] with its dlogits [c | -c], on batches of 1, 3 and 5 at 28x28, 14x14 and
7x5, an all-zero g (the clamp at the smallest normal float), grids the pixels and the rows
wrap around, empty inputs and bad ones. The reference itself is held, bit for bit, to the
arithmetic cganraw.step.r1_penalty did inline before the op (the runs' numbers)."""
import numpy as np
import pytest

from cganraw import backend, devicelog
from cganraw.ops import _launch
from cganraw.ops import r1 as R1
from tests.kernels.conftest import assert_close

SHAPES = [(1, 1, 28, 28), (3, 1, 14, 14), (5, 1, 7, 5), (3, 1, 28, 28)]
GAMMA, STEP = 1.2, 1e-3         # R1 0.3 every 4th step, at float32's step


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


def _data(shape, rng, zero_g=False):
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    g = np.zeros(shape, np.float32) if zero_g else (rng.standard_normal(shape) * 0.01).astype(np.float32)
    return x, g


def _inline(x, g, gamma, step):
    """r1_penalty's arithmetic as it was written in cganraw.step before the op."""
    n = x.shape[0]
    sq = (g * g).sum()
    penalty = sq * (0.5 * gamma / n)
    rms = np.sqrt(np.maximum(sq / g.size, np.finfo(g.dtype).tiny))
    e = g.dtype.type(step) / rms
    shift = e * g
    images = np.concatenate([x + shift, x - shift])
    c = (gamma / (2 * n)) / e
    dlogits = np.empty((2 * n, 1), x.dtype)
    dlogits[:n] = c
    dlogits[n:] = -c
    return penalty, images, dlogits


def _check(x, g, label):
    penalty, scalars = R1.r1_scalars_cuda(g, GAMMA, STEP)
    penalty_r, scalars_r = R1.r1_scalars_numpy(g, GAMMA, STEP)
    scalars = backend.asnumpy(scalars)
    assert scalars.shape == (3,) and scalars.dtype == np.float32
    assert np.asarray(backend.asnumpy(penalty)).shape == ()
    # a float32 sum of squares in another order: relative tolerances
    assert_close(scalars, scalars_r, 1e-30, 1e-5, f"{label} penalty, e, c")
    assert np.asarray(backend.asnumpy(penalty)) == scalars[0]
    # given the same scalars the perturbation is the reference's arithmetic exactly
    images, dlogits = R1.r1_perturb_cuda(x, g, scalars)
    images_r, dlogits_r = R1.r1_perturb_numpy(x, g, scalars)
    assert images.shape == (2 * x.shape[0],) + x.shape[1:] and dlogits.shape == (2 * x.shape[0], 1)
    np.testing.assert_array_equal(backend.asnumpy(images), images_r, err_msg=f"{label} images")
    np.testing.assert_array_equal(backend.asnumpy(dlogits), dlogits_r, err_msg=f"{label} dlogits")
    # and from the reference's own scalars, within e's rounding
    images_r, dlogits_r = R1.r1_perturb_numpy(x, g, scalars_r)
    assert_close(images, images_r, 1e-7, 1e-6, f"{label} images (reference scalars)")
    assert_close(dlogits, dlogits_r, 0, 1e-5, f"{label} dlogits (reference scalars)")
    return scalars


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_scalars_and_perturbation_equal_reference(shape, order, rng):
    x, g = _data(shape, rng)
    _check(x, g, f"r1 {shape} ({order} order)")


@pytest.mark.parametrize("shape", SHAPES[:3], ids=_ids(SHAPES[:3]))
def test_an_all_zero_g_hits_the_clamp(shape, rng):
    # mean g^2 = 0 < the smallest normal float: e = step / sqrt(tiny), finite, no NaN from 0 / 0
    x, g = _data(shape, rng, zero_g=True)
    scalars = _check(x, g, f"r1 zero g {shape}")
    e = np.float32(STEP) / np.sqrt(np.finfo(np.float32).tiny)
    assert scalars[0] == 0 and scalars[1] == e and np.isfinite(scalars[2]) and scalars[2] > 0
    images, _ = R1.r1_perturb_cuda(x, g, scalars)
    np.testing.assert_array_equal(backend.asnumpy(images), np.concatenate([x, x]))


def test_the_grid_strides_over_pixels_and_rows(monkeypatch, rng):
    # one block of 256 threads for 300 rows of 7x5 pixels: both loops of r1_perturb_v1 wrap
    monkeypatch.setattr(_launch, "ELEMENTWISE_MAX_BLOCKS", 1)
    x, g = _data((300, 1, 7, 5), rng)
    with devicelog.recording() as log:
        _check(x, g, "r1 grid-strided")
    grids = {e.name: e.grid for e in log.events if e.kind == "kernel"}
    assert grids == {"r1_scalars_v1": (1,), "r1_perturb_v1": (1,)}


@pytest.mark.parametrize("shape", [(0, 1, 7, 5), (3, 0)], ids=["no-rows", "no-pixels"])
def test_empty_inputs(shape, rng):
    # nothing to penalise: penalty, e and c are 0, and no kernel reads the empty g
    x, g = _data(shape, rng)
    penalty, scalars = R1.r1_scalars_cuda(g, GAMMA, STEP)
    np.testing.assert_array_equal(backend.asnumpy(scalars), np.zeros(3, np.float32))
    penalty_r, scalars_r = R1.r1_scalars_numpy(g, GAMMA, STEP)
    np.testing.assert_array_equal(scalars_r, np.zeros(3, np.float32))
    images, dlogits = R1.r1_perturb_cuda(x, g, scalars)
    images_r, dlogits_r = R1.r1_perturb_numpy(x, g, scalars_r)
    assert images.shape == images_r.shape == (2 * shape[0],) + shape[1:]
    np.testing.assert_array_equal(backend.asnumpy(dlogits), dlogits_r)


@pytest.mark.parametrize("dtype,step", [(np.float32, 1e-3), (np.float64, 1e-6)])
@pytest.mark.parametrize("zero_g", [False, True], ids=["g", "zero-g"])
def test_reference_is_r1_penaltys_inline_arithmetic_bit_for_bit(dtype, step, zero_g, rng):
    for shape in SHAPES:
        x, g = (a.astype(dtype) for a in _data(shape, rng, zero_g))
        penalty_i, images_i, dlogits_i = _inline(x, g, GAMMA, step)
        penalty, scalars = R1.r1_scalars_numpy(g, GAMMA, step)
        images, dlogits = R1.r1_perturb_numpy(x, g, scalars)
        assert penalty.dtype == scalars.dtype == images.dtype == dlogits.dtype == dtype
        assert penalty == penalty_i
        np.testing.assert_array_equal(images, images_i)
        np.testing.assert_array_equal(dlogits, dlogits_i)


def test_public_op_dispatch(launches, rng):
    x, g = _data((3, 1, 7, 5), rng)
    assert backend.uses_kernels()
    penalty, scalars = R1.r1_scalars(g, GAMMA, STEP)
    R1.r1_perturb(x, g, scalars)
    assert launches == ["r1_scalars_v1", "r1_perturb_v1"]
    prev = backend.current()
    backend.use("numpy")
    try:
        penalty, scalars = R1.r1_scalars(g, GAMMA, STEP)
        images, dlogits = R1.r1_perturb(x, g, scalars)
    finally:
        backend.use(prev)
    assert launches == ["r1_scalars_v1", "r1_perturb_v1"]       # none more
    penalty_r, scalars_r = R1.r1_scalars_numpy(g, GAMMA, STEP)
    images_r, dlogits_r = R1.r1_perturb_numpy(x, g, scalars_r)
    assert penalty == penalty_r
    np.testing.assert_array_equal(scalars, scalars_r)
    np.testing.assert_array_equal(images, images_r)
    np.testing.assert_array_equal(dlogits, dlogits_r)


def test_bad_inputs(rng):
    x, g = _data((3, 1, 7, 5), rng)
    _, scalars = R1.r1_scalars_cuda(g, GAMMA, STEP)
    scalars = backend.asnumpy(scalars)
    with pytest.raises(TypeError, match="r1_scalars: g: kernels take float32"):
        R1.r1_scalars_cuda(g.astype(np.float64), GAMMA, STEP)
    with pytest.raises(TypeError, match="r1_perturb: real_images: kernels take float32"):
        R1.r1_perturb_cuda(x.astype(np.float64), g, scalars)
    with pytest.raises(ValueError, match=r"r1_perturb: g has shape \(3, 1, 5, 7\), the images \(3, 1, 7, 5\)"):
        R1.r1_perturb_cuda(x, np.ascontiguousarray(g.transpose(0, 1, 3, 2)), scalars)
    with pytest.raises(ValueError, match="r1_perturb: g has shape"):
        R1.r1_perturb_numpy(x, g[:2], scalars)
    with pytest.raises(ValueError, match=r"r1_perturb: scalars must have shape \(3,\)"):
        R1.r1_perturb_cuda(x, g, scalars[:2])
    with pytest.raises(ValueError, match=r"r1_scalars: g must have shape \(N, ...\)"):
        R1.r1_scalars_cuda(np.ones((), np.float32), GAMMA, STEP)
    with pytest.raises(ValueError, match="kernel version"):
        R1.r1_scalars_cuda(g, GAMMA, STEP, version=2)

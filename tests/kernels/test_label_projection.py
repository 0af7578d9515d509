"""kernels/label_projection.cu (the projection discriminator's label term) against
cganraw.ops.label_projection's NumPy reference, through the emulator: the block-per-row
forward, the deterministic per-class backward (v1, the default) and the atomics backward
(v2), on awkward shapes (one value, a batch of 1, odd F, labels all repeated, classes
missing, an empty batch), each written or added into an existing array; and the layer on
emu against the numpy backend."""
import numpy as np
import pytest

from cganraw import backend, cuda_emu, nn
from cganraw.ops import label_projection as P
from tests.kernels.conftest import assert_close

# (N, F, K, labels): one value; a batch of 1 with classes missing; odd sizes; all rows one
# label; D's logit features at width 4 with minibatch stddev (5 * 49) over a 3-term batch
# of 13 (39 rows: no multiple of a warp); many classes, most missing
CASES = [(1, 1, 1, "random"), (1, 7, 10, "random"), (5, 33, 3, "random"), (13, 31, 4, "same"),
         (39, 245, 10, "random"), (7, 129, 47, "random"), (0, 5, 3, "random")]


def _labels(rng, n, k, how):
    if how == "same":
        return np.full(n, k - 1, np.int64)
    return rng.integers(0, k, n)


def _ids(cases):
    return ["N%d-F%d-K%d-%s" % c for c in cases]


def _case(rng, n, f, k, how):
    h = rng.standard_normal((n, f)).astype(np.float32)
    E = rng.standard_normal((k, f)).astype(np.float32)
    y = _labels(rng, n, k, how)
    dy = rng.standard_normal((n, 1)).astype(np.float32)
    return h, E, y, dy


@pytest.mark.parametrize("n, f, k, how", CASES, ids=_ids(CASES))
def test_kernels_match_the_reference(n, f, k, how, order, rng):
    h, E, y, dy = _case(rng, n, f, k, how)
    out, cache = P.label_projection_forward_cuda(h, y, E)
    out_r, cache_r = P.label_projection_forward_numpy(h.astype(np.float64), y, E.astype(np.float64))
    assert_close(out, out_r, 1e-6 * max(f, 1), 1e-5, "forward")
    dh_r, dE_r = P.label_projection_backward_numpy(dy.astype(np.float64), cache_r)
    for v in (1, 2):
        dh, dE = P.label_projection_backward_cuda(dy, cache, version=v)
        # dh is one product per element: exactly the float32 product
        np.testing.assert_array_equal(backend.asnumpy(dh), dy * E[y])
        assert_close(dE, dE_r, 1e-6 * max(n, 1), 1e-5, f"dE v{v}")
        missing = np.setdiff1d(np.arange(k), y)
        assert np.all(backend.asnumpy(dE)[missing] == 0), "a class with no row has a zero gradient"


@pytest.mark.parametrize("n, f, k, how", CASES, ids=_ids(CASES))
def test_kernels_add_into_given_arrays(n, f, k, how, rng):
    h, E, y, dy = _case(rng, n, f, k, how)
    base = rng.standard_normal((n, 1)).astype(np.float32)
    out = base.copy()
    got, cache = P.label_projection_forward_cuda(h, y, E, out=out)
    assert got is out
    fresh, _ = P.label_projection_forward_cuda(h, y, E)
    np.testing.assert_array_equal(backend.asnumpy(out), base + backend.asnumpy(fresh))
    dh0, dE0 = P.label_projection_backward_cuda(dy, cache)
    for v in (1, 2):
        gh = rng.standard_normal((n, f)).astype(np.float32)
        gE = rng.standard_normal((k, f)).astype(np.float32)
        before = gh.copy(), gE.copy()
        dh, dE = P.label_projection_backward_cuda(dy, cache, dh_out=gh, dE_out=gE, version=v)
        assert dh is gh and dE is gE
        np.testing.assert_array_equal(gh, before[0] + backend.asnumpy(dh0))
        if v == 1:      # the same sum, added once
            np.testing.assert_array_equal(gE, before[1] + backend.asnumpy(dE0))
        else:           # atomics start from the .grad: another rounding order
            assert_close(gE, before[1].astype(np.float64) + backend.asnumpy(dE0), 1e-5 * max(n, 1), 1e-5, "dE_out")


def test_need_flags_and_determinism(rng):
    h, E, y, dy = _case(rng, 50, 77, 6, "random")
    _, cache = P.label_projection_forward_cuda(h, y, E)
    dh, dE = P.label_projection_backward_cuda(dy, cache)
    dh2, none = P.label_projection_backward_cuda(dy, cache, need_dE=False)
    assert none is None
    np.testing.assert_array_equal(backend.asnumpy(dh2), backend.asnumpy(dh))
    none, dE2 = P.label_projection_backward_cuda(dy, cache, need_dh=False)
    assert none is None
    np.testing.assert_array_equal(backend.asnumpy(dE2), backend.asnumpy(dE))      # v1: the same bits
    gE = np.zeros_like(E)
    assert P.label_projection_backward_cuda(dy, cache, need_dh=False, need_dE=False, dE_out=gE) == (None, None)
    assert not gE.any()


@pytest.mark.parametrize("workers", [1, 2])
def test_backward_v2_atomics_on_repeated_labels(workers, rng):
    # every row adds into one of two rows of dE; with 2 workers the emulator's blocks run on
    # two OS threads at once. Sums of ones are exact in float32: a lost update shows
    n, f, k = 1500, 40, 5
    y = np.full(n, 2, np.int64)
    y[::9] = 4
    h = np.ones((n, f), np.float32)
    _, cache = P.label_projection_forward_cuda(h, y, rng.standard_normal((k, f)).astype(np.float32))
    with cuda_emu.settings(workers=workers):
        _, dE = P.label_projection_backward_cuda(np.ones((n, 1), np.float32), cache, version=2)
    dE = backend.asnumpy(dE)
    assert np.array_equal(dE[2], np.full(f, np.sum(y == 2), np.float32))
    assert np.array_equal(dE[4], np.full(f, np.sum(y == 4), np.float32))
    assert not dE[[0, 1, 3]].any()


def test_arguments(rng):
    h, E, y, dy = _case(rng, 4, 6, 3, "random")
    with pytest.raises(ValueError, match=r"expected h \(N, F\) and E \(K, F\)"):
        P.label_projection_forward_cuda(h, y, E[:, :5])
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        P.label_projection_forward_cuda(h, np.array([0, 1, 3, 0]), E)
    with pytest.raises(ValueError, match="3 labels for 4 rows"):
        P.label_projection_forward_cuda(h, y[:3], E)
    with pytest.raises(TypeError, match="float32"):
        P.label_projection_forward_cuda(h.astype(np.float64), y, E)
    with pytest.raises(ValueError, match="out must be a contiguous"):
        P.label_projection_forward_cuda(h, y, E, out=np.zeros((4, 2), np.float32))
    _, cache = P.label_projection_forward_cuda(h, y, E)
    with pytest.raises(ValueError, match=r"dy has shape \(3, 1\)"):
        P.label_projection_backward_cuda(dy[:3], cache)
    with pytest.raises(ValueError, match="dE_out must be"):
        P.label_projection_backward_cuda(dy, cache, dE_out=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="kernel version"):
        P.label_projection_backward_cuda(dy, cache, version=3)


def test_layer_on_emu_equals_numpy(launches, rng):
    # nn.LabelProjection on emu: one launch each way (the forward adding into the Linear's
    # output), the numpy backend's values
    h = rng.standard_normal((9, 37)).astype(np.float32)
    y = rng.integers(0, 4, 9)
    dy = rng.standard_normal((9, 1)).astype(np.float32)
    base = rng.standard_normal((9, 1)).astype(np.float32)
    out = {}
    for bk in ("emu", "numpy"):
        backend.use(bk)
        layer = nn.LabelProjection(4, 37, rng=np.random.default_rng(3))
        launches.clear()
        o = backend.asarray(base.copy())
        got = layer(backend.asarray(h), backend.asarray(y), out=o)
        assert got is o
        dh = layer.backward(backend.asarray(dy))
        if bk == "emu":
            assert launches == ["label_projection_forward_v1", "label_projection_backward_v1"], launches
        out[bk] = [backend.asnumpy(a) for a in (got, dh, layer.weight.grad)]
    backend.use("emu")
    for a, b, name in zip(out["emu"], out["numpy"], ("y", "dh", "dE")):
        assert_close(a, b, 1e-5, 1e-5, name)

"""kernels/bce.cu against cganraw.ops.bce's NumPy reference, through the emulator: the
mean BCE-with-logits (atomic version 1, two-pass block-reduction version 2) and its
gradient, on odd sizes and D's real logits (N, 1), with hard and soft targets, and at
logits of +-1e4 where a naive form overflows. The block reductions run under every order."""
import numpy as np
import pytest

from cganraw import backend, cuda_emu
from cganraw.losses import bce_with_logits, bce_with_logits_segments
from cganraw.ops import bce as BCE
from tests.kernels.conftest import assert_close

VERSIONS = (1, 2)
# sizes 1 and 7, 17*33*15 and 45*7*129 values (the latter spans 159 blocks of partials),
# D's logits at batch 1, 3 and 64
SHAPES = [(1,), (7,), (17, 33, 15), (45, 7, 129), (1, 1), (3, 1), (64, 1)]


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


def _data(rng, shape, soft):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    t = rng.uniform(0, 1, shape) if soft else (rng.random(shape) < 0.5)
    return x, t.astype(np.float32)


def _check(version, shape, soft, rng, label):
    x, t = _data(rng, shape, soft)
    loss, cache = BCE.bce_with_logits_forward_cuda(x, t, version=version)
    loss_r, cache_r = BCE.bce_with_logits_forward_numpy(x, t)
    assert loss.shape == () and loss.dtype == np.float32
    # a mean of float32 terms summed in another order: relative tolerance on the mean
    assert_close(loss, np.asarray(loss_r), 1e-6, 2e-5, f"{label} loss")
    for dloss in (1.0, 0.5):
        dx = BCE.bce_with_logits_backward_cuda(dloss, cache, version=version)
        assert_close(dx, BCE.bce_with_logits_backward_numpy(dloss, cache_r), 1e-9, 2e-6, f"{label} dx (dloss {dloss})")


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_bce_with_logits_v1_matches_reference(shape, soft, rng):
    _check(1, shape, soft, rng, f"bce_with_logits v1 {shape}")


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_bce_with_logits_v2_matches_reference(shape, soft, all_orders, rng):
    _check(2, shape, soft, rng, f"bce_with_logits v2 {shape} ({all_orders} order)")


@pytest.mark.parametrize("version", VERSIONS)
def test_extreme_logits_stay_finite(version):
    x = np.array([-1e4, -1e4, 1e4, 1e4, -100, 100, -0.0, 0.0, 30, -30], dtype=np.float32)
    t = np.array([0, 1, 0, 1, 0.9, 0.1, 0, 1, 1, 0], dtype=np.float32)
    loss, cache = BCE.bce_with_logits_forward_cuda(x, t, version=version)
    loss_r, _ = BCE.bce_with_logits_forward_numpy(x, t)
    assert np.isfinite(loss)   # (1e4 + 1e4 + 90 + 90 + 2 log 2) / 10, about 2018.1
    assert_close(loss, np.asarray(loss_r), 1e-3, 1e-5, "loss at +-1e4")
    dx = BCE.bce_with_logits_backward_cuda(1.0, cache, version=version)
    assert_close(dx, BCE.bce_with_logits_backward_numpy(1.0, (x, t)), 1e-9, 1e-6, "dx at +-1e4")


def test_v2_loss_is_reproducible_across_orders(rng):
    # no atomics: the same bits whatever order the emulator runs the threads in
    x, t = _data(rng, (45, 7, 129), True)
    losses = []
    for o in ("forward", "reverse", "random"):
        with cuda_emu.order(o, seed=3):
            losses.append(float(BCE.bce_with_logits_forward_cuda(x, t, version=2)[0]))
    assert losses[0] == losses[1] == losses[2]


def test_loss_function_dispatches_to_the_kernels(launches, rng):
    assert backend.uses_kernels()
    x = (rng.standard_normal((3, 1)) * 3).astype(np.float32)
    loss, dx = bce_with_logits(x, 0.9)          # a smoothed real label, broadcast to (3, 1)
    # a constant target: the loss and its gradient in one launch
    assert launches == ["bce_with_logits_segments_v1"]
    backend.use("numpy")
    loss_r, dx_r = bce_with_logits(x, 0.9)
    backend.use("emu")
    # the loss stays on the device: a 0-d array, read with float() when wanted
    assert loss.shape == () and abs(float(loss) - float(loss_r)) <= 1e-6 + 1e-6 * abs(float(loss_r))
    assert_close(dx, dx_r, 1e-9, 1e-6, "dlogits")


def test_bad_inputs(rng):
    x, t = _data(rng, (3, 1), True)
    with pytest.raises(TypeError, match="bce_with_logits_forward: logits: kernels take float32, got float64"):
        BCE.bce_with_logits_forward(x.astype(np.float64), t)
    with pytest.raises(TypeError, match="bce_with_logits_forward: targets: kernels take float32, got float64"):
        BCE.bce_with_logits_forward_cuda(x, t.astype(np.float64))
    with pytest.raises(ValueError, match=r"bce_with_logits_forward: targets have shape \(3,\), logits \(3, 1\)"):
        BCE.bce_with_logits_forward_cuda(x, t[:, 0])
    with pytest.raises(ValueError, match="no logits"):
        BCE.bce_with_logits_forward_cuda(x[:0], t[:0])
    with pytest.raises(ValueError, match="version"):
        BCE.bce_with_logits_forward_cuda(x, t, version=3)
    # broadcast (stride-0) targets and a strided logits view are made contiguous
    big = (rng.standard_normal((6, 2)) * 3).astype(np.float32)
    xv, tv = big[::2, :1], np.broadcast_to(np.float32(0.9), (3, 1))
    loss, cache = BCE.bce_with_logits_forward_cuda(xv, tv)
    loss_r, _ = BCE.bce_with_logits_forward_numpy(xv, tv)
    assert_close(loss, np.asarray(loss_r), 1e-6, 1e-5, "loss of views")
    assert_close(BCE.bce_with_logits_backward_cuda(1.0, cache), BCE.bce_with_logits_backward_numpy(1.0, (xv, tv)),
                 1e-9, 1e-6, "dx of views")


# ---------------------------------------------------------------- all terms in one launch
# (parts, rows per segment, trailing shape): one row, odd rows, a segment longer than the
# 256-thread block (300 and 3 * 129 values), D's (3N, 1) logits at N = 1, 3, 64
SEGMENTS = [(1, 1, ()), (2, 7, (1,)), (3, 1, (1,)), (3, 3, (1,)), (3, 64, (1,)), (3, 300, (1,)), (4, 3, (129,))]
TERMS = [(0.9, 1.0), (0.0, 2.5), (0.0, 1.0), (1.0, 0.5)]


def _segments(rng, parts, rows, tail):
    x = (rng.standard_normal((parts * rows,) + tail) * 4).astype(np.float32)
    terms = TERMS[:parts - 1] + [TERMS[-2]]
    return x, [t for t, _ in terms], [w for _, w in terms]


@pytest.mark.parametrize("parts,rows,tail", SEGMENTS, ids=[f"{p}x{r}{t}" for p, r, t in SEGMENTS])
def test_bce_segments_match_reference(parts, rows, tail, all_orders, rng):
    x, t, w = _segments(rng, parts, rows, tail)
    losses, dx = BCE.bce_with_logits_segments_cuda(x, t, w)
    losses_r, dx_r = BCE.bce_with_logits_segments_numpy(x, t, w)
    assert losses.shape == (parts,) and dx.shape == x.shape
    assert_close(losses, losses_r, 1e-6, 2e-5, "segment losses")
    assert_close(dx, dx_r, 1e-9, 2e-6, "segment dlogits")
    # the reference is, segment by segment, the single-term op
    n = rows
    for s in range(parts):
        seg = x[s * n:(s + 1) * n]
        loss_1, cache_1 = BCE.bce_with_logits_forward_numpy(seg, np.full(seg.shape, t[s], np.float32))
        assert losses_r[s] == loss_1
        np.testing.assert_array_equal(dx_r[s * n:(s + 1) * n], BCE.bce_with_logits_backward_numpy(w[s], cache_1))


def test_bce_segments_gradient_is_the_weighted_losses_gradient(rng):
    # float64 central differences of sum_s w_s loss_s on the reference, and the kernel's
    # dlogits against them: the kernel computes d(sum_s w_s loss_s)/dx
    x, t, w = _segments(rng, 3, 5, (1,))
    x64 = x.astype(np.float64)

    def objective(v):
        losses, _ = BCE.bce_with_logits_segments_numpy(v, t, w)
        return float(np.dot(losses, w))
    fd = np.empty_like(x64)
    for i in range(x64.size):
        e = np.zeros_like(x64)
        e.flat[i] = 1e-6
        fd.flat[i] = (objective(x64 + e) - objective(x64 - e)) / 2e-6
    _, dx = BCE.bce_with_logits_segments_cuda(x, t, w)
    assert_close(dx, fd, 1e-7, 1e-5, "dlogits against finite differences")


def test_bce_segments_reproducible_and_finite_at_extremes(rng):
    x = np.array([-1e4, 1e4, -100, 100, 0.0, 30, -30, 1e4, -1e4], dtype=np.float32)
    losses, dx = BCE.bce_with_logits_segments_cuda(x, [1.0, 0.0, 0.9], [1.0, 2.0, 1.0])
    losses_r, dx_r = BCE.bce_with_logits_segments_numpy(x, [1.0, 0.0, 0.9], [1.0, 2.0, 1.0])
    assert_close(losses, losses_r, 1e-3, 1e-5, "losses at +-1e4")
    assert_close(dx, dx_r, 1e-9, 1e-6, "dx at +-1e4")
    x, t, w = _segments(rng, 3, 300, (1,))
    got = []
    for o in ("forward", "reverse", "random"):
        with cuda_emu.order(o, seed=3):
            got.append(backend.asnumpy(BCE.bce_with_logits_segments_cuda(x, t, w)[0]).tobytes())
    assert got[0] == got[1] == got[2]


def test_bce_segments_loss_function(launches, rng):
    x, t, w = _segments(rng, 3, 4, (1,))
    losses, dx = bce_with_logits_segments(x, list(zip(t, w)))
    assert launches == ["bce_with_logits_segments_v1"] and backend.asnumpy(dx).shape == x.shape
    backend.use("numpy")
    try:
        losses_r, dx_r = bce_with_logits_segments(x, list(zip(t, w)))
        # on NumPy: bit for bit the single-term loss function, segment by segment
        for s in range(3):
            loss_1, dx_1 = bce_with_logits(x[4 * s:4 * s + 4], t[s], weight=w[s])
            assert float(losses_r[s]) == float(loss_1)
            np.testing.assert_array_equal(dx_r[4 * s:4 * s + 4], dx_1)
    finally:
        backend.use("emu")
    assert [ls.shape for ls in losses] == [()] * 3
    for s in range(3):
        assert abs(float(losses[s]) - float(losses_r[s])) <= 1e-6 + 1e-5 * abs(float(losses_r[s]))
    assert_close(dx, dx_r, 1e-9, 1e-6, "dlogits")


def test_bce_segments_bad_inputs(rng):
    x, t, w = _segments(rng, 3, 2, (1,))
    with pytest.raises(ValueError, match="one weight per target"):
        BCE.bce_with_logits_segments_cuda(x, t, w[:2])
    with pytest.raises(ValueError, match=r"do not split into 4 equal"):
        BCE.bce_with_logits_segments_cuda(x, t + [0.0], w + [1.0])
    with pytest.raises(ValueError, match=r"do not split into 4 equal"):
        BCE.bce_with_logits_segments_numpy(x, t + [0.0], w + [1.0])
    with pytest.raises(TypeError, match="kernels take float32"):
        BCE.bce_with_logits_segments_cuda(x.astype(np.float64), t, w)
    with pytest.raises(ValueError, match="out must be a contiguous array"):
        BCE.bce_with_logits_segments_cuda(x, t, w, out=np.empty((7, 1), np.float32))

"""kernels/bce.cu against cganraw.ops.bce's NumPy reference, through the emulator: the
mean BCE-with-logits (atomic version 1, two-pass block-reduction version 2) and its
gradient, on odd sizes and D's real logits (N, 1), with hard and soft targets, and at
logits of +-1e4 where a naive form overflows. The block reductions run under every order."""
import numpy as np
import pytest

from cganraw import backend, cuda_emu
from cganraw.losses import bce_with_logits
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
    assert launches == ["bce_with_logits_forward_v2", "bce_with_logits_forward_reduce_v2",
                        "bce_with_logits_backward_v2"]
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

"""kernels/minibatch_std.cu against cganraw.ops.minibatch_std's NumPy reference, through the
emulator: the group statistic, the concatenated output and the input gradient, both
versions, for batches the group size divides and batches it does not (odd N, N = 1),
channel counts that are not powers of two and 7x7 maps. The block-per-group reductions
run under every thread order."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import minibatch_std as MB
from tests.kernels.conftest import assert_close

CASES = [((8, 3, 7, 7), 4), ((7, 5, 7, 7), 4), ((6, 3, 2, 2), 4), ((1, 2, 3, 3), 4), ((9, 6, 5, 3), 3),
         ((12, 65, 7, 7), 4), ((5, 1, 14, 14), 2), ((3, 2, 1, 1), 4)]


def _ids(cases):
    return ["x".join(map(str, s)) + f"-g{g}" for s, g in cases]


def _check(shape, group, version, rng, label):
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 2, (1,) + shape[1:]) + 0.3).astype(np.float32)
    y, cache = MB.minibatch_std_forward_cuda(x, group, version=version)
    y_r, cache_r = MB.minibatch_std_forward_numpy(x, group)
    assert cache[1] == cache_r[1] == MB.effective_group_size(shape[0], group)
    np.testing.assert_array_equal(y[:, :shape[1]], x)
    assert_close(y, y_r, 1e-6, 2e-5, f"{label} forward")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = MB.minibatch_std_backward_cuda(dy, cache, version=version)
    assert_close(dx, MB.minibatch_std_backward_numpy(dy, cache_r), 1e-5, 1e-4, f"{label} backward")


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_v1(case, rng):
    _check(*case, 1, rng, f"minibatch_std v1 {case}")


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_v2(case, all_orders, rng):
    _check(*case, 2, rng, f"minibatch_std v2 {case} ({all_orders} order)")


def test_v2_block_strides_over_groups(monkeypatch, all_orders, rng):
    from cganraw.ops import _launch
    monkeypatch.setattr(_launch, "MAX_ROW_BLOCKS", 2)
    _check((16, 3, 7, 7), 2, 2, rng, f"block-strided ({all_orders} order)")


def test_public_op_dispatch(launches, rng):
    assert backend.uses_kernels()
    layer = nn.MinibatchStdDev(4)
    y = layer(rng.standard_normal((6, 3, 7, 7)).astype(np.float32))
    layer.backward(np.ones_like(y))
    assert launches == ["minibatch_std_forward_stat_v2", "minibatch_std_forward_v2",
                        "minibatch_std_backward_stat_v2", "minibatch_std_backward_v2"]


def test_bad_inputs(rng):
    x = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="minibatch_std_forward: x: kernels take float32"):
        MB.minibatch_std_forward_cuda(x.astype(np.float64))
    _, cache = MB.minibatch_std_forward_cuda(x)
    with pytest.raises(ValueError, match="minibatch_std_backward: dy has shape"):
        MB.minibatch_std_backward_cuda(x, cache)


# segmented batches: (segments, segment shape, group size); segments the group size does
# not divide (5 samples, group 4 -> groups of 1), odd channel counts, 7x7 maps
SEGMENTED = [(3, (8, 3, 7, 7), 4), (2, (5, 2, 7, 7), 4), (3, (6, 65, 7, 7), 4), (2, (1, 2, 3, 3), 4),
             (3, (9, 6, 5, 3), 3), (2, (4, 1, 1, 1), 2)]


@pytest.mark.parametrize("case", SEGMENTED, ids=[f"s{s}-" + "x".join(map(str, shape)) + f"-g{g}"
                                                 for s, shape, g in SEGMENTED])
def test_v3_segments_are_separate_batches(case, all_orders, rng):
    segments, shape, group = case
    n = shape[0]
    x = (rng.standard_normal((segments * n,) + shape[1:]) * 1.5 + 0.2).astype(np.float32)
    dy = rng.standard_normal((segments * n, shape[1] + 1) + shape[2:]).astype(np.float32)
    y_r, cache_r = MB.minibatch_std_forward_numpy(x, group, segments=segments)
    # the NumPy reference: each segment exactly as a batch of its own, bit for bit
    alone = [MB.minibatch_std_forward_numpy(x[k * n:(k + 1) * n], group) for k in range(segments)]
    np.testing.assert_array_equal(y_r, np.concatenate([y for y, _ in alone]))
    dx_r = MB.minibatch_std_backward_numpy(dy, cache_r)
    np.testing.assert_array_equal(dx_r, np.concatenate(
        [MB.minibatch_std_backward_numpy(dy[k * n:(k + 1) * n], c) for k, (_, c) in enumerate(alone)]))
    y, cache = MB.minibatch_std_forward_cuda(x, group, segments=segments)
    assert cache[1] == cache_r[1] == MB.effective_group_size(n, group) and cache[3] == segments
    assert_close(y, y_r, 1e-6, 2e-5, f"v3 {case} forward ({all_orders} order)")
    assert_close(MB.minibatch_std_backward_cuda(dy, cache), dx_r, 1e-5, 1e-4, f"v3 {case} backward")


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_v3_one_segment_is_v2(case, rng):
    _check(*case, 3, rng, f"minibatch_std v3 {case}")


def test_v3_block_strides_over_groups(monkeypatch, rng):
    from cganraw.ops import _launch
    monkeypatch.setattr(_launch, "MAX_ROW_BLOCKS", 2)
    x = rng.standard_normal((3 * 8, 3, 7, 7)).astype(np.float32)
    y, cache = MB.minibatch_std_forward_cuda(x, 2, segments=3)
    assert_close(y, MB.minibatch_std_forward_numpy(x, 2, segments=3)[0], 1e-6, 2e-5, "block-strided v3")


def test_segmented_layer_and_bad_segments(launches, rng):
    layer = nn.MinibatchStdDev(4)
    x = rng.standard_normal((6, 3, 7, 7)).astype(np.float32)
    with nn.minibatch_std.segmented(layer, 2):
        y = layer(x)
        assert layer.group_for(6) == 3
    assert layer.segments == 1
    layer.backward(np.ones_like(y))
    assert launches == ["minibatch_std_forward_stat_v3", "minibatch_std_forward_v3",
                        "minibatch_std_backward_stat_v3", "minibatch_std_backward_v3"]
    with pytest.raises(ValueError, match="7 samples do not split into 2 equal segments"):
        MB.minibatch_std_forward_cuda(x[:7].repeat(2, 0)[:7], segments=2)
    with pytest.raises(ValueError, match="a segmented batch needs kernel version 3, got 2"):
        MB.minibatch_std_forward_cuda(x, segments=2, version=2)

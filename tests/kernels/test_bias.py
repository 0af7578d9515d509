"""kernels/bias.cu against cganraw.ops.bias's NumPy reference, through the emulator:
bias add (in place) and bias gradient, both versions, on (N, C) and (N, C, H, W) shapes
that break tiling, and on the conv cGAN's layer outputs at batch 3. The block-reduction
gradient kernel runs under every thread order."""
import numpy as np
import pytest

from cganraw import backend
from cganraw.ops import bias as B
from cganraw.ops import linear as L
from tests.kernels.conftest import assert_close

VERSIONS = (1, 2)

# (N, C[, ...]): one value, one channel, odd 3-D sizes, a batch of 1, then the conv cGAN
# (width 128, batch 3): G's fc (3, 6272), ConvT outputs, the final Conv2d (3, 1, 28, 28),
# D's convs, D's logits (3, 1), and a Linear(50, 784) label path
SHAPES = [(1, 1), (1, 7), (7, 1), (17, 33, 15), (45, 7, 129), (1, 1, 1, 1), (2, 3, 17, 19), (1, 128, 7, 7),
          (3, 6272), (3, 128, 14, 14), (3, 128, 28, 28), (3, 1, 28, 28), (3, 128, 7, 7), (3, 1), (3, 784)]


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("version", VERSIONS)
def test_bias_add_forward_matches_reference(version, shape, rng):
    y = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    ref = B.bias_add_forward_numpy(y.copy(), b)
    out = B.bias_add_forward_cuda(y, b, version=version)
    assert out is y, "bias_add works in place and returns y"
    assert_close(y, ref, 1e-7, 1e-6, f"bias_add_forward_v{version} {shape}")


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_bias_add_backward_v1_matches_reference(shape, rng):
    dy = rng.standard_normal(shape).astype(np.float32)
    # float32 sums of up to 5805 values in a different order than NumPy's pairwise sum
    assert_close(B.bias_add_backward_cuda(dy, version=1), B.bias_add_backward_numpy(dy), 1e-4, 1e-5,
                 f"bias_add_backward_v1 {shape}")


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_bias_add_backward_v2_matches_reference(shape, all_orders, rng):
    dy = rng.standard_normal(shape).astype(np.float32)
    assert_close(B.bias_add_backward_cuda(dy, version=2), B.bias_add_backward_numpy(dy), 1e-4, 1e-5,
                 f"bias_add_backward_v2 {shape} ({all_orders} order)")


@pytest.mark.parametrize("version", VERSIONS)
def test_bias_add_backward_large_offset_values(version, rng):
    # a large common offset makes the order of summation visible; the tolerance is relative
    dy = (rng.standard_normal((3, 128, 28, 28)) + 100.0).astype(np.float32)
    assert_close(B.bias_add_backward_cuda(dy, version=version), B.bias_add_backward_numpy(dy), 1e-3, 2e-5, "offset dy")


def test_bias_add_v2_many_channels_block_stride(rng, monkeypatch, all_orders):
    # more channels (rows) than the v2 kernels launch blocks: each block strides over several;
    # the grid cap is lowered so that this stays cheap in the emulator
    monkeypatch.setattr(B, "MAX_ROW_BLOCKS", 4)
    n_c = 4 * 3 + 1
    dy = rng.standard_normal((1, n_c, 2)).astype(np.float32)
    assert_close(B.bias_add_backward_cuda(dy, version=2), B.bias_add_backward_numpy(dy), 1e-6, 1e-6,
                 "bias grad, C > grid")
    y = rng.standard_normal((1, n_c, 33)).astype(np.float32)
    b = rng.standard_normal(n_c).astype(np.float32)
    ref = B.bias_add_forward_numpy(y.copy(), b)
    assert_close(B.bias_add_forward_cuda(y, b, version=2), ref, 1e-7, 1e-6, "bias add, rows > grid")


def test_public_ops_dispatch_to_the_kernels(launches, rng):
    assert backend.uses_kernels()
    y4 = rng.standard_normal((3, 128, 14, 14)).astype(np.float32)
    y2 = rng.standard_normal((3, 6272)).astype(np.float32)
    b4 = rng.standard_normal(128).astype(np.float32)
    b2 = rng.standard_normal(6272).astype(np.float32)
    ref4, ref2 = B.bias_add_forward_numpy(y4.copy(), b4), B.bias_add_forward_numpy(y2.copy(), b2)
    B.bias_add_forward(y4, b4)
    B.bias_add_forward(y2, b2)
    db4, db2 = B.bias_add_backward(y4), B.bias_add_backward(y2)
    # the add: conv maps take the row kernel, Linear outputs the thread-per-element one; the
    # gradient: the split reduction, its ordered sum of the partials in the same launch
    assert launches == ["bias_add_forward_v2", "bias_add_forward_v1", "bias_add_backward_v5", "bias_add_backward_v5"]
    assert_close(y4, ref4, 1e-7, 1e-6, "public bias_add 4-D")
    assert_close(y2, ref2, 1e-7, 1e-6, "public bias_add 2-D")
    assert_close(db4, B.bias_add_backward_numpy(ref4), 1e-4, 1e-5, "public bias_add_backward 4-D")
    assert_close(db2, B.bias_add_backward_numpy(ref2), 1e-4, 1e-5, "public bias_add_backward 2-D")


def test_linear_layer_op_runs_through_the_bias_kernels(launches, rng):
    x = rng.standard_normal((3, 50)).astype(np.float32)
    W = rng.standard_normal((784, 50)).astype(np.float32)
    b = rng.standard_normal(784).astype(np.float32)
    dy = rng.standard_normal((3, 784)).astype(np.float32)
    y, cache = L.linear_forward(x, W, b)
    _, _, db = L.linear_backward(dy, cache)
    assert "bias_add_forward_v1" in launches and "bias_add_backward_v5" in launches
    assert_close(y, x @ W.T + b, 1e-4, 1e-5, "linear forward")
    assert_close(db, dy.sum(axis=0), 1e-5, 1e-5, "linear bias gradient")


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_inputs_are_rejected_or_made_contiguous(version, rng):
    with pytest.raises(TypeError, match="bias_add_forward: y: kernels take float32, got float64"):
        B.bias_add_forward_cuda(np.zeros((3, 4)), np.zeros(4, np.float32), version=version)
    with pytest.raises(TypeError, match="bias_add_forward: b: kernels take float32, got float64"):
        B.bias_add_forward_cuda(np.zeros((3, 4), np.float32), np.zeros(4), version=version)
    with pytest.raises(TypeError, match="bias_add_backward: dy: kernels take float32, got float64"):
        B.bias_add_backward_cuda(np.zeros((3, 4)), version=version)
    with pytest.raises(ValueError, match=r"bias_add_forward: b has shape \(5,\), expected \(4,\)"):
        B.bias_add_forward_cuda(np.zeros((3, 4), np.float32), np.zeros(5, np.float32), version=version)
    with pytest.raises(ValueError, match="bias_add_backward: dy must have shape"):
        B.bias_add_backward_cuda(np.zeros(4, np.float32), version=version)
    # a strided view: added in place through a contiguous copy, written back into the parent
    big = rng.standard_normal((3, 5, 7, 14)).astype(np.float32)
    ref_big = big.copy()
    view = big[:, :, :, ::2]
    b = rng.standard_normal(5).astype(np.float32)
    B.bias_add_forward_numpy(ref_big[:, :, :, ::2], b)
    assert B.bias_add_forward_cuda(view, b, version=version) is view
    assert_close(big, ref_big, 1e-7, 1e-6, "bias add into a strided view")
    b_view = rng.standard_normal(10).astype(np.float32)[::2]
    assert_close(B.bias_add_forward_cuda(np.zeros((3, 5, 7, 7), np.float32), b_view, version=version),
                 B.bias_add_forward_numpy(np.zeros((3, 5, 7, 7), np.float32), b_view), 0, 1e-7, "strided bias")
    assert_close(B.bias_add_backward_cuda(view, version=version), B.bias_add_backward_numpy(view), 1e-5, 1e-5,
                 "grad of a view")
    with pytest.raises(ValueError, match="version"):
        B.bias_add_backward_cuda(view, version=0)
    with pytest.raises(ValueError, match="version"):
        B.bias_add_forward_cuda(view, b, version=3)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_reduce_v4_adds_into_out_as_v3_then_an_add(shape, launches, rng):
    # with out (the bias's .grad) the ordered reduction adds its total in: the bits of v3's
    # db added to it, for the plain and the fused (LeakyReLU) backward; v1 and v2 add after
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    before = rng.standard_normal(c).astype(np.float32)
    got = before.copy()
    assert B.bias_add_backward_cuda(dy, version=3, out=got) is None
    np.testing.assert_array_equal(got, before + B.bias_add_backward_cuda(dy, version=3))
    assert "bias_add_backward_reduce_v4" in launches
    for version in (1, 2, 5):
        got = before.copy()
        assert B.bias_add_backward_cuda(dy, version=version, out=got) is None
        np.testing.assert_array_equal(got, before + B.bias_add_backward_cuda(dy, version=version))
    y = rng.standard_normal(shape).astype(np.float32)
    y, cache = B.bias_leaky_relu_forward_cuda(y, rng.standard_normal(c).astype(np.float32), 0.2)
    for one_launch in (False, True):
        dpre_ref, db_ref = B.bias_leaky_relu_backward_cuda(dy, cache, one_launch=one_launch)
        got = before.copy()
        dpre, db = B.bias_leaky_relu_backward_cuda(dy, cache, out=got, one_launch=one_launch)
        assert db is None
        np.testing.assert_array_equal(dpre, dpre_ref)
        np.testing.assert_array_equal(got, before + db_ref)
    # the CPU dispatch: the same accumulation
    prev = backend.current()
    backend.use("numpy")
    try:
        got = before.copy()
        assert B.bias_add_backward(dy, out=got) is None
        np.testing.assert_array_equal(got, before + B.bias_add_backward(dy))
    finally:
        backend.use(prev)


def test_out_must_fit(rng):
    dy = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"bias_add_backward: out must be a contiguous float32 array of shape \(4,\)"):
        B.bias_add_backward_cuda(dy, out=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="bias_leaky_relu_backward: out must be"):
        B.bias_leaky_relu_backward_cuda(dy, (dy, 0.2), out=np.zeros(5, np.float32))


# (N, C, H, W): the conv layouts (7x7 and 14x14 maps, odd batches, channel counts that are
# not multiples of 4), HW % 4 == 0 (the float4 path), HW == 1 (the rows path)
CM_SHAPES = [(3, 5, 7, 7), (1, 1, 1, 1), (2, 7, 4, 4), (5, 6, 14, 14), (4, 9, 1, 1), (3, 130, 1, 1),
             (2, 3, 3, 5)]


@pytest.mark.parametrize("shape", CM_SHAPES, ids=_ids(CM_SHAPES))
def test_channel_major_fused_kernels(shape, all_orders, rng):
    # v2 reads (forward) or writes (backward) the pre-activation channel-major (C, N*HW):
    # the v1 results, with the layout turned
    n, c, h, w = shape
    pre = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    pre_cm = np.ascontiguousarray(pre.transpose(1, 0, 2, 3)).reshape(c, n * h * w)
    y, cache = B.bias_leaky_relu_forward_from_channel_major_cuda(pre_cm, n, h, w, b, 0.2)
    y_ref, cache_ref = B.bias_leaky_relu_forward_numpy(pre.copy(), b, 0.2)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(shape).astype(np.float32)
    dpre_ref, db_ref = B.bias_leaky_relu_backward_numpy(dy, cache_ref)
    for splits, one_launch in ((None, True), (2, True), (2, False)):
        dpre_cm, db = B.bias_leaky_relu_backward_to_channel_major_cuda(dy, cache, splits=splits,
                                                                       one_launch=one_launch)
        np.testing.assert_array_equal(dpre_cm.reshape(c, n, h, w).transpose(1, 0, 2, 3), dpre_ref)
        assert_close(db, db_ref, 1e-5, 1e-5, f"db {shape} splits={splits} ({all_orders} order)")
        before = rng.standard_normal(c).astype(np.float32)
        got = before.copy()
        _, none = B.bias_leaky_relu_backward_to_channel_major_cuda(dy, cache, splits=splits, out=got,
                                                                   one_launch=one_launch)
        assert none is None
        np.testing.assert_array_equal(got, before + db)
    _, none = B.bias_leaky_relu_backward_to_channel_major_cuda(dy, cache, need_db=False)
    assert none is None


def test_conv_pair_takes_no_layout_copies(rng):
    # D's Conv2d + LeakyReLU on the kernel backends: im2col, the GEMM and the fused kernel
    # forward; the fused kernel, the reduction, two GEMMs and col2im backward; no copies
    from cganraw import devicelog, nn
    seq = nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1, rng=rng), nn.LeakyReLU(0.2))
    x = rng.standard_normal((3, 3, 7, 7)).astype(np.float32)
    with devicelog.recording() as log:
        y = seq(x)
        seq.backward(np.ones_like(y))
    gemm = {"gemm"} | {e.name for e in log.launches if e.name.startswith("gemm_")}   # cuBLAS or our kernels
    assert ["gemm" if e.name in gemm or e.kind == "gemm" else e.name for e in log.launches] == [
        "im2col_v2", "gemm", "bias_leaky_relu_forward_v2", "bias_leaky_relu_backward_v4", "gemm", "gemm",
        "col2im_v3"]


def test_channel_major_fused_kernels_on_an_empty_batch():
    b = np.ones(3, np.float32)
    y, cache = B.bias_leaky_relu_forward_from_channel_major_cuda(np.zeros((3, 0), np.float32), 0, 2, 2, b, 0.2)
    assert y.shape == (0, 3, 2, 2)
    dpre, db = B.bias_leaky_relu_backward_to_channel_major_cuda(np.zeros((0, 3, 2, 2), np.float32), cache)
    assert dpre.shape == (3, 0) and np.array_equal(db, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"y_cm must have shape \(C, 8\)"):
        B.bias_leaky_relu_forward_from_channel_major_cuda(np.zeros((3, 5), np.float32), 2, 2, 2, b, 0.2)


# ---------------------------------------------------------------- one launch (v5, fused v3/v4)

@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_bias_add_backward_v5_is_v3_in_one_launch(shape, all_orders, rng):
    # the grid's last block adds the partials in v3's order: v3's bits, whichever block
    # finishes last; the shared block counter is left at 0 for the next launch
    from cganraw.ops import _launch
    dy = rng.standard_normal(shape).astype(np.float32)
    for splits in (None, 1, 3):
        db5 = B.bias_add_backward_cuda(dy, version=5, splits=splits)
        np.testing.assert_array_equal(db5, B.bias_add_backward_cuda(dy, version=3, splits=splits))
        assert_close(db5, B.bias_add_backward_numpy(dy), 1e-4, 1e-5, f"v5 {shape} splits={splits}")
        assert int(backend.asnumpy(_launch.grid_counter())[0]) == 0


@pytest.mark.parametrize("shape", [(3, 2, 28, 28), (5, 50, 7, 7), (3, 2, 784), (4, 9, 1, 1)],
                         ids=_ids([(3, 2, 28, 28), (5, 50, 7, 7), (3, 2, 784), (4, 9, 1, 1)]))
def test_bias_add_backward_v5_reads_a_channel_slice_in_place(shape, rng):
    # the label path's gradient: one channel of a concatenation's gradient, a row-strided view
    # (N, 1, H, W) or, reshaped, (N, H*W): summed where it lies, no contiguous copy
    from cganraw import devicelog
    d = rng.standard_normal(shape).astype(np.float32)
    view = d[:, 1:2] if len(shape) == 4 else d[:, 1]
    flat = view.reshape(shape[0], -1)
    for dy in (view, flat) if view.size else (view,):
        with devicelog.recording() as log:
            db = B.bias_add_backward_cuda(dy)
        assert [e.name for e in log.events] == ["bias_add_backward_v5"]
        np.testing.assert_array_equal(db, B.bias_add_backward_cuda(np.ascontiguousarray(dy), version=3))
    # a layout rows_strided cannot read (every other pixel): made contiguous, then summed
    odd = d[:, :, ..., ::2] if shape[-1] > 1 else d[::2, ::2]
    with devicelog.recording() as log:
        db = B.bias_add_backward_cuda(odd)
    assert [e.kind for e in log.events] == ["copy", "kernel"]
    np.testing.assert_array_equal(db, B.bias_add_backward_cuda(np.ascontiguousarray(odd), version=3))


def test_one_launch_bias_reductions_are_reproducible(rng):
    from cganraw import cuda_emu
    dy = rng.standard_normal((7, 13, 9, 9)).astype(np.float32)
    y = rng.standard_normal((7, 13, 9, 9)).astype(np.float32)
    runs = []
    for order, workers in (("forward", 1), ("reverse", 1), ("random", 2), ("random", 2)):
        with cuda_emu.settings(order=order, seed=5, workers=workers):
            db = B.bias_add_backward_cuda(dy, splits=4)
            _, db_fused = B.bias_leaky_relu_backward_cuda(dy, (y, 0.2), splits=4)
            runs.append((db.tobytes(), db_fused.tobytes()))
    assert len(set(runs)) == 1


def test_a_failed_launch_leaves_no_counted_up_block_counter(rng):
    # a launch that fails part-way may leave the shared block counter off 0; the next
    # one-launch reduction must still find its last block
    from cganraw.ops import _launch
    _launch.grid_counter()[...] = 5
    with pytest.raises(TypeError):
        _launch.function("bias", "bias_add_backward_v5")((1,), (256,), (np.zeros(3, np.float64),))
    dy = rng.standard_normal((5, 7, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(B.bias_add_backward_cuda(dy), B.bias_add_backward_cuda(dy, version=3))


# ---------------------------------------------------------------- fused bias + Tanh
TANH_SHAPES = [(3, 1, 28, 28), (1, 1, 1, 1), (5, 3, 7, 7), (2, 7, 4, 4), (7, 5), (3, 130, 1, 1), (2, 3, 3, 5)]


@pytest.mark.parametrize("shape", TANH_SHAPES, ids=_ids(TANH_SHAPES))
def test_bias_tanh_kernels_equal_the_reference(shape, all_orders, rng):
    # forward: bias_add then tanh, one pass; backward: tanh's gradient and the bias sums in
    # one launch (db written, or added into the bias's .grad); tanhf against libm's tanh
    c = shape[1]
    pre = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    y_ref, cache_ref = B.bias_tanh_forward_numpy(pre.copy(), b)
    y, cache = B.bias_tanh_forward_cuda(pre.copy(), b)
    assert_close(y, y_ref, atol=2e-7, rtol=2e-7, what="bias_tanh_forward_v1")
    dy = rng.standard_normal(shape).astype(np.float32)
    dpre_ref, db_ref = B.bias_tanh_backward_numpy(dy, cache)        # the kernel's y: dpre exact
    for splits in (None, 2, 3):
        dpre, db = B.bias_tanh_backward_cuda(dy, cache, splits=splits)
        np.testing.assert_array_equal(dpre, dpre_ref)
        assert_close(db, db_ref, atol=1e-5 * np.prod(shape) / c, rtol=1e-5, what=f"db splits={splits}")
        before = rng.standard_normal(c).astype(np.float32)
        got = before.copy()
        dpre2, none = B.bias_tanh_backward_cuda(dy, cache, splits=splits, out=got)
        assert none is None and np.array_equal(dpre2, dpre)
        np.testing.assert_array_equal(got, before + db)           # the same sums, added
        dpre3, none = B.bias_tanh_backward_cuda(dy, cache, need_db=False, splits=splits, out=before.copy())
        assert none is None and np.array_equal(dpre3, dpre)
    # the unfused kernels give the same bits: bias_add_forward + tanh_forward, tanh_backward + bias_add_backward
    from cganraw.ops import activation as A
    unfused = B.bias_add_forward_cuda(pre.copy(), b)
    np.testing.assert_array_equal(A.tanh_forward_cuda(unfused)[1], y)
    dx_unfused = A.tanh_backward_cuda(dy, y)
    np.testing.assert_array_equal(dx_unfused, dpre_ref)
    np.testing.assert_array_equal(B.bias_add_backward_cuda(dx_unfused), B.bias_tanh_backward_cuda(dy, cache)[1])


def test_bias_tanh_backward_float64_finite_differences(rng):
    # the reference pair in float64: d/dy_pre and d/db of sum(w * tanh(pre + b))
    shape = (3, 2, 3, 5)
    pre = rng.standard_normal(shape)
    b = rng.standard_normal(2)
    w = rng.standard_normal(shape)

    def f(pre, b):
        return float((w * B.bias_tanh_forward_numpy(pre.copy(), b)[0]).sum())
    _, cache = B.bias_tanh_forward_numpy(pre.copy(), b)
    dpre, db = B.bias_tanh_backward_numpy(w, cache)
    eps = 1e-6
    num_pre = np.zeros(shape)
    for i in np.ndindex(shape):
        e = np.zeros(shape)
        e[i] = eps
        num_pre[i] = (f(pre + e, b) - f(pre - e, b)) / (2 * eps)
    num_b = np.array([(f(pre, b + eps * np.eye(2)[c]) - f(pre, b - eps * np.eye(2)[c])) / (2 * eps) for c in range(2)])
    np.testing.assert_allclose(dpre, num_pre, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, num_b, rtol=1e-6, atol=1e-8)


def test_bias_tanh_arguments_and_empty_batch(rng):
    with pytest.raises(ValueError, match=r"bias_tanh_forward: b has shape \(2,\)"):
        B.bias_tanh_forward_cuda(np.zeros((2, 3, 2, 2), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="bias_tanh_backward: out must be"):
        B.bias_tanh_backward_cuda(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), out=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="the forward's output"):
        B.bias_tanh_backward_cuda(np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32))
    y, cache = B.bias_tanh_forward_cuda(np.zeros((0, 3, 2, 2), np.float32), None)
    dpre, db = B.bias_tanh_backward_cuda(np.zeros((0, 3, 2, 2), np.float32), cache)
    assert dpre.shape == (0, 3, 2, 2) and np.array_equal(db, np.zeros(3, np.float32))
    y, _ = B.bias_tanh_forward_cuda(np.full((1, 2), 0.5, np.float32), None)      # no bias: tanh alone
    np.testing.assert_allclose(y, np.tanh(0.5), rtol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv2d_one_output", "conv_transpose2d"])
def test_layer_tanh_pair_fuses_on_emu(kind, launches, rng):
    # Linear/Conv2d/ConvTranspose2d + Tanh in a Sequential: one launch each way for the bias
    # and the activation, the same outputs and gradients as the pair unfused (emu), and as
    # the numpy backend (which keeps the pair unfused)
    from cganraw import nn
    from cganraw.nn import fused
    layer, shape = {"linear": (nn.Linear(7, 5, rng=rng), (3, 7)),
                    "conv2d": (nn.Conv2d(2, 3, 3, 2, 1, rng=rng), (3, 2, 7, 5)),
                    "conv2d_one_output": (nn.Conv2d(5, 1, 7, 1, 3, rng=rng), (3, 5, 9, 8)),
                    "conv_transpose2d": (nn.ConvTranspose2d(3, 2, 4, 2, 1, rng=rng), (2, 3, 3, 3))}[kind]
    for p in layer.parameters():
        p.data[...] = rng.normal(size=p.shape) * 0.3
    seq = nn.Sequential(layer, nn.Tanh())
    x = rng.standard_normal(shape).astype(np.float32)
    results = {}
    for bk, fuse in (("emu", True), ("emu", False), ("numpy", True)):
        backend.use(bk)
        seq.fuse = fuse
        assert fused.plan(list(seq), fuse) == ([(0, 1)] if fuse and bk == "emu" else [(0,), (1,)])
        seq.zero_grad()
        launches.clear()
        y = np.array(seq(x))
        dy = np.cos(3 * y).astype(np.float32)
        dx = np.array(seq.backward(dy))
        if bk == "emu":
            names = set(launches)
            assert ({"bias_tanh_forward_v1", "bias_tanh_backward_v1"} <= names) == fuse
            assert (not names & {"tanh_forward_v2", "tanh_backward_v2"}) == fuse
        results[(bk, fuse)] = [y, dx, layer.weight.grad.copy(), layer.bias.grad.copy()]
    backend.use("emu")
    for name, a, b, r in zip(("y", "dx", "dW", "db"), results[("emu", True)], results[("emu", False)],
                             results[("numpy", True)]):
        np.testing.assert_array_equal(a, b, err_msg=f"{kind} {name}: fused vs unfused on emu")
        assert_close(a, r.astype(np.float64), atol=1e-5, rtol=1e-4, what=f"{kind} {name}: emu vs numpy")

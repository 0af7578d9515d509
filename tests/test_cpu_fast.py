"""The Numba CPU fast paths equal their NumPy references (numba is in the dev extra)."""
import numpy as np
import pytest

from cganraw import nn
from cganraw.ops import _cpu, activation, conv

pytestmark = pytest.mark.skipif(not _cpu.enabled(), reason="numba not installed (pip install -e '.[fast]')")

SHAPES = [  # (N, C, H, W, k, s, p, out_hw override)
    (1, 1, 1, 1, 1, 1, 0, None),
    (3, 2, 7, 5, 3, 2, 1, None),
    (2, 3, 28, 28, 7, 1, 3, None),
    (1, 5, 14, 14, 4, 2, 1, None),
    (2, 1, 9, 11, 3, 3, 2, None),
    (1, 2, 8, 8, 3, 2, 1, (3, 3)),   # a transposed conv's window count (output_padding)
    (2, 2, 5, 6, 2, 1, 3, None),     # padding wider than the kernel: whole rows of zeros
    (1, 3, 4, 9, 5, 3, 4, None),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_col2im_match_numpy(shape, dtype, rng):
    n, c, h, w, k, s, p, out_hw = shape
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    ref = conv.im2col_numpy(x, k, s, p, out_hw)
    got = conv.im2col(x, k, s, p, out_hw)
    np.testing.assert_array_equal(got, ref)
    cols = rng.normal(size=ref.shape).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(conv.col2im(cols, x.shape, k, s, p, out_hw),
                               conv.col2im_numpy(cols, x.shape, k, s, p, out_hw), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", SHAPES[1:4] + SHAPES[6:])
def test_parallel_twins_match_numpy(shape, rng):
    # the parallel builds (picked above _cpu.PARALLEL_MIN_WORK elements), forced on small shapes
    n, c, h, w, k, s, p, out_hw = shape
    ho, wo = out_hw or (conv.conv_output_size(h, k, s, p), conv.conv_output_size(w, k, s, p))
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    ref = conv.im2col_numpy(x, k, s, p, out_hw)
    cols = np.empty_like(ref)
    conv._im2col_numba(x, False, k, s, p, ho, wo, cols, work=None)
    np.testing.assert_array_equal(cols, ref)
    out = np.empty_like(x)
    conv._col2im_numba(ref, k, s, p, ho, wo, out, False, work=None)
    np.testing.assert_allclose(out, conv.col2im_numpy(ref, x.shape, k, s, p, out_hw), rtol=1e-6, atol=1e-6)


def _batch_minor_of(cols, n, ho, wo):
    # NCHW-order columns (R, N*Ho*Wo) -> batch-minor (R, Ho*Wo*N)
    return np.ascontiguousarray(cols.reshape(-1, n, ho, wo).transpose(0, 2, 3, 1)).reshape(cols.shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channel_major", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_batch_minor_im2col_col2im_are_the_numpy_references_permuted(shape, dtype, channel_major, parallel, rng,
                                                                     monkeypatch):
    # bit for bit both ways: im2col copies; col2im sums each pixel's taps from zero in (i, j)
    # order, as col2im_numpy's strided adds do; the parallel twins forced on small shapes
    n, c, h, w, k, s, p, out_hw = shape
    ho, wo = out_hw or (conv.conv_output_size(h, k, s, p), conv.conv_output_size(w, k, s, p))
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    if channel_major:       # the (C, N, H, W) memory of a conv layer's output
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    monkeypatch.setattr(_cpu, "PARALLEL_MIN_WORK", 0 if parallel else 1 << 40)
    ref = conv.im2col_numpy(x, k, s, p, out_hw)
    got = conv.im2col_batch_minor(x, k, s, p, out_hw)
    np.testing.assert_array_equal(got, _batch_minor_of(ref, n, ho, wo))
    cols = rng.normal(size=ref.shape).astype(dtype)
    back = conv.col2im_batch_minor(_batch_minor_of(cols, n, ho, wo), x.shape, k, s, p, out_hw)
    assert back.transpose(1, 0, 2, 3).flags.c_contiguous          # channel-major, as the GEMM layers hand on
    np.testing.assert_array_equal(back, conv.col2im_numpy(cols, x.shape, k, s, p, out_hw))



def _as_batch_minor(a):
    # (N, C, H, W) -> the same values as a batch-minor view (ops._layout), memory (C, H, W, N)
    from cganraw.ops import _layout
    n, c, h, w = a.shape
    view = _layout.batch_minor_view(np.ascontiguousarray(a.transpose(1, 2, 3, 0)).reshape(c, -1), n, h, w)
    assert _layout.batch_minor_block(view) is not None or n == 1
    return view


@pytest.mark.parametrize("shape", SHAPES + [(33, 5, 14, 14, 4, 2, 1, None)])       # the last: parallel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", [None, 0.2])
def test_batch_minor_views_take_the_same_passes_bit_for_bit(shape, dtype, act, rng):
    # a batch-minor input (a host Conv2d's output handed on): im2col reads it in place, col2im
    # writes it (with the bias and slope), the layout turn reads dy through the activation and
    # sums the bias gradient: the values and bits of the NCHW passes
    from cganraw.ops import _layout
    n, c, h, w, k, s, p, out_hw = shape
    ho, wo = out_hw or (conv.conv_output_size(h, k, s, p), conv.conv_output_size(w, k, s, p))
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    xb = _as_batch_minor(x)
    np.testing.assert_array_equal(xb, x)
    np.testing.assert_array_equal(conv.im2col_batch_minor(xb, k, s, p, out_hw), conv.im2col_batch_minor(x, k, s, p, out_hw))
    cols = rng.normal(size=(c * k * k, ho * wo * n)).astype(dtype)
    b = rng.normal(size=c).astype(dtype)
    want = conv.col2im_batch_minor(cols, x.shape, k, s, p, out_hw, bias=b, negative_slope=act)
    got = conv.col2im_batch_minor(cols, x.shape, k, s, p, out_hw, bias=b, negative_slope=act, batch_minor=True)
    assert n == 1 or _layout.batch_minor_block(got) is not None
    np.testing.assert_array_equal(got, want)
    y = rng.normal(size=x.shape).astype(dtype)
    y.reshape(-1)[::7] = 0
    leaky = None if act is None else (y, act)
    leaky_bm = None if act is None else (_as_batch_minor(y), act)
    sums, sums_bm = np.empty(c), np.empty(c)
    want = conv._to_batch_minor(x, channel_sums=sums, leaky=leaky)
    got = conv._to_batch_minor(xb, channel_sums=sums_bm, leaky=leaky_bm)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(sums_bm, sums)
    np.testing.assert_array_equal(conv._to_batch_minor(xb, leaky=leaky_bm), want)
    if n > 1:   # nothing to do: the view's own memory
        assert np.shares_memory(conv._to_batch_minor(xb), xb)
    # an op that knows nothing of the layout copies it: the same values
    np.testing.assert_array_equal(activation.leaky_relu_forward(xb, 0.2)[0], activation.leaky_relu_forward(x, 0.2)[0])


@pytest.mark.parametrize("fuse", [True, False])
def test_conv_pairs_hand_on_batch_minor_and_pass_finite_differences(fuse, rng, monkeypatch):
    # Conv2d -> LeakyReLU -> Conv2d (D's first two layers): fused, the first hands its output on
    # batch-minor and gets its gradient back so (float64 finite differences through the handoff);
    # its values are the unfused layers' bit for bit
    from cganraw.gradcheck import check_module
    from cganraw.nn import fused
    from cganraw.ops import _layout

    def net():
        r = np.random.default_rng(5)
        return nn.Sequential(nn.Conv2d(2, 3, 4, 2, 1, rng=r), nn.LeakyReLU(0.2), nn.Conv2d(3, 4, 3, 2, 1, rng=r),
                             nn.LeakyReLU(0.2), fuse=fuse)
    seq = net()
    seq.to(np.float64)
    x = rng.normal(size=(3, 2, 9, 10))
    steps = fused.plan(list(seq), fuse)
    assert fused.hands_batch_minor(list(seq), steps[0], steps[1]) == fuse
    seen = []
    im2col = conv.im2col_batch_minor
    monkeypatch.setattr(conv, "im2col_batch_minor",
                        lambda x, *a, **k: seen.append(_layout.batch_minor_block(x) is not None) or im2col(x, *a, **k))
    check_module(seq, x)
    assert any(seen) == fuse
    out = {}
    for f in (True, False):
        s32 = net()
        s32.fuse = f
        x32 = x.astype(np.float32)
        y = s32(x32)
        dx = s32.backward(np.ones_like(y))
        out[f] = (y, dx, [p.grad.copy() for p in s32.parameters()])
    for a, b in zip(out[True][:2] + tuple(out[True][2]), out[False][:2] + tuple(out[False][2])):
        np.testing.assert_array_equal(a, b)

def test_col2im_batch_minor_rejects_wrong_cols(rng):
    with pytest.raises(ValueError, match=r"expected \(C\*k\*k, Ho\*Wo\*N\) = \(32, 98\)"):
        conv.col2im_batch_minor(np.zeros((32, 97), np.float32), (2, 2, 14, 14), 4, 2, 1)


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 14, 14, 4, 2, 1), (2, 3, 1, 9, 6, 3, 2, 1), (1, 2, 4, 5, 5, 5, 3, 2)])
def test_batch_minor_layers_equal_the_nchw_path(kind, shape, rng, monkeypatch):
    # the same GEMMs on permuted columns: outputs and input gradients as the NCHW path's up to
    # float32 rounding (BLAS tiles the columns differently), the weight gradient too (its sum
    # over the columns runs in another order); the bias gradient is the same reduction
    n, cin, cout, h, w, k, s, p = shape
    layer_cls = nn.Conv2d if kind == "conv" else nn.ConvTranspose2d
    layer = layer_cls(cin, cout, k, s, p, rng=rng)
    layer.bias.data[:] = rng.normal(size=cout)
    x = rng.normal(size=(n, cin, h, w)).astype(np.float32)
    got = {}
    for path in ("batch_minor", "nchw"):
        if path == "nchw":
            monkeypatch.setattr(conv, "_batch_minor", lambda x, W: False)
        monkeypatch.setattr(conv, "_transpose_override", "col2im")
        layer.zero_grad()
        y = layer(x)
        assert layer._cache[0][0] == (path if path == "batch_minor" else "im2col" if kind == "conv" else "col2im")
        dy = np.random.default_rng(7).normal(size=y.shape).astype(np.float32)
        got[path] = (np.array(y), layer.backward(dy), layer.weight.grad.copy(), layer.bias.grad.copy())
    for a, b in zip(got["batch_minor"], got["nchw"]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max())
    np.testing.assert_array_equal(got["batch_minor"][3], got["nchw"][3])


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9, 8, 4, 2, 1), (33, 5, 17, 14, 14, 4, 2, 1)])   # the second: parallel
def test_batch_minor_layers_fold_the_bias_bit_for_bit(kind, shape, rng, monkeypatch):
    # the host column paths add the bias in their layout turn (Conv2d) or col2im (the
    # transposed conv), and sum its gradient as they read dy: bias_add_forward's and
    # bias_add_backward's bits, also when the gradient adds into one already there
    from cganraw.ops import bias as B
    if not _cpu.enabled():
        pytest.skip("numba not installed")
    monkeypatch.setattr(conv, "_transpose_override", "col2im")
    n, cin, cout, h, w, k, s, p = shape
    layer = (nn.Conv2d if kind == "conv" else nn.ConvTranspose2d)(cin, cout, k, s, p, rng=rng)
    layer.bias.data[:] = rng.normal(size=cout)
    x = rng.normal(size=(n, cin, h, w)).astype(np.float32)
    forward = conv.conv2d_forward if kind == "conv" else conv.conv_transpose2d_forward
    y_plain, _ = forward(x, layer.weight.data, None, s, p)
    want = np.array(y_plain)
    B.bias_add_forward_numpy(want, layer.bias.data)
    layer.bias.grad[:] = 0.5
    y = layer(x)
    assert layer._cache[0][0] == "batch_minor"
    np.testing.assert_array_equal(y, want)
    dy = rng.normal(size=y.shape).astype(np.float32)
    layer.backward(dy)
    np.testing.assert_array_equal(layer.bias.grad, np.float32(0.5) + B.bias_add_backward(dy))


@pytest.mark.parametrize("layouts", [("cm", "nchw"), ("nchw", "cm"), ("cm", "cm"), ("strided", "nchw")])
@pytest.mark.parametrize("slope", [0.2, 0.0, -0.3])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (33, 17, 14, 14)])     # the second past the parallel threshold
def test_leaky_relu_backward_mixed_layouts(layouts, slope, shape, rng):
    # dy a conv's channel-major gradient against an NCHW x (G's LeakyReLU after FiLM), and
    # the other mixes: the planes kernel, or NumPy for a negative slope; the reference's bits
    def laid(a, how):
        if how == "cm":
            return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
        if how == "strided":
            return np.repeat(a, 2, axis=3)[..., ::2]
        return a
    x = rng.normal(size=shape).astype(np.float32)
    x.ravel()[::7] = 0.0
    dy = rng.normal(size=shape).astype(np.float32)
    dyl, xl = laid(dy, layouts[0]), laid(x, layouts[1])
    got = activation.leaky_relu_backward(dyl, (xl, slope))
    np.testing.assert_array_equal(got, activation.leaky_relu_backward_numpy(dy, (x, slope)))


@pytest.mark.parametrize("layout", ["nchw", "cm", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 3, 1, 2), (33, 17, 14, 14)])   # the last: parallel
def test_instancenorm_numba_matches_numpy(layout, dtype, shape, rng):
    from cganraw.ops import instancenorm as IN

    def laid(a):
        if layout == "cm":
            return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
        return np.repeat(a, 2, axis=3)[..., ::2] if layout == "strided" else a
    c = shape[1]
    x = (rng.normal(size=shape) * 3 + rng.normal(size=(1, c, 1, 1)) * 5).astype(dtype)
    gamma, beta = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)
    y, cache, mean, var = IN.instancenorm_forward(laid(x), gamma, beta, eps=1e-5)
    y_ref, cache_ref, mean_ref, var_ref = IN.instancenorm_forward_numpy(x, gamma, beta, eps=1e-5)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, want in ((y, y_ref), (cache[1], cache_ref[1]), (cache[2], cache_ref[2]), (mean, mean_ref),
                      (var, var_ref)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, **tol)
    if layout == "cm":
        assert y.transpose(1, 0, 2, 3).flags.c_contiguous         # in x's layout: no copy for the next conv
    dy = rng.normal(size=shape).astype(dtype)
    dx, dgamma, dbeta = IN.instancenorm_backward(laid(dy), cache)
    dx_ref, dgamma_ref, dbeta_ref = IN.instancenorm_backward_numpy(dy, cache_ref)
    for got, want in ((dx, dx_ref), (dgamma, dgamma_ref), (dbeta, dbeta_ref)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, np.abs(want).max()))
    # deterministic: the same bits again (one task per plane, its sums in order)
    again = IN.instancenorm_backward(laid(dy), IN.instancenorm_forward(laid(x), gamma, beta, eps=1e-5)[1])
    assert all(np.array_equal(a, b) for a, b in zip(again, (dx, dgamma, dbeta)))


def test_im2col_accepts_non_contiguous_input(rng):
    x = rng.normal(size=(2, 3, 9, 9)).astype(np.float32)[:, ::2]
    np.testing.assert_array_equal(conv.im2col(x, 3, 2, 1), conv.im2col_numpy(x, 3, 2, 1))


@pytest.mark.parametrize("size", [1, 7, 1000, 33 * 17])
def test_leaky_relu_matches_numpy(size, rng):
    x = rng.normal(size=size).astype(np.float32)
    x[0] = 0.0
    y, cache = activation.leaky_relu_forward(x, 0.2)
    y_ref, cache_ref = activation.leaky_relu_forward_numpy(x, 0.2)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.normal(size=size).astype(np.float32)
    np.testing.assert_array_equal(activation.leaky_relu_backward(dy, cache),
                                  activation.leaky_relu_backward_numpy(dy, cache_ref))


@pytest.mark.parametrize("shape,k,s,p", [((9, 16, 31, 29), 3, 1, 1), ((6, 16, 57, 55), 4, 2, 1)])
def test_serial_and_parallel_twins_agree(shape, k, s, p, rng, monkeypatch):
    # above _cpu.PARALLEL_MIN_WORK the public ops take the parallel twins by themselves
    x = rng.normal(size=shape).astype(np.float32)
    par = conv.im2col(x, k, s, p)
    assert par.size >= _cpu.PARALLEL_MIN_WORK, "the input must be large enough for the parallel twin"
    np.testing.assert_array_equal(par, conv.im2col_numpy(x, k, s, p))
    cols = rng.normal(size=par.shape).astype(np.float32)
    par_back = conv.col2im(cols, x.shape, k, s, p)
    np.testing.assert_allclose(par_back, conv.col2im_numpy(cols, x.shape, k, s, p), rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(_cpu, "PARALLEL_MIN_WORK", 1 << 40)   # everything serial
    np.testing.assert_array_equal(conv.im2col(x, k, s, p), par)
    np.testing.assert_array_equal(conv.col2im(cols, x.shape, k, s, p), par_back)


# ---------------------------------------------------------------- fused bias + LeakyReLU, channel sums
BIAS_SHAPES = [(1, 1, 1, 1), (3, 5, 7, 7), (2, 130, 33, 17), (7, 5), (1, 3), (9, 130), (2, 64)]


@pytest.mark.parametrize("shape", BIAS_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_leaky_relu_numba_matches_numpy(shape, dtype, with_bias, rng):
    from cganraw.ops import bias as B
    y = rng.normal(size=shape).astype(dtype)
    y.reshape(-1)[0] = 0.0
    b = rng.normal(size=shape[1]).astype(dtype) if with_bias else None
    dy = rng.normal(size=shape).astype(dtype)
    want, want_cache = B.bias_leaky_relu_forward_numpy(y.copy(), b, 0.2)
    got, cache = B.bias_leaky_relu_forward_numba(y.copy(), b, 0.2)
    np.testing.assert_array_equal(got, want)                     # same operations: same bits
    want_dpre, want_db = B.bias_leaky_relu_backward_numpy(dy, want_cache)
    dpre, db = B.bias_leaky_relu_backward_numba(dy, cache)
    np.testing.assert_array_equal(dpre, want_dpre)
    tol = 1e-5 if dtype == np.float32 else 1e-12                 # a float64 sum against float32's pairwise one
    np.testing.assert_allclose(db, want_db, rtol=tol, atol=tol * np.abs(dpre).sum(axis=0).max())
    assert db.dtype == dtype
    np.testing.assert_array_equal(B.bias_add_backward_numba(dpre), db)   # fused and unfused agree bit for bit
    assert B.bias_leaky_relu_backward_numba(dy, cache, need_db=False)[1] is None


def test_bias_leaky_relu_dispatch_takes_numba_and_parallel_twin_agrees(rng, monkeypatch):
    from cganraw.ops import bias as B
    shape = (8, 64, 48, 48)                                       # above PARALLEL_MIN_WORK
    y = rng.normal(size=shape).astype(np.float32)
    b = rng.normal(size=64).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    par, cache = B.bias_leaky_relu_forward(y.copy(), b, 0.2)
    dpre, db = B.bias_leaky_relu_backward(dy, cache)
    monkeypatch.setattr(_cpu, "PARALLEL_MIN_WORK", 1 << 40)
    ser, cache2 = B.bias_leaky_relu_forward_numba(y.copy(), b, 0.2)
    np.testing.assert_array_equal(par, ser)
    dpre2, db2 = B.bias_leaky_relu_backward_numba(dy, cache2)
    np.testing.assert_array_equal(dpre, dpre2)
    np.testing.assert_array_equal(db, db2)                        # one channel per task: thread count free
    np.testing.assert_array_equal(B.bias_add_backward(dpre), db)


@pytest.mark.parametrize("shape", [(9, 130), (3, 64), (1, 1), (1100, 1000)])   # the last: the parallel twins
def test_bias_rows_kernels_are_the_plane_kernels_bit_for_bit(shape, rng):
    # (N, C) takes the row kernels; as (N, C, 1, 1) the same values take the plane kernels
    from cganraw.ops import bias as B
    y = rng.normal(size=shape).astype(np.float32)
    b = rng.normal(size=shape[1]).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    rows, cache = B.bias_leaky_relu_forward_numba(y.copy(), b, 0.2)
    planes, cache4 = B.bias_leaky_relu_forward_numba(y.copy().reshape(*shape, 1, 1), b, 0.2)
    np.testing.assert_array_equal(rows, planes.reshape(shape))
    dpre, db = B.bias_leaky_relu_backward_numba(dy, cache)
    dpre4, db4 = B.bias_leaky_relu_backward_numba(dy.reshape(*shape, 1, 1), cache4)
    np.testing.assert_array_equal(dpre, dpre4.reshape(shape))
    np.testing.assert_array_equal(db, db4)
    np.testing.assert_array_equal(B.bias_add_backward_numba(dy), B.bias_add_backward_numba(dy.reshape(*shape, 1, 1)))
    np.testing.assert_array_equal(B.bias_add_backward_numba(dpre), db)
    np.testing.assert_allclose(db, B.bias_add_backward_numpy(dpre), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- accumulating GEMM through CBLAS

def _image_then_batch_sums(a):
    # (N, C, H, W) -> (C,) float64 in channel_total's order, written out with sequential
    # cumulative sums: each image's plane in pixel order from 0, then the images in n order
    n, c = a.shape[:2]
    per_image = np.cumsum(a.reshape(n, c, -1).astype(np.float64), axis=2)[:, :, -1]     # (N, C)
    return np.cumsum(per_image, axis=0)[-1]


@pytest.mark.parametrize("shape", [(19, 3, 7, 7), (8, 2, 1, 5), (5, 4, 3, 3), (1, 1, 1, 1), (17, 2, 14, 14)])
@pytest.mark.parametrize("channel_major", [False, True])
def test_bias_gradient_sums_follow_channel_total_in_every_pass(shape, channel_major, rng):
    # the one summation order of every Numba pass that sums a bias gradient: the unfused
    # bias_add_backward, the fused activation's backward, the layout turn and im2col that
    # sum as they read dy, and the batch-minor total
    from cganraw.ops import bias as B
    dy = rng.normal(size=shape).astype(np.float32) * np.float32(1e3)
    y = rng.normal(size=shape).astype(np.float32)
    if channel_major:
        dy = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    want = _image_then_batch_sums(dy).astype(np.float32)
    np.testing.assert_array_equal(B.bias_add_backward_numba(dy), want)
    dpre, db = B.bias_leaky_relu_backward_numba(dy, (y, 0.2))
    np.testing.assert_array_equal(db, _image_then_batch_sums(dpre).astype(np.float32))
    for leaky, summed in ((None, dy), ((y, 0.2), dpre)):
        sums = np.empty(shape[1])
        conv._to_batch_minor(dy, channel_sums=sums, leaky=leaky)
        np.testing.assert_array_equal(sums, _image_then_batch_sums(summed))
        sums = np.empty(shape[1])
        conv.im2col_batch_minor(dy, 3, 1, 1, leaky=leaky, channel_sums=sums)
        np.testing.assert_array_equal(sums, _image_then_batch_sums(summed))
    nb = _cpu.numba()
    block = np.ascontiguousarray(dy[:, 0].reshape(shape[0], -1).T)          # (H*W, N): channel 0, batch-minor
    assert B.channel_total_batch_minor(nb)(block) == _image_then_batch_sums(dy[:, :1])[0]
    assert B.channel_total(nb)(np.ascontiguousarray(block.T)) == _image_then_batch_sums(dy[:, :1])[0]

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_cblas_gemm_into_strided_views(dtype, trans_a, trans_b, rng):
    from cganraw.ops import _blas
    from cganraw.ops.gemm import gemm
    if not _blas.available(dtype):
        pytest.skip("no OpenBLAS CBLAS found in this process")
    m, n, k = 13, 31, 7
    a = rng.normal(size=(k + 3, m + 9) if trans_a else (m + 2, k + 5)).astype(dtype)
    a = a[1:1 + k, 2:2 + m] if trans_a else a[1:1 + m, 3:3 + k]      # row-strided views
    b = rng.normal(size=(n + 1, k + 4) if trans_b else (k + 1, n + 6)).astype(dtype)
    b = b[:n, 2:2 + k] if trans_b else b[1:, 4:4 + n]
    c0 = rng.normal(size=(m, n + 5)).astype(dtype)
    opa, opb = (a.T if trans_a else a), (b.T if trans_b else b)
    for alpha, beta in ((1.0, 1.0), (0.5, 2.0), (1.0, 0.0)):
        c = c0.copy()
        out = c[:, 2:2 + n]
        assert _blas.gemm_into(a, b, out, trans_a, trans_b, alpha, beta)
        want = alpha * (opa.astype(np.float64) @ opb) + beta * c0[:, 2:2 + n]
        np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
        np.testing.assert_array_equal(c[:, :2], c0[:, :2])           # nothing outside the view touched
        np.testing.assert_array_equal(c[:, 2 + n:], c0[:, 2 + n:])
    # beta = 0 is matmul's own BLAS call: the same bits
    out = np.empty((m, n), dtype)
    assert _blas.gemm_into(a, b, out, trans_a, trans_b)
    np.testing.assert_array_equal(out, np.matmul(opa, opb))
    # through gemm's public face, accumulating
    acc = c0[:, :n].copy()
    gemm(a, b, trans_a, trans_b, beta=1.0, out=acc)
    np.testing.assert_allclose(acc, c0[:, :n] + opa.astype(np.float64) @ opb, rtol=1e-5, atol=1e-5)


def test_cblas_gemm_into_declines_what_blas_cannot_address(rng):
    from cganraw.ops import _blas
    a = rng.normal(size=(4, 6)).astype(np.float32)
    out = np.zeros((4, 4), np.float32)
    assert not _blas.gemm_into(a[:, ::2], a[:, :4].T.copy(), out)            # column stride != 1
    assert not _blas.gemm_into(a, a.T.astype(np.float64), out)               # mixed dtypes
    with pytest.raises(ValueError, match="do not give out"):
        _blas.gemm_into(a, a, out)


# ---------------------------------------------------------------- layout moves (ops._layout)
def _channel_major_copy(a):
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (3, 5, 6, 4), (2, 3, 14, 10), (2, 2, 7, 9)])
@pytest.mark.parametrize("layout", ["nchw", "channel_major"])
def test_padded_gather_and_scatter_match_numpy(shape, layout, rng, monkeypatch):
    from cganraw.ops import _layout
    n, c, hh, ww = shape
    h, w = hh // 2, ww // 2
    first, length, pitch = _layout.padded_layout(n, h, w)
    a = rng.normal(size=shape).astype(np.float32)
    if layout == "channel_major":
        a = _channel_major_copy(a)
    fast = _layout.phases_gather(a, h, w)
    singles = [_layout.padded_gather(a, h, w, 2, q, r) for q, r in _layout.PHASE_ORDER]   # in slot order
    with monkeypatch.context() as m:
        m.setattr(_layout, "_numba_ok", lambda *arrays: False)
        ref = _layout.phases_gather(a, h, w)
        ref_full = _layout.padded_gather(a, hh, ww)
        y_ref = _layout.phases_scatter(ref, np.zeros((n, c, 2 * h, 2 * w), np.float32), h, w)
    assert fast.shape == (4, c, length + 2 * first)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(np.stack(singles), ref)
    full = _layout.padded_gather(a, hh, ww)
    np.testing.assert_array_equal(full, ref_full)
    # pixel (n, y, x) at first + n*(h+1)*pitch + y*pitch + x; every other column is a zero
    f0, _, p0 = _layout.padded_layout(n, hh, ww)
    cols = np.array([f0 + i * (hh + 1) * p0 + y * p0 + x for i in range(n) for y in range(hh) for x in range(ww)])
    np.testing.assert_array_equal(full[:, cols], a.transpose(1, 0, 2, 3).reshape(c, -1))
    assert (np.delete(full, cols, axis=1) == 0).all()
    np.testing.assert_array_equal(y_ref, a[:, :, :2 * h, :2 * w])
    y = np.full((n, c, 2 * h, 2 * w), np.nan, np.float32)
    if layout == "channel_major":
        y = _channel_major_copy(y)
    np.testing.assert_array_equal(_layout.phases_scatter(fast, y, h, w), a[:, :, :2 * h, :2 * w])
    back = np.full((n, c, hh, ww), np.nan, np.float32)
    np.testing.assert_array_equal(_layout.padded_scatter(full, back, hh, ww), a)


@pytest.mark.parametrize("shape", [(3, 4, 7, 7), (2, 6, 9, 5)])
def test_channel_major_activations_give_the_same_values(shape, rng):
    # a conv layer's channel-major output is its NCHW output in other strides; the ops after it
    # (fused bias + LeakyReLU, the next conv, their backward) give the same bits from either
    from cganraw.ops import bias as B
    x = rng.normal(size=shape).astype(np.float32)
    W = rng.normal(size=(5, shape[1], 3, 3)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    y, cache = conv.conv2d_forward(x, W, b, 2, 1)
    assert y.transpose(1, 0, 2, 3).flags.c_contiguous                  # channel-major on NumPy
    y_nchw = np.ascontiguousarray(y)
    act, act_cache = B.bias_leaky_relu_forward(y, None, 0.2)
    act_ref, _ = B.bias_leaky_relu_forward_numpy(y_nchw.copy(), None, 0.2)
    np.testing.assert_array_equal(act, act_ref)
    dy = rng.normal(size=y.shape).astype(np.float32)
    dpre, db = B.bias_leaky_relu_backward(dy, act_cache)
    dpre_ref, db_ref = B.bias_leaky_relu_backward(dy, (np.ascontiguousarray(act), 0.2))
    np.testing.assert_array_equal(dpre, dpre_ref)
    np.testing.assert_array_equal(db, db_ref)
    dx, dW, _ = conv.conv2d_backward(dpre, cache)
    dx_ref, dW_ref, _ = conv.conv2d_backward(np.ascontiguousarray(dpre_ref), cache)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dW, dW_ref)


# ---------------------------------------------------------------- BatchNorm2d (+ activation) on Numba
BN_SHAPES = [(5, 3, 4, 6), (2, 1, 1, 3), (1, 4, 7, 7), (3, 2, 5, 1), (7, 5, 2, 2)]
BN_ACTS = [None, 0.2, "relu"]


def _bn_input(shape, channel_major, dtype, rng):
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    if channel_major:       # a conv's output as the numpy backend leaves it: (C, N, H, W) memory
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    return x


def _bn_reference(act):
    from cganraw.ops import batchnorm as BN
    if act is None:
        return (lambda x, g, b, m=None, v=None: BN.batchnorm_forward_numpy(x, g, b, m, v)), BN.batchnorm_backward_numpy
    if act == "relu":
        return BN.batchnorm_relu_forward_numpy, BN.batchnorm_relu_backward_numpy
    return ((lambda x, g, b, m=None, v=None: BN.batchnorm_leaky_relu_forward_numpy(x, g, b, m, v, negative_slope=act)),
            BN.batchnorm_leaky_relu_backward_numpy)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("channel_major", [False, True])
@pytest.mark.parametrize("act", BN_ACTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_numba_matches_numpy(shape, channel_major, act, training, dtype, rng):
    from cganraw.ops import batchnorm as BN
    x = _bn_input(shape, channel_major, dtype, rng)
    c = shape[1]
    g, b = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)
    stats = () if training else (rng.normal(size=c).astype(dtype), rng.uniform(0.5, 2, size=c).astype(dtype))
    dy = _bn_input(shape, not channel_major, dtype, rng)        # the other layout: both are read as they come
    ref_fwd, ref_bwd = _bn_reference(act)
    y_ref, cache_ref, m_ref, v_ref = ref_fwd(x.copy(), g, b, *stats)
    y, cache, m, v = BN.batchnorm_forward_numba(x, g, b, *stats, negative_slope={"relu": BN.RELU}.get(act, act))
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert y.dtype == dtype and y.flags.c_contiguous and y.shape == x.shape
    assert cache[0].strides == x.strides            # xhat in x's layout: the backward's dx comes out in it too
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(cache[0], cache_ref[0], **tol)
    np.testing.assert_allclose(cache[1], cache_ref[1], **tol)
    if training:
        np.testing.assert_allclose(m, m_ref, **tol)
        np.testing.assert_allclose(v, v_ref, **tol)
    else:
        assert m is stats[0] and v is None and v_ref is None
    assert len(cache) == len(cache_ref) and cache[2:] == cache_ref[2:] or len(cache) == 4
    dx, dg, db = BN.batchnorm_backward_numba(dy, cache)
    dx_ref, dg_ref, db_ref = ref_bwd(dy, cache_ref)
    assert dx.strides == x.strides and dx.dtype == dtype
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(dg, dg_ref, **tol)
    np.testing.assert_allclose(db, db_ref, **tol)


@pytest.mark.parametrize("act", BN_ACTS)
@pytest.mark.parametrize("channel_major", [False, True])
def test_batchnorm_numba_elementwise_is_the_reference_bit_for_bit(act, channel_major, rng):
    # given the reference's statistics and sums, every element is the reference's (the same
    # float32 operations in the same order: no FMA), on both twins
    from cganraw.ops import batchnorm as BN
    x = _bn_input((6, 4, 5, 3), channel_major, np.float32, rng)
    x[0, 0, 0, 0] = np.nan                                  # a NaN channel: NaN through both
    g, b = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    ref_fwd, ref_bwd = _bn_reference(act)
    y_ref, cache_ref, m_ref, _ = ref_fwd(x.copy(), g, b)
    dx_ref, dg_ref, db_ref = ref_bwd(dy, cache_ref)
    code = {None: BN.ACT_NONE, "relu": BN.ACT_RELU}.get(act, BN.ACT_LEAKY)
    slope = np.float32(act if code == BN.ACT_LEAKY else 0)
    x3, x_cm = _cpu.planes(x)
    h3, h_cm = _cpu.planes(cache_ref[0])
    n, c = x.shape[:2]
    count = x.size // c
    for work in (None, 1):                                  # the parallel and the serial twin
        xhat3, y = np.empty_like(x3), np.empty(x.shape, np.float32)
        BN._bn_apply_numba(x3, x_cm, m_ref, cache_ref[1], g, b, code, slope, xhat3, y.reshape(n, c, -1), work=work)
        assert np.array_equal(y, y_ref, equal_nan=True)
        assert np.array_equal(_cpu.nchw_view(xhat3, x_cm, x.shape), cache_ref[0], equal_nan=True)
        dx3 = np.empty_like(h3)
        BN._bn_backward_dx_numba(*_cpu.planes(dy), h3, h_cm, g, b, code, slope, dg_ref / count, db_ref / count,
                                 g * cache_ref[1], True, dx3, work=work)
        assert np.array_equal(_cpu.nchw_view(dx3, h_cm, x.shape), dx_ref, equal_nan=True)
    assert np.isnan(y_ref[:, 0]).all() and not np.isnan(y_ref[:, 1:]).any()


def test_batchnorm_relu_zero_and_nan_as_numpy_maximum(rng):
    # ReLU's +0.0 for a -0.0 pre-activation and its NaN, as np.maximum(v, 0) gives them
    from cganraw.ops import batchnorm as BN
    xhat = np.array([-0.0, 0.0, np.nan, -1.0, 2.0, 0.5], np.float32).reshape(2, 1, 1, 3)
    x3, _ = _cpu.planes(xhat)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    y = np.empty_like(xhat)
    BN._bn_apply_numba(x3, False, zero, one, one, zero, BN.ACT_RELU, np.float32(0), np.empty_like(x3),
                       y.reshape(2, 1, -1), work=1)
    want = np.maximum(xhat, np.float32(0))
    assert np.array_equal(y, want, equal_nan=True) and np.array_equal(np.signbit(y), np.signbit(want))


def test_batchnorm_dispatch_takes_numba_and_fused_equals_unfused(rng, monkeypatch):
    # the numpy backend's BatchNorm2d (alone, + LeakyReLU, + ReLU) runs the Numba kernels; the
    # fused pairs give the unfused layers' outputs, gradients and running statistics bit for bit
    from cganraw import nn
    from cganraw.nn import fused
    from cganraw.ops import batchnorm as BN
    calls = []
    real = BN.batchnorm_forward_numba
    monkeypatch.setattr(BN, "batchnorm_forward_numba", lambda *a, **k: calls.append(1) or real(*a, **k))
    for act in (nn.LeakyReLU(0.2), nn.ReLU()):
        results = []
        for fuse in (True, False):
            bn = nn.BatchNorm2d(3, rng=np.random.default_rng(1))
            bn.bias.data[...] = [0.1, -0.2, 0.3]
            seq = nn.Sequential(bn, act, fuse=fuse)
            assert fused.plan(list(seq), fuse) == ([(0, 1)] if fuse else [(0,), (1,)])
            out = []
            for training in (True, False):
                seq.train(training)
                x = _bn_input((4, 3, 5, 5), True, np.float32, np.random.default_rng(2))
                dy = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
                out += [seq(x), seq.backward(dy), bn.weight.grad.copy(), bn.bias.grad.copy(), bn.running_mean.copy(),
                        bn.running_var.copy()]
            results.append(out)
        assert all(np.array_equal(a, b) for a, b in zip(*results))
    assert len(calls) == 8


def test_batchnorm_relu_fuses_on_the_numpy_backend_only(rng):
    from cganraw import nn
    from cganraw.bench import harness
    from cganraw.nn import fused
    layers = [nn.BatchNorm2d(2), nn.ReLU(), nn.BatchNorm1d(2), nn.ReLU(), nn.InstanceNorm2d(2), nn.ReLU()]
    with harness.backend_ctx("numpy"):
        assert fused.plan(layers) == [(0, 1), (2, 3), (4,), (5,)]
    with harness.backend_ctx("emu"):
        assert fused.plan(layers) == [(0,), (1,), (2,), (3,), (4,), (5,)]


# ---------------------------------------------------------------- BatchNorm1d: (N, C) row kernels
# the small shapes in every combination; the large one (it runs the parallel twins) once per
# activation, float32 in training, which is enough for it
BN_ROW_CASES = ([(shape, training, dtype) for shape in [(5, 3), (2, 1), (9, 130), (64, 64)]
                 for training in (True, False) for dtype in (np.float32, np.float64)]
                + [((1100, 1000), True, np.float32)])


@pytest.mark.parametrize("shape, training, dtype", BN_ROW_CASES)
@pytest.mark.parametrize("act", BN_ACTS)
def test_batchnorm_rows_match_numpy_and_the_plane_kernels(shape, act, training, dtype, rng):
    from cganraw.ops import batchnorm as BN
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    c = shape[1]
    g, b = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)
    stats = () if training else (rng.normal(size=c).astype(dtype), rng.uniform(0.5, 2, size=c).astype(dtype))
    dy = rng.normal(size=shape).astype(dtype)
    slope = {"relu": BN.RELU}.get(act, act)
    ref_fwd, ref_bwd = _bn_reference(act)
    y_ref, cache_ref, m_ref, v_ref = ref_fwd(x.copy(), g, b, *stats)
    y, cache, m, v = BN.batchnorm_forward_numba(x, g, b, *stats, negative_slope=slope)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y_ref, **tol)
    dx, dg, db = BN.batchnorm_backward_numba(dy, cache)
    dx_ref, dg_ref, db_ref = ref_bwd(dy, cache_ref)
    np.testing.assert_allclose(dx, dx_ref, **{k: 20 * t for k, t in tol.items()})
    np.testing.assert_allclose(dg, dg_ref, **{k: 20 * t for k, t in tol.items()})
    np.testing.assert_allclose(db, db_ref, **{k: 20 * t for k, t in tol.items()})
    # as (N, C, 1, 1) through the plane kernels: the same bits
    y4, cache4, m4, v4 = BN.batchnorm_forward_numba(x.reshape(*shape, 1, 1), g, b, *stats, negative_slope=slope)
    assert np.array_equal(y, y4.reshape(shape)) and np.array_equal(cache[0], cache4[0].reshape(shape))
    if training:
        assert np.array_equal(m, m4) and np.array_equal(v, v4)
    dx4, dg4, db4 = BN.batchnorm_backward_numba(dy.reshape(*shape, 1, 1), cache4)
    assert np.array_equal(dx, dx4.reshape(shape)) and np.array_equal(dg, dg4) and np.array_equal(db, db4)


def test_batchnorm1d_relu_fused_equals_unfused(rng):
    # the numpy backend's BatchNorm1d + ReLU runs as the fused pair, with the unfused layers' bits
    from cganraw import nn
    from cganraw.nn import fused
    results = []
    for fuse in (True, False):
        bn = nn.BatchNorm1d(70, rng=np.random.default_rng(1))
        bn.bias.data[...] = np.random.default_rng(4).normal(size=70)
        seq = nn.Sequential(bn, nn.ReLU(), fuse=fuse)
        assert fused.plan(list(seq), fuse) == ([(0, 1)] if fuse else [(0,), (1,)])
        out = []
        for training in (True, False):
            seq.train(training)
            x = np.random.default_rng(2).normal(size=(6, 70)).astype(np.float32)
            dy = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
            out += [seq(x), seq.backward(dy), bn.weight.grad.copy(), bn.bias.grad.copy(), bn.running_mean.copy(),
                    bn.running_var.copy()]
        results.append(out)
    assert all(np.array_equal(a, b) for a, b in zip(*results))


# ---------------------------------------------------------------- Adam in one pass
@pytest.mark.parametrize("size", [1, 7, 1000, 33 * 17 + 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_numba_is_the_reference_bit_for_bit(size, dtype, weight_decay, rng):
    from cganraw.ops import adam as A
    p, g, m = (rng.normal(size=size).astype(dtype) for _ in range(3))
    v = (rng.random(size) * 1e-3).astype(dtype)
    v[0] = 0.0                                                   # sqrt(0) + eps: the smallest denominator
    ref, got = [p.copy(), g, m.copy(), v.copy()], [p.copy(), g, m.copy(), v.copy()]
    for step in (1, 2, 50):
        A.adam_update_numpy(*ref, 2e-4, 0.5, 0.999, 1e-8, step, weight_decay)
        A.adam_update_numba(*got, 2e-4, 0.5, 0.999, 1e-8, step, weight_decay)
        for a, b in zip(ref, got):
            assert a.dtype == b.dtype and np.array_equal(a, b)   # same operations, same order: same bits


def test_adam_dispatch_takes_numba_and_twins_agree(rng, monkeypatch):
    from cganraw.ops import adam as A
    n = (1 << 20) + 3                                            # above PARALLEL_MIN_WORK: the parallel twin
    p, g, m = (rng.normal(size=n).astype(np.float32) for _ in range(3))
    v = rng.random(n).astype(np.float32)
    calls = []
    real = A.adam_update_numba
    monkeypatch.setattr(A, "adam_update_numba", lambda *a, **k: calls.append(1) or real(*a, **k))
    par = [p.copy(), g, m.copy(), v.copy()]
    A.adam_update(*par, 1e-3, 0.5, 0.999, 1e-8, 3)
    assert calls == [1]
    monkeypatch.setattr(_cpu, "PARALLEL_MIN_WORK", 1 << 40)
    ser = [p.copy(), g, m.copy(), v.copy()]
    A.adam_update(*ser, 1e-3, 0.5, 0.999, 1e-8, 3)
    ref = [p.copy(), g, m.copy(), v.copy()]
    A.adam_update_numpy(*ref, 1e-3, 0.5, 0.999, 1e-8, 3)
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(par, ser, ref))
    # a strided or mixed-dtype argument goes to the reference
    strided = [np.zeros(8, np.float32)[::2], np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)]
    A.adam_update(*strided, 1e-3, 0.5, 0.999, 1e-8, 1)
    assert calls == [1, 1] and np.allclose(strided[0], -1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,f", [(1, 1), (3, 5), (64, 3136)])
def test_linear_one_output_dx_is_the_gemm_bit_for_bit(n, f, dtype, rng):
    # D's head, Linear(F, 1): its dx = dy W is a broadcast product on the host, not a K = 1 GEMM
    from cganraw.ops.gemm import gemm
    from cganraw.ops.linear import linear_backward, linear_forward
    x = rng.normal(size=(n, f)).astype(dtype)
    W = rng.normal(size=(1, f)).astype(dtype)
    _, cache = linear_forward(x, W, None)
    dy = rng.normal(size=(n, 1)).astype(dtype)
    dx, dW, _ = linear_backward(dy, cache)
    np.testing.assert_array_equal(dx, gemm(dy, W))
    np.testing.assert_array_equal(dW, gemm(dy, x, trans_a=True))


def _laid(a, layout):
    """a (N, C, H, W) as an NCHW array, a channel-major one (the layout of G's convolutions)
    or a strided view."""
    if layout == "cm":
        return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    return np.repeat(a, 2, axis=3)[..., ::2] if layout == "strided" else a


@pytest.mark.parametrize("layouts", [("nchw", "nchw"), ("cm", "cm"), ("cm", "nchw"), ("strided", "cm")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 3, 1, 2), (33, 17, 14, 14)])   # the last: parallel
def test_film_numba_matches_numpy(layouts, dtype, shape, rng, monkeypatch):
    from cganraw.ops import film
    n, c = shape[:2]
    x = rng.normal(size=shape).astype(dtype)
    gb = rng.normal(size=(n, 2 * c)).astype(dtype)          # gamma and beta: halves of one array, as nn.FiLM's
    gamma, beta = gb[:, :c], gb[:, c:]
    calls = []
    for name in ("film_forward_numba", "film_backward_numba"):
        real = getattr(film, name)
        monkeypatch.setattr(film, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    y, cache = film.film_forward(_laid(x, layouts[1]), gamma, beta)
    y_ref, cache_ref = film.film_forward_numpy(x, gamma, beta)
    np.testing.assert_array_equal(y, y_ref)                 # the reference's float steps, bit for bit
    if layouts[1] == "cm":
        assert y.transpose(1, 0, 2, 3).flags.c_contiguous   # in x's layout: no copy for the next layer
    dy = rng.normal(size=shape).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    dx_ref, dg_ref, db_ref = film.film_backward_numpy(dy, cache_ref)
    out = np.full((n, 2 * c), np.nan, dtype)
    for given in (None, out):
        dx, dg, db = film.film_backward(_laid(dy, layouts[0]), cache, out=given)
        np.testing.assert_array_equal(dx, dx_ref)           # dy (1 + gamma): one product
        for got, want in ((dg, dg_ref), (db, db_ref)):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, np.abs(want).max()))
        if given is not None:
            assert np.shares_memory(dg, out) and np.shares_memory(db, out) and np.array_equal(out[:, c:], db)
    assert film.film_backward(dy, cache, need_dx=False)[0] is None
    # the same bits again (one task per plane, its sums in order)
    again = film.film_backward(_laid(dy, layouts[0]), film.film_forward(_laid(x, layouts[1]), gamma, beta)[1])
    assert all(np.array_equal(a, b) for a, b in zip(again, (dx, dg, db)))
    assert "film_forward_numba" in calls and "film_backward_numba" in calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k,f", [(32, 10, 2352), (7, 3, 5), (1, 1, 1), (0, 4, 3), (200, 2, 9)])
def test_scatter_add_rows_is_np_add_at_bit_for_bit(n, k, f, dtype, rng):
    # the projection D's label gradient and Embedding's: repeated labels add up in row order
    from cganraw.ops import embedding
    from cganraw.ops import label_projection as lp
    h = rng.normal(size=(n, f)).astype(dtype)
    labels = rng.integers(0, k, n)
    E = rng.normal(size=(k, f)).astype(dtype)
    dy = rng.normal(size=(n, 1)).astype(dtype)
    cache = (h, labels, E)
    got, want = lp.label_projection_backward(dy, cache), lp.label_projection_backward_numpy(dy, cache)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    grad = rng.normal(size=(k, f)).astype(dtype)            # added into a weight's .grad
    grad_ref = grad.copy()
    assert lp.label_projection_backward(dy, cache, need_dh=False, dE_out=grad)[1] is grad
    lp.label_projection_backward_numpy(dy, cache, need_dh=False, dE_out=grad_ref)
    np.testing.assert_array_equal(grad, grad_ref)
    np.testing.assert_array_equal(embedding.embedding_backward(h, (labels, (k, f))),
                                  embedding.embedding_backward_numpy(h, (labels, (k, f))))
    assert embedding.scatter_add_uses_numba(E, h)


def test_scatter_add_rows_refuses_labels_out_of_range(rng):
    from cganraw.ops import embedding
    out, src = np.zeros((3, 4), np.float32), np.ones((2, 4), np.float32)
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
            embedding.scatter_add_rows(out, np.array(bad), src)
    with pytest.raises(ValueError, match="do not match"):
        embedding.scatter_add_rows(out, np.array([0]), src)
    assert not out.any()                                     # nothing written


@pytest.mark.parametrize("layouts", [("cm", "cm"), ("nchw", "nchw"), ("cm", "nchw"), ("strided", "strided")])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (33, 17, 14, 14)])     # the second past the parallel threshold
def test_leaky_relu_keeps_the_channel_major_layout(layouts, shape, rng):
    # after FiLM (channel-major, as G's convolutions) the activation runs flat over the memory
    x = rng.normal(size=shape).astype(np.float32)
    x.ravel()[::5] = 0.0
    y, cache = activation.leaky_relu_forward(_laid(x, layouts[1]), 0.2)
    np.testing.assert_array_equal(y, activation.leaky_relu_forward_numpy(x, 0.2)[0])
    if layouts[1] == "cm":
        assert y.transpose(1, 0, 2, 3).flags.c_contiguous
    dy = rng.normal(size=shape).astype(np.float32)
    dx = activation.leaky_relu_backward(_laid(dy, layouts[0]), cache)
    np.testing.assert_array_equal(dx, activation.leaky_relu_backward_numpy(dy, (x, 0.2)))
    if layouts == ("cm", "cm"):
        assert dx.transpose(1, 0, 2, 3).flags.c_contiguous


@pytest.mark.parametrize("layouts", [("nchw", "nchw"), ("cm", "cm"), ("nchw", "cm"), ("strided", "nchw")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 3, 1, 2), (33, 17, 14, 14)])   # the last: parallel
@pytest.mark.parametrize("slope", [0.2, 0.0])
def test_instancenorm_film_leaky_relu_is_the_three_layers_bit_for_bit(layouts, dtype, shape, slope, rng):
    # G's block (cgan-conv's default) as one op: the bits of the three layers' own host paths,
    # and the references' values within rounding
    from cganraw.ops import film
    from cganraw.ops import instancenorm as IN
    from cganraw.ops import instancenorm_film as INF
    n, c = shape[:2]
    x = (rng.normal(size=shape) * 3 + rng.normal(size=(1, c, 1, 1))).astype(dtype)
    gamma, beta = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)
    fgb = rng.normal(size=(n, 2 * c)).astype(dtype)
    fg, fb = fgb[:, :c], fgb[:, c:]
    y, cache = INF.instancenorm_film_leaky_relu_forward(_laid(x, layouts[1]), gamma, beta, fg, fb, 1e-5, slope)
    assert cache[0] == "fused"
    u, in_cache, _, _ = IN.instancenorm_forward(_laid(x, layouts[1]), gamma, beta, eps=1e-5)
    v, film_cache = film.film_forward(u, fg, fb)
    y_layers, act_cache = activation.leaky_relu_forward(v, slope)
    np.testing.assert_array_equal(y, y_layers)
    dy = rng.normal(size=shape).astype(dtype)
    got = INF.instancenorm_film_leaky_relu_backward(_laid(dy, layouts[0]), cache)
    dv = activation.leaky_relu_backward(_laid(dy, layouts[0]), act_cache)
    dfilm = np.empty((n, 2 * c), dtype)
    du, _, _ = film.film_backward(dv, film_cache, out=dfilm)
    dx, dgamma, dbeta = IN.instancenorm_backward(du, in_cache)
    for a, b in zip(got, (dx, dgamma, dbeta, dfilm)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    y_ref, ref_cache = INF.instancenorm_film_leaky_relu_forward_numpy(x, gamma, beta, fg, fb, 1e-5, slope)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    for a, b in zip(got, INF.instancenorm_film_leaky_relu_backward_numpy(dy, ref_cache)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


def test_instancenorm_film_leaky_relu_refuses_bad_shapes(rng):
    from cganraw.ops import instancenorm_film as INF
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    ones, rows = np.ones(3, np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"film_gamma and film_beta must have shape \(2, 3\)"):
        INF.instancenorm_film_leaky_relu_forward(x, ones, ones, rows[:1], rows)
    with pytest.raises(ValueError, match=r"gamma and beta must have shape \(3,\)"):
        INF.instancenorm_film_leaky_relu_forward(x, ones[:2], ones, rows, rows)
    with pytest.raises(ValueError, match="more than 1 pixel"):
        INF.instancenorm_film_leaky_relu_forward(x[:, :, :1, :1], ones, ones, rows, rows)
    _, cache = INF.instancenorm_film_leaky_relu_forward(x, ones, ones, rows, rows)
    with pytest.raises(ValueError, match="dy has shape"):
        INF.instancenorm_film_leaky_relu_backward(x[:1], cache)


def _film_block(rng, dtype, c=3, cond=5):
    layers = [nn.InstanceNorm2d(c, affine=True, rng=rng), nn.FiLM(cond, c, rng=rng), nn.LeakyReLU(0.2)]
    block = nn.Sequential(*layers)
    block.to(dtype)
    for p in block.parameters():
        p.data[...] = rng.normal(size=p.data.shape) * 0.5 + (1.0 if p.data.ndim == 1 else 0.0)
    return block


def test_film_block_runs_fused_and_passes_finite_differences(rng):
    from cganraw.gradcheck import check_module
    from cganraw.nn import fused
    block = _film_block(rng, np.float64)
    assert fused.plan(list(block), True) == [(0, 1, 2)]
    cond = rng.normal(size=(3, 5))
    block[1].need_dcond = True
    check_module(block, rng.normal(size=(3, 3, 2, 3)) * 2, before_forward=lambda: block[1].set_condition(cond),
                 eps=1e-6, atol=1e-8, rtol=1e-6, elementwise=True)
    # the condition's gradient, through the fused step
    from cganraw.gradcheck import check_backward
    x = rng.normal(size=(3, 3, 2, 3))

    def forward(c):
        block[1].set_condition(c)
        return block(x)

    def backward(dy):
        block.backward(dy)
        return block[1].pop_dcond()
    check_backward(forward, backward, [cond], name="d(cond) through the fused block", eps=1e-6, atol=1e-8, rtol=1e-6,
                   elementwise=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_film_generator_fused_equals_unfused_bit_for_bit(dtype, rng):
    # cgan-conv's default G blocks: the fused step changes no bit of the output, dz or any gradient
    from cganraw import models
    from cganraw.nn import fused
    z = rng.normal(size=(5, 100)).astype(dtype)
    labels = rng.integers(0, 10, 5)
    dy = rng.normal(size=(5, 1, 28, 28)).astype(dtype)
    results = []
    for fuse in (True, False):
        G, _ = models.build("cgan-conv", 10, width=16, seed=0, g_norm="instance", g_film=True)
        G.to(dtype)
        G.net.fuse = fuse
        weights = np.random.default_rng(1)
        for p in G.parameters():
            p.data[...] += (weights.normal(size=p.data.shape) * 0.05).astype(dtype)
        steps = fused.plan(list(G.net), fuse)
        assert ((1, 2, 3) in steps and (5, 6, 7) in steps) == fuse
        y = G(z, labels)
        dz = G.backward(dy)
        results.append((y, dz, [p.grad.copy() for p in G.parameters()]))
    (y, dz, grads), (y_ref, dz_ref, grads_ref) = results
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dz, dz_ref)
    assert all(np.array_equal(a, b) for a, b in zip(grads, grads_ref))


def test_instancenorm_film_leaky_relu_is_a_host_op(rng):
    # the kernel backends run the three layers (nn.fused never plans the step there)
    from cganraw import backend
    from cganraw.nn import fused
    from cganraw.ops import instancenorm_film as INF
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    ones, rows = np.ones(3, np.float32), np.zeros((2, 3), np.float32)
    _, cache = INF.instancenorm_film_leaky_relu_forward(x, ones, ones, rows, rows)
    block = _film_block(rng, np.float32)
    prev = backend.current()
    backend.use("emu")
    try:
        assert fused.plan(list(block), True) == [(0,), (1,), (2,)]
        with pytest.raises(ValueError, match="a host op"):
            INF.instancenorm_film_leaky_relu_forward(x, ones, ones, rows, rows)
        with pytest.raises(ValueError, match="a host op"):
            INF.instancenorm_film_leaky_relu_backward(x, cache)
    finally:
        backend.use(prev)


_TWIN_PROBE = '''
import sys
import numpy as np
sys.path.insert(0, {here!r})
import twin_probe
from cganraw.ops import _cpu
_cpu.start_threads().set_num_threads(2)
ids = np.full(64, -1, np.int64)
twin_probe.thread_ids(ids, work={work})
print(sorted(set(ids.tolist())))
'''


def test_parallel_and_serial_twins_keep_their_own_cache(tmp_path):
    # Numba keys its on-disk cache by name, signature and code, not by the parallel flag: the
    # serial twin compiled first used to be loaded as the parallel one in the next process
    # (and the other way round). Process one compiles and caches the serial twin; process two,
    # on the same cache, must run the parallel one on both threads.
    import os
    import subprocess
    import sys
    (tmp_path / "twin_probe.py").write_text(
        "from cganraw.ops import _cpu\n\n\n"
        "@_cpu.kernel\n"
        "def thread_ids(nb, parallel):\n"
        "    @nb.njit(parallel=parallel, cache=True)\n"
        "    def ids_of(out):\n"
        "        for i in nb.prange(out.size):\n"
        "            acc = 0.0\n"
        "            for j in range(200000):     # long enough for both threads to take tasks\n"
        "                acc += j * 1e-9\n"
        "            out[i] = nb.get_thread_id() + int(acc * 0)\n"
        "    return ids_of\n")
    # the workqueue layer splits a prange evenly between the threads: each takes half
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_NUM_THREADS": "2",
           "NUMBA_THREADING_LAYER": "workqueue"}

    def run(work):
        proc = subprocess.run([sys.executable, "-c", _TWIN_PROBE.format(here=str(tmp_path), work=work)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1]

    assert run(1) == "[0]"                                   # the serial twin, now cached
    assert run(_cpu.PARALLEL_MIN_WORK_DEFAULT) == "[0, 1]"   # the parallel twin (above any layer's bar), same cache
    names = sorted(p.name for p in (tmp_path / "cache").rglob("*.nbi"))
    assert len(names) == 2 and any(".serial" in n for n in names) and any(".parallel" in n for n in names), names


_MIN_WORK_PROBE = '''
from cganraw.ops import _cpu
{before}
nb = _cpu.start_threads()
print(nb.threading_layer(), _cpu.PARALLEL_MIN_WORK)
'''


@pytest.mark.parametrize("layer,before,expected", [
    ("tbb", "", "PARALLEL_MIN_WORK_TBB"),
    ("workqueue", "", "PARALLEL_MIN_WORK_DEFAULT"),
    ("tbb", "_cpu.PARALLEL_MIN_WORK = 5", 5),                # set before the pool starts: kept
])
def test_parallel_min_work_follows_the_threading_layer(layer, before, expected):
    import os
    import subprocess
    import sys
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    proc = subprocess.run([sys.executable, "-c", _MIN_WORK_PROBE.format(before=before)], capture_output=True,
                          text=True, env=env, timeout=300)
    if proc.returncode != 0 and layer == "tbb" and "threading layer" in proc.stderr:
        pytest.skip("no TBB for Numba here (the fast extra installs it on x86-64)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = getattr(_cpu, expected) if isinstance(expected, str) else expected
    assert proc.stdout.split() == [layer, str(want)]


_CACHE_PROBE = '''
import numpy as np
from cganraw.ops import _cpu, batchnorm as BN, bias as B, conv
rng = np.random.default_rng(0)
x = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
y = rng.normal(size=x.shape).astype(np.float32)
B.bias_add_backward_numba(x)
B.bias_leaky_relu_backward_numba(x, (y, 0.2))
conv.im2col_batch_minor(x, 3, 1, 1, leaky=(y, 0.2), channel_sums=np.empty(4))
conv._to_batch_minor(x, channel_sums=np.empty(4), leaky=(y, 0.2))
conv._to_batch_minor(conv.col2im_batch_minor(conv.im2col_batch_minor(x, 3, 1, 1), x.shape, 3, 1, 1, batch_minor=True),
                     channel_sums=np.empty(4))
BN.batchnorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32))
kernels = [B._channel_sum_numba, B._bias_leaky_backward_numba, conv._im2col_bm_numba, conv._to_batch_minor_numba,
           conv._gradient_bm_numba, BN._bn_stats_numba]
twins = [fn for k in kernels for fn in k.compiled.values()]
assert len(twins) == len(kernels), [k.__name__ for k in kernels if not k.compiled]
print(sum(sum(fn.stats.cache_hits.values()) for fn in twins), sum(sum(fn.stats.cache_misses.values()) for fn in twins))
'''


def test_kernels_that_call_jitted_helpers_load_from_the_disk_cache(tmp_path):
    # a kernel calling a jitted helper (the bias totals, BatchNorm's lane total) through its
    # builder's closure missed Numba's disk cache in every new process and compiled again
    # (some 20 s at each start of the trainer); as globals of their modules they load
    import os
    import subprocess
    import sys
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}

    def run():
        proc = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True, text=True, env=env,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return tuple(int(v) for v in proc.stdout.split()[-2:])

    hits, misses = run()
    assert misses > 0 and hits == 0                          # compiled and cached by the first process
    hits, misses = run()
    assert misses == 0 and hits > 0                          # loaded, every one, by the next

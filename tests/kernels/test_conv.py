"""kernels/im2col.cu (im2col_v1/v2/v3, col2im_v1 scatter, col2im_v2/v3/v4 gather) through
the emulator against NumPy references, and the Conv2d / ConvTranspose2d layers on the
emu backend against the numpy backend.

Shapes: odd sizes, batch 1, padding by bounds, stride 1/2/3, `out_hw` windows (with
and without overhang), and the conv cGAN's real layers at batch 3 and 1 (width 128).
"""
import importlib

import numpy as np
import pytest

from cganraw import backend, cuda_emu, nn
from cganraw.ops import _cpu, _launch
from cganraw.ops.conv import (
    col2im,
    col2im_cuda,
    col2im_numpy,
    conv_output_size,
    flip_taps,
    im2col,
    im2col_cuda,
    im2col_numpy,
)

from .conftest import assert_close

conv_mod = importlib.import_module("cganraw.ops.conv")


# ---------------------------------------------------------------- independent references
def _geometry(shape, k, s, p, out_hw):
    n, c, h, w = shape
    ho, wo = out_hw or (conv_output_size(h, k, s, p), conv_output_size(w, k, s, p))
    # pad p on the near side and enough on the far side for every window (overhang)
    ph = max(p, (ho - 1) * s + k - h - p, 0)
    pw = max(p, (wo - 1) * s + k - w - p, 0)
    return n, c, h, w, ho, wo, ph, pw


def im2col_ref(x, k, s, p, out_hw=None):
    """Loops over the k*k taps on a zero-padded float64 copy; handles overhang."""
    n, c, h, w, ho, wo, ph, pw = _geometry(x.shape, k, s, p, out_hw)
    xp = np.zeros((n, c, p + h + ph, p + w + pw))
    xp[:, :, p:p + h, p:p + w] = x
    cols = np.empty((c, k, k, n, ho, wo))
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = xp[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s].transpose(1, 0, 2, 3)
    return cols.reshape(c * k * k, n * ho * wo)


def col2im_ref(cols, x_shape, k, s, p, out_hw=None):
    """The adjoint of im2col_ref, in float64."""
    n, c, h, w, ho, wo, ph, pw = _geometry(x_shape, k, s, p, out_hw)
    acc = np.zeros((n, c, p + h + ph, p + w + pw))
    c6 = cols.astype(np.float64).reshape(c, k, k, n, ho, wo)
    for i in range(k):
        for j in range(k):
            acc[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += c6[:, i, j].transpose(1, 0, 2, 3)
    return acc[:, :, p:p + h, p:p + w]


# (N, C, H, W), k, s, p, out_hw
CASES = [
    ((1, 1, 1, 1), 1, 1, 0, None),
    ((1, 1, 7, 7), 1, 1, 0, None),
    ((3, 2, 7, 5), 3, 2, 1, None),           # odd, non-square
    ((1, 3, 5, 7), 3, 2, 0, None),
    ((2, 3, 9, 9), 7, 1, 3, None),           # G's last conv geometry
    ((1, 5, 14, 14), 4, 2, 1, None),
    ((2, 1, 9, 11), 3, 3, 2, None),          # stride 3, padding 2
    ((1, 2, 8, 8), 3, 2, 1, (3, 3)),         # fewer windows than fit (out_hw)
    ((2, 2, 7, 7), 4, 2, 1, (3, 3)),         # a ConvT(3 -> 7, k4 s2 p1, output_padding 1)
    ((1, 2, 5, 5), 3, 2, 0, (3, 3)),         # last window overhangs the far edge by 1
    ((2, 3, 6, 6), 2, 2, 0, None),
]
IDS = [f"{'x'.join(map(str, c[0]))}-k{c[1]}s{c[2]}p{c[3]}" + (f"-o{c[4][0]}" if c[4] else "") for c in CASES]


def _tap_tol(k, s):
    # col2im sums at most ceil(k/s)^2 float32 terms per pixel
    return dict(atol=2e-6 * (-(-k // s)) ** 2, rtol=1e-5)


def _flip_ref(cols, k):
    # independent of flip_taps: row (c, i, j) <- row (c, k-1-i, k-1-j)
    c6 = cols.reshape(-1, k, k, cols.shape[1])
    return c6[:, ::-1, ::-1].reshape(cols.shape)


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("shape,k,s,p,out_hw", CASES, ids=IDS)
def test_im2col(version, shape, k, s, p, out_hw, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    got = im2col_cuda(x, k, s, p, out_hw, version=version)
    assert_close(got, im2col_ref(x, k, s, p, out_hw), atol=0, rtol=0, what="im2col (a copy: exact)")


@pytest.mark.parametrize("shape,k,s,p,out_hw", CASES, ids=IDS)
def test_flipped_taps(shape, k, s, p, out_hw, rng):
    # im2col_v3 / col2im_v4 with flip: the taps of each channel in reverse order, both ways
    x = rng.standard_normal(shape).astype(np.float32)
    ref = _flip_ref(im2col_ref(x, k, s, p, out_hw), k)
    assert_close(im2col_cuda(x, k, s, p, out_hw, flip=True), ref, atol=0, rtol=0, what="im2col_v3 flip")
    fits = out_hw is None or (out_hw[0] - 1) * s + k <= shape[2] + 2 * p     # the NumPy references' range
    if fits:
        assert_close(im2col_numpy(x, k, s, p, out_hw, flip=True), ref, atol=0, rtol=0, what="im2col_numpy flip")
    cols = rng.standard_normal(ref.shape).astype(np.float32)
    ref = col2im_ref(_flip_ref(cols, k), shape, k, s, p, out_hw)
    assert_close(col2im_cuda(cols, shape, k, s, p, out_hw, flip=True), ref, **_tap_tol(k, s), what="col2im_v4 flip")
    if fits:
        assert_close(col2im_numpy(cols, shape, k, s, p, out_hw, flip=True), ref, **_tap_tol(k, s),
                     what="col2im_numpy flip")
    assert np.array_equal(flip_taps(cols, k), _flip_ref(cols, k))


def test_flip_needs_the_flip_versions():
    with pytest.raises(ValueError, match="flip needs version 3"):
        im2col_cuda(np.zeros((1, 1, 5, 5), np.float32), 3, flip=True, version=2)
    with pytest.raises(ValueError, match="flip needs version 4"):
        col2im_cuda(np.zeros((9, 25), np.float32), (1, 1, 5, 5), 3, 1, 1, flip=True, version=3)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
@pytest.mark.parametrize("shape,k,s,p,out_hw", CASES, ids=IDS)
def test_col2im(version, shape, k, s, p, out_hw, rng):
    _, _, _, _, ho, wo, _, _ = _geometry(shape, k, s, p, out_hw)
    cols = rng.standard_normal((shape[1] * k * k, shape[0] * ho * wo)).astype(np.float32)
    got = col2im_cuda(cols, shape, k, s, p, out_hw, version=version)
    ref = col2im_ref(cols, shape, k, s, p, out_hw)
    assert_close(got, ref, **_tap_tol(k, s), what=f"col2im v{version}")
    if out_hw is None or (out_hw[0] - 1) * s + k <= shape[2] + 2 * p:
        # the project's NumPy reference agrees where it applies
        assert_close(got, col2im_numpy(cols, shape, k, s, p, out_hw), **_tap_tol(k, s), what="vs col2im_numpy")


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_col2im_scatter_and_gather_under_block_orders(version, order, rng):
    # no barriers, but the block order changes the atomics' order in v1
    shape, k, s, p = (2, 3, 9, 9), 7, 1, 3
    cols = rng.standard_normal((3 * 49, 2 * 81)).astype(np.float32)
    assert_close(col2im_cuda(cols, shape, k, s, p, version=version),
                 col2im_ref(cols, shape, k, s, p), **_tap_tol(k, s), what=f"v{version} {order}")


def test_col2im_is_the_adjoint_of_im2col(rng):
    # <im2col(x), c> == <x, col2im(c)>, both kernels
    shape, k, s, p = (3, 2, 7, 5), 3, 2, 1
    x = rng.standard_normal(shape).astype(np.float32)
    cols = im2col_cuda(x, k, s, p)
    c = rng.standard_normal(cols.shape).astype(np.float32)
    lhs = float((cols.astype(np.float64) * c).sum())
    for v in (1, 2, 3):
        rhs = float((x.astype(np.float64) * col2im_cuda(c, shape, k, s, p, version=v)).sum())
        assert abs(lhs - rhs) <= 1e-4 * (1 + abs(lhs))


# ---------------------------------------------------------------- the conv cGAN's real layers
# (what, x shape, k, s, p, out_hw), width 128, batch 3 (see cganraw/models.py)
REAL_B3 = [
    ("D.conv1 im2col", (3, 2, 28, 28), 3, 2, 1, None),               # cols (18, 588)
    ("D.conv2 im2col", (3, 128, 14, 14), 3, 2, 1, None),             # cols (1152, 147)
    ("G.convT1 col2im", (3, 128, 14, 14), 4, 2, 1, (7, 7)),          # cols (2048, 147)
    ("G.convT2 col2im", (3, 128, 28, 28), 4, 2, 1, (14, 14)),        # cols (2048, 588)
    ("G.conv7 as convT col2im", (3, 1, 28, 28), 7, 1, 3, (28, 28)),  # cols (49, 2352)
]


@pytest.mark.parametrize("what,shape,k,s,p,out_hw", REAL_B3, ids=[r[0] for r in REAL_B3])
def test_real_layer_shapes_batch3(what, shape, k, s, p, out_hw, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    cols = im2col_cuda(x, k, s, p, out_hw)           # conv forward / convT data gradient
    assert_close(cols, im2col_numpy(x, k, s, p, out_hw), atol=0, rtol=0, what=f"{what}: im2col")
    dcols = rng.standard_normal(cols.shape).astype(np.float32)
    ref = col2im_numpy(dcols, shape, k, s, p, out_hw)  # conv data gradient / convT forward
    assert_close(im2col_cuda(x, k, s, p, out_hw, version=1), cols, atol=0, rtol=0, what=f"{what}: im2col v1")
    for v in (1, 2, 3):
        assert_close(col2im_cuda(dcols, shape, k, s, p, out_hw, version=v), ref,
                     **_tap_tol(k, s), what=f"{what}: col2im v{v}")


@pytest.mark.parametrize("what,shape,k,s,p,out_hw", REAL_B3, ids=[r[0] for r in REAL_B3])
def test_real_layer_shapes_batch1(what, shape, k, s, p, out_hw, rng):
    shape = (1,) + shape[1:]
    x = rng.standard_normal(shape).astype(np.float32)
    cols = im2col(x, k, s, p, out_hw)                  # through the dispatch
    assert_close(cols, im2col_numpy(x, k, s, p, out_hw), atol=0, rtol=0, what=f"{what}: im2col")
    assert_close(col2im(cols, shape, k, s, p, out_hw), col2im_numpy(cols, shape, k, s, p, out_hw),
                 **_tap_tol(k, s), what=f"{what}: col2im")


# ---------------------------------------------------------------- bad and odd inputs
def test_float64_and_ints_are_rejected(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    with pytest.raises(TypeError, match="float32.*float64"):
        im2col_cuda(x, 3, 1, 1)
    with pytest.raises(TypeError, match="float32.*float64"):
        col2im_cuda(np.zeros((18, 25)), (1, 2, 5, 5), 3, 1, 1)
    with pytest.raises(TypeError, match="float32.*int32"):
        im2col_cuda(np.zeros((1, 2, 5, 5), np.int32), 3)


def test_shape_errors_are_clear(rng):
    with pytest.raises(ValueError, match=r"col2im_cuda.*\(18, 24\).*\(18, 25\)"):
        col2im_cuda(np.zeros((18, 24), np.float32), (1, 2, 5, 5), 3, 1, 1)
    with pytest.raises(ValueError, match="N, C, H, W"):
        im2col_cuda(np.zeros((2, 5, 5), np.float32), 3)
    with pytest.raises(ValueError, match="stride"):
        im2col_cuda(np.zeros((1, 1, 5, 5), np.float32), 3, 0)
    with pytest.raises(ValueError, match="version"):
        col2im_cuda(np.zeros((9, 25), np.float32), (1, 1, 5, 5), 3, 1, 1, version=5)
    with pytest.raises(ValueError, match="version"):
        im2col_cuda(np.zeros((1, 1, 5, 5), np.float32), 3, version=4)


@pytest.mark.parametrize("version", [1, 2])
def test_index_range_is_checked_on_the_host(version, monkeypatch):
    # the 32-bit limits, lowered so that small arrays cross them: a clear error, no launch
    x = np.zeros((2, 3, 5, 5), np.float32)
    cols = np.zeros((27, 50), np.float32)
    monkeypatch.setattr(conv_mod, "_INT32_LIMIT", 50)        # the column count N*Ho*Wo = 50
    with pytest.raises(ValueError, match=r"im2col_cuda: N\*Ho\*Wo \(columns of cols\) = 50 does not fit"):
        im2col_cuda(x, 3, 1, 1, version=version)
    with pytest.raises(ValueError, match=r"col2im_cuda\(version=3\): N\*Ho\*Wo"):
        col2im_cuda(cols, x.shape, 3, 1, 1, version=3)
    monkeypatch.setattr(conv_mod, "_INT32_LIMIT", 51)        # columns fit; elements (1350) do not in v2/v3
    if version == 2:
        with pytest.raises(ValueError, match=r"cols elements\) = 1350 does not fit.*version=1"):
            im2col_cuda(x, 3, 1, 1, version=2)
        with pytest.raises(ValueError, match=r"cols elements"):
            col2im_cuda(cols, x.shape, 3, 1, 1, version=3)
    else:
        assert im2col_cuda(x, 3, 1, 1, version=1).shape == (27, 50)
        assert col2im_cuda(cols, x.shape, 3, 1, 1, version=2).shape == x.shape


def test_non_contiguous_inputs_are_made_contiguous(rng):
    x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)[:, ::2, :, 1:]   # (2, 3, 9, 8) view
    assert not x.flags.c_contiguous
    assert_close(im2col_cuda(x, 3, 2, 1), im2col_ref(x, 3, 2, 1), atol=0, rtol=0, what="strided x")
    cols = rng.standard_normal((36 * 2, 48)).astype(np.float32)[::2]           # (36, 48) view
    assert not cols.flags.c_contiguous
    for v in (1, 2, 3):
        assert_close(col2im_cuda(cols, (3, 4, 4, 4), 3, 1, 1, version=v), col2im_ref(cols, (3, 4, 4, 4), 3, 1, 1),
                     **_tap_tol(3, 1), what="strided cols")


def test_dispatch_takes_the_kernels_on_emu(monkeypatch, rng):
    seen = []
    for name in ("im2col_cuda", "col2im_cuda"):
        real = getattr(conv_mod, name)
        monkeypatch.setattr(conv_mod, name, lambda *a, _r=real, _n=name, **kw: seen.append(_n) or _r(*a, **kw))
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    cols = im2col(x, 3, 1, 1)
    col2im(cols, x.shape, 3, 1, 1)
    assert seen == ["im2col_cuda", "col2im_cuda"]
    assert conv_mod.COL2IM_DEFAULT == 3 and conv_mod.IM2COL_DEFAULT == 2


# ---------------------------------------------------------------- layers: emu == numpy
# (in, out, k, s, p, H, W, N) ; output_padding for the transposed conv where s > 1
LAYER_CASES = [
    (3, 4, 1, 1, 0, 5, 7, 2),
    (2, 5, 3, 1, 1, 7, 7, 1),        # batch 1
    (3, 4, 3, 2, 1, 9, 6, 3),
    (4, 2, 4, 2, 1, 7, 5, 2),
    (5, 1, 7, 1, 3, 9, 8, 2),        # fewer outputs, stride 1: runs as a flipped transposed conv
    (2, 3, 4, 2, 0, 6, 9, 1),
    (3, 3, 3, 1, 0, 5, 5, 3),
]
LAYER_IDS = ["in{}-out{}-k{}s{}p{}-{}x{}-n{}".format(*c) for c in LAYER_CASES]


def _run_layer(layer, x, dy, bk):
    backend.use(bk)
    layer.zero_grad()
    y = layer(x)
    dx = layer.backward(dy)
    return (np.array(y), np.array(dx), layer.weight.grad.copy(),
            None if layer.bias is None else layer.bias.grad.copy())


def _compare_layer(layer, x_shape, rng, what):
    x = rng.standard_normal(x_shape).astype(np.float32)
    backend.use("numpy")
    y_shape = layer(x).shape
    layer._pop_cache()
    dy = rng.standard_normal(y_shape).astype(np.float32)
    ref = _run_layer(layer, x, dy, "numpy")
    got = _run_layer(layer, x, dy, "emu")
    k_sum = max(layer.weight.data[0].size, x_shape[0] * y_shape[2] * y_shape[3])   # longest GEMM sum
    for name, g, r in zip(("y", "dx", "dW", "db"), got, ref):
        if r is None:
            continue
        assert_close(g, r.astype(np.float64), atol=2e-6 * k_sum, rtol=1e-4, what=f"{what}: {name}")


@pytest.mark.parametrize("case", LAYER_CASES, ids=LAYER_IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_layer_emu_equals_numpy(case, bias, rng):
    cin, cout, k, s, p, h, w, n = case
    layer = nn.Conv2d(cin, cout, k, s, p, bias=bias, rng=np.random.default_rng(1))
    layer.weight.data *= 50   # N(0, 0.02) init: bring values to unit scale
    if bias:
        layer.bias.data[:] = rng.standard_normal(cout)
    _compare_layer(layer, (n, cin, h, w), rng, f"Conv2d{case}")


@pytest.mark.parametrize("case", LAYER_CASES, ids=LAYER_IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d_layer_emu_equals_numpy(case, bias, rng):
    cin, cout, k, s, p, h, w, n = case
    if p > k - 1:
        pytest.skip("padding larger than k - 1 leaves no output")
    op = 1 if s > 1 else 0
    layer = nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=op, bias=bias, rng=np.random.default_rng(2))
    layer.weight.data *= 50
    if bias:
        layer.bias.data[:] = rng.standard_normal(cout)
    _compare_layer(layer, (n, cin, h, w), rng, f"ConvTranspose2d{case} op={op}")


def test_layers_really_launch_the_conv_kernels(monkeypatch, rng):
    calls = []
    real = _launch.function
    monkeypatch.setattr(_launch, "function", lambda fam, name: calls.append(name) or real(fam, name))
    layer = nn.Conv2d(2, 3, 3, 2, 1, rng=np.random.default_rng(0))
    layer(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    layer.backward(np.ones((1, 3, 3, 3), np.float32))
    assert {"im2col_v2", "col2im_v3"} <= set(calls)
    assert isinstance(_launch.module("im2col"), cuda_emu.RawModule)


@pytest.mark.parametrize("bias", [True, False])
def test_one_output_conv_on_emu_flips_taps_not_weights(bias, monkeypatch, rng):
    # G's last Conv2d(w -> 1, k7, p3) on a kernel backend: W and its gradient stay in their
    # own layout (no copy, no add into .grad), the taps are flipped in im2col/col2im
    backend.use("emu")
    calls = []
    real = _launch.function
    monkeypatch.setattr(_launch, "function", lambda fam, name: calls.append(name) or real(fam, name))
    from cganraw import devicelog
    layer = nn.Conv2d(5, 1, 7, 1, 3, bias=bias, rng=np.random.default_rng(0))
    with devicelog.recording() as log:
        layer(rng.standard_normal((3, 5, 9, 8)).astype(np.float32))
        layer.backward(np.ones((3, 1, 9, 8), np.float32))
    assert {"im2col_v3", "col2im_v4"} <= set(calls)
    names = log.launches_by_name()
    assert names["add"] == 0 and names["copy"] == 2      # x to channel-major, dx back: no weight copies


# ---------------------------------------------------------------- phase-split transposed conv
@pytest.fixture
def transpose_impl():
    """set_transpose_impl for one test, restored after it."""
    prev = conv_mod.set_transpose_impl(None)
    yield conv_mod.set_transpose_impl
    conv_mod.set_transpose_impl(prev)


@pytest.mark.parametrize("n,cin,cout,h,w", [(1, 1, 1, 1, 1), (2, 3, 5, 3, 4), (3, 4, 2, 7, 7), (1, 2, 3, 2, 6)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("impl", ["phase", "col2im", None], ids=["phase", "col2im", "by-backend"])
def test_phase_split_conv_transpose2d_emu_equals_numpy(n, cin, cout, h, w, bias, impl, rng, transpose_impl):
    # both strategies on both backends, and each backend's default (numpy phase, emu col2im)
    transpose_impl(impl)
    layer = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias, rng=np.random.default_rng(2))
    layer.weight.data *= 50
    if bias:
        layer.bias.data[:] = rng.standard_normal(cout)
    _compare_layer(layer, (n, cin, h, w), rng, f"{impl} ConvTranspose2d k4s2p1 n{n} {cin}->{cout} {h}x{w}")


def test_transpose_impl_by_backend_environment_and_override(monkeypatch, transpose_impl):
    monkeypatch.delenv(conv_mod.TRANSPOSE_ENV, raising=False)
    prev = backend.current()
    try:
        got = {}
        for bk in ("numpy", "emu"):
            backend.use(bk)
            got[bk] = conv_mod.transpose_impl()
        # numpy: col2im on batch-minor columns with Numba, the phase split without
        assert got == {"numpy": "col2im" if _cpu.enabled() else "phase", "emu": "col2im"}
        monkeypatch.setenv(conv_mod.TRANSPOSE_ENV, " Phase ")
        assert conv_mod.transpose_impl() == "phase" and conv_mod.uses_phase_split(4, 2, 1)
        assert not conv_mod.uses_phase_split(4, 2, 1, 1) and not conv_mod.uses_phase_split(3, 2, 1)
        transpose_impl("col2im")                       # the override beats the environment
        assert conv_mod.transpose_impl() == "col2im" and not conv_mod.uses_phase_split(4, 2, 1)
        with pytest.raises(ValueError, match="'fft' is not a transposed-conv choice; use one of phase, col2im"):
            transpose_impl("fft")
        transpose_impl(None)
        monkeypatch.setenv(conv_mod.TRANSPOSE_ENV, "fft")
        with pytest.raises(ValueError, match="CGANRAW_CONV_TRANSPOSE: 'fft' is not"):
            conv_mod.transpose_impl()
    finally:
        backend.use(prev)


def test_col2im_transpose_by_default_on_the_kernel_backends(monkeypatch, rng):
    # k4 s2 p1 on emu/cuda: one GEMM + col2im forward, im2col + two GEMMs backward
    monkeypatch.delenv(conv_mod.TRANSPOSE_ENV, raising=False)
    launched, gemms = [], []
    real_fn, real_gemm = _launch.function, conv_mod.gemm
    monkeypatch.setattr(_launch, "function", lambda fam, name: launched.append(name) or real_fn(fam, name))
    monkeypatch.setattr(conv_mod, "gemm", lambda *args, **kw: gemms.append(1) or real_gemm(*args, **kw))
    layer = nn.ConvTranspose2d(3, 2, 4, 2, 1, rng=np.random.default_rng(0))
    y = layer(rng.standard_normal((2, 3, 5, 5)).astype(np.float32))
    layer.backward(np.ones_like(y))
    assert len(gemms) == 3 and {"col2im_v3", "im2col_v2"} <= set(launched)


def test_phase_split_runs_no_col2im_and_no_large_matrix(monkeypatch, rng, transpose_impl):
    # k4 s2 p1: 16 GEMMs per direction on views, each operand at most the bordered input or output
    transpose_impl("phase")
    n, cin, cout, h, w = 2, 6, 5, 7, 7
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    launched, shapes = [], []
    real_fn, real_gemm = _launch.function, conv_mod.gemm
    monkeypatch.setattr(_launch, "function", lambda fam, name: launched.append(name) or real_fn(fam, name))
    monkeypatch.setattr(conv_mod, "gemm", lambda a, b, *args, **kw: shapes.append((a.size, b.size)) or
                        real_gemm(a, b, *args, **kw))
    layer = nn.ConvTranspose2d(cin, cout, 4, 2, 1, rng=np.random.default_rng(0))
    y = layer(x)
    layer.backward(np.ones_like(y))
    assert len(shapes) == 48 and not any(name.startswith(("col2im", "im2col")) for name in launched)
    biggest = max(n * cin * (h + 2) * (w + 2), n * cout * (h + 2) * (w + 2))
    assert max(max(s) for s in shapes) <= biggest

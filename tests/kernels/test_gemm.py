"""kernels/gemm.cu (gemm_v1, gemm_v2, gemm_v3) through the emulator against float64 NumPy
(gemm_v4, split-K and TF32: test_gemm_v4.py).

Shapes break every tile (1, 7, 17x33x15, 45x7x129), all four transpose combinations,
alpha/beta, and the conv cGAN's real layer GEMMs at batch 3 and 1 (width 128).
The tiled versions (barriers) also run under forward and reverse thread orders.
"""
import importlib

import numpy as np
import pytest

from cganraw import backend
from cganraw.ops import _launch
from cganraw.ops.gemm import gemm, gemm_cuda, gemm_impl, set_gemm_impl

from .conftest import assert_close

gemm_mod = importlib.import_module("cganraw.ops.gemm")   # cganraw.ops.gemm is also the function

TILE_SHAPES = [(1, 1, 1), (7, 7, 7), (17, 33, 15), (45, 7, 129)]       # (M, N, K)
TRANS = [(False, False), (True, False), (False, True), (True, True)]


def _operands(rng, m, n, k, ta, tb, scale=1.0):
    a = (scale * rng.standard_normal((k, m) if ta else (m, k))).astype(np.float32)
    b = (scale * rng.standard_normal((n, k) if tb else (k, n))).astype(np.float32)
    return a, b


def _reference(a, b, ta, tb, alpha=1.0, beta=0.0, c=None):
    opa = (a.T if ta else a).astype(np.float64)
    opb = (b.T if tb else b).astype(np.float64)
    ref = alpha * (opa @ opb)
    if beta != 0.0:
        ref = ref + beta * c.astype(np.float64)
    return ref


def _tol(k):
    # float32 sums of k products of N(0, 1) values: error grows ~ k * eps in the worst
    # ordering; elementwise atol + rtol * |ref|
    return dict(atol=1e-6 * k + 1e-6, rtol=1e-4)


def _check(version, m, n, k, ta, tb, rng, alpha=1.0, beta=0.0):
    a, b = _operands(rng, m, n, k, ta, tb)
    c = rng.standard_normal((m, n)).astype(np.float32) if beta != 0.0 else None
    got = gemm_cuda(a, b, ta, tb, alpha, beta, out=None if c is None else c.copy(), version=version)
    assert_close(got, _reference(a, b, ta, tb, alpha, beta, c), **_tol(k),
                 what=f"sgemm v{version} M,N,K={m},{n},{k} trans={ta},{tb} alpha={alpha} beta={beta}")


# ---------------------------------------------------------------- tiling-breaking shapes
@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("mnk", TILE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sgemm_v1_shapes(mnk, ta, tb, rng):
    _check(1, *mnk, ta, tb, rng)
    _check(1, *mnk, ta, tb, rng, alpha=0.5, beta=-2.0)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("mnk", TILE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sgemm_tiled_shapes_both_orders(version, mnk, ta, tb, order, rng):
    _check(version, *mnk, ta, tb, rng)
    _check(version, *mnk, ta, tb, rng, alpha=0.5, beta=-2.0)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_sgemm_spans_several_tiles_in_every_direction(version, rng):
    # 130 x 97 x 70: three 64-row tiles (last one 2 rows), five 32-column tiles, K tail 6
    for ta, tb in TRANS:
        _check(version, 130, 97, 70, ta, tb, rng, alpha=1.5, beta=0.25)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_sgemm_any_grid_works(version, rng):
    # the kernels grid-stride over output tiles: a (1, 1) grid still computes all of C
    m, n, k = 70, 97, 33
    a, b = _operands(rng, m, n, k, False, True)
    c = np.empty((m, n), np.float32)
    block = {1: (32, 8), 2: (32, 32), 3: (256,)}[version]
    fn = _launch.function("gemm", f"gemm_v{version}")
    i32, f32 = _launch.i32, _launch.f32
    k_chunk = (i32(k),) if version == 3 else ()     # v3: one split covering K
    fn((1, 1), block, (a, b, c, i32(m), i32(n), i32(k), i32(k), i32(k), i32(n),
                       i32(0), i32(1), f32(1.0), f32(0.0)) + k_chunk)
    assert_close(c, _reference(a, b, False, True), **_tol(k), what=f"v{version} grid (1, 1)")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_sgemm_beta_zero_never_reads_c(version, rng):
    # BLAS semantics: with beta == 0 an uninitialised (here NaN) output is fine
    a, b = _operands(rng, 17, 33, 15, False, False)
    out = np.full((17, 33), np.nan, np.float32)
    got = gemm_cuda(a, b, out=out, version=version)
    assert got is out
    assert_close(out, _reference(a, b, False, False), **_tol(15), what="beta=0 over NaN")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_sgemm_empty_and_k0(version, rng):
    a = np.zeros((0, 5), np.float32)
    b = np.zeros((5, 4), np.float32)
    assert gemm_cuda(a, b, version=version).shape == (0, 4)
    # K = 0: op(A) @ op(B) is all zeros, beta still scales C
    c = rng.standard_normal((3, 4)).astype(np.float32)
    got = gemm_cuda(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32),
                       beta=0.5, out=c.copy(), version=version)
    assert_close(got, 0.5 * c.astype(np.float64), atol=1e-7, rtol=1e-7, what="K=0")


# ---------------------------------------------------------------- the conv cGAN's real GEMMs
# (name, M, N, K, trans_a, trans_b) at batch 3, width 128 (see cganraw/models.py, ops/conv.py)
REAL_B3 = [
    ("D.conv2 fwd W@cols", 128, 147, 1152, False, False),        # (128,1152) @ (1152, 3*49)
    ("D.conv2 dW dy@cols^T", 128, 1152, 147, False, True),
    ("D.conv2 dcols W^T@dy", 1152, 147, 128, True, False),
    ("G.convT2 fwd W^T@x", 2048, 588, 128, True, False),          # (128, 128*16)^T @ (128, 3*196)
    ("G.conv7 as convT fwd", 49, 2352, 128, True, False),        # k7 p3 expanded: (128, 49)^T @ (128, 3*784)
    ("G.fc x@W^T", 3, 6272, 100, False, True),                   # Linear(100, 128*49)
    ("D.fc dW dy^T@x", 1, 6272, 3, True, False),                 # Linear(6272, 1) weight gradient
    ("D.fc x@W^T", 3, 1, 6272, False, True),
]


@pytest.mark.parametrize("name,m,n,k,ta,tb", REAL_B3, ids=[r[0] for r in REAL_B3])
def test_sgemm_v3_real_layer_shapes_batch3(name, m, n, k, ta, tb, rng):
    _check(3, m, n, k, ta, tb, rng)


@pytest.mark.parametrize("version", [1, 2])
def test_sgemm_v1_v2_real_d_conv2_batch3(version, rng):
    _check(version, 128, 147, 1152, False, False, rng)


@pytest.mark.parametrize("version", [2, 3])
def test_sgemm_tiled_real_shape_batch1_both_orders(version, order, rng):
    # batch 1: D.conv2's dW at N*Ho*Wo = 49, and its forward
    _check(version, 128, 1152, 49, False, True, rng)
    _check(version, 128, 49, 1152, False, False, rng, alpha=1.0, beta=1.0)


# ---------------------------------------------------------------- bad and odd inputs
def test_float64_is_rejected_with_type_error(rng):
    a = rng.standard_normal((4, 5))
    b = rng.standard_normal((5, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="float32.*float64"):
        gemm_cuda(a, b)
    with pytest.raises(TypeError, match="float32"):
        gemm_cuda(b.T.copy(), np.ones((5, 3), np.int32))
    with pytest.raises(TypeError, match="float32"):
        gemm_cuda(a.astype(np.float32), b, out=np.zeros((4, 3)))
    with pytest.raises(TypeError, match="array"):
        gemm_cuda([[1.0]], b)


def test_shape_errors_name_the_op_and_shapes(rng):
    a = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"gemm_cuda.*\(4, 5\).*\(6, 3\)"):
        gemm_cuda(a, np.ones((6, 3), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        gemm_cuda(np.ones((2, 2, 2), np.float32), a)
    with pytest.raises(ValueError, match=r"out must be an \(4, 3\)"):
        gemm_cuda(a, np.ones((5, 3), np.float32), out=np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="C-contiguous"):
        gemm_cuda(a, np.ones((5, 3), np.float32), out=np.zeros((3, 4), np.float32).T)
    with pytest.raises(ValueError, match="version"):
        gemm_cuda(a, np.ones((5, 3), np.float32), version=5)
    with pytest.raises(ValueError, match="split-K needs version 3 or 4"):
        gemm_cuda(a, np.ones((5, 3), np.float32), version=2, splits=2)


@pytest.mark.parametrize("version", [1, 3])
def test_non_contiguous_operands_are_handled(version, rng):
    big = rng.standard_normal((20, 40)).astype(np.float32)
    a = big[:17, ::2]                # strided view (17, 20): copied
    b = big[:20, 5:38]               # (20, 33) with row stride 40: copied
    assert not a.flags.c_contiguous and not b.flags.c_contiguous
    got = gemm_cuda(a, b, version=version)
    assert_close(got, a.astype(np.float64) @ b, **_tol(20), what="strided views")
    # transposed views (F-contiguous) go in as their base with the flag flipped
    at = np.ascontiguousarray(rng.standard_normal((20, 17)).astype(np.float32)).T   # (17, 20)
    bt = np.ascontiguousarray(rng.standard_normal((33, 20)).astype(np.float32)).T   # (20, 33)
    for ta, tb in TRANS:
        x = at.T if ta else at
        y = bt.T if tb else bt
        got = gemm_cuda(x, y, ta, tb, version=version)
        assert_close(got, _reference(x, y, ta, tb), **_tol(20), what=f"transposed views {ta},{tb}")


# ---------------------------------------------------------------- dispatch
@pytest.fixture
def restore_gemm_impl():
    prev = set_gemm_impl(None)
    yield
    set_gemm_impl(prev)


def test_gemm_dispatch_on_emu_defaults_to_v3(restore_gemm_impl, monkeypatch, rng):
    monkeypatch.setattr(gemm_mod, "_gemm_env", None)       # as if CGANRAW_GEMM were unset
    monkeypatch.setattr(gemm_mod, "_tf32_override", False)
    assert gemm_impl() == 3
    calls = []
    real = gemm_mod.gemm_cuda
    monkeypatch.setattr(gemm_mod, "gemm_cuda", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    a, b = _operands(rng, 7, 17, 5, False, True)
    assert_close(gemm(a, b, trans_b=True), _reference(a, b, False, True), **_tol(5), what="gemm()")
    assert calls == [{"version": 3}]


@pytest.mark.parametrize("name,expect", [("custom", 3), ("v1", 1), ("V2", 2), ("v3", 3),
                                         ("numpy", "library"), ("cublas", "library")])
def test_gemm_impl_choices(name, expect, restore_gemm_impl, rng):
    set_gemm_impl(name)
    assert gemm_impl() == expect
    a, b = _operands(rng, 9, 4, 6, True, False)
    c = rng.standard_normal((9, 4)).astype(np.float32)
    got = gemm(a, b, trans_a=True, alpha=2.0, beta=0.5, out=c.copy())
    assert_close(got, _reference(a, b, True, False, 2.0, 0.5, c), **_tol(6), what=f"gemm via {name}")


def test_gemm_env_is_read_once_and_checked(restore_gemm_impl, monkeypatch):
    monkeypatch.setattr(gemm_mod, "_gemm_env", ...)
    monkeypatch.setenv("CGANRAW_GEMM", "v2")
    assert gemm_impl() == 2
    monkeypatch.setenv("CGANRAW_GEMM", "v1")
    assert gemm_impl() == 2          # read once per process
    monkeypatch.setattr(gemm_mod, "_gemm_env", ...)
    monkeypatch.setenv("CGANRAW_GEMM", "fastest")
    with pytest.raises(ValueError, match="CGANRAW_GEMM.*fastest"):
        gemm_impl()
    with pytest.raises(ValueError, match="set_gemm_impl"):
        set_gemm_impl("v9")


def test_numpy_backend_keeps_blas(restore_gemm_impl):
    set_gemm_impl("v1")
    backend.use("numpy")
    assert gemm_impl() == "library"
    a = np.ones((2, 3))                  # float64 stays fine on the reference backend
    np.testing.assert_array_equal(gemm(a, a, trans_b=True), np.full((2, 2), 3.0))

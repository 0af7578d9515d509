"""kernels/gemm.cu gemm_v4 (TF32 tensor cores through the emulator's nvcuda::wmma), split-K
in v3 and v4 (gemm_splitk_reduce_v1), the float4 and scalar load paths, and the TF32 switch.

v4 rounds its inputs to TF32 (10-bit mantissa, round to nearest, ties away): it is checked
twice, against float64 NumPy on TF32-rounded inputs (only FP32 accumulation error left) and
against exact float64 NumPy within the bound TF32 implies, |alpha| * sum_k |a_k b_k| *
(2^-10 + 2^-22 + (K + splits + 2) 2^-24) per element.
"""
import importlib
import sys
import types

import numpy as np
import pytest

from cganraw.ops import _launch
from cganraw.ops.gemm import gemm, gemm_cuda, gemm_impl, set_gemm_impl, set_tf32, splitk_plan

from .conftest import assert_close

gemm_mod = importlib.import_module("cganraw.ops.gemm")

TILE_SHAPES = [(1, 1, 1), (7, 7, 7), (17, 33, 15), (45, 7, 129)]       # (M, N, K)
TRANS = [(False, False), (True, False), (False, True), (True, True)]
EPS32 = 2.0 ** -24    # unit roundoff of float32
TF32_INPUT = 2.0 ** -10 + 2.0 ** -22   # relative error of a product of two rna-rounded TF32 values


def tf32_round(x):
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    finite = (b & 0x7F800000) != 0x7F800000
    return np.where(finite, (b + 0x1000) & 0xFFFFE000, b).astype(np.uint32).view(np.float32)


def _operands(rng, m, n, k, ta, tb):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def _op(x, t):
    return (x.T if t else x).astype(np.float64)


def check_tf32(got, a, b, ta, tb, alpha=1.0, beta=0.0, c=None, splits=1, what=""):
    """got against (1) TF32-rounded inputs in float64, to FP32 accumulation error, and
    (2) the exact product, within TF32's bound."""
    got = np.asarray(got, np.float64)
    k = _op(a, ta).shape[1]
    cterm = 0.0 if beta == 0.0 else beta * c.astype(np.float64)
    cbound = 0.0 if beta == 0.0 else np.abs(cterm) * 4 * EPS32
    qa, qb = _op(tf32_round(a), ta), _op(tf32_round(b), tb)
    mag_q = np.abs(qa) @ np.abs(qb)
    ref_q = alpha * (qa @ qb) + cterm
    acc = (k + splits + 2) * EPS32
    bad = np.abs(got - ref_q) > abs(alpha) * mag_q * acc + cbound + 1e-30
    assert not bad.any(), f"{what}: {bad.sum()} values off the TF32-rounded product, max err " \
                          f"{np.abs(got - ref_q).max():.3g}"
    pa, pb = _op(a, ta), _op(b, tb)
    ref = alpha * (pa @ pb) + cterm
    bound = abs(alpha) * (np.abs(pa) @ np.abs(pb)) * (TF32_INPUT + acc) + cbound + 1e-30
    assert np.all(np.abs(got - ref) <= bound), f"{what}: outside the TF32 bound"


def _v4(rng, m, n, k, ta, tb, alpha=1.0, beta=0.0, splits=None):
    a, b = _operands(rng, m, n, k, ta, tb)
    c = rng.standard_normal((m, n)).astype(np.float32) if beta != 0.0 else None
    got = gemm_cuda(a, b, ta, tb, alpha, beta, out=None if c is None else c.copy(), version=4, splits=splits)
    nsplit = splitk_plan(m, n, k, splits)[0]
    check_tf32(got, a, b, ta, tb, alpha, beta, c, nsplit,
               what=f"v4 M,N,K={m},{n},{k} trans={ta},{tb} alpha={alpha} beta={beta} splits={nsplit}")
    return got


@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("mnk", TILE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_v4_tile_breaking_shapes_both_orders(mnk, ta, tb, order, rng):
    _v4(rng, *mnk, ta, tb)
    _v4(rng, *mnk, ta, tb, alpha=0.5, beta=-2.0)


@pytest.mark.parametrize("ta,tb", TRANS)
def test_v4_spans_several_tiles_with_a_k_tail(ta, tb, rng):
    # 130 x 97 x 70: three 64-row tiles (last 2 rows), two 64-column tiles (last 33), K tail 6
    _v4(rng, 130, 97, 70, ta, tb, alpha=1.5, beta=0.25)


def test_v4_really_rounds_to_tf32(rng):
    # a value at a TF32 tie: FP32 keeps it, TF32 (ties away) rounds it up
    a = np.full((3, 1), 1 + 2.0 ** -11, np.float32)
    b = np.ones((1, 5), np.float32)
    got = gemm_cuda(a, b, version=4)
    assert np.all(got == np.float32(1 + 2.0 ** -10))
    assert np.all(gemm_cuda(a, b, version=3) == a[0, 0])


def test_v4_any_grid_and_beta_zero_over_nan(rng):
    m, n, k = 70, 97, 33
    a, b = _operands(rng, m, n, k, False, True)
    c = np.full((m, n), np.nan, np.float32)          # beta == 0: never read
    i32, f32 = _launch.i32, _launch.f32
    _launch.function("gemm", "gemm_v4")((1, 1), (128,), (a, b, c, i32(m), i32(n), i32(k), i32(k), i32(k),
                                                         i32(n), i32(0), i32(1), f32(1.0), f32(0.0), i32(k)))
    check_tf32(c, a, b, False, True, what="v4 grid (1, 1)")


# ---------------------------------------------------------------- split-K (v3 and v4)
@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("splits", [2, 3, 5])
def test_split_k_matches_and_is_deterministic(version, splits, rng):
    m, n, k = 45, 19, 150                 # K = 150: chunks of 80/64/32 and a short last one
    a, b = _operands(rng, m, n, k, True, False)
    c = rng.standard_normal((m, n)).astype(np.float32)
    plan = splitk_plan(m, n, k, splits)
    assert plan[0] == splits and plan[1] % 16 == 0 and (plan[0] - 1) * plan[1] < k
    got = gemm_cuda(a, b, True, False, 0.5, -1.0, out=c.copy(), version=version, splits=splits)
    again = gemm_cuda(a, b, True, False, 0.5, -1.0, out=c.copy(), version=version, splits=splits)
    assert np.array_equal(got, again)     # partial sums in a fixed order: no run-to-run change
    if version == 3:
        ref = 0.5 * (_op(a, True) @ _op(b, False)) - c.astype(np.float64)
        assert_close(got, ref, atol=1e-6 * k + 1e-6, rtol=1e-4, what=f"v3 split-K {splits}")
    else:
        check_tf32(got, a, b, True, False, 0.5, -1.0, c, splits, what=f"v4 split-K {splits}")


def test_split_k_launches_the_reduction(launches, rng):
    a, b = _operands(rng, 5, 6, 64, False, False)
    gemm_cuda(a, b, version=3, splits=4)
    assert launches == ["gemm_v3", "gemm_splitk_reduce_v1"]
    launches.clear()
    gemm_cuda(a, b, version=3, splits=1)
    assert launches == ["gemm_v3"]


@pytest.mark.parametrize("version", [3, 4])
def test_tall_skinny_weight_gradient_splits_by_itself(version, rng):
    # a weight gradient's shape: few outputs (2 tiles), long K; the plan splits it
    m, n, k = 70, 33, 2100
    splits, chunk = splitk_plan(m, n, k)
    assert splits == 4 and chunk == 528
    a, b = _operands(rng, m, n, k, False, True)
    got = gemm_cuda(a, b, False, True, version=version)
    if version == 3:
        assert_close(got, _op(a, False) @ _op(b, True), atol=1e-6 * k, rtol=1e-4, what="v3 auto split")
    else:
        check_tf32(got, a, b, False, True, splits=splits, what="v4 auto split")


def test_splitk_plan():
    assert splitk_plan(128, 128, 64) == (1, 64)                 # short K: never split
    assert splitk_plan(2048, 6272, 100352) == (1, 100352)       # plenty of output tiles
    s, chunk = splitk_plan(128, 49, 100352)                     # 2 tiles, K = batch * pixels
    assert s == 32 and chunk % 16 == 0 and (s - 1) * chunk < 100352 <= s * chunk
    assert splitk_plan(5, 5, 0) == (1, 1) and splitk_plan(5, 5, 10, splits=4) == (1, 10)
    with pytest.raises(ValueError, match="splits"):
        splitk_plan(5, 5, 100, splits=0)


# ---------------------------------------------------------------- float4 and scalar paths
@pytest.mark.parametrize("version", [3, 4])
def test_misaligned_and_odd_stride_operands_take_the_scalar_path(version, rng):
    m, n, k = 33, 40, 36
    # C-contiguous operands whose data starts 4 bytes past a 16-byte boundary
    buf_a = np.empty(m * k + 1, np.float32)
    a = buf_a[1:].reshape(m, k)
    a[...] = rng.standard_normal((m, k))
    buf_b = np.empty(k * n + 1, np.float32)
    b = buf_b[1:].reshape(k, n)
    b[...] = rng.standard_normal((k, n))
    assert a.ctypes.data % 16 and b.ctypes.data % 16
    for x, y in ((a, b), (np.ascontiguousarray(a), np.ascontiguousarray(b))):   # misaligned, then aligned
        got = gemm_cuda(x, y, version=version)
        if version == 3:
            assert_close(got, _op(x, False) @ _op(y, False), atol=1e-5, rtol=1e-4, what="v3")
        else:
            check_tf32(got, x, y, False, False, what="v4")


# ---------------------------------------------------------------- dispatch and TF32 switch
@pytest.fixture
def restore():
    prev_impl, prev_tf32 = set_gemm_impl(None), set_tf32(None)
    yield
    set_gemm_impl(prev_impl)
    set_tf32(prev_tf32)


def test_v4_by_name_and_by_tf32_switch(restore, monkeypatch, rng):
    monkeypatch.setattr(gemm_mod, "_gemm_env", None)
    set_gemm_impl("v4")
    assert gemm_impl() == 4
    set_gemm_impl(None)
    set_tf32(False)
    assert gemm_impl() == 3
    set_tf32(True)                        # emu's counterpart of cuBLAS TF32
    assert gemm_impl() == 4
    a, b = _operands(rng, 9, 4, 6, True, False)
    check_tf32(gemm(a, b, trans_a=True), a, b, True, False, what="gemm() with TF32 on")
    set_tf32(None)
    monkeypatch.setenv("CGANRAW_TF32", "1")
    assert gemm_impl() == 4
    monkeypatch.setenv("CGANRAW_TF32", "0")
    assert gemm_impl() == 3


def test_tf32_switch_sets_cublas_compute_type(restore, monkeypatch):
    # the cuda backend's glue, against a stand-in for CuPy's private linalg module
    calls = []
    fake = types.SimpleNamespace(COMPUTE_TYPE_DEFAULT=1, COMPUTE_TYPE_TF32=7,
                                 set_compute_type=lambda dtype, ct: calls.append((np.dtype(dtype), ct)))
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setitem(sys.modules, "cupy._core", types.ModuleType("cupy._core"))
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", fake)
    sys.modules["cupy._core"]._routines_linalg = fake
    monkeypatch.setattr(gemm_mod, "_cublas_tf32", None)
    set_tf32(True)
    gemm_mod._sync_cublas_tf32()
    gemm_mod._sync_cublas_tf32()          # unchanged: no second call
    set_tf32(False)
    gemm_mod._sync_cublas_tf32()
    assert calls == [(np.dtype(np.float32), 7), (np.dtype(np.float32), 1)]


def test_missing_v4_is_a_clear_error(monkeypatch, rng):
    def no_v4(family, name):
        raise LookupError(f"no kernel {name}")
    monkeypatch.setattr(_launch, "function", no_v4)
    a, b = _operands(rng, 3, 3, 3, False, False)
    with pytest.raises(RuntimeError, match=r"without gemm_v4.*<mma\.h>.*CUDA_PATH"):
        gemm_cuda(a, b, version=4)


@pytest.mark.parametrize("version", [1, 3, 4])
def test_row_strided_views_are_passed_in_place(version, monkeypatch, rng):
    # column slices of bigger matrices (the phase-split transposed conv's operands and
    # outputs): passed with their row stride, never copied; out accumulates with beta = 1
    big_a = rng.standard_normal((9, 40)).astype(np.float32)
    big_b = rng.standard_normal((30, 25)).astype(np.float32)
    a, b = big_a[:, 3:33], big_b[:, 2:21]          # (9, 30) row stride 40, (30, 19) row stride 25
    buf = rng.standard_normal((9, 27)).astype(np.float32)
    out = buf[:, 5:24]                             # (9, 19) row stride 27
    before = buf.copy()
    copies = []
    real_arg = _launch.arg
    monkeypatch.setattr(_launch, "arg", lambda x, *args, **kw: copies.append(x.shape) or real_arg(x, *args, **kw))
    gemm_cuda(a, b, beta=1.0, out=out, version=version)
    assert copies == []
    want = before[:, 5:24].astype(np.float64) + _op(a, False) @ _op(b, False)
    if version == 4:
        check_tf32(out, a, b, False, False, beta=1.0, c=before[:, 5:24], what="v4 strided")
    else:
        assert_close(out, want, atol=1e-5, rtol=1e-5, what=f"v{version} strided")
    assert np.array_equal(buf[:, :5], before[:, :5]) and np.array_equal(buf[:, 24:], before[:, 24:])
    # the transpose of a column slice goes in with the transpose flag flipped, still in place
    b2 = big_b[:9, 2:21]                            # (9, 19)
    got = gemm_cuda(a.T, b2, version=version)       # (30, 9) @ (9, 19)
    assert copies == [] and got.shape == (30, 19)
    if version == 4:
        check_tf32(got, a, b2, True, False, what="v4 transposed strided")
    else:
        assert_close(got, _op(a, True) @ _op(b2, False), atol=1e-5, rtol=1e-5, what=f"v{version} transposed strided")

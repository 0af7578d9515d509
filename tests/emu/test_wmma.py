"""The emulator's nvcuda::wmma (TF32 m16n16k8, FP32 accumulation) against NumPy, in every
layout, with TF32 rounding of the inputs; and its misuse errors."""
import os

import numpy as np
import pytest

from cganraw import cuda_emu

i32, f32 = np.int32, np.float32
LAYOUTS = {"rr": (False, False), "cr": (True, False), "rc": (False, True), "cc": (True, True)}


@pytest.fixture(scope="module")
def wmma():
    return cuda_emu.RawModule(path=os.path.join(os.path.dirname(__file__), "fixtures", "wmma.cu"))


def tf32_round(x):
    """cvt.rna.tf32.f32: nearest 10-bit mantissa, ties away from zero (finite values)."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    finite = (b & 0x7F800000) != 0x7F800000
    r = np.where(finite, ((b + 0x1000) & 0xFFFFE000), b).astype(np.uint32)
    return r.view(np.float32)


def tf32_truncate(x):
    b = np.asarray(x, np.float32).view(np.uint32)
    return (b & np.uint32(0xFFFFE000)).view(np.float32)


def run_mma(mod, layout, a, b, c, convert):
    a_col, b_col = LAYOUTS[layout]
    d = np.full((16, 16), np.nan, f32)
    sa = np.ascontiguousarray(a.T if a_col else a)     # column-major storage = the transpose, row-major
    sb = np.ascontiguousarray(b.T if b_col else b)
    mod.get_function(f"mma_{layout}")((1,), (32,), (d, sa, sb, c, i32(convert)))
    return d


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("convert", [1, 0])
def test_mma_matches_tf32_numpy(wmma, order, layout, convert, rng):
    a = rng.standard_normal((16, 8)).astype(f32)
    b = rng.standard_normal((8, 16)).astype(f32)
    c = rng.standard_normal((16, 16)).astype(f32)
    got = run_mma(wmma, layout, a, b, c, convert)
    q = tf32_round if convert else tf32_truncate    # unconverted inputs: the low bits are dropped
    ref = q(a).astype(np.float64) @ q(b).astype(np.float64) + c
    # TF32 products are exact in FP32; only the 8 FP32 additions round
    np.testing.assert_allclose(got, ref, rtol=0, atol=8 * np.finfo(f32).eps * (np.abs(ref).max() + 8))
    # and it really is TF32, not FP32: the exact FP32 product differs by ~2^-11 relative
    full = a.astype(np.float64) @ b + c
    assert np.abs(got - full).max() > 1e-4


def test_mma_rounding_is_visible_in_a_single_product(wmma):
    # 1 + 2^-11 is a tie at TF32's 10-bit mantissa: rna rounds it up to 1 + 2^-10, truncation drops it
    a = np.zeros((16, 8), f32)
    b = np.zeros((8, 16), f32)
    a[:, 0] = 1 + 2.0 ** -11
    b[0, :] = 1.0
    c = np.zeros((16, 16), f32)
    assert np.all(run_mma(wmma, "rr", a, b, c, 1) == f32(1 + 2.0 ** -10))
    assert np.all(run_mma(wmma, "rr", a, b, c, 0) == f32(1.0))


def test_float_to_tf32_rounding(wmma):
    x = np.array([1.0, 1 + 2.0 ** -11, 1 + 2.0 ** -12, -(1 + 2.0 ** -11), 1 + 3 * 2.0 ** -11,
                  np.finfo(f32).max, np.inf, -np.inf, 0.0, -0.0, 1e-40, np.pi], f32)
    out = np.empty_like(x)
    wmma.get_function("to_tf32")((1,), (32,), (out, x, i32(len(x))))
    np.testing.assert_array_equal(out, tf32_round(x))
    assert out[1] == f32(1 + 2.0 ** -10) and out[2] == 1.0 and out[3] == -f32(1 + 2.0 ** -10)
    assert out[5] == np.inf       # the largest float rounds up past TF32's largest: as cvt.rna
    nan = np.array([np.nan], f32)
    wmma.get_function("to_tf32")((1,), (32,), (out[:1], nan, i32(1)))
    assert np.isnan(out[0])


def test_fill_and_column_major_store(wmma):
    d = np.full((16, 16), np.nan, f32)
    wmma.get_function("fill_store_col")((1,), (32,), (d, f32(0.5)))
    # lane l holds logical elements e*32 + l (row-major); stored column-major = transposed
    logical = 0.5 + (np.arange(256) % 32).reshape(16, 16)
    np.testing.assert_array_equal(d, logical.T)


def test_misaligned_pointer_is_an_error(wmma):
    a = np.zeros(16 * 8 + 8, f32)
    d = np.zeros(32, f32)
    with pytest.raises(cuda_emu.KernelError, match=r"load_matrix_sync at .*wmma\.cu:\d+: pointer .* not 256-bit"):
        wmma.get_function("misaligned_load")((1,), (32,), (d, a))


def test_mma_needs_the_whole_warp(wmma, rng):
    a = rng.standard_normal((16, 8)).astype(f32)
    b = rng.standard_normal((8, 16)).astype(f32)
    d = np.zeros((16, 16), f32)
    with pytest.raises(cuda_emu.KernelError, match=r"mma_sync at .*wmma\.cu:\d+: lane 16 .* has exited"):
        wmma.get_function("mma_half_warp")((1,), (32,), (d, a, b))
    with pytest.raises(cuda_emu.KernelError, match=r"has only 16 threads"):
        wmma.get_function("mma_half_warp")((1,), (16,), (d, a, b))


def test_mma_kernels_run_as_fibers(wmma):
    assert wmma.get_function("mma_rr").uses_fibers
    assert not wmma.get_function("to_tf32").uses_fibers

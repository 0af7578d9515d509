"""The Numba CPU fast paths equal their NumPy references (numba is in the dev extra)."""
import numpy as np
import pytest

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
    conv._im2col_numba(x, k, s, p, ho, wo, cols, work=None)
    np.testing.assert_array_equal(cols, ref)
    out = np.empty_like(x)
    conv._col2im_numba(ref, k, s, p, ho, wo, out, work=None)
    np.testing.assert_allclose(out, conv.col2im_numpy(ref, x.shape, k, s, p, out_hw), rtol=1e-6, atol=1e-6)


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

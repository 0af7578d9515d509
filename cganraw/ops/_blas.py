"""Direct CBLAS GEMM on the OpenBLAS that NumPy loaded, for the one thing numpy.matmul
cannot do: accumulate into an existing output (beta = 1) without a temporary product and
a second pass over it. The phase-split transposed convolution sums four GEMMs into each
output phase; through matmul each of the last three allocated an output-sized temporary
(fresh pages every call) and added it.

`gemm_into(a, b, out, trans_a, trans_b, alpha, beta)` returns False where it cannot run
(no OpenBLAS found, a dtype other than float32/float64, a layout BLAS cannot address), and
the caller falls back to NumPy. Operands may be row-strided views (a leading dimension
larger than the row): exactly what numpy.matmul hands BLAS for such views, so a product
with beta = 0 is the same call and the same bits as matmul's.
"""
from __future__ import annotations

import ctypes
import importlib
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_fns = None


def openblas():
    """(ctypes library, (prefix, suffix)) of the OpenBLAS this process loaded, or (None, None)."""
    importlib.import_module("numpy")   # loads BLAS into this process
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None, None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", ""), ("scipy_openblas_", "")):
            if hasattr(lib, f"{prefix}get_num_threads{suffix}"):
                return lib, (prefix, suffix)
    return None, None


def _load():
    """{dtype: cblas_?gemm} from the OpenBLAS this process loaded ({} when none, or
    CGANRAW_CBLAS=0)."""
    global _fns
    if _fns is not None:
        return _fns
    _fns = {}
    if os.environ.get("CGANRAW_CBLAS", "1") == "0":
        return _fns
    lib, names = openblas()
    if lib is None:
        return _fns
    prefix, suffix = names
    index = ctypes.c_int64 if suffix == "64_" else ctypes.c_int
    for dtype, letter, scalar in ((np.float32, "s", ctypes.c_float), (np.float64, "d", ctypes.c_double)):
        candidates = ([f"scipy_cblas_{letter}gemm64_"] if suffix == "64_" else []) + \
                     [f"{prefix}cblas_{letter}gemm{suffix}", f"cblas_{letter}gemm"]
        fn = next((getattr(lib, n) for n in candidates if hasattr(lib, n)), None)
        if fn is None:
            continue
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, index, index, index, scalar, ptr, index,
                       ptr, index, scalar, ptr, index]
        fn.restype = None
        _fns[np.dtype(dtype)] = fn
    return _fns


def available(dtype=np.float32) -> bool:
    return np.dtype(dtype) in _load()


def _ld(a):
    """The leading dimension of a row-major 2-D view with unit column stride, else None."""
    if a.ndim != 2 or a.strides[1] != a.itemsize or a.strides[0] % a.itemsize:
        return None
    ld = a.strides[0] // a.itemsize
    return max(ld, a.shape[1], 1) if a.shape[0] <= 1 else (ld if ld >= a.shape[1] else None)


def gemm_into(a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> bool:
    """out = alpha op(a) @ op(b) + beta out through cblas_?gemm, in place. False (nothing
    done) where BLAS cannot take these arrays as they are."""
    if not (type(a) is np.ndarray and type(b) is np.ndarray and type(out) is np.ndarray):
        return False
    fn = _load().get(out.dtype)
    if fn is None or a.dtype != out.dtype or b.dtype != out.dtype or not out.flags.writeable:
        return False
    lda, ldb, ldc = _ld(a), _ld(b), _ld(out)
    if lda is None or ldb is None or ldc is None:
        return False
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if kb != k or out.shape != (m, n):
        raise ValueError(f"gemm: shapes {a.shape}{'ᵀ' if trans_a else ''} @ {b.shape}{'ᵀ' if trans_b else ''} "
                         f"do not give out {out.shape}")
    if m == 0 or n == 0:
        return True
    if k == 0:
        out *= out.dtype.type(beta)
        return True
    fn(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, m, n, k, alpha,
       a.ctypes.data, lda, b.ctypes.data, ldb, beta, out.ctypes.data, ldc)
    return True

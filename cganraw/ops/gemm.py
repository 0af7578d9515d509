"""GEMM: C = alpha * op(A) @ op(B) + beta * C, with op = identity or transpose.

Every dense and convolution layer funnels its heavy work through `gemm`, so one
switch picks the implementation: BLAS through `numpy.matmul` on the CPU, cuBLAS
or the hand-written SGEMM kernels (kernels/gemm.cu) on the GPU and in the emulator.
The transposes are taken as views, never copied.

    gemm   gemm_numpy (NumPy's BLAS, or cuBLAS through CuPy), gemm_cuda (kernels/gemm.cu:
           gemm_v1 naive, gemm_v2 shared-memory tiles, gemm_v3 register blocking)
Used by cganraw.ops.linear (Linear) and cganraw.ops.conv (Conv2d, ConvTranspose2d).
"""
from __future__ import annotations

import os

import numpy as np

from cganraw import backend, devicelog
from cganraw.ops import _launch


def gemm_numpy(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    xp = backend.array_module(a)
    if xp is not np and out is not None:
        # cuBLAS's own alpha and beta: one call, C accumulated in place
        return backend.cublas().gemm("T" if trans_a else "N", "T" if trans_b else "N", a, b, out=out,
                                     alpha=alpha, beta=beta)
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if out is None or beta == 0.0:
        res = xp.matmul(opa, opb, out=out)
    else:
        res = out
        if beta != 1.0:
            res *= beta
        res += xp.matmul(opa, opb) if alpha == 1.0 else alpha * xp.matmul(opa, opb)
        return res
    if alpha != 1.0:
        res *= alpha
    return res


# ---------------------------------------------------------------- CUDA kernels (kernels/gemm.cu)
GEMM_VERSIONS = (1, 2, 3)
GEMM_ENV = "CGANRAW_GEMM"
_V1_BLOCK = (32, 8)     # threadIdx.x along n (coalesced C stores)
_V2_TILE = 32           # block (32, 32), one output per thread
_V3_TILE = 64           # block 256 threads, 4x4 outputs each
_V3_THREADS = 256
_MAX_GRID_Y = 65535     # the kernels grid-stride over row tiles past this


def _operand(x, name, op):
    """A 2-D float32 operand as (C-contiguous array, flip, leading dimension): a
    transposed view (F-contiguous) is passed as its C-contiguous base with the transpose
    flag flipped, any other layout is made contiguous. Never casts."""
    if not backend.is_array(x):
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{op}: {name} must be 2-D, got shape {tuple(x.shape)}")
    if x.dtype != np.float32:
        raise TypeError(f"{op}: the SGEMM kernels take float32, got {name} of dtype {x.dtype} "
                        f"(cast it yourself, or use the numpy backend for float64)")
    if not x.flags.c_contiguous and x.flags.f_contiguous and x.shape[0] > 1 and x.shape[1] > 1:
        xt = _launch.arg(x.T, name=name)    # the transpose is C-contiguous: no copy
        return xt, True, max(1, xt.shape[1])
    x = _launch.arg(x, name=name)
    return x, False, max(1, x.shape[1])


def _launch_config(version, m, n):
    if version == 1:
        bx, by = _V1_BLOCK
        return (-(-n // bx), min(-(-m // by), _MAX_GRID_Y)), _V1_BLOCK
    if version == 2:
        t = _V2_TILE
        return (-(-n // t), min(-(-m // t), _MAX_GRID_Y)), (t, t)
    if version == 3:
        t = _V3_TILE
        return (-(-n // t), min(-(-m // t), _MAX_GRID_Y)), (_V3_THREADS,)
    raise ValueError(f"gemm_cuda: version must be one of {GEMM_VERSIONS}, got {version!r}")


def gemm_cuda(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None, version=None):
    """C = alpha * op(a) @ op(b) + beta * out through kernels/gemm.cu `gemm_v<version>`
    (None: 3) on the active kernel backend (cuda or emu). a: (M, K), or (K, M) with trans_a;
    b: (K, N), or (N, K) with trans_b; out: a C-contiguous float32 (M, N) array to write (and
    to read when beta != 0), else a new one. Transposed views are passed without copies.
    float32 only: any other dtype is a TypeError, never a silent cast."""
    version = _launch.pick_version("gemm_cuda", version, 3, GEMM_VERSIONS)
    op = f"gemm_cuda(version={version})"
    if not backend.uses_kernels():
        raise RuntimeError(f"{op} needs the 'cuda' or 'emu' backend, not {backend.current()!r}")
    for nm, x in (("a", a), ("b", b)):
        if backend.is_array(x) and x.ndim != 2:
            raise ValueError(f"{op}: {nm} must be 2-D, got shape {tuple(x.shape)}")
    a_arr, flip_a, lda = _operand(a, "a", op)
    b_arr, flip_b, ldb = _operand(b, "b", op)
    ta, tb = bool(trans_a) != flip_a, bool(trans_b) != flip_b
    m, ka = (a_arr.shape[1], a_arr.shape[0]) if ta else a_arr.shape
    kb, n = (b_arr.shape[1], b_arr.shape[0]) if tb else b_arr.shape
    if ka != kb:
        raise ValueError(f"{op}: inner dimensions differ: op(a) is {m}x{ka} (a {tuple(a.shape)}, "
                         f"trans_a={bool(trans_a)}), op(b) is {kb}x{n} (b {tuple(b.shape)}, "
                         f"trans_b={bool(trans_b)})")
    if out is None:
        out = _launch.empty((m, n))   # nothing to accumulate into: beta is moot
        beta = 0.0
    else:
        if not backend.is_array(out) or tuple(out.shape) != (m, n):
            raise ValueError(f"{op}: out must be an ({m}, {n}) array, got "
                             f"{tuple(out.shape) if backend.is_array(out) else type(out).__name__}")
        if out.dtype != np.float32:
            raise TypeError(f"{op}: out must be float32, got {out.dtype}")
        if not out.flags.c_contiguous:
            raise TypeError(f"{op}: out must be C-contiguous (the kernel writes it in place)")
        _launch.arg(out, name="out")   # right device
    if m == 0 or n == 0:
        return out
    grid, block = _launch_config(version, m, n)
    fn = _launch.function("gemm", f"gemm_v{version}")
    fn(grid, block, (a_arr, b_arr, out, _launch.i32(m), _launch.i32(n), _launch.i32(ka),
                     _launch.i32(lda), _launch.i32(ldb), _launch.i32(max(1, n)),
                     _launch.i32(int(ta)), _launch.i32(int(tb)), _launch.f32(alpha), _launch.f32(beta)))
    return out


# ---------------------------------------------------------------- dispatch
# CGANRAW_GEMM picks the implementation on the kernel backends, read once:
#   unset / "default"          cuda: cuBLAS (cupy.matmul); emu: the hand-written v3
#   "custom" | "v1"|"v2"|"v3"  the hand-written SGEMM (custom = v3)
#   "cublas" | "library" | "numpy"  the library matmul (cuBLAS on cuda; NumPy's BLAS on
#                              emu, to speed up tests of other ops)
_GEMM_CHOICES = {"": None, "default": None, "custom": 3, "v1": 1, "v2": 2, "v3": 3,
                 "cublas": "library", "library": "library", "numpy": "library", "blas": "library"}
_gemm_env = ...        # $CGANRAW_GEMM, parsed on first use
_gemm_override = None  # set_gemm_impl's name, or None


def set_gemm_impl(name):
    """Override $CGANRAW_GEMM for this process (tests); None goes back to the environment.
    Returns the previous override (None if there was none), so a test can restore it."""
    global _gemm_override
    if name is not None:
        _parse_gemm_choice(str(name), "set_gemm_impl")
    prev, _gemm_override = _gemm_override, name
    return prev


def _parse_gemm_choice(raw, where):
    key = raw.strip().lower()
    if key not in _GEMM_CHOICES:
        raise ValueError(f"{where}: {raw!r} is not a GEMM choice; use one of "
                         f"{', '.join(k for k in _GEMM_CHOICES if k)}")
    return _GEMM_CHOICES[key]


def gemm_impl():
    """What `gemm` runs on the active backend: "library" or an SGEMM version (1, 2, 3)."""
    global _gemm_env
    bk = backend.current()
    if bk == "numpy":
        return "library"
    if _gemm_override is not None:
        choice = _parse_gemm_choice(str(_gemm_override), "set_gemm_impl")
    else:
        if _gemm_env is ...:
            _gemm_env = _parse_gemm_choice(os.environ.get(GEMM_ENV, ""), GEMM_ENV)
        choice = _gemm_env
    if choice is None:
        return "library" if bk == "cuda" else 3
    return choice


def gemm(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """a: (M, K) or (K, M) if trans_a; b: (K, N) or (N, K) if trans_b -> (M, N)."""
    impl = gemm_impl()
    if impl == "library":
        if devicelog._active is not None and backend.current() != "numpy":
            m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
            devicelog.gemm(int(m), int(b.shape[0] if trans_b else b.shape[1]), int(k),
                           beta if out is not None else 0.0, a.dtype.itemsize)
        return gemm_numpy(a, b, trans_a, trans_b, alpha, beta, out)
    return gemm_cuda(a, b, trans_a, trans_b, alpha, beta, out, version=impl)

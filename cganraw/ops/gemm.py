"""GEMM: C = alpha * op(A) @ op(B) + beta * C, with op = identity or transpose.

Every dense and convolution layer funnels its heavy work through `gemm`, so one
switch picks the implementation: BLAS through `numpy.matmul` on the CPU, cuBLAS
or the hand-written SGEMM kernels (kernels/gemm.cu) on the GPU and in the emulator.
The transposes are taken as views, never copied.

    gemm   gemm_numpy (NumPy's BLAS, or cuBLAS through CuPy), gemm_cuda (kernels/gemm.cu:
           gemm_v1 naive, gemm_v2 shared-memory tiles, gemm_v3 register blocking, float4
           loads and split-K, gemm_v4 TF32 tensor cores (WMMA), double-buffered; split-K
           partials summed by gemm_splitk_reduce_v1)
Used by cganraw.ops.linear (Linear) and cganraw.ops.conv (Conv2d, ConvTranspose2d).

TF32 (`set_tf32(True)` or CGANRAW_TF32=1) lets GEMMs round their inputs to TF32's 10-bit
mantissa on tensor cores: cuBLAS on the cuda backend, gemm_v4 on emu (the same arithmetic,
emulated). Results then differ from FP32 at the 1e-3 relative level (each product's
relative error up to 2^-10). The numpy backend always computes in FP32 (or float64).
"""
from __future__ import annotations

import os

import numpy as np

from cganraw import backend, devicelog
from cganraw.ops import _blas, _launch, _workspace


def gemm_numpy(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    if out is not None and beta != 0.0 and _blas.gemm_into(a, b, out, trans_a, trans_b, alpha, beta):
        return out      # accumulated by BLAS itself: no temporary product, no second pass
    xp = backend.array_module(a)
    if xp is not np and out is not None:
        # cuBLAS's own alpha and beta: one call, C accumulated in place
        return backend.cublas().gemm("T" if trans_a else "N", "T" if trans_b else "N", a, b, out=out,
                                     alpha=alpha, beta=beta)
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if out is None and xp is np and opa.ndim == 2 and opb.ndim == 2 and a.dtype == b.dtype:
        out = _workspace.empty((opa.shape[0], opb.shape[1]), a.dtype)    # the same BLAS call, reused memory
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
GEMM_VERSIONS = (1, 2, 3, 4)
SPLITK_VERSIONS = (3, 4)   # the versions with a k_chunk argument
GEMM_ENV = "CGANRAW_GEMM"
TF32_ENV = "CGANRAW_TF32"
_V1_BLOCK = (32, 8)     # threadIdx.x along n (coalesced C stores)
_V2_TILE = 32           # block (32, 32), one output per thread
_TILE = 64              # v3 and v4: a 64 x 64 tile of C per block
_K_TILE = 16            # v3 and v4: K slice per shared tile; k_chunk is a multiple of it
_THREADS = {3: 256, 4: 128}   # v3: 4x4 outputs per thread; v4: 4 warps of 32x32 WMMA tiles
_MAX_GRID_Y = 65535     # the kernels grid-stride over row tiles past this
_REDUCE_BLOCK = 256
_REDUCE_MAX_BLOCKS = 4096
# Split-K: with fewer output tiles than SPLITK_TARGET_BLOCKS (2 per SM of a 132-SM H100),
# K is cut into chunks of at least SPLITK_MIN_K so that each split still streams a long
# K range; the partials cost splits * M * N words written and read once more.
SPLITK_TARGET_BLOCKS = 264
SPLITK_MIN_K = 512
SPLITK_MAX = 32


def splitk_plan(m, n, k, splits=None):
    """(splits, k_chunk) for a v3/v4 launch: splits None picks by shape (above), an int
    forces up to that many. k_chunk is a multiple of the K tile, and every split gets at
    least one K tile."""
    k = int(k)
    if splits is None:
        tiles = -(-m // _TILE) * -(-n // _TILE)
        splits = 1
        if tiles < SPLITK_TARGET_BLOCKS and k >= 2 * SPLITK_MIN_K:
            splits = min(-(-SPLITK_TARGET_BLOCKS // tiles), k // SPLITK_MIN_K, SPLITK_MAX)
    splits = int(splits)
    if splits < 1:
        raise ValueError(f"gemm_cuda: splits must be >= 1, got {splits}")
    if splits == 1 or k <= _K_TILE:
        return 1, max(k, 1)
    chunk = -(-k // splits)
    chunk = -(-chunk // _K_TILE) * _K_TILE
    return -(-k // chunk), chunk


def _operand(x, name, op):
    """A 2-D float32 operand as (array for the kernel's pointer, flip, leading dimension,
    stored rows, stored cols). Rows that are contiguous and evenly spaced (a C-contiguous
    array, or a column slice of one) are passed in place with their row stride; a
    transposed such view likewise with the transpose flag flipped; any other layout is made
    contiguous. Never casts."""
    if not backend.is_array(x):
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{op}: {name} must be 2-D, got shape {tuple(x.shape)}")
    if x.dtype != np.float32:
        raise TypeError(f"{op}: the SGEMM kernels take float32, got {name} of dtype {x.dtype} "
                        f"(cast it yourself, or use the numpy backend for float64)")
    for flip, view in ((False, x), (True, x.T)):
        rs = _launch.row_strided(view, name=name)
        if rs is not None:
            return rs[0], flip, rs[1], int(view.shape[0]), int(view.shape[1])
    xc = _launch.arg(x, name=name)
    return xc, False, max(1, int(x.shape[1])), int(x.shape[0]), int(x.shape[1])


def _launch_config(version, m, n):
    if version == 1:
        bx, by = _V1_BLOCK
        return (-(-n // bx), min(-(-m // by), _MAX_GRID_Y)), _V1_BLOCK
    if version == 2:
        t = _V2_TILE
        return (-(-n // t), min(-(-m // t), _MAX_GRID_Y)), (t, t)
    if version in (3, 4):
        t = _TILE
        return (-(-n // t), min(-(-m // t), _MAX_GRID_Y)), (_THREADS[version],)
    raise ValueError(f"gemm_cuda: version must be one of {GEMM_VERSIONS}, got {version!r}")


def gemm_cuda(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None, version=None,
              splits=None):
    """C = alpha * op(a) @ op(b) + beta * out through kernels/gemm.cu `gemm_v<version>`
    (None: 3) on the active kernel backend (cuda or emu). a: (M, K), or (K, M) with trans_a;
    b: (K, N), or (N, K) with trans_b; out: a C-contiguous float32 (M, N) array to write (and
    to read when beta != 0), else a new one. Transposed views are passed without copies.
    float32 only: any other dtype is a TypeError, never a silent cast. Versions 3 and 4
    split K (`splitk_plan`; `splits` forces a count) into partial products summed in a
    fixed order by gemm_splitk_reduce_v1. Version 4 rounds the inputs to TF32."""
    version = _launch.pick_version("gemm_cuda", version, 3, GEMM_VERSIONS)
    op = f"gemm_cuda(version={version})"
    if not backend.uses_kernels():
        raise RuntimeError(f"{op} needs the 'cuda' or 'emu' backend, not {backend.current()!r}")
    for nm, x in (("a", a), ("b", b)):
        if backend.is_array(x) and x.ndim != 2:
            raise ValueError(f"{op}: {nm} must be 2-D, got shape {tuple(x.shape)}")
    a_arr, flip_a, lda, ar, ac = _operand(a, "a", op)
    b_arr, flip_b, ldb, br, bc = _operand(b, "b", op)
    ta, tb = bool(trans_a) != flip_a, bool(trans_b) != flip_b
    m, ka = (ac, ar) if ta else (ar, ac)
    kb, n = (bc, br) if tb else (br, bc)
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
    if m == 0 or n == 0:
        return out
    rs = _launch.row_strided(out, name="out")
    if rs is None:
        raise TypeError(f"{op}: out must have contiguous, evenly spaced rows (a C-contiguous array or a "
                        f"column slice of one): the kernel writes it in place")
    c_arr, ldc = rs
    if splits is not None and version not in SPLITK_VERSIONS:
        raise ValueError(f"{op}: split-K needs version 3 or 4")
    fn = _gemm_function(version)
    grid, block = _launch_config(version, m, n)
    i32 = _launch.i32
    head = (a_arr, b_arr)
    dims = (i32(m), i32(n), i32(ka), i32(lda), i32(ldb))
    flags = (i32(int(ta)), i32(int(tb)))
    if version not in SPLITK_VERSIONS:
        fn(grid, block, head + (c_arr,) + dims + (i32(ldc),) + flags + (_launch.f32(alpha), _launch.f32(beta)))
        return out
    nsplit, k_chunk = splitk_plan(m, n, ka, splits)
    if nsplit == 1:
        fn(grid, block, head + (c_arr,) + dims + (i32(ldc),) + flags
           + (_launch.f32(alpha), _launch.f32(beta), i32(k_chunk)))
        return out
    _launch.element_count(nsplit * m * n, op)
    partials = _launch.empty((nsplit, m, n))            # each split's op(a) @ op(b) over its K range
    fn(grid + (nsplit,), block, head + (partials,) + dims + (i32(n),) + flags
       + (_launch.f32(1.0), _launch.f32(0.0), i32(k_chunk)))
    rgrid, rblock = _launch.grid_for(m * n, _REDUCE_BLOCK, _REDUCE_MAX_BLOCKS)
    _launch.function("gemm", "gemm_splitk_reduce_v1")(
        rgrid, rblock, (c_arr, partials, i32(m), i32(n), i32(ldc), i32(nsplit),
                        _launch.f32(alpha), _launch.f32(beta)))
    return out


def _gemm_function(version):
    try:
        return _launch.function("gemm", f"gemm_v{version}")
    except Exception as e:   # CuPy's driver error or the emulator's LookupError
        if version != 4:
            raise
        raise RuntimeError(
            "gemm_cuda(version=4): kernels/gemm.cu was compiled without gemm_v4, which needs the CUDA "
            "toolkit's <mma.h> (set CUDA_PATH to a toolkit, or install one); versions 1-3 and cuBLAS "
            f"work without it ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- dispatch
# CGANRAW_GEMM picks the implementation on the kernel backends, read once:
#   unset / "default"          cuda: cuBLAS (cupy.matmul); emu: the hand-written v3, or v4
#                              when TF32 is on (the emulated counterpart of cuBLAS TF32)
#   "custom" | "v1".."v4"      the hand-written SGEMM (custom = v3)
#   "cublas" | "library" | "numpy"  the library matmul (cuBLAS on cuda; NumPy's BLAS on
#                              emu, to speed up tests of other ops)
_GEMM_CHOICES = {"": None, "default": None, "custom": 3, "v1": 1, "v2": 2, "v3": 3, "v4": 4,
                 "cublas": "library", "library": "library", "numpy": "library", "blas": "library"}
_gemm_env = ...        # $CGANRAW_GEMM, parsed on first use
_gemm_override = None  # set_gemm_impl's name, or None
_tf32_override = None  # set_tf32's flag, or None ($CGANRAW_TF32)
_cublas_tf32 = None    # the compute type last given to CuPy (None: never set)


def set_gemm_impl(name):
    """Override $CGANRAW_GEMM for this process (tests); None goes back to the environment.
    Returns the previous override (None if there was none), so a test can restore it."""
    global _gemm_override
    if name is not None:
        _parse_gemm_choice(str(name), "set_gemm_impl")
    prev, _gemm_override = _gemm_override, name
    return prev


def set_tf32(flag):
    """Allow TF32 tensor-core GEMMs (True), forbid them (False), or go back to $CGANRAW_TF32
    (None). Returns the previous override. On cuda it switches cuBLAS's float32 compute type
    (CuPy's COMPUTE_TYPE_TF32, as CUPY_TF32=1 would); on emu the default GEMM becomes
    gemm_v4; numpy is unaffected. Changes results at the 1e-3 relative level."""
    global _tf32_override
    prev, _tf32_override = _tf32_override, (None if flag is None else bool(flag))
    return prev


def tf32_enabled():
    if _tf32_override is not None:
        return _tf32_override
    return os.environ.get(TF32_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _sync_cublas_tf32():
    """Give CuPy's matmul the float32 compute type that tf32_enabled() asks for."""
    global _cublas_tf32
    want = tf32_enabled()
    if want == _cublas_tf32:
        return
    from cupy._core import _routines_linalg as linalg
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if want else linalg.COMPUTE_TYPE_DEFAULT)
    _cublas_tf32 = want


def _parse_gemm_choice(raw, where):
    key = raw.strip().lower()
    if key not in _GEMM_CHOICES:
        raise ValueError(f"{where}: {raw!r} is not a GEMM choice; use one of "
                         f"{', '.join(k for k in _GEMM_CHOICES if k)}")
    return _GEMM_CHOICES[key]


def gemm_impl():
    """What `gemm` runs on the active backend: "library" or an SGEMM version (1..4)."""
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
        if bk == "cuda":
            return "library"
        return 4 if tf32_enabled() else 3
    return choice


def gemm(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """a: (M, K) or (K, M) if trans_a; b: (K, N) or (N, K) if trans_b -> (M, N)."""
    impl = gemm_impl()
    if impl == "library":
        if backend.current() == "cuda":
            _sync_cublas_tf32()
        if devicelog._active is not None and backend.current() != "numpy":
            m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
            devicelog.gemm(int(m), int(b.shape[0] if trans_b else b.shape[1]), int(k),
                           beta if out is not None else 0.0, a.dtype.itemsize)
        return gemm_numpy(a, b, trans_a, trans_b, alpha, beta, out)
    return gemm_cuda(a, b, trans_a, trans_b, alpha, beta, out, version=impl)

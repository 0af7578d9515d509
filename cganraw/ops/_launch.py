"""Load kernels/<family>.cu once per process and launch its kernels, on a GPU through
CuPy (backend "cuda") or on the CPU through cganraw.cuda_emu (backend "emu").

Both expose CuPy's RawModule/RawKernel call: fn(grid, block, args, shared_mem=0).
Kernels take float32 pointers and int/float scalars, so every launcher passes arrays
through `arg` (contiguous, exact dtype, else a TypeError: CuPy would not check) and
scalars through `i32`/`f32`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cganraw import backend

DEFAULT_BLOCK = 256
MAX_GRID_X = 2 ** 31 - 1
NVRTC_STD = "-std=c++17"

_modules: dict = {}


def kernel_dir() -> Path:
    """$CGANRAW_KERNEL_DIR, else kernels/ at the repository root (a checkout or an editable
    install), else the copy a wheel carries as the package cganraw._kernels."""
    env = os.environ.get("CGANRAW_KERNEL_DIR")
    if env:
        return Path(env)
    source_tree = Path(__file__).resolve().parents[2] / "kernels"
    if source_tree.is_dir():
        return source_tree
    return Path(__file__).resolve().parents[1] / "_kernels"


def kernel_path(family: str) -> Path:
    path = kernel_dir() / f"{family}.cu"
    if not path.exists():
        raise FileNotFoundError(f"kernel source {path} not found (set CGANRAW_KERNEL_DIR to the kernels/ folder)")
    return path


def compile_options() -> tuple:
    """Options for every kernel file, alike on CuPy, the emulator and the NVRTC check:
    the C++ standard, and the kernels folder for shared headers (reduce.cuh)."""
    return (NVRTC_STD, f"-I{kernel_dir()}")


def module(family: str):
    """The compiled module for kernels/<family>.cu on the active backend, built once."""
    bk = backend.current()
    key = (bk, family)
    mod = _modules.get(key)
    if mod is None:
        path = kernel_path(family)
        if bk == "cuda":
            cp = backend.cupy()
            mod = cp.RawModule(code=path.read_text(), options=compile_options())
        elif bk == "emu":
            from cganraw import cuda_emu  # noqa: PLC0415  (g++ and ctypes only when asked for)
            mod = cuda_emu.RawModule(path=str(path), options=compile_options())
        else:
            raise RuntimeError(f"kernels need the 'cuda' or 'emu' backend, not {bk!r}")
        _modules[key] = mod
    return mod


def function(family: str, name: str):
    return module(family).get_function(name)


def grid_for(n: int, block: int = DEFAULT_BLOCK, max_blocks: int | None = None):
    """(grid, block) covering n threads; with max_blocks the kernel must grid-stride."""
    blocks = max(1, -(-int(n) // block))
    if max_blocks is not None:
        blocks = min(blocks, max_blocks)
    return (min(blocks, MAX_GRID_X),), (block,)


def i32(v) -> np.int32:
    v = int(v)
    if not -2 ** 31 <= v < 2 ** 31:
        raise OverflowError(f"{v} does not fit a kernel's int argument")
    return np.int32(v)


def f32(v) -> np.float32:
    return np.float32(v)


def arg(a, dtype=np.float32, name="array"):
    """`a` as a C-contiguous array of exactly `dtype` on the active backend. A view is
    made contiguous (a copy); a different dtype is an error, never a silent cast."""
    xp = backend.get_xp()
    if not backend.is_array(a):
        raise TypeError(f"{name}: expected an array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: kernels take {np.dtype(dtype)}, got {a.dtype}")
    if backend.array_module(a) is not xp:
        raise TypeError(f"{name}: array lives on the wrong device for backend {backend.current()!r}")
    return xp.ascontiguousarray(a)


def empty(shape, dtype=np.float32):
    return backend.get_xp().empty(shape, dtype=dtype)


def zeros(shape, dtype=np.float32):
    return backend.get_xp().zeros(shape, dtype=dtype)

"""One switch for the array backend.

    numpy  NumPy reference ops on the CPU (the default without a GPU).
    cuda   CuPy arrays; ops launch the kernels in kernels/*.cu (or cuBLAS for GEMM).
    emu    NumPy arrays; ops launch the same kernels/*.cu through cganraw.cuda_emu,
           a CUDA emulator on the CPU. Slow: it exists to prove kernels in CI.

Pick one with `use(name)` or the environment variable CGANRAW_BACKEND. Read the
active array module as `backend.xp` (always through the module, since `use`
rebinds it). This is the only module of the package that imports cupy.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from cganraw import devicelog

BACKENDS = ("numpy", "cuda", "emu")
ENV_VAR = "CGANRAW_BACKEND"

xp = np              # the active array module: numpy or cupy
_name: str | None = None   # resolved lazily, so importing cganraw never touches CUDA
_cupy = None
_gpu_usable: bool | None = None


def _import_cupy():
    """Import cupy quietly; None when it is missing or broken."""
    global _cupy
    if _cupy is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import cupy
            _cupy = cupy
        except Exception:  # ImportError, or a CUDA library that fails to load
            _cupy = False
    return _cupy or None


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device answers."""
    global _gpu_usable
    if _gpu_usable is None:
        cp = _import_cupy()
        try:
            _gpu_usable = bool(cp) and cp.cuda.runtime.getDeviceCount() > 0
        except Exception:
            _gpu_usable = False
    return _gpu_usable


def default_backend() -> str:
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={env!r} is not a backend; choose one of {', '.join(BACKENDS)}")
        return env
    return "cuda" if gpu_available() else "numpy"


def use(name: str) -> str:
    """Make `name` the active backend and return it."""
    global xp, _name
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    name = name.lower()
    if name == "cuda":
        if not gpu_available():
            raise RuntimeError("backend 'cuda' needs CuPy and a usable NVIDIA GPU "
                               "(pip install -e '.[gpu]'); use 'numpy' or 'emu' instead")
        xp = _import_cupy()
    else:
        xp = np
    _name = name
    return name


def current() -> str:
    """The active backend's name, resolving the default on first use."""
    if _name is None:
        use(default_backend())
    return _name


def get_xp():
    current()
    return xp


def uses_kernels() -> bool:
    """True when ops should launch kernels/*.cu (on a GPU or in the emulator)."""
    return current() in ("cuda", "emu")


def cupy():
    """The cupy module for the GPU launchers in cganraw.ops; None without it."""
    return _import_cupy()


def cublas():
    """cupy.cublas (cuBLAS with alpha and beta), for cganraw.ops.gemm on the cuda backend."""
    import importlib
    _import_cupy()
    return importlib.import_module("cupy.cublas")


def asnumpy(a):
    """A NumPy array of `a`, copying from the GPU when needed."""
    if isinstance(a, np.ndarray):
        return a
    cp = _cupy or None
    if cp is not None and isinstance(a, cp.ndarray):
        return cp.asnumpy(a)
    return np.asarray(a)


def asarray(a, dtype=None):
    """`a` as an array of the active backend."""
    return get_xp().asarray(a, dtype=dtype)


def to_device(host, dtype=None):
    """A host array on the active backend's device: the one upload path of the training
    step, so the step census (cganraw.devicelog) counts it. On numpy, `host` itself."""
    out = get_xp().asarray(host, dtype=dtype)
    if current() != "numpy":
        devicelog.h2d(out.nbytes)
    return out


def to_host(a):
    """A device array as a NumPy array: a copy and a sync on a GPU (also counted on emu,
    whose arrays stand for a device's). The one download path of the training step."""
    if current() != "numpy":
        devicelog.d2h(getattr(a, "nbytes", 0))
    return asnumpy(a)


def is_array(a) -> bool:
    if isinstance(a, np.ndarray):
        return True
    cp = _cupy or None
    return cp is not None and isinstance(a, cp.ndarray)


def array_module(a):
    """numpy or cupy, whichever owns `a`."""
    cp = _cupy or None
    if cp is not None and isinstance(a, cp.ndarray):
        return cp
    return np

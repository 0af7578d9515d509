"""Optional Numba fast paths for the CPU ops that NumPy cannot fuse (scatter-adds,
strided copies, elementwise chains). Each is checked against its NumPy reference in
the tests. Numba is optional (`pip install -e ".[fast]"`); CGANRAW_NUMBA=0 turns the
fast paths off. Kernels are compiled on first use and cached on disk."""
from __future__ import annotations

import os

import numpy as np

_numba = None


def numba():
    """The numba module, or None when it is missing or disabled."""
    global _numba
    if _numba is None:
        _numba = False
        if os.environ.get("CGANRAW_NUMBA", "1") != "0":
            try:
                import numba as nb
                _numba = nb
            except ImportError:
                pass
    return _numba or None


def enabled() -> bool:
    return numba() is not None


def host_arrays(*arrays) -> bool:
    """True when the CPU fast paths apply: NumPy arrays on the numpy backend. The emu
    backend's arrays are NumPy arrays too, but it must take the cuda backend's path, launch
    for launch (the census and the CuPy stand-in compare the two)."""
    from cganraw import backend
    return not backend.uses_kernels() and all(type(a) is np.ndarray for a in arrays)


# Below this many elements a kernel runs on one thread: waking the other core's thread
# costs more than it saves, and on a busy machine a parallel region can stall for a
# whole scheduler tick (milliseconds) waiting for it.
PARALLEL_MIN_WORK = 1 << 20


def kernel(builder):
    """Decorator: `builder(nb, parallel)` returns the jitted function. Both the parallel
    and the serial twin are built on first use; `work` (elements touched) picks one."""
    compiled = {}

    def call(*args, work=None):
        parallel = work is None or work >= PARALLEL_MIN_WORK
        fn = compiled.get(parallel)
        if fn is None:
            fn = compiled[parallel] = builder(numba(), parallel)
        return fn(*args)
    call.__name__ = builder.__name__
    return call


def physical(a):
    """(array, channel_major) for a 4-D (N, C, H, W) array: the array itself (False) when it
    is C-contiguous, its (C, N, H, W) transpose (True) when that is, else a C-contiguous
    copy (False). Kernels take the first, C-contiguous, and index a plane as
    `a[c, n] if channel_major else a[n, c]`: contiguous rows, so the loops vectorise."""
    import numpy as np
    if a.flags.c_contiguous:
        return a, False
    t = a.transpose(1, 0, 2, 3)
    if t.flags.c_contiguous:
        return t, True
    return np.ascontiguousarray(a), False

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


# Numba's OpenMP workers spin after each parallel region (libgomp's default active wait), and
# on a machine with no spare core they hold the cores that OpenBLAS's workers and the main
# thread need next: on two cores a 0.04 ms kernel right after a GEMM took 7 ms, and the conv
# cGAN's step (width 64, batch 64) 198 ms instead of 111. So the pool is started with
# OMP_WAIT_POLICY=PASSIVE (unless the user set the variable): its workers sleep between
# regions. libgomp reads the variable once, as Numba loads it, so it is set only around that
# moment: nothing else in the process (PyTorch's own OpenMP, say) sees it.
_threads_started = False


def start_threads():
    """Start Numba's thread pool once, in the threading layer numba.config asks for, its
    OpenMP workers waiting passively. Returns the numba module, or None when it is missing
    or disabled. Raises what Numba raises when that layer cannot start."""
    global _threads_started
    nb = numba()
    if nb is None or _threads_started:
        return nb
    set_here = "OMP_WAIT_POLICY" not in os.environ
    if set_here:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        nb.get_num_threads()          # loads the layer and starts its workers
        _threads_started = True
    finally:
        if set_here:
            del os.environ["OMP_WAIT_POLICY"]
    _set_parallel_min_work(nb)
    return nb


def threading_layer():
    """The threading layer Numba's pool runs on ("tbb", "omp" or "workqueue"), or None without
    Numba or before the pool has started."""
    nb = numba()
    if nb is None:
        return None
    try:
        return nb.threading_layer()
    except ValueError:              # no layer loaded yet
        return None


def _set_parallel_min_work(nb):
    # PARALLEL_MIN_WORK for the layer just started, unless something changed it already
    global PARALLEL_MIN_WORK
    if threading_layer() == "tbb" and PARALLEL_MIN_WORK == PARALLEL_MIN_WORK_DEFAULT:
        PARALLEL_MIN_WORK = PARALLEL_MIN_WORK_TBB


def enabled() -> bool:
    return numba() is not None


def host_arrays(*arrays) -> bool:
    """True when the CPU fast paths apply: NumPy arrays on the numpy backend. The emu
    backend's arrays are NumPy arrays too, but it must take the cuda backend's path, launch
    for launch (the census and the CuPy stand-in compare the two)."""
    from cganraw import backend
    return not backend.uses_kernels() and all(type(a) is np.ndarray for a in arrays)


def host_planes(x, *params) -> bool:
    """True when a plane kernel (one task per (n, c) plane) may take x (N, C, H, W) and the
    per-channel or per-plane arrays beside it: Numba on, host arrays of one float dtype."""
    import numpy as np
    return (enabled() and host_arrays(x, *params) and x.ndim == 4
            and all(a.dtype == x.dtype for a in params) and x.dtype in (np.float32, np.float64))


# Below this many elements a kernel runs on one thread: waking the other core's thread
# costs more than it saves, and on a busy machine a parallel region can stall for a
# whole scheduler tick (milliseconds) waiting for it. On Numba's TBB layer the pool starts
# with a lower bar (start_threads sets it, unless it was changed): its workers wake sooner,
# and in-process A/B on two threads (1M / 256K / 64K elements) gave the trainer's step 64.6 /
# 60.1 / 59.9 ms, the DCGAN at width 64 33.2 / 30.7 / 29.6, the conv cGAN at width 64 100.4 /
# 98.6 / 98.1, the MLP cGAN 24.5 / 24.2 / 23.5; on OpenMP the lower bars gave the DCGAN at
# width 64 nothing and the conv cGAN +0.5-2.5%.
PARALLEL_MIN_WORK_DEFAULT = 1 << 20
PARALLEL_MIN_WORK_TBB = 1 << 16
PARALLEL_MIN_WORK = PARALLEL_MIN_WORK_DEFAULT


TWIN_SUFFIX = {True: ".parallel", False: ".serial"}


def _cache_apart(fn, parallel):
    """fn, a twin just built with cache=True, given cache files of its own. Numba names a
    cached function's files by its qualified name and keys their entries by signature, code
    and closure, not by its flags: the two twins of a builder shared each entry, and whichever
    compiled a signature first ran as both from then on (on this machine's cache, serial code
    under the parallel twin and parallel code under the serial one: the same values, other
    speeds, fixed by the cache's history). The suffix gives each twin its own files."""
    from numba.core.caching import NullCache  # Numba is loaded: fn is its
    if isinstance(getattr(fn, "_cache", None), (NullCache, type(None))):
        return fn
    fn.py_func.__qualname__ += TWIN_SUFFIX[parallel]
    fn.enable_caching()
    return fn


def kernel(builder):
    """Decorator: `builder(nb, parallel)` returns the jitted function. Both the parallel
    and the serial twin are built on first use, each with its own cache files
    (_cache_apart); `work` (elements touched) picks one. The jitted functions a kernel
    calls must be globals of its module, bound before it compiles, not variables of the
    builder's closure: Numba keys a cached function by its closure's pickled contents, and a
    jitted function pickles with its process's id, so the kernel would compile again in every
    process (ops.bias.bind_totals). `call.compiled` holds the twins built so far (by parallel)."""
    compiled = {}

    def call(*args, work=None):
        parallel = work is None or work >= PARALLEL_MIN_WORK
        fn = compiled.get(parallel)
        if fn is None:
            if parallel:
                start_threads()
            fn = compiled[parallel] = _cache_apart(builder(numba(), parallel), parallel)
        return fn(*args)
    call.__name__ = builder.__name__
    call.compiled = compiled
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


def planes(a):
    """(N, C, H, W) -> (its physical (N, C, HW) or (C, N, HW) array, channel_major), as
    physical: a view of an NCHW or channel-major array, a copy of any other layout."""
    p, cm = physical(a)
    return p.reshape(p.shape[0], p.shape[1], -1), cm


def nchw_view(a3, channel_major, shape):
    """The (N, C, H, W) = shape view of a planes array (planes' inverse)."""
    n, c, h, w = shape
    return a3.reshape(c, n, h, w).transpose(1, 0, 2, 3) if channel_major else a3.reshape(n, c, h, w)


def empty_planes_like(p3, channel_major, shape):
    """A workspace array of p3's physical layout, and the (N, C, H, W) = shape view of it: a
    kernel writes the first, the caller hands on the second in its input's layout."""
    from cganraw.ops import _workspace
    out = _workspace.empty(p3.shape, p3.dtype)
    return out, nchw_view(out, channel_major, shape)

"""Load kernels/<family>.cu once per process and launch its kernels, on a GPU through
CuPy (backend "cuda") or on the CPU through cganraw.cuda_emu (backend "emu"); and the
helpers every op's GPU launcher (`<op>_forward_cuda`, ...) shares.

Both backends expose CuPy's RawModule/RawKernel call: fn(grid, block, args, shared_mem=0).
Kernels take float32 pointers and int/float scalars, so every launcher passes arrays
through `arg` (contiguous, exact dtype, else a TypeError: CuPy would not check) and
scalars through `i32`/`f32`.

Kernel objects are looked up once per (backend, file, name) and cached: CuPy builds a new
kernel object on every RawModule.get_function. Each launch goes through a thin wrapper that
reports it to cganraw.devicelog while a census records. The few array operations the layers
need besides kernels (zeroing, fills, copies, concatenation, in-place adds) are here too, so that
every device operation of a training step passes through this module and is counted.

Kernel names: the op's dispatch function plus the version, `<op>_forward_v1`,
`<op>_backward_v2`, `adam_update_v2`; a kernel that is one pass of a multi-pass launch
puts the pass before the version (`batchnorm_forward_stats_v2`).
"""
from __future__ import annotations

import functools
import glob
import os
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from cganraw import backend, devicelog
from cganraw.ops import _workspace

DEFAULT_BLOCK = 256
MAX_GRID_X = 2 ** 31 - 1
NVRTC_STD = "-std=c++17"

_modules: dict = {}
_functions: dict = {}
_counters: dict = {}       # backend -> the block counter of the one-launch reductions (grid_counter)


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
    the C++ standard, the kernels folder for shared headers (reduce.cuh), and a CUDA
    toolkit's include folder where one is found (for <mma.h>: gemm_v4). The emulator
    finds its own <mma.h> first."""
    inc = toolkit_include_dir()
    return (NVRTC_STD, f"-I{kernel_dir()}") + ((f"-I{inc}",) if inc else ())


@functools.cache
def toolkit_include_dir():
    """A CUDA include folder holding <mma.h> and the crt/mma.h it includes (NVRTC has
    neither built in): $CUDA_PATH or $CUDA_HOME, pip's CUDA wheels, /usr/local/cuda*.
    None if there is none (then kernels/gemm.cu compiles without gemm_v4)."""
    cands = [os.path.join(os.environ[v], "include") for v in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(v)]
    for site_dir in sys.path:
        if site_dir.endswith("site-packages"):
            cands += sorted(glob.glob(os.path.join(site_dir, "nvidia", "*", "include")))
    cands += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    for d in cands:
        if os.path.isfile(os.path.join(d, "mma.h")) and os.path.isfile(os.path.join(d, "crt", "mma.h")):
            return os.path.abspath(d)
    return None


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
            from cganraw import cuda_emu
            mod = cuda_emu.RawModule(path=str(path), options=compile_options())
        else:
            raise RuntimeError(f"kernels need the 'cuda' or 'emu' backend, not {bk!r}")
        _modules[key] = mod
    return mod


class Kernel:
    """A compiled kernel, called as CuPy's: fn(grid, block, args, shared_mem=0). Reports each
    launch to cganraw.devicelog; any other attribute is the underlying kernel's."""

    __slots__ = ("raw", "name")

    def __init__(self, raw, name):
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "name", name)

    def __call__(self, grid, block, args, **kwargs):
        if devicelog._active is not None:
            devicelog.kernel(self.name, grid, block, args)
        try:
            return self.raw(grid, block, args, **kwargs)
        except Exception:
            # a launch that failed part-way (the emulator raises per kernel) may leave a
            # one-launch reduction's block counter counted up: start the next one from 0
            _counters.clear()
            raise

    def __getattr__(self, attr):
        return getattr(self.raw, attr)

    def __setattr__(self, attr, value):
        setattr(self.raw, attr, value)

    def __repr__(self):
        return f"<Kernel {self.name} of {self.raw!r}>"


def function(family: str, name: str):
    """The kernel `name` of kernels/<family>.cu on the active backend, looked up once."""
    key = (backend.current(), family, name)
    fn = _functions.get(key)
    if fn is None:
        fn = _functions[key] = Kernel(module(family).get_function(name), name)
    return fn


def forget_modules(backend_name=None):
    """Drop the compiled modules and kernels of one backend (all when None): a new CuPy or
    kernel folder is picked up on the next launch."""
    for cache in (_modules, _functions):
        for key in [k for k in cache if backend_name is None or k[0] == backend_name]:
            del cache[key]


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


def i64(v) -> np.int64:
    """A kernel's long long argument (sizes that may pass 2^31)."""
    v = int(v)
    if not -2 ** 63 <= v < 2 ** 63:
        raise OverflowError(f"{v} does not fit a kernel's long long argument")
    return np.int64(v)


def f32(v) -> np.float32:
    return np.float32(v)


def u32(v) -> np.uint32:
    v = int(v)
    if not 0 <= v < 2 ** 32:
        raise OverflowError(f"{v} does not fit a kernel's unsigned argument")
    return np.uint32(v)


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
    return contiguous(a)


def row_strided(a, name="array"):
    """(span, ld) for a 2-D array whose rows are contiguous and evenly spaced, as a
    C-contiguous array or a column slice of one is: span, a 1-D C-contiguous view of the
    memory from its first element to its last (what a kernel's pointer takes), and ld, its
    row stride in elements. None for any other layout (or an empty array)."""
    if a.ndim != 2 or a.size == 0:
        return None
    if backend.array_module(a) is not backend.get_xp():
        raise TypeError(f"{name}: array lives on the wrong device for backend {backend.current()!r}")
    rows, cols = (int(v) for v in a.shape)
    it = a.itemsize
    s0, s1 = a.strides
    if cols > 1 and s1 != it:
        return None
    ld = cols
    if rows > 1:
        if s0 % it or s0 < cols * it:
            return None
        ld = s0 // it
    xp = backend.array_module(a)
    span = xp.lib.stride_tricks.as_strided(a, shape=((rows - 1) * ld + cols,), strides=(it,))
    return span, ld


# ---------------------------------------------------------------- array operations
# Each is one device operation on a GPU (a CuPy kernel or a memset), reported to devicelog.

# Host arrays come from the workspace cache (cganraw.ops._workspace): the same sizes every
# step, so their memory is reused instead of page-faulted in afresh.

def empty(shape, dtype=np.float32):
    xp = backend.get_xp()
    return _workspace.empty(shape, dtype) if xp is np else xp.empty(shape, dtype=dtype)


def zeros(shape, dtype=np.float32):
    xp = backend.get_xp()
    out = _workspace.zeros(shape, dtype) if xp is np else xp.zeros(shape, dtype=dtype)
    devicelog.memset(out.nbytes)
    return out


def full(shape, value, dtype=np.float32):
    """An array of `value` (one fill kernel, CuPy's full)."""
    xp = backend.get_xp()
    if xp is np:
        out = _workspace.empty(shape, dtype)
        out.fill(value)
    else:
        out = xp.full(shape, value, dtype=dtype)
    devicelog.fill(out.nbytes)
    return out


def grid_counter():
    """The zeroed uint32 (1,) that one-launch reductions count their finished blocks on
    (channels.cuh ch_finish); the last block sets it back to 0. One per backend: the
    launches of a stream run one after another, so they can share it. Made (a memset) once."""
    key = backend.current()
    c = _counters.get(key)
    if c is None or backend.array_module(c) is not backend.get_xp():
        c = _counters[key] = zeros((1,), np.uint32)
    return c


def rows_strided(a, op, name):
    """(span, ld) for an (N, ...) array whose rows (axis 0) are each contiguous and evenly
    spaced, as a C-contiguous array or a channel slice of one is: a kernel reads element
    (n, r) at span[n * ld + r]. Any other layout is made contiguous first (a copy)."""
    a = arg(a, np.float32, f"{op}: {name}") if a.dtype != np.float32 or backend.array_module(a) \
        is not backend.get_xp() else a
    if a.flags.c_contiguous or a.ndim < 2 or a.size == 0:
        c = contiguous(a)
        return c, int(c.size // max(c.shape[0], 1)) if c.ndim else 1
    it, row = a.itemsize, a.size // a.shape[0]
    expect = it
    for k in range(a.ndim - 1, 0, -1):          # axes 1.. C-contiguous among themselves
        if a.shape[k] != 1 and a.strides[k] != expect:
            c = contiguous(a)
            return c, row
        expect *= a.shape[k]
    xp = backend.array_module(a)
    view = xp.lib.stride_tricks.as_strided(a, shape=(a.shape[0], row), strides=(a.strides[0], it))
    got = row_strided(view, name)
    if got is None:
        c = contiguous(a)
        return c, row
    return got


def fill_zero(a):
    """a[...] = 0 in place (a memset)."""
    a.fill(0)
    devicelog.memset(a.nbytes)
    return a


def contiguous(a):
    """`a` itself when C-contiguous, else a contiguous copy (one copy kernel)."""
    if a.flags.c_contiguous:
        return a
    xp = backend.array_module(a)
    out = _workspace.ascontiguousarray(a) if xp is np else xp.ascontiguousarray(a)
    devicelog.copy(out.nbytes)
    return out


def copy_into(dst, src):
    """dst[...] = src (one copy kernel)."""
    dst[...] = src
    devicelog.copy(dst.nbytes)
    return dst


def concatenate(arrays, axis=0):
    """The arrays joined along `axis`: one copy per array, as CuPy does for up to 8."""
    xp = backend.array_module(arrays[0])
    out = _workspace.concatenate(arrays, axis) if xp is np else xp.concatenate(arrays, axis=axis)
    for a in arrays:
        devicelog.copy(a.nbytes)
    return out


def add_into(dst, src):
    """dst += src in place (one elementwise kernel)."""
    dst += src
    devicelog.add(dst.nbytes)
    return dst


# ---------------------------------------------------------------- versions and sizes

KERNEL_VERSIONS = (1, 2)
# elementwise v2 kernels grid-stride over at most this many blocks: about 8 blocks of 256
# threads per SM on a 132-SM H100, enough to fill it; more would only add scheduling
ELEMENTWISE_MAX_BLOCKS = 1024
# kernels index with int: keep n + (threads in the grid) below 2^31
MAX_ELEMENTS = 2 ** 31 - 2 ** 20


def check_version(op, version, versions=KERNEL_VERSIONS):
    """version itself, or a ValueError naming the op and the versions it has."""
    if version not in versions:
        raise ValueError(f"{op}: kernel version must be one of {versions}, got {version!r}")
    return version


def pick_version(op, version, default, versions=KERNEL_VERSIONS):
    """A launcher's `version=None` means its default (which may depend on the shape)."""
    return check_version(op, default if version is None else version, versions)


def element_count(n, op):
    """n as the kernels' int argument, refusing sizes whose grid-stride index could overflow."""
    if n > MAX_ELEMENTS:
        raise ValueError(f"{op}: {n} elements exceed what the int-indexed kernels take ({MAX_ELEMENTS})")
    return i32(n)


def elementwise_launch(family, op, version, n, args):
    """Launch `<op>_v<version>` of kernels/<family>.cu over n elements: version 1 one
    thread per element, version 2 a bounded grid that grid-strides."""
    check_version(op, version)
    fn = function(family, f"{op}_v{version}")
    grid, block = grid_for(n, max_blocks=ELEMENTWISE_MAX_BLOCKS if version == 2 else None)
    fn(grid, block, args)


def warp_block(count, max_block=256):
    """Threads per block for a per-channel reduction over `count` values: whole warps
    (the shuffles use full masks), no more than the work, at most max_block."""
    return int(min(max_block, max(32, -(-int(count) // 32) * 32)))


# a block-per-row kernel block-strides over the rows past this many blocks
MAX_ROW_BLOCKS = 65535


def row_launch(family, op, version, rows, work, args):
    """Launch `<op>_v<version>` with one block per row (a reduction over the row's `work`
    values): min(rows, MAX_ROW_BLOCKS) blocks of warp_block(work) threads; the kernel
    block-strides over the rows."""
    if rows > 0:
        function(family, f"{op}_v{version}")((min(int(rows), MAX_ROW_BLOCKS),), (warp_block(work),), args)


def thread_per_row_launch(family, op, version, rows, args):
    """Launch `<op>_v<version>` with one thread per row (the naive reductions)."""
    if rows > 0:
        grid, block = grid_for(rows)
        function(family, f"{op}_v{version}")(grid, block, args)


# ---------------------------------------------------------------- split channel reductions
# kernels/channels.cuh: a (channels x splits) grid of CHANNEL_THREADS-thread blocks. Splits
# are picked from the shape alone (never the device), so results are the same everywhere:
# enough blocks to fill an H100 (4 per SM), each with at least CHANNEL_MIN_VALUES values.
CHANNEL_THREADS = 256
CHANNEL_ROW_CHANNELS = 128     # HW == 1: channels per block (32 lanes x 4)
CHANNEL_TARGET_BLOCKS = 528
CHANNEL_MIN_VALUES = 2048
CHANNEL_MAX_SPLITS = 64
CHANNEL_MAX_GRID_X = 65535     # the kernels grid-stride over channels past this


def channel_split_launch(n, c, hw, splits=None):
    """(grid, block, splits) for a channels.cuh kernel over an (n, c, hw) tensor; splits
    None picks by shape, an int forces it (at least 1; at most n rows when hw == 1)."""
    gx = c if hw > 1 else -(-c // CHANNEL_ROW_CHANNELS)
    if splits is None:
        per_block = n * hw if hw > 1 else n * min(c, CHANNEL_ROW_CHANNELS)
        splits = min(CHANNEL_MAX_SPLITS, -(-CHANNEL_TARGET_BLOCKS // max(gx, 1)),
                     per_block // CHANNEL_MIN_VALUES)
    splits = int(max(1, min(int(splits), n if hw == 1 else n * hw, CHANNEL_MAX_SPLITS)))
    return (max(1, min(gx, CHANNEL_MAX_GRID_X)), splits), (CHANNEL_THREADS,), splits


# ---------------------------------------------------------------- operands

def split_channels(a, op, name):
    """(N, C, HW) of an (N, C[, H, W]) array; HW = 1 for (N, C)."""
    if a.ndim < 2:
        raise ValueError(f"{op}: {name} must have shape (N, C[, H, W]), got {tuple(a.shape)}")
    n, c = int(a.shape[0]), int(a.shape[1])
    return n, c, (a.size // (n * c) if n * c else 0)


def writable(a, op, name):
    """An operand a kernel updates in place: `a` itself when it is a contiguous float32
    array; for a strided float32 view, a contiguous copy to hand to `write_back` after."""
    return arg(a, np.float32, f"{op}: {name}")


def write_back(a, ac):
    """Copy a kernel's in-place result `ac` into `a` when `writable` had to copy."""
    if ac is not a:
        a[...] = ac


# Label arrays known to lie in [0, k): checked on the host before their upload, or drawn in
# range on the device (cganraw.ops.philox). A layer or launcher given one of them skips the
# range check, which on a device array would be a min, a max and a sync. Kept by identity
# (the array object itself), a few at a time.
_CHECKED_KEPT = 64
_checked_labels: OrderedDict = OrderedDict()


def mark_labels_checked(labels, k):
    """Record that every value of `labels` lies in [0, k). Returns labels."""
    _checked_labels[id(labels)] = (labels, int(k))
    _checked_labels.move_to_end(id(labels))
    while len(_checked_labels) > _CHECKED_KEPT:
        _checked_labels.popitem(last=False)
    return labels


def labels_checked(labels, k):
    """True when `labels` itself was marked as lying in [0, k') with k' <= k."""
    entry = _checked_labels.get(id(labels))
    return entry is not None and entry[0] is labels and entry[1] <= int(k)


def check_labels_range(labels, k, what):
    """ValueError unless every label lies in [0, k); on a device array this reads back a min
    and a max (a sync), so marked arrays skip it."""
    if labels.size and not labels_checked(labels, k):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"{what} must lie in [0, {k}), got values from {lo} to {hi}")


def labels_arg(indices, k, op):
    """Integer labels (N,) in [0, k) as contiguous int32 for a kernel. The range is checked
    on the host (unlike NumPy indexing, a negative label is an error, not a row from the
    end), unless the labels were marked checked (mark_labels_checked); a batch of labels is
    tiny, and the kernels index with int."""
    if not backend.is_array(indices):
        raise TypeError(f"{op}: indices must be an integer array, got {type(indices).__name__}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"{op}: indices must have shape (N,), got {tuple(indices.shape)}")
    if indices.size and labels_checked(indices, k) and indices.dtype == np.int32:
        return arg(indices, np.int32, f"{op}: indices")
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"{op}: indices must lie in [0, {k}), got values from {lo} to {hi}")
    return arg(indices.astype(np.int32, copy=False), np.int32, f"{op}: indices")


def cached_labels_arg(indices, k, op):
    """Labels from a forward's cache: the kernel forward's own int32 labels were range-checked
    there, so no second host sync (and were one out of range, the kernels skip it, never
    touching memory out of bounds); labels from the reference's cache are checked now."""
    if backend.is_array(indices) and indices.dtype == np.int32:
        return arg(indices, np.int32, f"{op}: indices")
    return labels_arg(indices, k, op)

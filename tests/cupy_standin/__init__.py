"""A stand-in for the subset of CuPy that cganraw calls, for tests only: it lets CI run the
`cuda` backend's Python (the ops' launchers, the backend switch, the training step) on a
machine with no GPU, so that every line of that glue runs somewhere before a GPU day.

    arrays      `ndarray` holds a NumPy array; operations follow CuPy's rules: no implicit
                conversion to NumPy (`__array__` raises, as CuPy's does), no host array as an
                operand, every result a device array (0-d, never a NumPy scalar)
    kernels     `RawModule` compiles through cganraw.cuda_emu, so RawKernel launches run the
                unchanged kernels/*.cu; arguments must be device arrays or NumPy scalars
    cuBLAS      `matmul` and `cublas.gemm` are NumPy's matmul
    counting    every device operation is logged in LOG as (kind, name, bytes): kernel, gemm,
                memset, fill, copy, add (an in-place add), elementwise, reduction, h2d, d2h,
                sync, with CuPy's costs (a memset for zeros and fill(0), a fill kernel for any
                other value, one copy per array of a concatenate, a copy and a sync for every
                value read back)

Anything CuPy has that this module lacks is an AttributeError naming it, never a silent
fallback: add the function here, as CuPy defines it. Install it with `installed()`.
"""
from __future__ import annotations

import contextlib
import sys
import types
from collections import Counter

import numpy as np

from cganraw import cuda_emu
from cganraw.ops import _blas

LOG: list[tuple] = []   # (kind, name, bytes, flops)
NAME = "CuPy stand-in (NumPy arrays, cganraw.cuda_emu kernels)"


def _log(kind, name, nbytes=0, flops=0):
    LOG.append((kind, name, int(nbytes), int(flops)))


def counts(kinds=None):
    """Counter of (kind, name) over the log, optionally of some kinds only."""
    return Counter((k, n) for k, n, *_ in LOG if kinds is None or k in kinds)


def reset():
    LOG.clear()


def _missing(what):
    raise AttributeError(f"the CuPy stand-in (tests/cupy_standin) lacks {what}: add it there as CuPy defines it")


def __getattr__(name):          # module attributes CuPy has and the stand-in does not
    if name.startswith("__"):
        raise AttributeError(name)
    _missing(f"cupy.{name}")


# ---------------------------------------------------------------- arrays

def _host_error(a):
    return TypeError(f"Unsupported type {type(a)}: a NumPy array cannot be an operand of a CuPy "
                     "operation (upload it with cupy.asarray)")


def _dev(a):
    """The NumPy buffer of an operand: device arrays and scalars pass, host arrays are refused."""
    if isinstance(a, ndarray):
        return a._a
    if isinstance(a, np.ndarray):
        raise _host_error(a)
    if isinstance(a, (bool, int, float, complex, np.generic)):
        return a
    raise TypeError(f"Unsupported type {type(a)}")


def _wrap(a):
    return ndarray._wrap(np.asarray(a))


def _nbytes(*arrays):
    return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))


def _ufunc_call(name, fn, args, kwargs):
    out = kwargs.pop("out", None)
    raw = [_dev(a) for a in args]
    if out is not None:
        res = fn(*raw, out=_dev(out), **kwargs)
        _log("elementwise", name, _nbytes(*raw, res))
        return out
    res = np.asarray(fn(*raw, **kwargs))
    _log("elementwise", name, _nbytes(*raw, res))
    return _wrap(res)


def _reduction(name, fn, a, args, kwargs):
    res = np.asarray(fn(a._a, *args, **kwargs))
    _log("reduction", name, a._a.nbytes + res.nbytes)
    return _wrap(res)


class ndarray:
    """A device array: a NumPy array behind CuPy's rules."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            _missing("ndarray(memptr=..., strides=...)")
        self._a = np.empty(shape, dtype=dtype, order=order)

    @classmethod
    def _wrap(cls, a):
        obj = cls.__new__(cls)
        obj._a = a
        return obj

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        _missing(f"cupy.ndarray.{name}")

    # -------- metadata (no device work)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray._wrap(self._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"standin.ndarray(shape={self.shape}, dtype={self.dtype})"

    # -------- views
    def reshape(self, *shape, order="C"):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            return ndarray._wrap(np.reshape(self._a, shape, order=order, copy=False))
        except ValueError:
            res = np.reshape(self._a, shape, order=order)
            _log("copy", "copy", 2 * res.nbytes)
            return ndarray._wrap(res)

    def transpose(self, *axes):
        return ndarray._wrap(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return ndarray._wrap(self._a.swapaxes(a, b))

    def view(self, dtype=None):
        return ndarray._wrap(self._a.view() if dtype is None else self._a.view(dtype))

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, np.ndarray) for k in key):
            raise _host_error(next(k for k in key if isinstance(k, np.ndarray)))
        raw = tuple(k._a if isinstance(k, ndarray) else k for k in key)
        res = self._a[raw]
        if any(isinstance(k, ndarray) or isinstance(k, (list,)) for k in key):
            _log("elementwise", "take", np.asarray(res).nbytes)
        return _wrap(res)

    # -------- copies and writes
    def __setitem__(self, key, value):
        key_raw = tuple(k._a if isinstance(k, ndarray) else k for k in (key if isinstance(key, tuple) else (key,)))
        if isinstance(value, ndarray):
            self._a[key_raw] = value._a
            _log("copy", "copy", 2 * np.asarray(self._a[key_raw]).nbytes)
        elif isinstance(value, np.ndarray):
            raise _host_error(value)
        else:
            self._a[key_raw] = value
            _log("fill", "fill", np.asarray(self._a[key_raw]).nbytes)

    def fill(self, value):
        self._a.fill(value)
        if value == 0 and self._a.flags.c_contiguous:
            _log("memset", "memset", self._a.nbytes)
        else:
            _log("fill", "fill", self._a.nbytes)

    def copy(self, order="C"):
        res = self._a.copy(order=order)
        _log("copy", "copy", 2 * res.nbytes)
        return ndarray._wrap(res)

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if np.dtype(dtype) == self._a.dtype and not copy:
            return self
        res = self._a.astype(dtype, order=order)
        _log("copy" if np.dtype(dtype) == self._a.dtype else "elementwise",
             "copy" if np.dtype(dtype) == self._a.dtype else "astype", self._a.nbytes + res.nbytes)
        return ndarray._wrap(res)

    # -------- reads back to the host: a copy and a sync each
    def get(self, stream=None, order="C", out=None):
        if out is not None:
            _missing("ndarray.get(out=...)")
        _log("d2h", "d2h", self._a.nbytes)
        _log("sync", "sync")
        return np.array(self._a, copy=True)

    def _scalar(self):
        if self._a.size != 1:
            raise TypeError("only size-1 arrays can be converted to Python scalars")
        _log("d2h", "d2h", self._a.itemsize)
        _log("sync", "sync")
        return self._a.reshape(()).item()

    def item(self):
        return self._scalar()

    def __float__(self):
        return float(self._scalar())

    def __int__(self):
        return int(self._scalar())

    def __bool__(self):
        return bool(self._scalar())

    def __index__(self):
        if self._a.dtype.kind not in "iu":
            raise TypeError("only integer arrays can be indices")
        return int(self._scalar())

    def tolist(self):
        _log("d2h", "d2h", self._a.nbytes)
        _log("sync", "sync")
        return self._a.tolist()

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __iter__(self):
        _missing("iteration over a cupy.ndarray (index it instead)")

    # -------- reductions
    def sum(self, *args, **kwargs):
        return _reduction("sum", np.sum, self, args, kwargs)

    def mean(self, *args, **kwargs):
        return _reduction("mean", np.mean, self, args, kwargs)

    def min(self, *args, **kwargs):
        return _reduction("min", np.min, self, args, kwargs)

    def max(self, *args, **kwargs):
        return _reduction("max", np.max, self, args, kwargs)

    def any(self, *args, **kwargs):
        return _reduction("any", np.any, self, args, kwargs)

    def all(self, *args, **kwargs):
        return _reduction("all", np.all, self, args, kwargs)

    # -------- NumPy's protocols: CuPy dispatches NumPy ufuncs and functions to its own
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            _missing(f"numpy.{ufunc.__name__}.{method} on device arrays")
        return _ufunc_call(ufunc.__name__, ufunc, inputs, dict(kwargs))

    def __array_function__(self, func, types_, args, kwargs):
        impl = globals().get(func.__name__)
        if impl is None or not callable(impl):
            _missing(f"cupy.{func.__name__} (reached through numpy.{func.__name__})")
        return impl(*args, **kwargs)


def _operator(ufunc, name, reflected=False, inplace=False):
    if inplace:
        def op(self, other):
            raw = _dev(other)
            ufunc(self._a, raw, out=self._a)
            if name == "add" and isinstance(other, ndarray):
                _log("add", "add", 3 * self._a.nbytes)
            else:
                _log("elementwise", name, 2 * self._a.nbytes)
            return self
    elif reflected:
        def op(self, other):
            return _ufunc_call(name, ufunc, (other, self), {})
    else:
        def op(self, other):
            return _ufunc_call(name, ufunc, (self, other), {})
    return op


for _name, _uf in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("truediv", np.true_divide),
                   ("floordiv", np.floor_divide), ("mod", np.remainder), ("pow", np.power),
                   ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor)):
    setattr(ndarray, f"__{_name}__", _operator(_uf, _uf.__name__))
    setattr(ndarray, f"__r{_name}__", _operator(_uf, _uf.__name__, reflected=True))
    setattr(ndarray, f"__i{_name}__", _operator(_uf, _uf.__name__, inplace=True))
for _name, _uf in (("lt", np.less), ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal),
                   ("eq", np.equal), ("ne", np.not_equal)):
    setattr(ndarray, f"__{_name}__", _operator(_uf, _uf.__name__))
ndarray.__neg__ = lambda self: _ufunc_call("negative", np.negative, (self,), {})
ndarray.__abs__ = lambda self: _ufunc_call("absolute", np.absolute, (self,), {})
ndarray.__hash__ = None


# ---------------------------------------------------------------- module functions

float16, float32, float64 = np.float16, np.float32, np.float64
int8, int16, int32, int64 = np.int8, np.int16, np.int32, np.int64
uint8, uint32, uint64, bool_ = np.uint8, np.uint32, np.uint64, np.bool_
dtype, pi, inf, nan, newaxis = np.dtype, np.pi, np.inf, np.nan, None


def _upload(a, dtype=None):
    res = np.array(a, dtype=dtype, copy=True, order="K")     # as cupy.asarray: the layout is kept
    _log("h2d", "h2d", res.nbytes)
    return ndarray._wrap(res)


def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None else a.astype(dtype, copy=False)
    return _upload(a, dtype)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        return obj.astype(obj.dtype if dtype is None else dtype, copy=bool(copy))
    return _upload(obj, dtype)


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        return _upload(a, dtype)
    if a._a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    res = np.ascontiguousarray(a._a, dtype=dtype)
    _log("copy", "copy", a._a.nbytes + res.nbytes)
    return ndarray._wrap(res)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def empty(shape, dtype=float, order="C"):
    return ndarray._wrap(np.empty(shape, dtype=dtype, order=order))


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return ndarray._wrap(np.empty_like(_dev(a), dtype=dtype, shape=shape))


def zeros(shape, dtype=float, order="C"):
    res = np.zeros(shape, dtype=dtype, order=order)
    _log("memset", "memset", res.nbytes)
    return ndarray._wrap(res)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    res = np.zeros_like(_dev(a), dtype=dtype, shape=shape)
    _log("memset", "memset", res.nbytes)
    return ndarray._wrap(res)


def full(shape, fill_value, dtype=None, order="C"):
    res = np.full(shape, fill_value, dtype=dtype, order=order)
    _log("fill", "fill", res.nbytes)
    return ndarray._wrap(res)


def ones(shape, dtype=float, order="C"):
    return full(shape, 1, dtype, order)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    res = np.ones_like(_dev(a), dtype=dtype, shape=shape)
    _log("fill", "fill", res.nbytes)
    return ndarray._wrap(res)


finfo = np.finfo        # CuPy re-exports NumPy's: host metadata, no device work


def arange(*args, dtype=None):
    res = np.arange(*args, dtype=dtype)
    _log("elementwise", "arange", res.nbytes)
    return ndarray._wrap(res)


def _ufunc(fn):
    def call(*args, **kwargs):
        return _ufunc_call(fn.__name__, fn, args, dict(kwargs))
    call.__name__ = fn.__name__
    return call


for _uf in (np.add, np.subtract, np.multiply, np.divide, np.true_divide, np.negative, np.absolute, np.abs,
            np.exp, np.log, np.log1p, np.expm1, np.sqrt, np.square, np.sign, np.tanh, np.maximum, np.minimum,
            np.isnan, np.isfinite, np.isinf, np.less, np.greater, np.equal, np.logical_and, np.logical_or,
            np.logical_not, np.remainder, np.floor_divide, np.power, np.sin, np.cos):
    globals()[_uf.__name__] = _ufunc(_uf)
abs = globals()["absolute"]


def where(condition, x, y):
    return _ufunc_call("where", np.where, (condition, x, y), {})


def clip(a, a_min, a_max, out=None):
    return _ufunc_call("clip", np.clip, (a, a_min, a_max), {} if out is None else {"out": out})


def matmul(a, b, out=None):
    ra, rb = _dev(a), _dev(b)
    res = np.matmul(ra, rb, out=None if out is None else _dev(out))
    _log("gemm", "cublas_sgemm", _nbytes(ra, rb, res), 2 * ra.shape[0] * ra.shape[1] * rb.shape[-1])
    return out if out is not None else _wrap(res)


def concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    if out is not None or dtype is not None:
        _missing("concatenate(out=..., dtype=...)")
    arrays = list(arrays)
    if len(arrays) > 8:
        _missing("concatenate of more than 8 arrays (CuPy's single-kernel path, with uploads)")
    raw = [_dev(a) for a in arrays]
    for r in raw:
        _log("copy", "copy", 2 * r.nbytes)
    return _wrap(np.concatenate(raw, axis=axis))


def stack(arrays, axis=0, out=None):
    return concatenate([expand_dims(a, axis) for a in arrays], axis=axis, out=out)


def expand_dims(a, axis):
    return ndarray._wrap(np.expand_dims(_dev(a), axis))


def split(a, indices_or_sections, axis=0):
    return [ndarray._wrap(p) for p in np.split(_dev(a), indices_or_sections, axis=axis)]


def broadcast_to(a, shape):
    return ndarray._wrap(np.broadcast_to(_dev(a), shape))


def take_along_axis(a, indices, axis):
    res = np.take_along_axis(_dev(a), _dev(indices), axis)
    _log("elementwise", "take_along_axis", res.nbytes)
    return _wrap(res)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


# ---------------------------------------------------------------- kernels

class RawKernel:
    def __init__(self, emu_kernel, name):
        self._k, self.name = emu_kernel, name

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._k.max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        self._k.max_dynamic_shared_size_bytes = value

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        raw = []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                raise TypeError(f"kernel {self.name!r} argument {i}: {_host_error(a)}")
            raw.append(a._a if isinstance(a, ndarray) else a)
        self._k(grid, block, tuple(raw), shared_mem=shared_mem)
        _log("kernel", self.name, _nbytes(*raw))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        _missing(f"cupy.RawKernel.{name}")


class RawModule:
    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if jitify or enable_cooperative_groups:
            _missing("RawModule(jitify=..., enable_cooperative_groups=...)")
        self._mod = cuda_emu.RawModule(code=code, path=path, options=tuple(options),
                                       name_expressions=name_expressions)

    def get_function(self, name):
        return RawKernel(self._mod.get_function(name), name)

    def compile(self, log_stream=None):
        return None


# ---------------------------------------------------------------- cuBLAS and the runtime

def _gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    ra, rb = _dev(a), _dev(b)
    opa = ra.T if transa in ("T", 1) else ra
    opb = rb.T if transb in ("T", 1) else rb
    if out is None:
        _missing("cublas.gemm without out= (CuPy returns an F-ordered array)")
    ro = _dev(out)
    if beta and _blas.gemm_into(ra, rb, ro, transa in ("T", 1), transb in ("T", 1), alpha, beta):
        pass    # accumulated by BLAS as the emu backend's library GEMM does (ops/_blas.py): the same bits
    elif beta:
        prod = np.matmul(opa, opb)
        ro *= ro.dtype.type(beta)
        ro += ro.dtype.type(alpha) * prod if alpha != 1.0 else prod
    else:
        prod = np.matmul(opa, opb)
        ro[...] = prod if alpha == 1.0 else ro.dtype.type(alpha) * prod
    _log("gemm", "cublas_sgemm", _nbytes(ra, rb, ro) + (ro.nbytes if beta else 0),
         2 * opa.shape[0] * opa.shape[1] * opb.shape[1] + (ro.size if beta else 0))
    return out


def _module(name, attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)

    def missing(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        _missing(f"{name}.{attr}")
    mod.__getattr__ = missing
    return mod


class _Device:
    def __init__(self, device=0):
        self.id = int(device)
        self.compute_capability = "90"

    def synchronize(self):
        _log("sync", "sync")

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_PROPERTIES = {"name": NAME.encode(), "totalGlobalMem": 80 << 30, "multiProcessorCount": 132, "major": 9,
               "minor": 0, "clockRate": 1_980_000, "memoryClockRate": 2_619_000, "memoryBusWidth": 5120,
               "l2CacheSize": 50 << 20, "sharedMemPerBlockOptin": 227 << 10}

runtime = _module("cupy.cuda.runtime", {
    "getDeviceCount": lambda: 1, "driverGetVersion": lambda: 12040, "runtimeGetVersion": lambda: 12040,
    "getDeviceProperties": lambda device: dict(_PROPERTIES), "deviceSynchronize": lambda: _log("sync", "sync")})
cuda = _module("cupy.cuda", {"runtime": runtime, "Device": _Device, "is_available": lambda: True})
cublas = _module("cupy.cublas", {"gemm": _gemm})
COMPUTE_TYPE = {"float32": "default"}     # set_compute_type's record (the stand-in computes in FP32)


def _set_compute_type(dtype, compute_type):
    COMPUTE_TYPE[np.dtype(dtype).name] = compute_type


_routines_linalg = _module("cupy._core._routines_linalg", {
    "COMPUTE_TYPE_DEFAULT": "default", "COMPUTE_TYPE_TF32": "tf32", "COMPUTE_TYPE_PEDANTIC": "pedantic",
    "set_compute_type": _set_compute_type})
_core = _module("cupy._core", {"_routines_linalg": _routines_linalg})


def _as_strided(x, shape=None, strides=None):
    return ndarray._wrap(np.lib.stride_tricks.as_strided(_dev(x), shape=shape, strides=strides))


stride_tricks = _module("cupy.lib.stride_tricks", {"as_strided": _as_strided})
lib = _module("cupy.lib", {"stride_tricks": stride_tricks})
__version__ = "13.0.0+standin"

_SUBMODULES = {"cupy.cuda": cuda, "cupy.cuda.runtime": runtime, "cupy.cublas": cublas, "cupy._core": _core,
               "cupy._core._routines_linalg": _routines_linalg, "cupy.lib": lib, "cupy.lib.stride_tricks": stride_tricks}


@contextlib.contextmanager
def installed():
    """`import cupy` gives this stand-in inside the block; cganraw's backend and kernel caches
    are reset on the way in and out, and the previous backend restored."""
    from cganraw import backend
    from cganraw.ops import _launch

    saved_modules = {k: sys.modules.get(k) for k in ("cupy", *_SUBMODULES)}
    saved_state = (backend._cupy, backend._gpu_usable, backend._name, backend.xp)
    sys.modules["cupy"] = sys.modules[__name__]
    sys.modules.update(_SUBMODULES)
    backend._cupy, backend._gpu_usable = None, None
    _launch.forget_modules("cuda")
    try:
        yield sys.modules[__name__]
    finally:
        for k, v in saved_modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        backend._cupy, backend._gpu_usable, backend._name, backend.xp = saved_state
        _launch.forget_modules("cuda")

"""RawModule / RawKernel for the CPU emulator, mirroring CuPy's classes of the same names."""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import threading

import numpy as np

from . import _compile

ORDERS = ("forward", "reverse", "random")
MAX_DYNAMIC_SHARED = 227 * 1024       # sm_90 opt-in limit per block (sm_80: 163 KiB)
DEFAULT_DYNAMIC_SHARED = 48 * 1024    # without raising max_dynamic_shared_size_bytes

_DTYPES = {k: np.dtype(v) for k, v in {
    "i8": np.int8, "u8": np.uint8, "i16": np.int16, "u16": np.uint16, "i32": np.int32, "u32": np.uint32,
    "i64": np.int64, "u64": np.uint64, "f32": np.float32, "f64": np.float64, "b8": np.bool_}.items()}
_C_NAMES = {"i8": "signed char", "u8": "unsigned char", "i16": "short", "u16": "unsigned short",
            "i32": "int", "u32": "unsigned int", "i64": "long long", "u64": "unsigned long long",
            "f32": "float", "f64": "double", "b8": "bool"}


class KernelError(RuntimeError):
    """A kernel failed while running: divergent barrier, deadlock, __trap, assert, fault."""


class _LaunchCfg(ctypes.Structure):  # mirrors __emu::LaunchCfg in cuda_emu.h
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3),
                ("shared_bytes", ctypes.c_uint64), ("seed", ctypes.c_uint64),
                ("order", ctypes.c_int32), ("workers", ctypes.c_int32),
                ("strict", ctypes.c_int32), ("fibers", ctypes.c_int32)]


# ---------------------------------------------------------------- settings
# Precedence: per-call keyword > `with settings(...)` > set_*() > environment > default.
# the default is only ever read and copied, never mutated: settings() sets a new dict
_ctx: contextvars.ContextVar[dict] = contextvars.ContextVar("cuda_emu_settings", default={})  # noqa: B039
_global: dict = {}


def set_order(order: str | None, seed: int | None = None) -> None:
    """Thread order for later launches in this process: 'forward', 'reverse' or 'random'
    (None: back to $EMU_ORDER, default 'random'). The seed makes 'random' repeatable."""
    if order is not None:
        _check_order(order)
    _global["order"] = order
    if seed is not None or order is None:
        _global["seed"] = seed


def set_strict_barriers(strict: bool | None) -> None:
    """True: a barrier that some threads exited before reaching is an error (see README)."""
    _global["strict"] = strict


def set_workers(n: int | None) -> None:
    """OS threads that run blocks in parallel (default $EMU_WORKERS or 1)."""
    _global["workers"] = n


@contextlib.contextmanager
def settings(**kw):
    """Temporarily override order=, seed=, strict=, workers= for launches in this context."""
    for k in kw:
        if k not in ("order", "seed", "strict", "workers"):
            raise TypeError(f"unknown cuda_emu setting {k!r}")
    if kw.get("order") is not None:
        _check_order(kw["order"])
    token = _ctx.set({**_ctx.get(), **{k: v for k, v in kw.items() if v is not None}})
    try:
        yield
    finally:
        _ctx.reset(token)


def order(order: str, seed: int | None = None):
    """Context manager: `with cuda_emu.order("reverse"): ...`."""
    return settings(order=order, seed=seed)


def _truthy(s: str) -> bool:
    return s.strip().lower() not in ("", "0", "false", "no", "off")


def _check_order(o):
    if o not in ORDERS:
        raise ValueError(f"thread order {o!r} is not one of {', '.join(ORDERS)}")


def _setting(name, call_value, env, default, conv):
    if call_value is not None:
        return call_value
    ctx = _ctx.get()
    if name in ctx:
        return ctx[name]
    if _global.get(name) is not None:
        return _global[name]
    raw = os.environ.get(env, "").strip()
    return conv(raw) if raw else default


def current_settings(order=None, seed=None) -> dict:
    o = _setting("order", order, "EMU_ORDER", "random", str.lower)
    _check_order(o)
    return {
        "order": o,
        "seed": int(_setting("seed", seed, "EMU_SEED", 0, int)),
        "strict": bool(_setting("strict", None, "EMU_STRICT_BARRIERS", False, _truthy)),
        "workers": max(1, int(_setting("workers", None, "EMU_WORKERS", 1, int))),
    }


# ---------------------------------------------------------------- modules and kernels
class RawModule:
    """CUDA source compiled for the emulator: `RawModule(path=...)` or `RawModule(code=..., name=...)`.

    options: NVRTC-style options; -D, -U and -I are honoured, code generation options ignored.
    name_expressions: template kernels to instantiate, e.g. ("scale<float>",).
    """

    def __init__(self, code: str | None = None, *, path: str | None = None, options=(),
                 name_expressions=None, name: str | None = None, backend=None,
                 translate_cucomplex=False, enable_cooperative_groups=False, jitify=False):
        if (code is None) == (path is None):
            raise TypeError("RawModule needs exactly one of code= or path=")
        if path is not None:
            self.path = os.path.abspath(path)
            code = _compile.read_text(self.path)
        else:
            self.path = os.path.abspath(name or "<cuda_emu code>.cu")
        self.code = code
        self.options = tuple(options or ())
        self.name_expressions = tuple(name_expressions or ())
        self._lib = _compile.load(code, self.path, self.options, self.name_expressions)
        self._kernels: dict[str, RawKernel] = {}

    @property
    def kernel_names(self) -> list[str]:
        return list(self._lib.kernels)

    def get_function(self, name: str) -> RawKernel:
        k = self._kernels.get(name)
        if k is None:
            if name not in self._lib.kernels:
                raise LookupError(f"cuda_emu: no kernel {name!r} in {self.path}; it defines: "
                                     f"{', '.join(self._lib.kernels) or 'none'}")
            k = self._kernels[name] = RawKernel._from_library(self._lib, name)
        return k


class RawKernel:
    """One kernel; call it as kernel(grid, block, args, shared_mem=0), as with CuPy."""

    def __init__(self, code: str, name: str, options=(), *, source_name: str | None = None, **kw):
        mod = RawModule(code=code, options=options, name=source_name, **kw)
        self.__dict__.update(mod.get_function(name).__dict__)

    @classmethod
    def _from_library(cls, lib: _compile.Library, name: str) -> RawKernel:
        self = cls.__new__(cls)
        self.name = name
        self._lib = lib
        self._index, self.param_names, self.param_codes, self.uses_fibers = lib.kernels[name]
        self._launch = lib.lib.cuda_emu_launch
        self.max_dynamic_shared_size_bytes = DEFAULT_DYNAMIC_SHARED
        # CUDA's void** kernelParams: argv[i] points at slot i (8 bytes) or at a struct buffer.
        # They are reused by every launch, under _launch_lock.
        n = len(self.param_codes)
        self._slots = (ctypes.c_uint64 * max(n, 1))()
        self._argv = (ctypes.c_void_p * max(n, 1))()
        self._structs = {}
        for i, code in enumerate(self.param_codes):
            self._argv[i] = ctypes.addressof(self._slots) + 8 * i
            if not code.startswith("*") and code not in _DTYPES:
                buf = self._structs[i] = ctypes.create_string_buffer(max(int(code[1:]), 8))
                self._argv[i] = ctypes.addressof(buf)
        self._cfg = _LaunchCfg()
        return self

    @property
    def source_file(self) -> str:
        return self._lib.source_file

    def __repr__(self):
        return f"<cuda_emu.RawKernel {self.name}({', '.join(self._describe_param(i) for i in range(len(self.param_codes)))})>"

    def _describe_param(self, i: int) -> str:
        code = self.param_codes[i]
        ctype = (_C_NAMES.get(code[1:], "void" if code == "*void" else f"{code[2:]}-byte struct") + "*") \
            if code.startswith("*") else _C_NAMES.get(code, f"{code[1:]}-byte struct")
        return f"{ctype} {self.param_names[i]}".strip()

    def __call__(self, grid, block, args, *, shared_mem: int = 0, stream=None,
                 enable_cooperative_groups: bool = False, order: str | None = None,
                 seed: int | None = None):
        g = _dims(self.name, "grid", grid)
        b = _dims(self.name, "block", block)
        _check_launch(self.name, g, b)
        if not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
            raise ValueError(f"kernel {self.name!r}: shared_mem must be an int >= 0, got {shared_mem!r}")
        limit = min(int(self.max_dynamic_shared_size_bytes), MAX_DYNAMIC_SHARED)
        if shared_mem > limit:
            raise ValueError(
                f"kernel {self.name!r}: {shared_mem} bytes of dynamic shared memory exceed the limit of "
                f"{limit} (48 KiB unless kernel.max_dynamic_shared_size_bytes is raised; at most "
                f"{MAX_DYNAMIC_SHARED})")
        st = current_settings(order, seed)
        with _launch_lock:
            self._pack(args)
            c = self._cfg
            c.grid[0], c.grid[1], c.grid[2] = g
            c.block[0], c.block[1], c.block[2] = b
            c.shared_bytes = int(shared_mem)
            c.seed = st["seed"] & (2**64 - 1)
            c.order = ORDERS.index(st["order"])
            c.workers = st["workers"]
            c.strict = int(st["strict"])
            c.fibers = int(self.uses_fibers)
            rc = self._launch(self._index, ctypes.byref(c), self._argv)
        if rc:
            msg = self._lib.lib.cuda_emu_last_error().decode(errors="replace")
            raise KernelError(f"cuda_emu: {msg} [{self.source_file}]")

    def _pack(self, args):
        """Checks every argument against the kernel's parameter types and writes it to its slot."""
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel {self.name!r}: args must be a tuple, got {type(args).__name__}")
        n = len(self.param_codes)
        if len(args) != n:
            raise TypeError(f"kernel {self.name!r} takes {n} argument(s) "
                            f"({', '.join(self._describe_param(i) for i in range(n))}), got {len(args)}")
        slots = self._slots
        for i, (a, code) in enumerate(zip(args, self.param_codes)):
            if code[0] == "*":
                slots[i] = self._pointer(i, a, code[1:])
            elif code in _DTYPES:
                if not (isinstance(a, np.generic) and a.dtype == _DTYPES[code]):
                    self._bad(i, f"a numpy.{np.dtype(_DTYPES[code]).name} scalar", a)
                slots[i] = int.from_bytes(a.tobytes(), "little")
            else:  # struct passed by value: numpy void/structured scalar or bytes of its size
                size = int(code[1:])
                raw = a.tobytes() if isinstance(a, np.generic) else a if isinstance(a, (bytes, bytearray)) else None
                if raw is None or len(raw) != size:
                    self._bad(i, f"a {size}-byte numpy structured scalar", a)
                ctypes.memmove(self._structs[i], bytes(raw), size)

    def _pointer(self, i, a, elem):
        if not isinstance(a, np.ndarray):
            self._bad(i, "a numpy array" if elem not in _DTYPES else f"a C-contiguous numpy.{np.dtype(_DTYPES[elem]).name} array", a)
        if elem in _DTYPES:
            if a.dtype != _DTYPES[elem]:
                self._bad(i, f"a C-contiguous numpy.{np.dtype(_DTYPES[elem]).name} array", a)
        elif elem.startswith("s") and a.nbytes % int(elem[1:]):
            self._bad(i, f"an array whose size is a multiple of {elem[1:]} bytes", a)
        if not a.flags.c_contiguous:
            self._bad(i, "a C-contiguous array", a)
        return a.__array_interface__["data"][0]

    def _bad(self, i, expected, got):
        if isinstance(got, np.ndarray):
            desc = f"numpy.{got.dtype.name} array of shape {got.shape}" + \
                ("" if got.flags.c_contiguous else " (not C-contiguous)")
        elif isinstance(got, np.generic):
            desc = f"numpy.{got.dtype.name} scalar {got!r}"
        else:
            desc = f"Python {type(got).__name__} {got!r}"[:120]
        raise TypeError(f"kernel {self.name!r} argument {i} ({self._describe_param(i)}): "
                        f"expected {expected}, got {desc}")


_launch_lock = threading.Lock()


def _dims(kernel, what, v) -> tuple[int, int, int]:
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if t is None or not 1 <= len(t) <= 3 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in t):
        raise ValueError(f"kernel {kernel!r}: {what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
    return tuple(int(x) for x in t) + (1,) * (3 - len(t))


def _check_launch(kernel, g, b):
    problems = []
    if min(g) < 1 or min(b) < 1:
        problems.append("every grid and block dimension must be >= 1")
    if g[0] > 2**31 - 1 or g[1] > 65535 or g[2] > 65535:
        problems.append("grid must be at most (2147483647, 65535, 65535)")
    if b[0] > 1024 or b[1] > 1024 or b[2] > 64:
        problems.append("block must be at most (1024, 1024, 64)")
    if b[0] * b[1] * b[2] > 1024:
        problems.append(f"a block has {b[0] * b[1] * b[2]} threads, more than 1024")
    if problems:
        raise ValueError(f"kernel {kernel!r}: bad launch grid={g} block={b}: {'; '.join(problems)}")

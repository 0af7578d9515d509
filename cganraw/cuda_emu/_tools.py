"""Checks around the emulator: AddressSanitizer runs, NVRTC compiles and ptxas reports.

None of them needs a GPU.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import re
import site
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

from ._compile import CompileError

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- AddressSanitizer
@functools.cache
def asan_library() -> str:
    """Path of gcc's libasan.so, for LD_PRELOAD."""
    try:
        path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"cannot ask gcc for libasan.so: {e}") from e
    if not os.path.isabs(path) or not os.path.exists(path):
        raise RuntimeError("gcc has no libasan.so (install the libasan package of this gcc)")
    return os.path.realpath(path)


def run_under_asan(code: str, *, env: dict | None = None, timeout: float = 600,
                   cwd: str | None = None) -> subprocess.CompletedProcess:
    """Runs `python -c code` with libasan preloaded and CUDA_EMU_SANITIZE=address, so that
    kernels are built with -fsanitize=address. Returns the CompletedProcess (text output);
    ASan reports land in its stderr with the .cu file and line."""
    exe = sys.executable
    with open(exe, "rb") as f:
        if f.read(4) != b"\x7fELF":  # a shim script would get the preload instead of python
            raise RuntimeError(f"{exe} is not an ELF binary; run the real interpreter")
    e = dict(os.environ)
    e.update(env or {})
    e["LD_PRELOAD"] = " ".join(p for p in (asan_library(), e.get("LD_PRELOAD", "")) if p)
    e["CUDA_EMU_SANITIZE"] = "address"
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, e.get("PYTHONPATH", "")) if p)
    return subprocess.run([exe, "-c", code], env=e, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- NVRTC
class NvrtcError(CompileError):
    """NVRTC rejected a .cu file; the message holds its log."""


def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages()) + [site.getusersitepackages(), sysconfig.get_paths()["purelib"]]
    dirs += [p for p in sys.path if p.endswith("site-packages")]
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


@functools.cache
def nvrtc_library() -> str | None:
    """Path of a libnvrtc.so: $CGANRAW_NVRTC, a pip wheel (nvidia-cuda-nvrtc-cu12 or the
    CUDA 13 wheel), a CUDA toolkit, or the loader's search path. None if there is none."""
    cands = [os.environ.get("CGANRAW_NVRTC", "")]
    for d in _site_dirs():
        cands += sorted(glob.glob(os.path.join(d, "nvidia", "*", "lib", "libnvrtc.so*")), reverse=True)
    for pat in ("/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/local/cuda*/targets/*/lib/libnvrtc.so*",
                "/usr/lib/x86_64-linux-gnu/libnvrtc.so*", "/usr/lib/aarch64-linux-gnu/libnvrtc.so*"):
        cands += sorted(glob.glob(pat), reverse=True)
    for c in cands:
        if c and os.path.isfile(c) and ".alt." not in c and "builtins" not in c:
            return c
    import ctypes.util
    return ctypes.util.find_library("nvrtc")


@functools.cache
def _nvrtc():
    path = nvrtc_library()
    if path is None:
        raise FileNotFoundError("no libnvrtc.so found: pip install nvidia-cuda-nvrtc-cu12, "
                                "or set CGANRAW_NVRTC to its path")
    # libnvrtc dlopens its builtins library by soname; load it from the same folder first.
    for b in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*"))):
        if ".alt." not in b:
            ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
            break
    lib = ctypes.CDLL(path)
    P, c_size = ctypes.c_void_p, ctypes.c_size_t
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(P), ctypes.c_char_p, ctypes.c_char_p,
                                       ctypes.c_int, P, P]
    lib.nvrtcCompileProgram.argtypes = [P, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    for f in ("nvrtcGetProgramLogSize", "nvrtcGetPTXSize", "nvrtcGetCUBINSize"):
        getattr(lib, f).argtypes = [P, ctypes.POINTER(c_size)]
    for f in ("nvrtcGetProgramLog", "nvrtcGetPTX", "nvrtcGetCUBIN"):
        getattr(lib, f).argtypes = [P, ctypes.c_char_p]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(P)]
    lib.nvrtcAddNameExpression.argtypes = [P, ctypes.c_char_p]
    return lib


def nvrtc_version() -> tuple[int, int]:
    lib = _nvrtc()
    a, b = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(a), ctypes.byref(b))
    return a.value, b.value


@dataclass
class NvrtcResult:
    path: str
    arch: str
    options: tuple
    log: str              # warnings, if any
    binary: bytes         # CUBIN for sm_XX, PTX for compute_XX
    version: tuple


def cupy_options(arch: str, options=()) -> tuple:
    """The options CuPy's RawModule hands NVRTC: the caller's, then -ftz=true
    (compile_with_cache), --device-as-default-execution-space (NVRTC >= 12) and -arch."""
    opts = tuple(options) + ("-ftz=true",)
    if nvrtc_version()[0] >= 12:
        opts += ("--device-as-default-execution-space",)
    return opts + (f"-arch={arch}",)


def nvrtc_check(path: str | None = None, *, code: str | None = None, arch: str = "sm_80",
                options=(), name_expressions=()) -> NvrtcResult:
    """Compiles a .cu file with NVRTC the way cupy.RawModule would on a GPU of `arch`
    (sm_80, sm_90, ... or compute_XX), without a GPU. Raises NvrtcError with the log."""
    if (code is None) == (path is None):
        raise TypeError("nvrtc_check needs exactly one of path or code=")
    if path is not None:
        path = os.path.abspath(path)
        with open(path, encoding="utf-8") as f:
            code = f.read()
    name = path or "<code>.cu"
    lib = _nvrtc()
    opts = cupy_options(arch, options)
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None)
    if rc:
        raise NvrtcError(f"nvrtcCreateProgram failed: {lib.nvrtcGetErrorString(rc).decode()}")
    try:
        for e in name_expressions:
            lib.nvrtcAddNameExpression(prog, e.encode())
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        n = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if rc:
            raise NvrtcError(f"NVRTC ({lib.nvrtcGetErrorString(rc).decode()}) for {arch} with "
                             f"{' '.join(opts)}:\n{log}")
        cubin = arch.startswith("sm_")
        size_f, get_f = (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX)
        size_f(prog, ctypes.byref(n))
        out = ctypes.create_string_buffer(n.value)
        get_f(prog, out)
        return NvrtcResult(name, arch, opts, log, out.raw, nvrtc_version())
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


# ---------------------------------------------------------------- ptxas
def _nvcc() -> str:
    for c in (os.environ.get("NVCC", ""), "nvcc", "/usr/local/cuda/bin/nvcc"):
        if c and (os.path.isfile(c) or subprocess.run(["which", c], capture_output=True).returncode == 0):
            return c
    raise FileNotFoundError("nvcc not found (set NVCC)")


def ptxas_report(path: str, arch: str = "sm_80", options=()) -> list[dict]:
    """Per-kernel resource use from `nvcc -arch=<arch> -cubin -Xptxas -v`: a list of dicts
    with name, arch, registers, spill_stores, spill_loads, stack_frame, smem, cmem, barriers."""
    path = os.path.abspath(path)
    with tempfile.TemporaryDirectory() as d:
        cmd = [_nvcc(), f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-ftz=true", *options,
               "-o", os.path.join(d, "out.cubin"), path]
        r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise CompileError(f"nvcc failed ({' '.join(cmd)}):\n{r.stderr.strip()}")
    return parse_ptxas(r.stdout + r.stderr)


def parse_ptxas(text: str) -> list[dict]:
    kernels, cur, props_for = [], None, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(\w+)'", line)
        if m:
            cur = {"name": m.group(1), "arch": m.group(2), "registers": 0, "spill_stores": 0,
                   "spill_loads": 0, "stack_frame": 0, "smem": 0, "cmem": 0, "barriers": 0}
            kernels.append(cur)
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            props_for = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur is not None and props_for == cur["name"]:
            cur["stack_frame"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
            continue
        if "Used" in line and cur is not None:
            for key, pat in (("registers", r"Used (\d+) registers"), ("barriers", r"used (\d+) barriers"),
                             ("smem", r"(\d+) bytes smem"), ("cmem", r"(\d+) bytes cmem\[0\]")):
                mm = re.search(pat, line)
                if mm:
                    cur[key] = int(mm.group(1))
    return kernels

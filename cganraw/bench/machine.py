"""The machine a benchmark ran on: CPU, memory, BLAS (build, kernel set, threads), GPU,
package versions; and the BLAS thread count, set at run time through OpenBLAS's own API."""
from __future__ import annotations

import ctypes
import datetime as _dt
import os
import platform
from importlib import metadata

from cganraw.ops._blas import openblas


def _openblas():
    """(ctypes library, (prefix, suffix)) of the OpenBLAS this process loaded, or (None, None)."""
    return openblas()


def blas_runtime() -> dict:
    """OpenBLAS's build config, the kernel set it picked for this CPU, and its threads."""
    lib, names = _openblas()
    if lib is None:
        return {}
    prefix, suffix = names
    out = {"library": "OpenBLAS"}
    for key, fn in (("config", "get_config"), ("corename", "get_corename")):
        f = getattr(lib, f"{prefix}{fn}{suffix}", None)
        if f is not None:
            f.restype = ctypes.c_char_p
            out[key] = f().decode(errors="replace").strip()
    out["threads"] = int(getattr(lib, f"{prefix}get_num_threads{suffix}")())
    return out


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count in this process; False where no OpenBLAS is loaded."""
    lib, names = _openblas()
    if lib is None:
        return False
    f = getattr(lib, f"{names[0]}set_num_threads{names[1]}", None)
    if f is None:
        return False
    f(ctypes.c_int(int(n)))
    return True


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None


def _gpu_info():
    try:
        from cganraw import backend
        if not backend.gpu_available():
            return None
        cp = backend.cupy()
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        return {"name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_GiB": round(props["totalGlobalMem"] / 2**30, 1),
                "compute_capability": f"{props['major']}.{props['minor']}",
                "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
                "driver": cp.cuda.runtime.driverGetVersion()}
    except Exception as e:  # a broken CUDA setup must not stop the report
        return {"name": f"unavailable ({type(e).__name__})"}


def machine_info(threads=None) -> dict:
    import numpy as np
    blas_build = {}
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        blas_build = {"name": b.get("name"), "version": b.get("version")}
    except Exception:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    cupy_dists = sorted(set(_cupy_dists()))
    info = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_GiB": _mem_gib(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "blas_build": blas_build,
        "blas_runtime": blas_runtime(),
        "threads": threads,
        "env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "NUMBA_NUM_THREADS", "CGANRAW_BENCH_THREADS", "CGANRAW_NUMBA",
                                            "OPENBLAS_CORETYPE", "OMP_WAIT_POLICY")
                if k in os.environ},
        "versions": {"cganraw": _version("cganraw"), "numpy": np.__version__, "numba": _version("numba"),
                     "torch": _version("torch"), "matplotlib": _version("matplotlib"),
                     "pytest-benchmark": _version("pytest-benchmark"),
                     **{d: _version(d) for d in cupy_dists}},
        "gpu": _gpu_info(),
    }
    return info


def _cupy_dists():
    for d in metadata.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name.startswith("cupy"):
            yield name


def machine_label(info: dict) -> str:
    """One line naming the machine, for figure titles."""
    blas = info.get("blas_runtime") or {}
    parts = [f"{info.get('cpu')} ({info.get('cpu_affinity') or info.get('cpu_count')} CPUs)",
             f"{blas.get('library', (info.get('blas_build') or {}).get('name') or 'BLAS')}"
             f" {blas.get('corename', '')}".rstrip(),
             f"threads {info.get('threads') or blas.get('threads') or '?'}",
             f"numpy {info['versions'].get('numpy')}"]
    if info["versions"].get("torch"):
        parts.append(f"torch {info['versions']['torch']}")
    gpu = info.get("gpu")
    if gpu:
        parts.append(f"GPU {gpu.get('name')}")
    parts.append(info.get("date", "")[:16].replace("T", " "))
    return " · ".join(parts)



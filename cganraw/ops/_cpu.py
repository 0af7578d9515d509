"""Optional Numba fast paths for the CPU ops that NumPy cannot fuse (scatter-adds,
strided copies, elementwise chains). Each is checked against its NumPy reference in
the tests. Numba is optional (`pip install -e ".[fast]"`); CGANRAW_NUMBA=0 turns the
fast paths off. Kernels are compiled on first use and cached on disk."""
from __future__ import annotations

import os

_numba = None


def numba():
    """The numba module, or None when it is missing or disabled."""
    global _numba
    if _numba is None:
        _numba = False
        if os.environ.get("CGANRAW_NUMBA", "1") != "0":
            try:
                import numba as nb  # noqa: PLC0415
                _numba = nb
            except ImportError:
                pass
    return _numba or None


def enabled() -> bool:
    return numba() is not None


def kernel(builder):
    """Decorator: `builder(nb)` returns the jitted function; built once, on first call."""
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:
            compiled = builder(numba())
        return compiled(*args)
    call.__name__ = builder.__name__
    return call

"""What a piece of code asks of the device: kernel launches, GEMMs, memsets and device-side
copies, host<->device copies and syncs. Off unless something records (the step census,
cganraw.bench.census, and the tests); then every launch site in cganraw.ops and every
transfer helper in cganraw.backend adds an Event. The cost when off is one `is None` test.

Event kinds:
    kernel   one of kernels/*.cu, by name; bytes = the sizes of its array arguments
    gemm     a cuBLAS SGEMM (the cuda backend's default GEMM): flops 2mnk, bytes a + b + c
    memset   zeroing an array (cudaMemsetAsync)
    fill     setting every element of an array to one value (a CuPy fill kernel)
    copy     a device-to-device copy (a CuPy copy kernel): bytes read plus written
    add      an elementwise add in place (a CuPy kernel): dst read and written, src read
    h2d      a host-to-device copy
    d2h      a device-to-host copy
    sync     the host waiting for the device (every d2h is one)
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter

LAUNCH_KINDS = ("kernel", "gemm", "memset", "fill", "copy", "add")
COPY_KINDS = ("h2d", "d2h")


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str
    name: str
    bytes: int = 0
    flops: int = 0
    grid: tuple = ()
    block: tuple = ()


class Log:
    """The events of one recording, in order."""

    def __init__(self):
        self.events: list[Event] = []

    @property
    def launches(self):
        return [e for e in self.events if e.kind in LAUNCH_KINDS]

    @property
    def copies(self):
        return [e for e in self.events if e.kind in COPY_KINDS]

    @property
    def syncs(self):
        return [e for e in self.events if e.kind == "sync"]

    def counts(self):
        """Counter of (kind, name) over every event: what the census compares."""
        return Counter((e.kind, e.name) for e in self.events)

    def launches_by_name(self):
        return Counter(e.name for e in self.launches)


_active: Log | None = None


@contextlib.contextmanager
def recording():
    """Record every device event inside the block into the Log it yields."""
    global _active
    prev, log = _active, Log()
    _active = log
    try:
        yield log
    finally:
        _active = prev


def active() -> bool:
    return _active is not None


def _nbytes(a):
    return int(getattr(a, "nbytes", 0) or 0)


def _dims(v):
    return (int(v),) if isinstance(v, int) or hasattr(v, "__index__") else tuple(int(x) for x in v)


def kernel(name, grid, block, args):
    if _active is not None:
        _active.events.append(Event("kernel", name, sum(_nbytes(a) for a in args if hasattr(a, "shape")),
                                    0, _dims(grid), _dims(block)))


def gemm(m, n, k, beta=0.0, itemsize=4, name="cublas_sgemm"):
    if _active is not None:
        words = m * k + k * n + m * n * (2 if beta else 1)
        _active.events.append(Event("gemm", name, words * itemsize, 2 * m * n * k + (m * n if beta else 0)))


def memset(nbytes):
    if _active is not None:
        _active.events.append(Event("memset", "memset", int(nbytes)))


def fill(nbytes):
    if _active is not None:
        _active.events.append(Event("fill", "fill", int(nbytes)))


def copy(nbytes):
    if _active is not None:
        _active.events.append(Event("copy", "copy", 2 * int(nbytes)))


def add(nbytes):
    if _active is not None:
        _active.events.append(Event("add", "add", 3 * int(nbytes)))


def h2d(nbytes):
    if _active is not None:
        _active.events.append(Event("h2d", "h2d", int(nbytes)))


def d2h(nbytes):
    if _active is not None:
        _active.events.append(Event("d2h", "d2h", int(nbytes)))
        _active.events.append(Event("sync", "sync"))

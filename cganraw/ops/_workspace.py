"""Reused host buffers for the NumPy backend's large arrays: a bounded cache keyed by size.

A training step allocates the same large arrays every time (column matrices, GEMM
outputs, phase stacks, activations and their gradients, tens of MB each at width 128).
Fresh from the allocator, every one is new memory: glibc maps anything over 32 MB (and,
with its dynamic threshold, much less) straight from the kernel and returns it on free,
so each step page-faults its whole working set in again, zeroing it, and NumPy's
transparent-huge-page advice adds compaction to the faults. Measured at width 128,
batch 128 that was about as much system time as the step's arithmetic.

`empty(shape, dtype)` hands out an array whose memory is a cached block ("slab") of
exactly that many bytes when one is free, else a new one that joins the cache. A slab is
free when nothing but the cache refers to it: every array made from it (and every view
of those) holds a reference to it through `.base`, so the reference count says exactly
when the last user is gone, whatever the lifetime (a forward cache kept until the
backward, an activation passed on, a temporary). No one returns anything by hand.

The contents are undefined, as with numpy.empty. Arrays under MIN_BYTES come from
numpy.empty (the allocator recycles small blocks well). Free slabs beyond the byte bound
(CGANRAW_WORKSPACE_MB, 1024 by default; 0 turns the cache off) are dropped oldest first;
slabs in use are never counted against it, never dropped and never handed out twice.
"""
from __future__ import annotations

import math
import os
import sys
import threading
from collections import OrderedDict

import numpy as np

MIN_BYTES = 1 << 18
_ENV = "CGANRAW_WORKSPACE_MB"
_DEFAULT_MB = 1024
_lock = threading.Lock()
_slabs: OrderedDict = OrderedDict()     # id(slab) -> slab, least recently handed out first
_by_size: dict = {}                     # nbytes -> OrderedDict of those slabs' keys, in the same order
_limit = None                           # bytes of free slabs kept, from the environment on first use


def _refs(table, key):
    # references to table[key] beyond the table's own and this call's: 0 when free
    return sys.getrefcount(table[key]) - _IDLE


def _idle_count():
    t = {0: np.empty(1, np.uint8)}
    return sys.getrefcount(t[0])


_IDLE = _idle_count()


def limit_bytes() -> int:
    """The bound on free cached bytes (CGANRAW_WORKSPACE_MB, read once)."""
    global _limit
    if _limit is None:
        raw = os.environ.get(_ENV, "").strip()
        try:
            mb = float(raw) if raw else _DEFAULT_MB
        except ValueError:
            mb = _DEFAULT_MB
        _limit = max(0, int(mb * (1 << 20)))
    return _limit


def set_limit_mb(mb):
    """Set the bound (MB; 0 turns the cache off and drops every free slab). Returns the old one in MB."""
    global _limit
    old = limit_bytes() / (1 << 20)
    _limit = max(0, int(float(mb) * (1 << 20)))
    with _lock:
        _prune()
    return old


def _free_keys(nbytes=None):
    # keys of the free slabs (of `nbytes` only, when given), oldest first; no slab is held
    # in a local while its references are counted
    keys = _slabs if nbytes is None else _by_size.get(nbytes, ())
    return [k for k in keys if _refs(_slabs, k) == 0]


def _drop(key):
    nbytes = _slabs.pop(key).nbytes
    group = _by_size[nbytes]
    del group[key]
    if not group:
        del _by_size[nbytes]


def _prune():
    free = _free_keys()
    excess = sum(_slabs[k].nbytes for k in free) - _limit
    for k in free:                  # oldest first
        if excess <= 0:
            break
        excess -= _slabs[k].nbytes
        _drop(k)


def empty(shape, dtype=np.float32):
    """An uninitialised C-contiguous host array, its memory reused from the cache when a
    free block of its size is there."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or limit_bytes() == 0:
        return np.empty(shape, dtype)
    with _lock:
        free = _free_keys(nbytes)
        if free:
            key = free[0]
            _slabs.move_to_end(key)
            _by_size[nbytes].move_to_end(key)
        else:
            slab = np.empty(nbytes, np.uint8)
            key = id(slab)
            _slabs[key] = slab
            _by_size.setdefault(nbytes, OrderedDict())[key] = None
            del slab
            _prune()
        return _slabs[key].view(dtype).reshape(shape)


def empty_like(a):
    return empty(a.shape, a.dtype)


def zeros(shape, dtype=np.float32):
    out = empty(shape, dtype)
    out.fill(0)
    return out


def ascontiguousarray(a):
    """numpy.ascontiguousarray(a) (a itself when already C-contiguous), a copy into a cached block."""
    a = np.asarray(a)
    if a.flags.c_contiguous:
        return a
    out = empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def concatenate(arrays, axis=0):
    """numpy.concatenate(arrays, axis) into a cached block (arrays of one dtype and rank;
    anything else as numpy does it)."""
    arrays = [np.asarray(a) for a in arrays]
    first = arrays[0]
    if not -first.ndim <= axis < first.ndim or any(a.dtype != first.dtype or a.ndim != first.ndim for a in arrays):
        return np.concatenate(arrays, axis=axis)
    ax = axis % first.ndim
    shape = list(first.shape)
    shape[ax] = sum(a.shape[ax] for a in arrays)
    return np.concatenate(arrays, axis=ax, out=empty(shape, first.dtype))


def stats() -> dict:
    """{"slabs", "in_use", "bytes", "free_bytes"} of the cache now."""
    with _lock:
        free = set(_free_keys())
        sizes = {k: _slabs[k].nbytes for k in _slabs}
    return {"slabs": len(sizes), "in_use": len(sizes) - len(free), "bytes": sum(sizes.values()),
            "free_bytes": sum(sizes[k] for k in free)}


def clear():
    """Drop every free slab (those in use stay with their users)."""
    with _lock:
        for k in _free_keys():
            _drop(k)

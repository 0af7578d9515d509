"""Launching kernels named by the convention `<op>_<stage>_v<N>` (kernels/<family>.cu):
which version runs, and the two grid shapes the new ops use.

    flat  v1: one thread per element, grid = ceil(n / block);
          v2: the same work in a bounded grid that grid-strides.
    rows  one block per row (a reduction over the row), block-striding over rows past
          MAX_ROW_BLOCKS; blockDim a whole number of warps (full-mask shuffles).
"""
from __future__ import annotations

from cganraw.ops import _launch

VERSIONS = (1, 2)
# v2 grid-strides over at most this many blocks: about 8 blocks of 256 threads per SM on a
# 132-SM GPU, enough to fill it
FLAT_MAX_BLOCKS = 1024
# kernels index with int: keep n + (threads in a bounded grid) below 2^31
MAX_ELEMENTS = 2 ** 31 - 2 ** 20
MAX_ROW_BLOCKS = 65535


def check_version(op, version, allowed=VERSIONS):
    if version not in allowed:
        raise ValueError(f"{op}: kernel version must be one of {allowed}, got {version!r}")
    return version


def count(n, op):
    """n as a kernel's int element count, refusing sizes whose index could overflow."""
    if n > MAX_ELEMENTS:
        raise ValueError(f"{op}: {n} elements exceed what the int-indexed kernels take ({MAX_ELEMENTS})")
    return _launch.i32(n)


def warp_block(work, max_block=256):
    """Threads per block for a reduction over `work` values: whole warps, no more than the
    work needs, at most max_block."""
    return int(min(max_block, max(32, -(-int(work) // 32) * 32)))


def launch_flat(family, kernel, version, n, args):
    """<kernel>_v<version> over n elements: v1 a thread each, v2 a bounded grid-stride."""
    check_version(kernel, version)
    if n <= 0:
        return
    fn = _launch.function(family, f"{kernel}_v{version}")
    grid, block = _launch.grid_for(n, max_blocks=FLAT_MAX_BLOCKS if version == 2 else None)
    fn(grid, block, args)


def launch_rows(family, kernel, version, rows, work, args):
    """<kernel>_v<version> with one block per row (v2-style reductions): `rows` blocks (at
    most MAX_ROW_BLOCKS, the kernel block-strides), warp_block(work) threads each."""
    if rows <= 0:
        return
    fn = _launch.function(family, f"{kernel}_v{version}")
    fn((min(int(rows), MAX_ROW_BLOCKS),), (warp_block(work),), args)


def launch_per_row_thread(family, kernel, version, rows, args):
    """<kernel>_v<version> with one thread per row (v1-style reductions)."""
    if rows <= 0:
        return
    fn = _launch.function(family, f"{kernel}_v{version}")
    grid, block = _launch.grid_for(rows)
    fn(grid, block, args)

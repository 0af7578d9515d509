"""A CUDA emulator: runs the unchanged kernels/*.cu on the CPU with NumPy arrays.

Its API mirrors CuPy's RawModule/RawKernel, so op launchers call the same code on
a GPU (cupy) and here (numpy):

    mod = cuda_emu.RawModule(path="kernels/bias.cu")
    fn = mod.get_function("bias_add_backward_v1")
    fn((c,), (1,), (db, dy, np.int32(n), np.int32(c), np.int32(hw)), shared_mem=0)

Kernels compile with g++ and cuda_emu.h force-included. Threads of a block run as
fibers switching at __syncthreads and warp operations, in a selectable order
(EMU_ORDER / order()). Arguments are checked against the kernel's parameter types
before launch. See README.md beside this file for semantics and limits.
"""
from ._compile import CompileError, cache_dir
from ._module import (
                      KernelError,
                      RawKernel,
                      RawModule,
                      current_settings,
                      order,
                      set_order,
                      set_strict_barriers,
                      set_workers,
                      settings,
)
from ._tools import NvrtcError, asan_library, nvrtc_check, nvrtc_library, ptxas_report, run_under_asan

__all__ = [
    "RawModule", "RawKernel", "KernelError", "CompileError", "NvrtcError",
    "order", "set_order", "settings", "set_strict_barriers", "set_workers", "current_settings",
    "run_under_asan", "asan_library", "nvrtc_check", "nvrtc_library", "ptxas_report", "cache_dir",
]

"""Every kernels/*.cu compiles with NVRTC for sm_80 (A100) and sm_90 (H100) exactly as
cupy.RawModule would compile it on those GPUs (CuPy's options: -std=c++17 from
cganraw.ops._launch, then -ftz=true, --device-as-default-execution-space, -arch), without
a GPU. The emulator builds the same files with g++, which accepts host-only code
(#include <vector>, std::) that NVRTC rejects: this test is what keeps them GPU-clean.

libnvrtc comes from the `nvidia-cuda-nvrtc-cu12` wheel in the dev extra (or a CUDA
toolkit, or $CGANRAW_NVRTC). In CI ($CI set) a missing libnvrtc fails; elsewhere it skips.
"""
import os
import re
import warnings

import pytest

from cganraw import cuda_emu
from cganraw.ops import _launch

KERNEL_FILES = sorted(_launch.kernel_dir().glob("*.cu"))
ARCHS = ("sm_80", "sm_90")
OWN_FILES = {"gemm.cu", "im2col.cu", "maxpool.cu", "cross_entropy.cu", "avgpool.cu", "upsample.cu",
             "instancenorm.cu", "minibatch_std.cu", "spectral_norm.cu", "bias.cu", "batchnorm.cu",
             "embedding.cu", "philox.cu", "stats.cu", "ema.cu",
             "mode_seeking.cu", "linear.cu", "label_projection.cu", "film.cu",
             "r1.cu"}   # warnings fail here; others' are reported
# kernels compiled only where an optional toolkit header is found (see _launch.compile_options)
NEEDS_TOOLKIT = {"gemm_v4": "<mma.h>"}
_KERNEL_DECL = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+(\w+)\s*\(')


@pytest.fixture(scope="module")
def nvrtc():
    if cuda_emu.nvrtc_library() is None:
        msg = ("no libnvrtc.so found: pip install -e '.[dev]' (nvidia-cuda-nvrtc-cu12), "
               "or set CGANRAW_NVRTC to a libnvrtc.so")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def test_there_are_kernel_files():
    names = {p.name for p in KERNEL_FILES}
    assert OWN_FILES <= names, f"kernels/ holds {sorted(names)}"


def _kernels_declared(src: str) -> list[str]:
    return _KERNEL_DECL.findall(src)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", KERNEL_FILES, ids=[p.name for p in KERNEL_FILES])
def test_compiles_with_nvrtc_as_cupy_would(nvrtc, path, arch):
    r = cuda_emu.nvrtc_check(str(path), arch=arch, options=_launch.compile_options())
    assert r.binary.startswith(b"\x7fELF"), "expected a CUBIN for the GPU"
    assert r.options[:len(_launch.compile_options())] == _launch.compile_options()
    assert r.options[-1] == f"-arch={arch}"
    # every extern "C" kernel of the source is in the CUBIN under its plain name
    names = _kernels_declared(path.read_text())
    assert names, f"{path.name}: no extern \"C\" __global__ kernels found"
    if _launch.toolkit_include_dir() is None:
        if os.environ.get("CI"):
            pytest.fail("no CUDA toolkit include folder (for <mma.h>) found: set CUDA_PATH")
        names = [n for n in names if n not in NEEDS_TOOLKIT]
    missing = [n for n in names if n.encode() + b"\x00" not in r.binary]
    assert not missing, f"{path.name}: kernels missing from the {arch} CUBIN: {missing}"
    log = r.log.strip()
    if "warning" in log:
        if path.name in OWN_FILES:
            pytest.fail(f"NVRTC warnings for {path.name} ({arch}):\n{log}")
        warnings.warn(f"NVRTC warnings for {path.name} ({arch}):\n{log}")


def test_emulator_and_nvrtc_see_the_same_kernels():
    # the emulator's module exposes exactly the extern "C" kernels that NVRTC compiled
    for path in KERNEL_FILES:
        if path.name not in OWN_FILES:
            continue
        mod = cuda_emu.RawModule(path=str(path), options=_launch.compile_options())
        assert sorted(mod.kernel_names) == sorted(_kernels_declared(path.read_text()))

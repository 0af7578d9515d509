"""The fixtures also compile for real GPUs: NVRTC as CuPy calls it, and ptxas resource reports."""
import os
import shutil

import pytest

from cganraw import cuda_emu

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def nvrtc():
    if cuda_emu.nvrtc_library() is None:
        pytest.skip("no libnvrtc.so found (pip install nvidia-cuda-nvrtc-cu12, or set CGANRAW_NVRTC)")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ["basic.cu", "reduce.cu"])
def test_fixtures_compile_with_nvrtc(nvrtc, name, arch):
    r = cuda_emu.nvrtc_check(os.path.join(FIX, name), arch=arch)
    assert r.binary.startswith(b"\x7fELF")  # a CUBIN for that GPU
    assert r.options[-3:] == ("-ftz=true", "--device-as-default-execution-space", f"-arch={arch}")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_wmma_fixture_compiles_against_the_real_mma_h(nvrtc, arch):
    # the emulator's nvcuda::wmma accepts exactly what the toolkit's <mma.h> accepts
    from cganraw.ops import _launch
    inc = _launch.toolkit_include_dir()
    if inc is None:
        pytest.skip("no CUDA toolkit include folder with <mma.h> (set CUDA_PATH)")
    r = cuda_emu.nvrtc_check(os.path.join(FIX, "wmma.cu"), arch=arch, options=(f"-I{inc}",))
    for name in (b"mma_rr", b"mma_cc", b"to_tf32", b"fill_store_col"):
        assert name + b"\x00" in r.binary


def test_nvrtc_error_names_the_line(nvrtc, tmp_path):
    src = tmp_path / "bad_gpu.cu"
    src.write_text('extern "C" __global__ void k(float* x)\n{\n    x[0] = nope;\n}\n')
    with pytest.raises(cuda_emu.NvrtcError, match=r"bad_gpu\.cu\(3\): error: identifier \"nope\" is undefined"):
        cuda_emu.nvrtc_check(str(src), arch="sm_90")


def test_nvrtc_rejects_what_only_gxx_accepts(nvrtc):
    code = '#include <vector>\nextern "C" __global__ void k(float* x) { x[0] = 1.0f; }\n'
    cuda_emu.RawModule(code=code, name="host_include.cu")  # the emulator's g++ is happy
    with pytest.raises(cuda_emu.NvrtcError, match="vector"):
        cuda_emu.nvrtc_check(code=code, arch="sm_80")


def test_ptxas_report():
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("nvcc not found")
    rep = {k["name"]: k for k in cuda_emu.ptxas_report(os.path.join(FIX, "reduce.cu"), arch="sm_80")}
    assert {"block_sum", "matmul_tiled", "warp_sum"} <= set(rep)
    assert rep["block_sum"]["smem"] == 1024 * 4
    assert rep["matmul_tiled"]["smem"] == (16 * 16 + 16 * 17) * 4
    for k in rep.values():
        assert k["arch"] == "sm_80" and 0 < k["registers"] <= 255
        assert k["spill_stores"] == 0 and k["spill_loads"] == 0

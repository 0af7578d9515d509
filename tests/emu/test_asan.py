"""Out-of-bounds accesses in kernels under AddressSanitizer, in a subprocess with libasan preloaded."""
import os
import textwrap

import pytest

from cganraw import cuda_emu

OOB = os.path.join(os.path.dirname(__file__), "fixtures", "oob.cu")


def asan_or_skip():
    try:
        cuda_emu.asan_library()
    except RuntimeError as e:
        pytest.skip(str(e))


def test_out_of_bounds_write_reported_with_cu_line():
    asan_or_skip()
    code = textwrap.dedent(f"""
        import numpy as np
        from cganraw import cuda_emu
        mod = cuda_emu.RawModule(path={OOB!r})
        n = 100
        x = np.ones(n, np.float32); y = np.zeros(n, np.float32)
        mod.get_function("copy_off_by_one")((4,), (32,), (x, y, np.int32(n)))
        print("NOT REPORTED")
    """)
    r = cuda_emu.run_under_asan(code)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "NOT REPORTED" not in r.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in r.stderr, r.stderr[-3000:]
    assert "WRITE of size 4" in r.stderr
    assert "oob.cu:7" in r.stderr, r.stderr[-3000:]


def test_dynamic_shared_memory_overflow_reported():
    asan_or_skip()
    code = textwrap.dedent(f"""
        import numpy as np
        from cganraw import cuda_emu
        mod = cuda_emu.RawModule(path={OOB!r})
        y = np.zeros(32, np.float32)
        mod.get_function("dyn_shared_overflow")((1,), (32,), (y,), shared_mem=32 * 4)
    """)
    r = cuda_emu.run_under_asan(code)
    assert r.returncode != 0
    assert "heap-buffer-overflow" in r.stderr and "oob.cu:13" in r.stderr, r.stderr[-3000:]


def test_clean_kernels_pass_under_asan():
    """Fibers, barriers and warp shuffles raise no false ASan reports."""
    asan_or_skip()
    reduce_cu = os.path.join(os.path.dirname(__file__), "fixtures", "reduce.cu")
    code = textwrap.dedent(f"""
        import numpy as np
        from cganraw import cuda_emu
        mod = cuda_emu.RawModule(path={reduce_cu!r})
        x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
        for order in ("forward", "reverse", "random"):
            out = np.zeros(4, np.float32)
            mod.get_function("block_sum")((4,), (256,), (x, out, np.int32(1000)), order=order)
            assert abs(out.sum() - x.sum()) < 1e-3
            out = np.zeros(1, np.float32)
            mod.get_function("warp_sum")((21,), (48,), (x, out, np.int32(1000)), order=order)
            assert abs(out[0] - x.sum()) < 1e-3
        try:
            with cuda_emu.settings(strict=False):   # PTX's lenient release, on purpose
                mod.get_function("early_exit_sum")((1,), (64,), (x, out, np.int32(20)))
        except Exception as e:
            raise SystemExit(repr(e))
        print("CLEAN")
    """)
    r = cuda_emu.run_under_asan(code)
    assert r.returncode == 0 and "CLEAN" in r.stdout, r.stderr[-3000:]
    assert "AddressSanitizer" not in r.stderr


def test_address_mode_without_preload_explains(monkeypatch):
    monkeypatch.setenv("CUDA_EMU_SANITIZE", "address")
    with open("/proc/self/maps") as f:
        if "libasan" in f.read():
            pytest.skip("this process already has libasan")
    with pytest.raises(RuntimeError, match="LD_PRELOAD"):
        cuda_emu.RawModule(code='extern "C" __global__ void k() {}', name="needs_asan.cu")

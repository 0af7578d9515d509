"""Synchronization bugs must show up: a missing barrier as wrong results in some thread
order, a divergent barrier or warp op as a KernelError (never a hang)."""
import numpy as np
import pytest

from cganraw import cuda_emu

i32, f32 = np.int32, np.float32


def block_sums(mod, name, x, order, seed):
    out = np.zeros(4, f32)
    mod.get_function(name)((4,), (256,), (x, out, i32(len(x))), order=order, seed=seed)
    return out


def test_missing_barrier_is_caught_by_some_order(reduce, rng):
    x = rng.standard_normal(1000).astype(f32)
    want = np.pad(x, (0, 24)).reshape(4, 256).sum(1)  # grid 4 x 256 threads: one element each
    runs = [(o, s) for o in ("forward", "reverse", "random") for s in (0, 1, 2)]
    for o, s in runs:  # the correct kernel is right in every order
        np.testing.assert_allclose(block_sums(reduce, "block_sum", x, o, s), want, atol=1e-4)
    wrong = {(o, s) for o, s in runs
             if not np.allclose(block_sums(reduce, "block_sum_missing_barrier", x, o, s), want, atol=1e-4)}
    assert wrong, "the planted missing __syncthreads() went unnoticed in every order"
    assert any(o == "random" for o, _ in wrong)  # the default order catches it
    assert ("forward", 0) in wrong and ("reverse", 0) not in wrong  # as measured in the notes


def test_divergent_barrier_sites(divergent):
    x = np.zeros(32, f32)
    with pytest.raises(RuntimeError) as e:
        divergent.get_function("divergent_barrier")((2,), (32,), (x,))
    msg = str(e.value)
    assert isinstance(e.value, cuda_emu.KernelError)
    assert "divergent_barrier" in msg and "divergent barrier" in msg
    assert "divergent.cu:7" in msg and "divergent.cu:9" in msg
    assert "threads 0-15" in msg and "threads 16-31" in msg


def test_barrier_with_exited_threads(divergent):
    """PTX releases a barrier once every non-exited thread waits at it, so by default
    this runs; strict mode reports the threads that exited."""
    x = np.zeros(32, f32)
    k = divergent.get_function("barrier_some_exit")
    with cuda_emu.settings(strict=False):        # the tests' default is strict (tests/conftest.py)
        k((1,), (32,), (x,))
    assert (x[:16] == 1).all() and (x[16:] == 0).all()
    with cuda_emu.settings(strict=True), pytest.raises(RuntimeError) as e:
        k((1,), (32,), (x,))
    msg = str(e.value)
    assert "barrier_some_exit" in msg and "divergent.cu:16" in msg and "exited" in msg


def test_warp_op_waiting_on_a_barrier_deadlocks(divergent):
    x = np.zeros(32, f32)
    with pytest.raises(RuntimeError) as e:
        divergent.get_function("shfl_vs_barrier")((1,), (32,), (x,))
    msg = str(e.value)
    assert "deadlock" in msg and "shfl_vs_barrier" in msg
    assert "__shfl_down_sync" in msg and "divergent.cu:25" in msg and "divergent.cu:27" in msg


def test_mask_must_name_the_calling_lane(divergent):
    with pytest.raises(RuntimeError, match=r"mask_without_self.*divergent\.cu:33.*does not include"):
        divergent.get_function("mask_without_self")((1,), (32,), (np.zeros(32, f32),))


def test_trap_and_assert_raise(divergent):
    with pytest.raises(RuntimeError, match=r"traps.*__trap\(\) called by thread \(5,0,0\)"):
        divergent.get_function("traps")((1,), (32,), (np.zeros(32, f32),))
    x = np.arange(32, dtype=i32) - 3
    with pytest.raises(RuntimeError, match=r"asserts.*x\[threadIdx.x\] >= 0.*divergent\.cu:45"):
        divergent.get_function("asserts")((1,), (32,), (x,))
    divergent.get_function("asserts")((1,), (32,), (x + 3,))  # fine afterwards


def test_module_still_works_after_errors(divergent, reduce, rng):
    x = np.zeros(32, f32)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            divergent.get_function("divergent_barrier")((4,), (32,), (x,))
    v = rng.standard_normal(300).astype(f32)
    out = np.zeros(2, f32)
    reduce.get_function("block_sum")((2,), (128,), (v, out, i32(300)))
    np.testing.assert_allclose(out.sum(), v.sum(), atol=1e-3)


def test_out_of_bounds_fault_becomes_an_exception(rng):
    mod = cuda_emu.RawModule(code="""
        extern "C" __global__ void wild(float* y, long long off) { y[off + threadIdx.x] = 1.0f; }
        """, name="wild_write.cu")
    y = np.zeros(4, f32)
    with pytest.raises(RuntimeError, match=r"wild.*segmentation fault"):
        mod.get_function("wild")((1,), (4,), (y, np.int64(1) << 40))
    mod.get_function("wild")((1,), (4,), (y, np.int64(0)))
    assert (y == 1).all()


def test_fiber_stack_overflow_is_reported():
    mod = cuda_emu.RawModule(code="""
        __device__ int deep(int n) { volatile char pad[4096]; pad[0] = (char)n; return n ? deep(n - 1) + pad[0] : 0; }
        extern "C" __global__ void overflow(int* out, int n) { __syncthreads(); out[threadIdx.x] = deep(n); }
        """, name="stack_overflow.cu")
    out = np.zeros(2, i32)
    with pytest.raises(RuntimeError, match="overflow"):
        mod.get_function("overflow")((1,), (2,), (out, i32(1_000_000)))
    mod.get_function("overflow")((1,), (2,), (out, i32(3)))


def test_dynamic_shared_overflow_faults_without_asan():
    """The dynamic shared buffer ends at a guard page: an overflow is an error, not heap damage."""
    import os
    mod = cuda_emu.RawModule(path=os.path.join(os.path.dirname(__file__), "fixtures", "oob.cu"))
    y = np.zeros(32, f32)
    with pytest.raises(RuntimeError, match=r"dyn_shared_overflow.*segmentation fault"):
        mod.get_function("dyn_shared_overflow")((1,), (32,), (y,), shared_mem=32 * 4)
    mod.get_function("dyn_shared_overflow")((1,), (32,), (y,), shared_mem=33 * 4)
    assert (y[1:] == 1).all() and np.isnan(y[0])

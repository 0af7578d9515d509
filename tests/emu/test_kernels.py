"""Fixture kernels against NumPy, under every thread order (the `order` fixture)."""
import numpy as np
import pytest

from cganraw import cuda_emu


def close(got, want, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)

SIZES = (1, 7, 33, 1000)
i32, f32 = np.int32, np.float32


def cdiv(a, b):
    return (a + b - 1) // b


@pytest.mark.parametrize("n", SIZES)
def test_saxpy_grid_stride(basic, order, n, rng):
    x = rng.standard_normal(n).astype(f32)
    y = rng.standard_normal(n).astype(f32)
    want = 2.5 * x + y
    basic.get_function("saxpy")((2,), (64,), (i32(n), f32(2.5), x, y))  # 128 threads stride over n
    close(y, want)


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 33), (33, 7), (40, 50)])
def test_2d_grid_and_block(basic, order, rows, cols, rng):
    a = rng.standard_normal((rows, cols)).astype(f32)
    out = np.full_like(a, np.nan)
    block = (16, 8)
    grid = (cdiv(cols, 16), cdiv(rows, 8))
    basic.get_function("add_index_2d")(grid, block, (a, out, i32(rows), i32(cols)))
    r, c = np.indices(a.shape)
    close(out, a * 2 + r - c)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("workers", [1, 2])
def test_atomic_scatter_add(basic, order, n, workers, rng):
    idx = rng.integers(0, 5, n).astype(i32)
    w = rng.standard_normal(n).astype(f32)
    hist = np.zeros(5, f32)
    with cuda_emu.settings(workers=workers):
        basic.get_function("scatter_add")((cdiv(n, 32),), (32,), (idx, w, hist, i32(n)))
    want = np.zeros(5)
    np.add.at(want, idx, w)
    close(hist, want, atol=1e-4)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block", [1, 64, 256])
def test_block_reduction(reduce, order, n, block, rng):
    x = rng.standard_normal(n).astype(f32)
    out = np.zeros(3, f32)
    reduce.get_function("block_sum")((3,), (block,), (x, out, i32(n)))
    close(out.sum(), x.sum(dtype=np.float64), atol=1e-3)


def test_block_reduction_on_two_worker_threads(reduce, order, rng):
    """Blocks run in parallel on 2 OS threads; static __shared__ is per running block."""
    x = rng.standard_normal(5000).astype(f32)
    out = np.zeros(20, f32)
    with cuda_emu.settings(workers=2):
        reduce.get_function("block_sum")((20,), (128,), (x, out, i32(5000)))
        close(out.sum(), x.sum(dtype=np.float64), atol=1e-3)
        c = np.zeros((40, 20), f32)
        a = rng.standard_normal((40, 70)).astype(f32)
        b = rng.standard_normal((70, 20)).astype(f32)
        reduce.get_function("matmul_tiled")((2, 3), (16, 16), (a, b, c, i32(40), i32(70), i32(20)))
        close(c, a.astype(np.float64) @ b, atol=1e-4)


@pytest.mark.parametrize("block", [(8, 4), (16, 16), (2, 1)])
@pytest.mark.parametrize("n", SIZES)
def test_block_reduction_2d_blocks(reduce, order, block, n, rng):
    x = rng.standard_normal(n).astype(f32)
    nt = block[0] * block[1]
    out = np.zeros(cdiv(n, nt), f32)
    reduce.get_function("block_sum_2d")((len(out),), block, (x, out, i32(n)))
    want = np.pad(x, (0, len(out) * nt - n)).reshape(-1, nt).sum(1)
    close(out, want, atol=1e-4)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 5), (33, 16, 17), (40, 70, 20)])
def test_tiled_matmul(reduce, order, m, k, n, rng):
    a = rng.standard_normal((m, k)).astype(f32)
    b = rng.standard_normal((k, n)).astype(f32)
    c = np.full((m, n), np.nan, f32)
    reduce.get_function("matmul_tiled")((cdiv(n, 16), cdiv(m, 16)), (16, 16), (a, b, c, i32(m), i32(k), i32(n)))
    close(c, a.astype(np.float64) @ b, atol=1e-4)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block", [32, 48, 7, 100])  # 48, 7, 100: a partial last warp
def test_warp_shfl_down_reduction(reduce, order, n, block, rng):
    x = rng.standard_normal(n).astype(f32)
    out = np.zeros(1, f32)
    reduce.get_function("warp_sum")((cdiv(n, block),), (block,), (x, out, i32(n)))
    close(out[0], x.sum(dtype=np.float64), atol=1e-3)


@pytest.mark.parametrize("n", SIZES)
def test_warp_shfl_xor_allreduce(reduce, order, n, rng):
    x = rng.standard_normal(n).astype(f32)
    out = np.full(n, np.nan, f32)
    reduce.get_function("warp_allsum_xor")((cdiv(n, 64),), (64,), (x, out, i32(n)))
    padded = np.pad(x, (0, -n % 32)).reshape(-1, 32)
    close(out, np.repeat(padded.sum(1), 32)[:n], atol=1e-4)


@pytest.mark.parametrize("n", SIZES)
def test_warp_shfl_up_scan_and_width_broadcast(reduce, order, n, rng):
    x = rng.integers(-5, 6, n).astype(i32)
    scan = np.zeros(n, i32)
    bcast = np.zeros(n, i32)
    reduce.get_function("warp_scan_bcast")((cdiv(n, 64),), (64,), (x, scan, bcast, i32(n)))
    p = np.pad(x, (0, -n % 32))
    np.testing.assert_array_equal(scan, np.cumsum(p.reshape(-1, 32), axis=1).ravel()[:n])
    np.testing.assert_array_equal(bcast, np.repeat(p.reshape(-1, 8)[:, 3], 8)[:n])


@pytest.mark.parametrize("n", SIZES)
def test_ballot_any_all(reduce, order, n, rng):
    x = rng.standard_normal(n).astype(f32)
    if n == 33:
        x[:32] = 1.0  # a warp with all lanes true
    nw = cdiv(n, 32)
    ballot = np.zeros(nw, np.uint32)
    any_ = np.full(nw, -1, i32)
    all_ = np.full(nw, -1, i32)
    reduce.get_function("warp_votes")((cdiv(n, 64),), (64,), (x, ballot, any_, all_, i32(n)))
    p = np.pad(x > 0, (0, -n % 32)).reshape(-1, 32)
    want = (p * (1 << np.arange(32, dtype=np.uint64))).sum(1).astype(np.uint32)
    np.testing.assert_array_equal(ballot, want)
    np.testing.assert_array_equal(any_, p.any(1))
    np.testing.assert_array_equal(all_, p.all(1))


def test_warp_reduce_and_match(reduce, order, rng):
    x = rng.integers(-3, 4, 64).astype(i32)
    out = np.zeros(8, i32)
    reduce.get_function("warp_int_ops")((1,), (64,), (x, out))
    w = x.reshape(2, 32)
    for k in range(2):
        assert out[4 * k:4 * k + 3].tolist() == [w[k].sum(), w[k].min(), w[k].max()]
        same = sum(1 << j for j in range(32) if w[k, j] == w[k, 5])
        assert out[4 * k + 3] == np.array(same, np.uint32).view(i32)


@pytest.mark.parametrize("n", SIZES)
def test_dynamic_shared_memory(reduce, order, n, rng):
    x = rng.standard_normal(n).astype(f32)
    y = np.full(n, np.nan, f32)
    block = 32
    reduce.get_function("reverse_block")((cdiv(n, block),), (block,), (x, y, i32(n)), shared_mem=block * 4)
    # y[j] gets x from the mirrored slot of its block; slots past n hold 0
    close(y, np.pad(x, (0, -n % block)).reshape(-1, block)[:, ::-1].ravel()[:n])


@pytest.mark.parametrize("n", SIZES)
def test_namespace_scope_dynamic_shared(reduce, order, n, rng):
    x = rng.standard_normal(n).astype(f32)
    y = np.full(n, np.nan, f32)
    block = 16
    reduce.get_function("two_arrays")((cdiv(n, block),), (block,), (x, y, i32(n)), shared_mem=2 * block * 4)
    p = np.pad(x, (0, -n % block)).reshape(-1, block)
    close(y, (3 * np.roll(p, -1, axis=1)).ravel()[:n])


def test_unwritten_shared_memory_reads_nan(reduce, order):
    out = np.zeros(2 * 64, f32)
    reduce.get_function("read_unwritten_shared")((2,), (64,), (out,))
    out = out.reshape(2, 64)
    assert (out[:, :32] == 1).all()
    assert np.isnan(out[:, 32:]).all()


def test_early_exit_before_barrier_is_released(reduce, order, rng):
    # PTX semantics (the emulator's default): exited threads do not hold a barrier up;
    # the tests' default is strict mode, which reports it (test_sync_bugs.py)
    x = rng.standard_normal(20).astype(f32)
    out = np.zeros(1, f32)
    with cuda_emu.settings(strict=False):
        reduce.get_function("early_exit_sum")((1,), (64,), (x, out, i32(20)))
    close(out[0], x.sum(), atol=1e-5)
    with cuda_emu.settings(strict=True), pytest.raises(cuda_emu.KernelError, match="strict barrier mode"):
        reduce.get_function("early_exit_sum")((1,), (64,), (x, out, i32(20)))


def test_syncthreads_count_and_or(reduce, order):
    x = np.zeros(64, i32)
    x[[3, 40, 41]] = 1
    out = np.zeros(3, i32)
    reduce.get_function("sync_votes")((1,), (64,), (x, out))
    assert out.tolist() == [3, 0, 1]
    x[:] = 1
    reduce.get_function("sync_votes")((1,), (64,), (x, out))
    assert out.tolist() == [64, 1, 1]


def test_scalar_types_and_intrinsics(basic):
    out = np.zeros(1, np.int64)
    b = np.array([200], np.uint8)
    basic.get_function("typed_args")((1,), (1,), (out, np.uint32(7), np.float64(3.9), b, np.int64(2**40)))
    assert out[0] == 7 + 3 + 200 + 2**40
    x = np.array([0.5], f32)
    fo = np.zeros(8, f32)
    io = np.zeros(8, i32)
    basic.get_function("intrinsics")((1,), (1,), (x, fo, io))
    v = 0.5
    close(fo, [np.exp(v), np.log(v), 1 / np.sqrt(v), 5 - 1, 0.5 + 0.25, np.tanh(v) + np.log1p(v), 0.25 + 1, v])
    assert io.tolist() == [2, 4, 8, 31, 4, -(2**31), -4, 7]


def test_thread_order_is_applied(basic):
    seqs = {}
    for o in ("forward", "reverse", "random"):
        counter = np.zeros(1, i32)
        seq = np.full(64, -1, i32)
        basic.get_function("record_order")((1,), (64,), (counter, seq), order=o, seed=3)
        seqs[o] = seq.tolist()
        assert sorted(seqs[o]) == list(range(64))
    assert seqs["forward"] == list(range(64))
    assert seqs["reverse"] == list(range(63, -1, -1))
    assert seqs["random"] not in (seqs["forward"], seqs["reverse"])


def test_order_from_environment(basic, monkeypatch):
    monkeypatch.setenv("EMU_ORDER", "reverse")
    counter = np.zeros(1, i32)
    seq = np.full(8, -1, i32)
    basic.get_function("record_order")((1,), (8,), (counter, seq))
    assert seq.tolist() == list(range(7, -1, -1))
    cuda_emu.set_order("forward")
    try:
        counter[:] = 0
        basic.get_function("record_order")((1,), (8,), (counter, seq))
        assert seq.tolist() == list(range(8))
    finally:
        cuda_emu.set_order(None)


def test_random_order_depends_on_seed(basic):
    seqs = set()
    for seed in range(4):
        counter = np.zeros(1, i32)
        seq = np.zeros(32, i32)
        basic.get_function("record_order")((1,), (32,), (counter, seq), order="random", seed=seed)
        seqs.add(tuple(seq))
    assert len(seqs) == 4


def test_forced_fibers_give_same_results(monkeypatch, rng):
    """EMU_FIBERS=1 runs barrier-free kernels as fibers too (a separate build)."""
    monkeypatch.setenv("EMU_FIBERS", "1")
    mod = cuda_emu.RawModule(code="""
        extern "C" __global__ void axpb(float* y, const float* x, float a, float b, int n) {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) y[i] = a * x[i] + b;
        }""", name="forced_fibers.cu")
    k = mod.get_function("axpb")
    assert k.uses_fibers
    x = rng.standard_normal(100).astype(f32)
    y = np.zeros_like(x)
    k((4,), (32,), (y, x, f32(2), f32(1), i32(100)))
    close(y, 2 * x + 1)


def test_portable_ucontext_switch(reduce, rng):
    """The ucontext fallback (used off x86-64) runs barriers and shuffles the same way."""
    mod = cuda_emu.RawModule(path=reduce.path, options=("-DCUDA_EMU_UCONTEXT",))
    x = rng.standard_normal(1000).astype(f32)
    for o in ("forward", "random"):
        out = np.zeros(4, f32)
        mod.get_function("block_sum")((4,), (256,), (x, out, i32(1000)), order=o)
        close(out.sum(), x.sum(dtype=np.float64), atol=1e-3)
        out = np.zeros(1, f32)
        mod.get_function("warp_sum")((21,), (48,), (x, out, i32(1000)), order=o)
        close(out[0], x.sum(dtype=np.float64), atol=1e-3)

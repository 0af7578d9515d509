"""Shared machinery of the benchmarks: run mode, thread counts, the machine's ceilings,
the timing helper and the real layer shapes of the models.

Modes (decided once per session, at collection time):
    smoke  the normal test run (`--benchmark-disable`, pytest's default here) or
           CGANRAW_BENCH_SMOKE=1: batch 2, tiny ceilings, each body runs once.
    quick  CGANRAW_BENCH_QUICK=1 (`python -m cganraw.bench --quick`): batch 64, few rounds.
    full   batches 64 and 128, more rounds.

Every benchmark records in `benchmark.extra_info`: op, shape, backend, family, time_s (the
median its throughput is computed from), throughput and unit (GB/s of an ideal
implementation's bytes read + written for memory-bound ops, GFLOP/s for GEMM and conv,
images/s for training steps), ceiling and pct_ceiling (against the ceiling measured in the
same session). cganraw.bench turns those records into the table and the chart.

CPU times come from pytest-benchmark (perf_counter around synchronous work). GPU times
come from CUDA events (cupyx.profiler.benchmark), never from a host timer around
asynchronous launches; pytest-benchmark's own column for a GPU row is the synchronised
wall time, kept for its table only.
"""
from __future__ import annotations

import contextlib
import os
import time

import numpy as np

SMOKE_BATCH = 2
F32 = 4  # bytes


# ------------------------------------------------------------------ mode ----------

def mode_from_config(config) -> str:
    if os.environ.get("CGANRAW_BENCH_SMOKE", "") not in ("", "0"):
        return "smoke"
    disabled = config.getoption("benchmark_disable", False) and not config.getoption("benchmark_enable", False)
    if disabled:
        return "smoke"
    if os.environ.get("CGANRAW_BENCH_QUICK", "") not in ("", "0"):
        return "quick"
    return "full"


def batches_for(mode: str):
    return {"smoke": (SMOKE_BATCH,), "quick": (64,), "full": (64, 128)}[mode]


# rounds per benchmark and the wall time one round aims at (several iterations of a
# fast op make one round, so the timer's resolution and Python's overhead average out)
ROUNDS = {"smoke": 2, "quick": 5, "full": 9}
ROUND_TIME = {"smoke": 0.002, "quick": 0.02, "full": 0.05}
TRAIN_ROUNDS = {"smoke": 2, "quick": 3, "full": 7}


# ------------------------------------------------------------------ threads -------

def bench_threads() -> int:
    """Threads for BLAS, Numba and PyTorch alike: $CGANRAW_BENCH_THREADS, else the
    CPUs this process may run on."""
    env = os.environ.get("CGANRAW_BENCH_THREADS", "").strip()
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def blas_info() -> dict:
    from cganraw.bench import blas_runtime  # noqa: PLC0415
    return blas_runtime()


def set_blas_threads(n: int) -> bool:
    from cganraw.bench import set_blas_threads as _set  # noqa: PLC0415
    return _set(n)


def set_threads(n: int) -> dict:
    """The same thread count for OpenBLAS, Numba (and PyTorch, when imported)."""
    done = {"blas": set_blas_threads(n)}
    try:
        import numba  # noqa: PLC0415
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        done["numba"] = numba.get_num_threads()
    except Exception:  # numba missing, or a threading layer that cannot start
        done["numba"] = None
    return done


# ------------------------------------------------------------------ GPU -----------

def gpu_available() -> bool:
    from cganraw import backend  # noqa: PLC0415
    return backend.gpu_available()


def cupy():
    from cganraw import backend  # noqa: PLC0415
    return backend.cupy()


def gpu_median_time(fn, n_repeat, n_warmup=2) -> float:
    """Median device time of fn() in seconds, from CUDA events (cupyx.profiler.benchmark)."""
    from cupyx.profiler import benchmark as cupy_benchmark  # noqa: PLC0415
    res = cupy_benchmark(fn, (), n_repeat=max(1, n_repeat), n_warmup=n_warmup)
    return float(np.median(np.asarray(res.gpu_times)[0]))


@contextlib.contextmanager
def backend_ctx(name):
    """cganraw.backend switched to `name` inside the block; yields the array module."""
    from cganraw import backend  # noqa: PLC0415
    prev = backend.current()
    backend.use(name)
    try:
        yield backend.get_xp()
    finally:
        backend.use(prev)


def gpu_param(value="cuda", id=None):
    """A pytest.param that skips, with the reason, where no GPU is usable."""
    import pytest  # noqa: PLC0415
    try:
        ok = gpu_available()
    except Exception:
        ok = False
    return pytest.param(value, id=id, marks=pytest.mark.skipif(
        not ok, reason="no usable GPU: CuPy missing or no CUDA device (cganraw.backend.gpu_available() is False)"))


def gpu_sync():
    cp = cupy()
    if cp is not None:
        cp.cuda.Device().synchronize()


# ------------------------------------------------------------------ ceilings ------

def _median_wall(fn, repeat):
    fn()  # warm-up: page faults, thread pools
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def cpu_ceilings(mode: str) -> dict:
    """Copy bandwidth (GB/s, bytes read + written) of a large np.copyto, and float32 SGEMM
    GFLOP/s of a large square np.matmul, with the session's thread count."""
    copy_mib, n, repeat = {"smoke": (4, 192, 1), "quick": (128, 1536, 3), "full": (256, 2048, 5)}[mode]
    src = np.ones(copy_mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t_copy = _median_wall(lambda: np.copyto(dst, src), repeat * 2)
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    c = np.empty_like(a)
    t_mm = _median_wall(lambda: np.matmul(a, b, out=c), repeat)
    return {"GB/s": 2 * src.nbytes / t_copy / 1e9, "GFLOP/s": 2 * n**3 / t_mm / 1e9,
            "copy_bytes": 2 * src.nbytes, "sgemm_n": n, "method": "np.copyto / np.matmul float32, median wall"}


def gpu_ceilings(mode: str) -> dict:
    """Device-to-device copy bandwidth and cupy.matmul float32 GFLOP/s, CUDA-event timed."""
    cp = cupy()
    copy_mib, n, repeat = {"smoke": (4, 256, 2), "quick": (256, 4096, 10), "full": (1024, 8192, 20)}[mode]
    src = cp.ones(copy_mib * 2**20 // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    t_copy = gpu_median_time(lambda: cp.copyto(dst, src), repeat)
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = a.copy()
    t_mm = gpu_median_time(lambda: cp.matmul(a, b), repeat)
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return {"GB/s": 2 * src.nbytes / t_copy / 1e9, "GFLOP/s": 2 * n**3 / t_mm / 1e9,
            "copy_bytes": 2 * src.nbytes, "sgemm_n": n, "device": name.decode() if isinstance(name, bytes) else name,
            "method": "cupy.copyto / cupy.matmul float32, CUDA events (cupyx.profiler.benchmark)"}


# ------------------------------------------------------------------ timing --------

def _calibrate(fn, round_time):
    """Iterations per round so that one round lasts about round_time."""
    t = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t, 1e-7)
    return max(1, min(10_000, int(round_time / dt)))


def measure(benchmark, fn, *, op, shape, backend, family, ctx, bytes_moved=None, flops=None,
            items=None, rounds=None, setup_once=None, extra=None):
    """Benchmark fn() and record its throughput. Under `--benchmark-disable` fn runs once.

    bytes_moved: bytes an ideal implementation reads + writes (memory-bound op: GB/s);
    flops: floating-point operations (GEMM, conv: GFLOP/s); items: images per call (images/s).
    ctx: the session context (mode, ceilings). Returns fn's last result.
    """
    shape_s = shape if isinstance(shape, str) else "x".join(map(str, shape))
    benchmark.group = f"{op} {shape_s}"
    benchmark.extra_info.update({"op": op, "shape": shape_s, "backend": backend, "family": family})
    if extra:
        benchmark.extra_info.update(extra)
    if setup_once is not None:
        setup_once()
    on_gpu = backend.startswith("cuda")
    if not benchmark.enabled:   # smoke: pytest-benchmark runs the body once, untimed
        out = benchmark(fn)
        if on_gpu:
            gpu_sync()
        return out

    mode = ctx["mode"]
    rounds = rounds or ROUNDS[mode]
    if on_gpu:
        def synced():
            r = fn()
            gpu_sync()
            return r
        iters = _calibrate(synced, ROUND_TIME[mode])
        out = benchmark.pedantic(synced, rounds=rounds, iterations=iters, warmup_rounds=1)
        t = gpu_median_time(fn, n_repeat=max(rounds * iters, 10))
        ceil = ctx["ceilings"].get("gpu") or {}
        benchmark.extra_info["timer"] = "cuda-events"
    else:
        iters = _calibrate(fn, ROUND_TIME[mode])
        out = benchmark.pedantic(fn, rounds=rounds, iterations=iters, warmup_rounds=1)
        t = float(benchmark.stats.stats.median)
        ceil = ctx["ceilings"].get("cpu") or {}
        benchmark.extra_info["timer"] = "perf_counter"
    record_throughput(benchmark.extra_info, t, ceil, bytes_moved=bytes_moved, flops=flops, items=items)
    return out


def record_throughput(info, t, ceil, *, bytes_moved=None, flops=None, items=None):
    info["time_s"] = t
    if flops is not None:
        info.update(throughput=flops / t / 1e9, unit="GFLOP/s", flops=flops)
        c = ceil.get("GFLOP/s")
    elif bytes_moved is not None:
        info.update(throughput=bytes_moved / t / 1e9, unit="GB/s", bytes=bytes_moved)
        c = ceil.get("GB/s")
    elif items is not None:
        info.update(throughput=items / t, unit="images/s")
        c = None
    else:
        c = None
    if c:
        info["ceiling"] = c
        info["pct_ceiling"] = 100.0 * info["throughput"] / c


def nbytes(*arrays) -> int:
    return int(sum(a.nbytes for a in arrays))


# ------------------------------------------------------------------ shapes --------
# The real layer shapes: cgan-conv at width 128 and cgan-mlp (README, cganraw/models.py).

WIDTH = 128
SMOKE_WIDTH = 16   # the training-step smoke check builds the conv models this narrow


def model_width(mode: str) -> int:
    return SMOKE_WIDTH if mode == "smoke" else WIDTH

# name, kind, in channels, out channels, kernel, stride, padding, input size
CONV_LAYERS = [
    ("G.up1 ConvT(129->128,k4,s2,p1) 7->14", "convT", WIDTH + 1, WIDTH, 4, 2, 1, 7),
    ("G.up2 ConvT(128->128,k4,s2,p1) 14->28", "convT", WIDTH, WIDTH, 4, 2, 1, 14),
    ("G.out Conv2d(128->1,k7,p3) 28", "conv", WIDTH, 1, 7, 1, 3, 28),
    ("D.conv1 Conv2d(2->128,k3,s2,p1) 28->14", "conv", 2, WIDTH, 3, 2, 1, 28),
    ("D.conv2 Conv2d(128->128,k3,s2,p1) 14->7", "conv", WIDTH, WIDTH, 3, 2, 1, 14),
]

# name, in, out: the dense layers whose GEMMs are benchmarked
LINEAR_LAYERS = [
    ("G.fc Linear(100->6272)", 100, WIDTH * 49),
    ("D.label_fc Linear(50->784)", 50, 784),
    ("D.fc Linear(6272->1)", WIDTH * 49, 1),
    ("mlpG.fc4 Linear(1024->784)", 1024, 784),
    ("mlpD.fc1 Linear(794->1024)", 794, 1024),
]


def conv_out(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def convT_out(h, k, s, p):
    return (h - 1) * s - 2 * p + k


def conv_layer_dims(layer, n):
    """(x shape, W shape, output shape, forward FLOPs) of a conv layer at batch n."""
    _, kind, c, o, k, s, p, h = layer
    if kind == "conv":
        ho = conv_out(h, k, s, p)
        return (n, c, h, h), (o, c, k, k), (n, o, ho, ho), 2 * n * ho * ho * o * c * k * k
    ho = convT_out(h, k, s, p)
    return (n, c, h, h), (c, o, k, k), (n, o, ho, ho), 2 * n * h * h * c * o * k * k


def im2col_calls(layer, n):
    """The im2col/col2im call a layer makes: (image shape, k, s, p, out_hw). A Conv2d
    im2cols its input (col2im in backward); a ConvTranspose2d col2ims into its output
    (im2col of dy in backward); G.out, a stride-1 conv with fewer outputs than inputs,
    runs as ConvTranspose2d(128->1, k7, p=k-1-3) (cganraw.ops.conv._expand_outputs)."""
    _, kind, c, o, k, s, p, h = layer
    if kind == "conv" and s == 1 and o < c:
        return (n, o, h, h), k, 1, k - 1 - p, (h, h)
    if kind == "conv":
        ho = conv_out(h, k, s, p)
        return (n, c, h, h), k, s, p, (ho, ho)
    ho = convT_out(h, k, s, p)
    return (n, o, ho, ho), k, s, p, (h, h)


def gemm_cases(n):
    """(label, M, N, K, trans_a, trans_b) of the GEMMs the layers run at batch n,
    in cganraw.ops.gemm's convention (a is (K, M) when trans_a, b is (N, K) when trans_b)."""
    cases = []
    for layer in CONV_LAYERS:
        name, kind, c, o, k, s, p, h = layer
        tag = name.split()[0]
        if kind == "conv" and s == 1 and o < c:   # expanded on the output side: a ConvT(c->o)
            kind, p = "convT", k - 1 - p
        if kind == "conv":
            ho = conv_out(h, k, s, p)
            L, R = n * ho * ho, c * k * k
            cases += [(f"{tag} fwd", o, L, R, False, False), (f"{tag} dW", o, R, L, False, True),
                      (f"{tag} dcols", R, L, o, True, False)]
        else:
            L, R = n * h * h, o * k * k
            cases += [(f"{tag} fwd cols", R, L, c, True, False), (f"{tag} dW", c, R, L, False, True),
                      (f"{tag} dx", c, L, R, False, False)]
    for name, fin, fout in LINEAR_LAYERS:
        tag = name.split()[0]
        cases += [(f"{tag} fwd", n, fout, fin, False, True), (f"{tag} dx", n, fin, fout, False, False),
                  (f"{tag} dW", fout, fin, n, True, False)]
    return cases


# shapes without the batch axis: the batch comes from the `batch` parameter
ELEMENTWISE = {
    "leaky_relu": [(WIDTH * 49,), (WIDTH, 14, 14), (WIDTH, 28, 28), (1024,)],
    "relu": [(256,), (512,), (1024,)],
    "tanh": [(1, 28, 28)],
    "sigmoid": [(1,), (1, 28, 28)],
}
DROPOUT = [((WIDTH * 49,), 0.4), ((1024,), 0.3)]
BIAS = [(WIDTH * 49,), (WIDTH, 14, 14), (WIDTH, 28, 28), (1, 28, 28), (1024,)]
BATCHNORM = [(256,), (512,), (1024,), (WIDTH, 14, 14), (WIDTH, 28, 28)]


def tail_id(tail):
    return "Nx" + "x".join(map(str, tail))


ADAM_TENSORS = [  # name, shape
    ("G.fc.weight", (WIDTH * 49, 100)),
    ("G.up2.weight", (WIDTH, WIDTH, 4, 4)),
    ("mlpD.fc1.weight", (1024, 794)),
]

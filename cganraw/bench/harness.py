"""How a benchmark case is timed and recorded: run modes, thread counts, the machine's
ceilings, and `run_case`, shared by the two runners (pytest-benchmark's `benchmark`
fixture in bench/, and `Timer` in `python -m cganraw.bench`).

Modes:
    smoke  tiny shapes (batch 2); under pytest's default `--benchmark-disable` each body
           runs once, untimed: a check that every case works.
    quick  batch 64, few rounds (`python -m cganraw.bench --quick`).
    full   batches 64 and 128, more rounds.

Every case records in `extra_info`: op, shape, backend, family, time_s (the median its
throughput comes from), throughput and unit (GB/s of an ideal implementation's bytes read
and written for memory-bound ops, GFLOP/s for GEMM and conv, images/s for training steps),
ceiling and pct_ceiling (against the ceiling measured in the same session).

CPU times come from perf_counter around synchronous work. GPU times come from CUDA
events (cupyx.profiler.benchmark), never from a host timer around asynchronous launches;
the host-timed rounds of a GPU case are kept for pytest-benchmark's own table only.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time

import numpy as np

from cganraw.bench.machine import set_blas_threads

MODES = ("smoke", "quick", "full")
F32 = 4  # bytes

# rounds per case and the wall time one round aims at (several iterations of a fast op
# make one round, so the timer's resolution and Python's overhead average out)
ROUNDS = {"smoke": 2, "quick": 5, "full": 9}
ROUND_TIME = {"smoke": 0.002, "quick": 0.02, "full": 0.05}
TRAIN_ROUNDS = {"smoke": 2, "quick": 3, "full": 7}


class SkipCase(Exception):
    """A case that cannot run here (no GPU, a kernel version that does not exist)."""


# ------------------------------------------------------------------ threads -------

def bench_threads() -> int:
    """Threads for BLAS and PyTorch alike (Numba: see set_threads): $CGANRAW_BENCH_THREADS, else the
    CPUs this process may run on."""
    env = os.environ.get("CGANRAW_BENCH_THREADS", "").strip()
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_session_threads = None


def session_threads() -> int:
    """The count the last set_threads() gave, else bench_threads()."""
    return _session_threads or bench_threads()


def set_threads(n: int) -> dict:
    """`n` threads for OpenBLAS and for PyTorch's peer steps made after this (they read
    session_threads()); Numba on as many as a training run gives it beside a given --threads
    (cganraw.threads.default_numba_threads: `n` where OpenBLAS's workers sleep after their
    GEMMs, else one, as a parallel region after a GEMM would wait for them)."""
    global _session_threads
    _session_threads = int(n)
    from cganraw import threads
    return {"blas": set_blas_threads(n), "numba": threads.set_numba_threads(threads.default_numba_threads(n))}


# ------------------------------------------------------------------ GPU -----------

def gpu_available() -> bool:
    from cganraw import backend
    try:
        return backend.gpu_available()
    except Exception:  # a broken CUDA install counts as no GPU here
        return False


def cupy():
    from cganraw import backend
    return backend.cupy()


def gpu_sync():
    cp = cupy()
    if cp is not None:
        cp.cuda.Device().synchronize()


def gpu_median_time(fn, n_repeat, n_warmup=2) -> float:
    """Median device time of fn() in seconds, from CUDA events (cupyx.profiler.benchmark)."""
    from cupyx.profiler import benchmark as cupy_benchmark
    res = cupy_benchmark(fn, (), n_repeat=max(1, n_repeat), n_warmup=n_warmup)
    return float(np.median(np.asarray(res.gpu_times)[0]))


@contextlib.contextmanager
def backend_ctx(name):
    """cganraw.backend switched to `name` inside the block; yields the array module."""
    from cganraw import backend
    prev = backend.current()
    backend.use(name)
    try:
        yield backend.get_xp()
    finally:
        backend.use(prev)


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


def remeasure_ceilings(ctx: dict) -> None:
    """Measure the ceilings again at the end of a session; keep both in ctx and use the
    best of the two (other jobs on a shared machine move both)."""
    start = {k: v for k, v in (ctx.get("ceilings") or {}).items() if v}
    if not start:
        return
    end = {}
    if "cpu" in start:
        end["cpu"] = cpu_ceilings(ctx["mode"])
    if "gpu" in start:
        end["gpu"] = gpu_ceilings(ctx["mode"])
    ctx["ceilings_start"], ctx["ceilings_end"] = start, end
    ctx["ceilings"] = {dev: dict(c, **{u: max(c[u], (end.get(dev) or {}).get(u, 0.0)) for u in ("GB/s", "GFLOP/s")})
                       for dev, c in start.items()}


# ------------------------------------------------------------------ timing --------

class Timer:
    """The part of pytest-benchmark's `benchmark` fixture that run_case uses, for running
    cases without pytest; `as_dict()` gives a record in pytest-benchmark's JSON form."""

    enabled = True

    def __init__(self, name: str, param: str = ""):
        self.name, self.param = name, param
        self.group = None
        self.extra_info = {}
        self.round_times = []      # seconds per iteration, one entry per round

    def __call__(self, fn):
        return fn()

    def pedantic(self, fn, setup=None, rounds=1, iterations=1, warmup_rounds=0):
        for _ in range(warmup_rounds):
            if setup is not None:
                setup()
            fn()
        out = None
        for _ in range(rounds):
            if setup is not None:
                setup()
            t = time.perf_counter()
            for _ in range(iterations):
                out = fn()
            self.round_times.append((time.perf_counter() - t) / iterations)
        return out

    @property
    def median(self) -> float:
        return float(statistics.median(self.round_times))

    def as_dict(self) -> dict:
        ts = self.round_times
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0], ts[0], ts[0]]
        return {"name": self.name, "fullname": self.name, "param": self.param, "group": self.group,
                "stats": {"median": self.median, "min": min(ts), "max": max(ts), "mean": statistics.fmean(ts),
                          "iqr": q[2] - q[0], "rounds": len(ts)},
                "extra_info": dict(self.extra_info)}


def _round_times(benchmark):
    return list(benchmark.round_times) if isinstance(benchmark, Timer) else list(benchmark.stats.stats.data)


def _calibrate(fn, round_time):
    """Iterations per round so that one round lasts about round_time."""
    t = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t, 1e-7)
    return max(1, min(10_000, int(round_time / dt)))


def record_throughput(info, t, ceil, *, bytes_moved=None, flops=None, items=None):
    info["time_s"] = t
    c = None
    if flops is not None:
        info.update(throughput=flops / t / 1e9, unit="GFLOP/s", flops=flops)
        c = ceil.get("GFLOP/s")
    elif bytes_moved is not None:
        info.update(throughput=bytes_moved / t / 1e9, unit="GB/s", bytes=bytes_moved)
        c = ceil.get("GB/s")
    elif items is not None:
        info.update(throughput=items / t, unit="images/s")
    if c:
        info["ceiling"] = c
        info["pct_ceiling"] = 100.0 * info["throughput"] / c


def _time_with_peer(benchmark, prep, ctx, rounds):
    """Ours timed round by round with the peer (PyTorch) step run and timed in each round's
    setup, so the two alternate: peer, ours, peer, ours, ..."""
    peer_times = []

    def run_peer():
        t = time.perf_counter()
        prep.peer()
        peer_times.append(time.perf_counter() - t)

    out = benchmark.pedantic(prep.fn, setup=run_peer, rounds=rounds, warmup_rounds=1, iterations=1)
    ours = _round_times(benchmark)
    theirs = peer_times[-len(ours):]            # the warm-up round's peer step is dropped
    t_ours, t_peer = float(np.median(ours)), float(np.median(theirs))
    record_throughput(benchmark.extra_info, t_ours, {}, items=prep.items)
    benchmark.extra_info.update({
        "timer": "perf_counter", "peer": "torch", "torch_time_s": t_peer, "torch_images_per_s": prep.items / t_peer,
        "ratio_vs_torch": t_ours / t_peer,
        "ratio_vs_torch_paired_median": float(np.median(np.asarray(ours) / np.asarray(theirs))),
        "ours_times_s": ours, "torch_times_s": theirs})
    return out


def measure(benchmark, case, prep, ctx):
    """Time prep.fn (a Prepared of `case`) with `benchmark` and record its throughput;
    check its result. Under `--benchmark-disable` it runs once, with its peer, untimed."""
    benchmark.group = f"{prep.op} {prep.shape}"
    benchmark.extra_info.update({"op": prep.op, "shape": prep.shape, "backend": case.impl,
                                 "family": case.spec.family, **prep.extra})
    on_gpu = case.backend == "cuda"
    if not benchmark.enabled:
        out = benchmark(prep.fn)
        if on_gpu:
            gpu_sync()
        if prep.peer is not None:
            prep.peer()
    else:
        mode = ctx["mode"]
        rounds = prep.rounds or ROUNDS[mode]
        if prep.peer is not None:
            out = _time_with_peer(benchmark, prep, ctx, rounds)
        elif on_gpu:
            def synced():
                r = prep.fn()
                gpu_sync()
                return r
            iters = _calibrate(synced, ROUND_TIME[mode])
            out = benchmark.pedantic(synced, rounds=rounds, iterations=iters, warmup_rounds=1)
            benchmark.extra_info["timer"] = "cuda-events"
            record_throughput(benchmark.extra_info, gpu_median_time(prep.fn, n_repeat=max(rounds * iters, 10)),
                              ctx["ceilings"].get("gpu") or {}, bytes_moved=prep.bytes_moved, flops=prep.flops,
                              items=prep.items)
        else:
            iters = 1 if prep.rounds else _calibrate(prep.fn, ROUND_TIME[mode])
            out = benchmark.pedantic(prep.fn, rounds=rounds, iterations=iters, warmup_rounds=1)
            benchmark.extra_info["timer"] = "perf_counter"
            record_throughput(benchmark.extra_info, float(np.median(_round_times(benchmark))),
                              ctx["ceilings"].get("cpu") or {}, bytes_moved=prep.bytes_moved, flops=prep.flops,
                              items=prep.items)
    if prep.check is not None:
        prep.check(out)
    return out


def run_case(benchmark, case, ctx):
    """Prepare `case` on its backend and measure it. Raises SkipCase where it cannot run."""
    if case.backend == "cuda" and not gpu_available():
        raise SkipCase("no usable GPU: CuPy missing or no CUDA device (cganraw.backend.gpu_available() is False)")
    with backend_ctx(case.backend) as xp:
        prep = case.spec.prepare(xp, case.batch, case.impl, ctx["mode"])
        return measure(benchmark, case, prep, ctx)

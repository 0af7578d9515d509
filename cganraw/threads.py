"""CPU threads of a training run on the NumPy backend: BLAS (through threadpoolctl) and
Numba get one count, given (`--threads N`) or picked by measurement (`--threads 0`, the
default): the work itself (the trainer passes one training step of a throwaway copy of
its models; without one, a GEMM of the conv cGAN's shapes) is timed at 1, 2, 4, ... threads
up to the CPUs this process may use (or fewer, when $OMP_NUM_THREADS, $OPENBLAS_NUM_THREADS
or $MKL_NUM_THREADS asks for fewer), and the fastest count wins. More threads can be slower
than one: a busy core stalls every parallel region, and a small model's step is many short
parallel regions whose spinning BLAS and Numba workers contend (a large GEMM scales while
the step of width 48, batch 32 ran at 241 images/s on two threads against 400 on one).
So it is measured on the step, not on a GEMM, and not assumed. `apply` returns what was set, for the run's config.json.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

log = logging.getLogger(__name__)

_limiter = None        # the threadpoolctl limit in force (kept alive: it holds the setting)
PROBE_SHAPE = (128, 128, 4096)   # M, K, N: a phase GEMM of a transposed convolution, cut short
PROBE_REPEATS = 5       # best of: a step's time on two threads swings (68 to 136 ms seen at width 48)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


# variables by which a user caps a process's threads; the measured pick stays within them
LIMIT_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def environment_limit() -> int | None:
    """The smallest positive thread count the environment asks for, or None."""
    limits = []
    for var in LIMIT_VARS:
        try:
            n = int(os.environ.get(var, ""))
        except ValueError:
            continue
        if n > 0:
            limits.append(n)
    return min(limits) if limits else None


def usable_cpus() -> int:
    """The CPUs this process may use, capped by the environment's thread limit."""
    return min(available_cpus(), environment_limit() or available_cpus())


def candidates(cpus: int | None = None) -> list:
    """1, 2, 4, ... up to `cpus`, and `cpus` itself."""
    cpus = cpus or usable_cpus()
    out, n = [], 1
    while n < cpus:
        out.append(n)
        n *= 2
    return out + [cpus]


def set_threads(n: int) -> dict:
    """BLAS and Numba to `n` threads (each capped at what it can run). Returns
    {"blas": count or None, "numba": count or None} (None: that library is not loaded)."""
    global _limiter
    done = {"blas": None, "numba": None}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        _limiter = threadpool_limits(limits=int(n), user_api="blas")
        counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        done["blas"] = min(counts) if counts else None
    except ImportError:
        log.warning("threadpoolctl is missing: BLAS keeps its own thread count")
    try:
        import numba
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
        done["numba"] = numba.get_num_threads()
    except Exception:   # numba missing, or a threading layer that cannot start
        pass
    return done


def _probe_seconds(n, work) -> float:
    """The best of PROBE_REPEATS timings of work() at n threads, after one untimed call
    (which wakes the threads and fills the caches)."""
    set_threads(n)
    work()
    best = float("inf")
    for _ in range(PROBE_REPEATS):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_probe():
    """The work timed when none is given: one float32 GEMM of PROBE_SHAPE."""
    m, k, n = PROBE_SHAPE
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    return lambda: np.matmul(a, b, out=out)


_picked = {}           # cpus -> (pick()'s answer, what was timed): measured once per process, so
                      # that every run of one process (a test session, a study) uses the same count:
                      # some BLAS results depend on it in their last bit


def pick(cpus: int | None = None, make_work=None) -> tuple:
    """(fastest thread count, {count: seconds}) over candidates(cpus), timing the work that
    make_work() returns (a zero-argument callable; gemm_probe when make_work is None),
    measured on the first call of this process and remembered: make_work is called only
    then. `cpus` defaults to the CPUs this process may use, capped by $OMP_NUM_THREADS /
    $OPENBLAS_NUM_THREADS / $MKL_NUM_THREADS."""
    return _pick(cpus or usable_cpus(), make_work)[0]


def _pick(cpus, make_work):
    if cpus not in _picked:
        work = (make_work or gemm_probe)()
        times = {c: _probe_seconds(c, work) for c in candidates(cpus)}
        _picked[cpus] = (min(times, key=times.get), times), make_work is not None
    return _picked[cpus]


def apply(requested: int | None, make_work=None, what="training step") -> dict:
    """Set the run's threads: `requested` > 0 as given, 0 or None picked by pick(None,
    make_work), `what` naming the timed work. Returns the record for config.json: requested,
    blas, numba, and the probe with its times when measured."""
    record = {"requested": requested or "auto"}
    if requested:
        chosen = int(requested)
    else:
        (chosen, times), timed_work = _pick(usable_cpus(), make_work)
        record["probe"] = what if timed_work else "GEMM"
        record["probe_ms"] = {str(c): round(t * 1e3, 3) for c, t in times.items()}
        log.debug("threads: %d (%s probe %s)", chosen, record["probe"],
                  ", ".join(f"{c}: {t * 1e3:.1f} ms" for c, t in times.items()))
    record.update(set_threads(chosen))
    return record

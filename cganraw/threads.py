"""CPU threads of a training run on the NumPy backend: BLAS (through threadpoolctl) and
Numba each get a count, given (`--threads N`, `--numba-threads M`) or picked by measurement
(`--threads 0`, the default): the work itself (the trainer passes one training step of a
throwaway copy of its models; without one, a GEMM of the conv cGAN's shapes) is timed at
each pair of counts of configurations() (BLAS 1, 2, 4, ... up to the CPUs this process may
use, or fewer when $OMP_NUM_THREADS, $OPENBLAS_NUM_THREADS or $MKL_NUM_THREADS asks for
fewer; Numba on one thread or on as many as BLAS), and the fastest pair wins.

More threads can be slower than one: a busy core stalls every parallel region, and a step is
many short parallel regions. OpenBLAS's workers spin for a while after every GEMM (2^28
cycles), and a parallel Numba region right after one waits for the cores they hold (on two
cores a 0.08 ms kernel took 5 ms after a GEMM; the conv cGAN's step at width 64, batch 64
took 198 ms with both on two threads, 121 with Numba on one). Importing cganraw before NumPy
sets $OPENBLAS_THREAD_TIMEOUT to 4 (they sleep at once; the user's value is kept): with it
in force (blas_workers_sleep()), Numba gets as many threads as BLAS by default (the default
step 65.6 -> 57.3 ms, the conv cGAN at width 128 659 -> 565 ms, the DCGAN at width 128 204 ->
181 ms: BLAS 2, Numba 1 -> 2, medians of 5 interleaved rounds); without it, one. Numba's
kernels give the same bits at any thread count, so only the BLAS count is kept on a resume.
`apply` returns what was set, for the run's config.json.
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


def configurations(cpus: int | None = None) -> list:
    """The (BLAS, Numba) thread counts the measured pick times: each BLAS count of
    candidates(cpus) with Numba on one thread, and on as many as BLAS."""
    return [(b, n) for b in candidates(cpus) for n in sorted({1, b})]


def pair_name(pair) -> str:
    """(2, 1) -> "2/1": BLAS threads / Numba threads, as config.json's probe_ms keys them."""
    return f"{pair[0]}/{pair[1]}"


BLAS_TIMEOUT_VAR = "OPENBLAS_THREAD_TIMEOUT"
SLEEPING_TIMEOUT_MAX = 16       # OpenBLAS's workers wait 2^value cycles: 2^16 is some 30 us


def blas_workers_sleep() -> bool:
    """Whether OpenBLAS's workers go to sleep right after a GEMM: $OPENBLAS_THREAD_TIMEOUT
    between 1 and SLEEPING_TIMEOUT_MAX (cganraw's import sets 4 when NumPy is not loaded yet)."""
    try:
        value = int(os.environ.get(BLAS_TIMEOUT_VAR, ""))
    except ValueError:
        return False
    return 1 <= value <= SLEEPING_TIMEOUT_MAX


def default_numba_threads(blas: int) -> int:
    """Numba's count beside `blas` BLAS threads when none is asked for: as many where
    OpenBLAS's workers sleep after their GEMMs, else one."""
    return max(1, int(blas)) if blas_workers_sleep() else 1


def set_threads(n: int, numba_threads: int | None = None) -> dict:
    """BLAS to `n` threads, Numba to `numba_threads` (default: default_numba_threads(n); see
    the module's docstring), each capped at what it can run. Returns {"blas": count or None,
    "numba": count or None} (None: that library is not loaded)."""
    global _limiter
    done = {"blas": None, "numba": None}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        _limiter = threadpool_limits(limits=int(n), user_api="blas")
        counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        done["blas"] = min(counts) if counts else None
    except ImportError:
        log.warning("threadpoolctl is missing: BLAS keeps its own thread count")
    done["numba"] = set_numba_threads(numba_threads or default_numba_threads(n))
    return done


def set_numba_threads(n: int) -> int | None:
    """Numba's kernels to `n` threads (capped at its pool), the pool started with its workers
    sleeping between regions (cganraw.ops._cpu.start_threads). Returns the count, or None
    when Numba is missing, disabled or its threading layer cannot start."""
    try:
        from cganraw.ops import _cpu
        numba = _cpu.start_threads()
        if numba is None:
            return None
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
        return numba.get_num_threads()
    except Exception:   # a threading layer that cannot start
        return None


def _probe_seconds(pair, work) -> float:
    """The best of PROBE_REPEATS timings of work() at the (BLAS, Numba) counts `pair`, after
    one untimed call (which wakes the threads and fills the caches)."""
    set_threads(*pair)
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


_picked = {}           # (cpus, numba count asked) -> (pick()'s answer, what was timed): measured once
                      # per process, so that every run of one process (a test session, a study)
                      # uses the same counts: some BLAS results depend on them in their last bit


def pick(cpus: int | None = None, make_work=None, numba_threads: int | None = None) -> tuple:
    """(fastest (BLAS, Numba) pair, {pair: seconds}) over configurations(cpus) (only those with
    Numba at `numba_threads` when given), timing the work that make_work() returns (a
    zero-argument callable; gemm_probe when make_work is None), measured on the first call
    of this process and remembered: make_work is called only then. `cpus` defaults to the
    CPUs this process may use, capped by $OMP_NUM_THREADS / $OPENBLAS_NUM_THREADS /
    $MKL_NUM_THREADS."""
    return _pick(cpus or usable_cpus(), make_work, numba_threads)[0]


def _pick(cpus, make_work, numba_threads=None):
    key = (cpus, numba_threads)
    if key not in _picked:
        pairs = configurations(cpus)
        if numba_threads:
            pairs = list(dict.fromkeys((b, int(numba_threads)) for b, _ in pairs))
        work = (make_work or gemm_probe)()
        times = {pair: _probe_seconds(pair, work) for pair in pairs}
        _picked[key] = (min(times, key=times.get), times), make_work is not None
    return _picked[key]


def apply(requested: int | None, make_work=None, what="training step", numba_threads: int | None = None) -> dict:
    """Set the run's threads: BLAS `requested` > 0 as given and Numba `numba_threads` (default:
    default_numba_threads); with `requested` 0 or None both picked by pick(None, make_work)
    (Numba held at `numba_threads` when given), `what` naming the timed work. Returns the
    record for config.json: requested, blas, numba, $OPENBLAS_THREAD_TIMEOUT, and the probe
    with its times when measured."""
    record = {"requested": requested or "auto", "openblas_thread_timeout": os.environ.get(BLAS_TIMEOUT_VAR)}
    if numba_threads:
        record["numba_requested"] = int(numba_threads)
    if requested:
        chosen = (int(requested), numba_threads)
    else:
        (chosen, times), timed_work = _pick(usable_cpus(), make_work, numba_threads)
        record["probe"] = what if timed_work else "GEMM"
        record["probe_ms"] = {pair_name(p): round(t * 1e3, 3) for p, t in times.items()}
        log.debug("threads (BLAS/Numba): %s (%s probe %s)", pair_name(chosen), record["probe"],
                  ", ".join(f"{pair_name(p)}: {t * 1e3:.1f} ms" for p, t in times.items()))
    record.update(set_threads(*chosen))
    return record

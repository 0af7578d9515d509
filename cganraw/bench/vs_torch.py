"""Our NumPy training steps against PyTorch's, side by side in one process:
`python -m cganraw.bench --vs-torch [--models cgan-conv,dcgan]`.

For each row of ROWS (model, width, batch), the same architecture and step order (D on
real, D on fake, G through the updated D, Adam on both; cganraw.bench.train_cases) runs
as ours and as PyTorch's (cganraw.interop.torch_models), after warm-up steps, interleaved
one step each per round, the one going first alternating from round to round so that a
drift in the machine's load falls on both alike. The result is each side's median step
time and their ratio ours / PyTorch (< 1: ours is faster). Each step's CPU time (the
process's, all threads) is recorded beside its wall time: at one thread on a machine that
other work keeps busy, the wall time also counts the time this process waited for a core,
and the CPU-time ratio is the steadier figure. PyTorch is not a dependency: without it the
comparison cannot run, and says so.

The rows: the conv cGAN at issue 16's two shapes, the MLP models and the DCGAN at their
training defaults (cganraw.settings: batch 64, DCGAN width 64), and the DCGAN at the width
and batch of the README's first table (128, 128).
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from cganraw import models
from cganraw.bench import harness, train_cases

log = logging.getLogger(__name__)

# (model, width, batch); width None: the MLP models have none
ROWS = (("cgan-conv", 128, 128), ("cgan-conv", 64, 64), ("cgan-mlp", None, 64), ("dcgan", 64, 64),
        ("dcgan", 128, 128), ("gan-mlp", None, 64))
WARMUP = 2
# seconds of idle, untimed, after each timed step: the two sides share one process and two
# cores, and a thread pool that spins after its side's step (PyTorch's OpenMP workers,
# OpenBLAS's under a long OPENBLAS_THREAD_TIMEOUT, Numba's) would take a core from the
# other side's next step. With the pause each step starts on an idle machine, as every step
# of a training run of either does.
SETTLE_S = 0.1
TORCH_MISSING = "PyTorch is not installed (pip install torch): --vs-torch has nothing to compare against"


@dataclass
class Comparison:
    model: str
    width: int | None
    batch: int
    ours_s: list
    torch_s: list
    ours_cpu_s: list
    torch_cpu_s: list

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours_s)

    @property
    def torch_median(self) -> float:
        return statistics.median(self.torch_s)

    @property
    def ratio(self) -> float:
        return self.ours_median / self.torch_median

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(self.ours_cpu_s) / statistics.median(self.torch_cpu_s)

    def as_dict(self) -> dict:
        return {**asdict(self), "ours_median_s": self.ours_median, "torch_median_s": self.torch_median,
                "ratio": self.ratio, "ours_cpu_median_s": statistics.median(self.ours_cpu_s),
                "torch_cpu_median_s": statistics.median(self.torch_cpu_s), "cpu_ratio": self.cpu_ratio}


def select_rows(names=None, rows=None) -> tuple:
    """The rows of the models in `names` (None: every row), in ROWS' order. Raises
    ValueError for a name that is not a model."""
    rows = ROWS if rows is None else rows
    if names is None:
        return tuple(rows)
    unknown = [n for n in names if n not in models.MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(models.MODELS)}")
    return tuple(r for r in rows if r[0] in names)


def _timed(fn) -> tuple:
    """(wall seconds, process CPU seconds) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def compare(model: str, width: int | None, batch: int, rounds: int, torch, seed: int = 0,
            settle_s: float = SETTLE_S) -> Comparison:
    """`rounds` interleaved training steps of ours and of PyTorch's for one row, `settle_s`
    seconds of idle after each."""
    x, y = train_cases.fake_batch(batch, conditional=model.startswith("cgan"), seed=seed)
    w = width or 1      # the MLP models take no width
    with harness.backend_ctx("numpy") as xp:
        ours = train_cases.our_step(model, batch, w, xp, x, y, seed)
        peer = train_cases.torch_step(torch, model, batch, w, x, y, seed)
        for _ in range(WARMUP):
            stats = ours()
            losses = peer()
        if not (np.isfinite(stats["d_loss"]) and all(np.isfinite(losses))):
            raise RuntimeError(f"{model}: non-finite losses in the warm-up: ours {stats}, PyTorch's {losses}")
        ours_s, torch_s, ours_cpu, torch_cpu = [], [], [], []
        for r in range(rounds):
            pair = ((ours, ours_s, ours_cpu), (peer, torch_s, torch_cpu))
            for fn, times, cpu in (pair if r % 2 == 0 else pair[::-1]):
                wall, used = _timed(fn)
                time.sleep(settle_s)
                times.append(wall)
                cpu.append(used)
            log.info("%s width %s batch %d round %d/%d: ours %.1f ms (CPU %.1f), PyTorch %.1f ms (CPU %.1f)", model,
                     width, batch, r + 1, rounds, ours_s[-1] * 1e3, ours_cpu[-1] * 1e3, torch_s[-1] * 1e3,
                     torch_cpu[-1] * 1e3)
    return Comparison(model, width, batch, ours_s, torch_s, ours_cpu, torch_cpu)


def numba_layer() -> str | None:
    """The threading layer Numba's parallel kernels run on here ("tbb", "omp", "workqueue"),
    their pool started; None without Numba."""
    from cganraw.ops import _cpu
    _cpu.start_threads()
    return _cpu.threading_layer()


def run(rounds: int = 5, threads: int | None = None, rows=None, numba_threads: int | None = None,
        settle_s: float | None = None) -> dict:
    """Every row compared (rows: (model, width, batch) tuples, ROWS by default); threads for
    BLAS and PyTorch alike, Numba on numba_threads (None: as many on the TBB layer, else
    one, see below), settle_s seconds of
    idle after each timed step (None: SETTLE_S). Raises ModuleNotFoundError(TORCH_MISSING)
    without PyTorch."""
    torch = train_cases._torch()
    if torch is None:
        raise ModuleNotFoundError(TORCH_MISSING)
    threads = threads or harness.bench_threads()
    pools = harness.set_threads(threads)
    # Numba on as many threads as BLAS on the TBB layer, as in training, else on one (unless
    # told). Numba's OpenMP layer and PyTorch's share one libgomp in a process (the first
    # loaded, by soname), whose wait policy is read once. PyTorch loads its own first, with
    # active waiting, and a second Numba thread then spun some 8 ms on the
    # other core after each kernel, into our next GEMM (our DCGAN step at width 128: 265 ms
    # on two threads, 200 on one). Started the other way round, PyTorch's workers waited
    # passively and its MLP step took 50 ms instead of 28. TBB (the `fast` extra installs it,
    # and Numba prefers it) has workers of its own; Numba's workqueue layer on two threads was
    # no faster than one (DCGAN width 64: 42-46 ms against 42).
    from cganraw.threads import set_numba_threads
    layer = numba_layer()
    if numba_threads is None:
        numba_threads = threads if layer == "tbb" else 1
    pools["numba"] = set_numba_threads(numba_threads)
    torch.set_num_threads(threads)
    settle_s = SETTLE_S if settle_s is None else float(settle_s)
    from cganraw.bench.machine import machine_info
    results = [compare(m, w, b, rounds, torch, settle_s=settle_s) for m, w, b in (ROWS if rows is None else rows)]
    return {"models": sorted({c.model for c in results}, key=models.MODELS.index), "rounds": rounds,
            "threads": threads, "numba_threads": pools["numba"], "numba_layer": layer, "settle_s": settle_s,
            "torch_version": torch.__version__, "machine": machine_info(threads),
            "results": [c.as_dict() for c in results]}


def format_results(data: dict) -> str:
    lines = [f"training step, ours (NumPy) vs PyTorch {data['torch_version']}: median of "
             f"{data['rounds']} interleaved rounds, {data['threads']} thread(s)",
             f"{'model':<10} {'width':>6} {'batch':>6} {'ours ms':>10} {'PyTorch ms':>11} {'ratio':>7}   "
             f"{'CPU: ours ms':>12} {'PyTorch ms':>11} {'ratio':>7}"]
    for r in data["results"]:
        width = "-" if r["width"] is None else r["width"]
        lines.append(f"{r['model']:<10} {width:>6} {r['batch']:>6} {r['ours_median_s'] * 1e3:>10.1f} "
                     f"{r['torch_median_s'] * 1e3:>11.1f} {r['ratio']:>7.3f}   {r['ours_cpu_median_s'] * 1e3:>12.1f} "
                     f"{r['torch_cpu_median_s'] * 1e3:>11.1f} {r['cpu_ratio']:>7.3f}")
    lines.append("ratio = ours / PyTorch (below 1: ours is faster); CPU: the process's CPU time per step, "
                 "the steadier figure at one thread on a busy machine")
    return "\n".join(lines)

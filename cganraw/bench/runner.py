"""Run benchmark cases in this process, without pytest: what `python -m cganraw.bench`
does, so it works from an installed wheel. The records it returns have the form of
pytest-benchmark's JSON, so one report writer serves both runners."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from cganraw.bench import harness

log = logging.getLogger(__name__)


@dataclass
class Session:
    records: list = field(default_factory=list)
    ctx: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)     # (case id, reason)
    failed: list = field(default_factory=list)      # (case id, one-line error)


def run(cases, mode: str, threads: int | None = None) -> Session:
    """Time every case (mode: smoke, quick or full) with `threads` for BLAS, Numba and
    PyTorch, between two measurements of the machine's ceilings. A case that fails is
    logged and counted, and the others still run."""
    if mode not in harness.MODES:
        raise ValueError(f"mode must be one of {', '.join(harness.MODES)}, got {mode!r}")
    threads = threads or harness.bench_threads()
    harness.set_threads(threads)
    session = Session(ctx={"mode": mode, "threads": threads, "ceilings": {}})
    log.info("measuring the CPU ceilings (copy bandwidth, SGEMM) ...")
    session.ctx["ceilings"]["cpu"] = harness.cpu_ceilings(mode)
    if any(c.backend == "cuda" for c in cases) and harness.gpu_available():
        session.ctx["ceilings"]["gpu"] = harness.gpu_ceilings(mode)
    width = len(str(len(cases)))
    for i, case in enumerate(cases, 1):
        timer = harness.Timer(case.id, case.impl)
        start = time.perf_counter()
        try:
            harness.run_case(timer, case, session.ctx)
        except harness.SkipCase as e:
            session.skipped.append((case.id, str(e)))
            log.debug("[%*d/%d] %s skipped: %s", width, i, len(cases), case.id, e)
            continue
        except Exception as e:  # one broken case must not lose the others' results
            message = " ".join(f"{type(e).__name__}: {e}".split())
            session.failed.append((case.id, message))
            log.error("[%*d/%d] %s FAILED: %s", width, i, len(cases), case.id, message)
            continue
        session.records.append(timer.as_dict())
        info = timer.extra_info
        log.info("[%*d/%d] %s: %.4g s, %.4g %s (%.1f s)", width, i, len(cases), case.id, info.get("time_s", 0),
                 info.get("throughput") or 0, info.get("unit", ""), time.perf_counter() - start)
    if session.records:
        log.info("measuring the ceilings again ...")
        harness.remeasure_ceilings(session.ctx)
    if session.skipped:
        reasons = sorted({reason for _, reason in session.skipped})
        log.info("%d case(s) skipped: %s", len(session.skipped), "; ".join(reasons))
    return session

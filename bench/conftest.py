"""pytest-benchmark's side of the benchmarks: the cases of cganraw.bench.cases, timed by
the `benchmark` fixture, and the report written when timing was on.

    pytest bench/ --benchmark-only --benchmark-enable          # full run, report in bench/results/
    python -m cganraw.bench [--quick] [--filter EXPR]          # the same cases, without pytest
    python -m pytest                                           # smoke: each case once, batch 2

Each bench_*.py names its SUITE; the `case` parameter holds that suite's cases, with the
ids `--filter` and `-k` match. GPU cases skip, with the reason, where no GPU is usable.
"""
import os

os.environ.setdefault("CGANRAW_BACKEND", "numpy")

import pytest

from cganraw.bench import cases, harness, report


def pytest_addoption(parser):
    group = parser.getgroup("cganraw-bench")
    group.addoption("--bench-out", default=None,
                    help="folder for the benchmark report (default $CGANRAW_BENCH_OUT, else bench/results)")


def _timed(config):
    return not (config.getoption("benchmark_disable", False) and not config.getoption("benchmark_enable", False))


def _mode(config):
    """smoke when timing is off (the normal test run) or CGANRAW_BENCH_SMOKE=1; quick with
    CGANRAW_BENCH_QUICK=1; full otherwise."""
    if os.environ.get("CGANRAW_BENCH_SMOKE", "") not in ("", "0") or not _timed(config):
        return "smoke"
    return "quick" if os.environ.get("CGANRAW_BENCH_QUICK", "") not in ("", "0") else "full"


def pytest_configure(config):
    if _timed(config):
        # one thread count for BLAS, Numba and PyTorch; the untimed smoke run inside the
        # normal test suite leaves the process as it is
        config._cganraw_bench_threads = harness.bench_threads()
        harness.set_threads(config._cganraw_bench_threads)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        suite = metafunc.module.SUITE
        params = [pytest.param(c, id=c.id) for c in cases.all_cases(_mode(metafunc.config), suites=(suite,))]
        metafunc.parametrize("case", params)


@pytest.fixture(scope="session")
def bench_ctx(request):
    """mode, threads and ceilings (cpu; gpu added by the first GPU case), measured once."""
    config = request.config
    mode = _mode(config)
    ctx = {"mode": mode, "threads": getattr(config, "_cganraw_bench_threads", None),
           "ceilings": {"cpu": harness.cpu_ceilings(mode)}}
    config._cganraw_bench_ctx = ctx
    return ctx


@pytest.fixture
def run_case(benchmark, bench_ctx):
    """run_case(case): time one case with pytest-benchmark; a case that cannot run here skips."""
    def run(case):
        if case.backend == "cuda" and harness.gpu_available() and "gpu" not in bench_ctx["ceilings"]:
            bench_ctx["ceilings"]["gpu"] = harness.gpu_ceilings(bench_ctx["mode"])
        try:
            return harness.run_case(benchmark, case, bench_ctx)
        except harness.SkipCase as e:
            pytest.skip(str(e))
    return run


def pytest_sessionfinish(session, exitstatus):
    """Write the report when benchmarks ran with timing (not in the smoke run)."""
    config = session.config
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or bs.disabled or not bs.benchmarks:
        return
    records = []
    for b in bs.benchmarks:
        try:
            records.append(b.as_dict(include_data=False))
        except Exception:  # a benchmark that errored before timing has no stats
            continue
    if not records:
        return
    out = config.getoption("bench_out") or os.environ.get("CGANRAW_BENCH_OUT") or os.path.join(
        str(config.rootpath), "bench", "results")
    ctx = getattr(config, "_cganraw_bench_ctx", None) or {"mode": _mode(config), "ceilings": {}}
    tr = config.pluginmanager.get_plugin("terminalreporter")
    try:
        harness.remeasure_ceilings(ctx)
        paths = report.write_report(records, out, ctx=ctx)
    except Exception as e:  # never turn a finished benchmark run into an error
        if tr is not None:
            tr.write_line(f"cganraw bench: could not write the report: {type(e).__name__}: {e}")
        return
    if tr is not None:
        tr.write_line("")
        tr.write_line("cganraw bench report: " + ", ".join(str(p) for p in paths))

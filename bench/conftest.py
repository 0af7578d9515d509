"""Benchmark session setup: mode (smoke/quick/full), threads, the machine's ceilings
measured once per session, the `batch` and `backend_name` parameters, and the report
(markdown table, chart, machine description) written when benchmarks were enabled.

    pytest bench/ --benchmark-only --benchmark-enable          # full run, report in bench/results/
    python -m cganraw.bench [--quick] [--filter EXPR]          # the same through the CLI
    python -m pytest                                           # smoke: each body once, batch 2
"""
import os

os.environ.setdefault("CGANRAW_BACKEND", "numpy")

import pytest  # noqa: E402

import _benchlib as bl  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("cganraw-bench")
    group.addoption("--bench-out", default=None,
                    help="folder for the benchmark report (default $CGANRAW_BENCH_OUT, else bench/results)")


def _mode(config):
    if not hasattr(config, "_cganraw_bench_mode"):
        config._cganraw_bench_mode = bl.mode_from_config(config)
    return config._cganraw_bench_mode


def pytest_configure(config):
    _mode(config)
    timed = not (config.getoption("benchmark_disable", False) and not config.getoption("benchmark_enable", False))
    if timed:
        # one thread count for BLAS, Numba and PyTorch; the untimed smoke run inside the
        # normal test suite leaves the process as it is
        config._cganraw_bench_threads = bl.bench_threads()
        bl.set_threads(config._cganraw_bench_threads)


def pytest_generate_tests(metafunc):
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", bl.batches_for(_mode(metafunc.config)), ids=lambda b: f"b{b}")
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", ["numpy", bl.gpu_param("cuda")])


@pytest.fixture(scope="session")
def bench_ctx(request):
    """mode, threads and ceilings (cpu, and gpu when one is usable), measured lazily once."""
    config = request.config
    mode = _mode(config)
    ctx = {"mode": mode, "threads": getattr(config, "_cganraw_bench_threads", None), "ceilings": {}}
    ctx["ceilings"]["cpu"] = bl.cpu_ceilings(mode)
    config._cganraw_bench_ctx = ctx
    return ctx


@pytest.fixture(scope="session")
def gpu_ceiling(bench_ctx):
    if "gpu" not in bench_ctx["ceilings"]:
        bench_ctx["ceilings"]["gpu"] = bl.gpu_ceilings(bench_ctx["mode"]) if bl.gpu_available() else None
    return bench_ctx["ceilings"]["gpu"]


@pytest.fixture
def use_backend(backend_name, request):
    """Switch cganraw.backend to the test's backend and return (name, array module);
    the previous backend comes back afterwards."""
    if backend_name == "cuda":
        request.getfixturevalue("gpu_ceiling")
    with bl.backend_ctx(backend_name) as xp:
        yield backend_name, xp


def _remeasure_ceilings(ctx):
    """Measure the ceilings again at the end; keep both and use the best of the two."""
    start = {k: v for k, v in (ctx.get("ceilings") or {}).items() if v}
    if not start:
        return
    end = {}
    try:
        if "cpu" in start:
            end["cpu"] = bl.cpu_ceilings(ctx["mode"])
        if "gpu" in start:
            end["gpu"] = bl.gpu_ceilings(ctx["mode"])
    except Exception as e:  # the report matters more than the second measurement
        print(f"cganraw bench: could not re-measure the ceilings: {e!r}")
        return
    ctx["ceilings_start"], ctx["ceilings_end"] = start, end
    best = {}
    for dev, c in start.items():
        e = end.get(dev) or {}
        best[dev] = dict(c, **{u: max(c[u], e.get(u, 0.0)) for u in ("GB/s", "GFLOP/s")})
    ctx["ceilings"] = best


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
    _remeasure_ceilings(ctx)
    try:
        from cganraw import bench as report
        paths = report.write_report(records, out, ctx=ctx)
    except Exception as e:  # never turn a finished benchmark run into an error
        import traceback
        traceback.print_exc()
        print(f"\ncganraw bench: could not write the report: {e!r}")
        return
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("")
        tr.write_line("cganraw bench report: " + ", ".join(str(p) for p in paths))

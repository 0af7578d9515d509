"""Run the benchmarks of bench/ and write their report: `python -m cganraw.bench`.

    python -m cganraw.bench                        # full run: batches 64 and 128
    python -m cganraw.bench --quick                # batch 64, fewer rounds
    python -m cganraw.bench --filter "gemm and numpy" --out /tmp/b
    python -m cganraw.bench --from-json bench/results/results.json   # redraw a report

It runs pytest on bench/ with timing enabled (pytest-benchmark); bench/conftest.py hands
the records to `write_report`, which writes into the output folder (default bench/results/):
    results.md                  machine, ceilings, the table (op, shape, backend, time,
                                throughput, % of ceiling, ratio to NumPy) and the
                                training-step comparison with PyTorch
    results.json                the records, the machine and the ceilings
    throughput.png              throughput per op and backend, labelled with the machine
    pytest-benchmark.json       pytest-benchmark's own file (for `pytest-benchmark compare`)
`pytest bench/ --benchmark-only --benchmark-enable` writes the same report directly.

Heavy modules (matplotlib, cupy, torch, pytest) are imported only where needed.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

FAMILY_ORDER = ["elementwise", "bias", "im2col", "batchnorm", "embedding", "bce", "adam", "gemm", "conv", "train"]
REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"


# ------------------------------------------------------------------ BLAS ----------

def _openblas():
    """(ctypes library, (prefix, suffix)) of the OpenBLAS this process loaded, or (None, None)."""
    import numpy  # noqa: F401, PLC0415  (loads BLAS)
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None, None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", ""), ("scipy_openblas_", "")):
            if hasattr(lib, f"{prefix}get_num_threads{suffix}"):
                return lib, (prefix, suffix)
    return None, None


def blas_runtime() -> dict:
    """OpenBLAS's build config, the kernel set it picked for this CPU, and its threads."""
    lib, names = _openblas()
    if lib is None:
        return {}
    prefix, suffix = names
    out = {"library": "OpenBLAS"}
    for key, fn in (("config", "get_config"), ("corename", "get_corename")):
        f = getattr(lib, f"{prefix}{fn}{suffix}", None)
        if f is not None:
            f.restype = ctypes.c_char_p
            out[key] = f().decode(errors="replace").strip()
    out["threads"] = int(getattr(lib, f"{prefix}get_num_threads{suffix}")())
    return out


def set_blas_threads(n: int) -> bool:
    lib, names = _openblas()
    if lib is None:
        return False
    f = getattr(lib, f"{names[0]}set_num_threads{names[1]}", None)
    if f is None:
        return False
    f(ctypes.c_int(int(n)))
    return True


# ------------------------------------------------------------------ machine -------

def _version(dist):
    from importlib import metadata  # noqa: PLC0415
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None


def _gpu_info():
    try:
        from cganraw import backend  # noqa: PLC0415
        if not backend.gpu_available():
            return None
        cp = backend.cupy()
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        return {"name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_GiB": round(props["totalGlobalMem"] / 2**30, 1),
                "compute_capability": f"{props['major']}.{props['minor']}",
                "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
                "driver": cp.cuda.runtime.driverGetVersion()}
    except Exception as e:  # a broken CUDA setup must not stop the report
        return {"name": f"unavailable ({type(e).__name__})"}


def machine_info(threads=None) -> dict:
    import numpy as np  # noqa: PLC0415
    blas_build = {}
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        blas_build = {"name": b.get("name"), "version": b.get("version")}
    except Exception:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    cupy_dists = sorted({d for d in _cupy_dists()})
    info = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_GiB": _mem_gib(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "blas_build": blas_build,
        "blas_runtime": blas_runtime(),
        "threads": threads,
        "env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "NUMBA_NUM_THREADS", "CGANRAW_BENCH_THREADS", "CGANRAW_NUMBA")
                if k in os.environ},
        "versions": {"cganraw": _version("cganraw"), "numpy": np.__version__, "numba": _version("numba"),
                     "torch": _version("torch"), "matplotlib": _version("matplotlib"),
                     "pytest-benchmark": _version("pytest-benchmark"),
                     **{d: _version(d) for d in cupy_dists}},
        "gpu": _gpu_info(),
    }
    return info


def _cupy_dists():
    from importlib import metadata  # noqa: PLC0415
    for d in metadata.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name.startswith("cupy"):
            yield name


def machine_label(info: dict) -> str:
    """One line naming the machine, for figure titles."""
    blas = info.get("blas_runtime") or {}
    parts = [f"{info.get('cpu')} ({info.get('cpu_affinity') or info.get('cpu_count')} CPUs)",
             f"{blas.get('library', (info.get('blas_build') or {}).get('name') or 'BLAS')}"
             f" {blas.get('corename', '')}".rstrip(),
             f"threads {info.get('threads') or blas.get('threads') or '?'}",
             f"numpy {info['versions'].get('numpy')}"]
    if info["versions"].get("torch"):
        parts.append(f"torch {info['versions']['torch']}")
    gpu = info.get("gpu")
    if gpu:
        parts.append(f"GPU {gpu.get('name')}")
    parts.append(info.get("date", "")[:16].replace("T", " "))
    return " · ".join(parts)


# ------------------------------------------------------------------ records -------

def _fmt_time(t):
    if t is None:
        return ""
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3f} ms"
    return f"{t * 1e6:.1f} µs"


def _fmt_num(v, digits=3):
    if v is None:
        return ""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _recompute_pct(rows, ceilings):
    """% of ceiling against the session's best ceiling (the max of the measurements at the
    start and at the end of the run: other jobs on a shared machine move both)."""
    for r in rows:
        dev = "gpu" if str(r["backend"]).startswith("cuda") else "cpu"
        c = (ceilings or {}).get(dev) or {}
        if r["unit"] in ("GB/s", "GFLOP/s") and c.get(r["unit"]) and r["throughput"] is not None:
            r["pct_ceiling"] = 100.0 * r["throughput"] / c[r["unit"]]


def rows_from_records(records, ceilings=None):
    """Flat rows from pytest-benchmark's records (dicts as in its JSON)."""
    rows = []
    for r in records:
        ei = dict(r.get("extra_info") or {})
        stats = r.get("stats") or {}
        t = ei.get("time_s", stats.get("median"))
        row = {
            "family": ei.get("family", "other"),
            "op": ei.get("op", r.get("name", "?").split("[")[0]),
            "shape": ei.get("shape", r.get("param") or ""),
            "backend": ei.get("backend", "numpy"),
            "time_s": t,
            "throughput": ei.get("throughput"),
            "unit": ei.get("unit"),
            "pct_ceiling": ei.get("pct_ceiling"),
            "timer": ei.get("timer"),
            "rounds": stats.get("rounds"),
            "iqr_s": stats.get("iqr"),
            "name": r.get("fullname") or r.get("name"),
        }
        if row["throughput"] is None and "images_per_s" in ei:
            row.update(throughput=ei["images_per_s"], unit="images/s")
        rows.append(row)
        if ei.get("peer") == "torch" and ei.get("torch_time_s"):
            row["ratio_vs_torch"] = ei.get("ratio_vs_torch")
            row["ratio_vs_torch_paired"] = ei.get("ratio_vs_torch_paired_median")
            rows.append({**row, "backend": "torch (peer)", "time_s": ei["torch_time_s"],
                         "throughput": ei.get("torch_images_per_s"), "unit": "images/s", "pct_ceiling": None,
                         "ratio_vs_torch": None, "ratio_vs_torch_paired": None,
                         "torch_threads": ei.get("torch_threads")})
    if ceilings:
        _recompute_pct(rows, ceilings)
    numpy_time = {(r["op"], r["shape"]): r["time_s"] for r in rows if r["backend"] == "numpy"}
    for r in rows:
        tn = numpy_time.get((r["op"], r["shape"]))
        r["vs_numpy"] = (tn / r["time_s"]) if (tn and r["time_s"]) else None

    def key(r):
        fam = FAMILY_ORDER.index(r["family"]) if r["family"] in FAMILY_ORDER else len(FAMILY_ORDER)
        return fam, r["op"], r["shape"], r["backend"] != "numpy", r["backend"]
    rows.sort(key=key)
    return rows


def markdown(rows, info, ctx) -> str:
    lines = ["# cganraw benchmarks", "", f"Machine: **{machine_label(info)}**", ""]
    ceil = (ctx or {}).get("ceilings") or {}
    lines.append(f"Mode: `{(ctx or {}).get('mode', '?')}`; threads (BLAS, Numba, PyTorch): "
                 f"{info.get('threads') or '?'}; load average at the end: {info.get('loadavg')}")
    lines.append("")
    lines.append("Ceilings measured in the same run:")
    lines.append("")
    for dev in ("cpu", "gpu"):
        c = ceil.get(dev)
        if c:
            lines.append(f"- {dev.upper()}: copy {c['GB/s']:.1f} GB/s (bytes read + written), "
                         f"SGEMM {c['GFLOP/s']:.1f} GFLOP/s (n={c['sgemm_n']}); {c.get('method', '')}")
            for when in ("start", "end"):
                cw = ((ctx or {}).get(f"ceilings_{when}") or {}).get(dev)
                if cw:
                    lines.append(f"  - at the {when}: copy {cw['GB/s']:.1f} GB/s, SGEMM {cw['GFLOP/s']:.1f} GFLOP/s")
    if (ctx or {}).get("ceilings_end"):
        lines += ["", "The ceiling used is the best of the two measurements; a large gap between them means "
                  "other jobs shared the machine during the run (compare rows as ratios taken close together)."]
    lines += ["", "Times are medians. Throughput: GB/s of the bytes an ideal implementation reads and writes "
              "once (memory-bound ops), GFLOP/s (GEMM, conv: direct-convolution FLOPs), images/s (training "
              "steps). `× NumPy` = NumPy's time / this row's time (> 1: faster than the NumPy reference). "
              "GPU rows are timed with CUDA events. The CPU ceiling is a DRAM-sized copy: a "
              "working set that fits in cache can exceed 100%.", ""]
    train = [r for r in rows if r["family"] == "train" and r.get("ratio_vs_torch")]
    if train:
        lines += ["## Training step: cganraw (NumPy backend) vs PyTorch CPU, same run, interleaved", "",
                  "| model | shape | cganraw s/step | PyTorch s/step | cganraw / PyTorch (medians) "
                  "| paired median ratio | cganraw images/s | PyTorch images/s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        peer = {(r["op"], r["shape"]): r for r in rows if r["backend"] == "torch (peer)"}
        for r in train:
            p = peer.get((r["op"], r["shape"]), {})
            lines.append(f"| {r['op'].replace('train_step ', '')} | {r['shape']} | {r['time_s']:.3f} | "
                         f"{p.get('time_s', float('nan')):.3f} | **{r['ratio_vs_torch']:.2f}x** | "
                         f"{r['ratio_vs_torch_paired']:.2f}x | {_fmt_num(r['throughput'])} | "
                         f"{_fmt_num(p.get('throughput'))} |")
        lines.append("")
    lines += ["## All benchmarks", "",
              "| op | shape | backend | time | throughput | % of ceiling | × NumPy |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        thr = f"{_fmt_num(r['throughput'])} {r['unit']}" if r["throughput"] is not None else ""
        pct = f"{r['pct_ceiling']:.1f}%" if r.get("pct_ceiling") is not None else ""
        vs = f"{r['vs_numpy']:.2f}" if r.get("vs_numpy") is not None and r["backend"] != "numpy" else ""
        lines.append(f"| {r['op']} | {r['shape']} | {r['backend']} | {_fmt_time(r['time_s'])} | {thr} | {pct} | {vs} |")
    lines += ["", "## Machine", "", "```json", json.dumps(info, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def chart(rows, info, ctx, path):
    """Horizontal bars of throughput per op+shape, one colour per backend, log scale; one
    panel per unit, with the session's ceilings drawn as dashed lines."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    panels = [(u, [r for r in rows if r["unit"] == u and r["throughput"]]) for u in ("GB/s", "GFLOP/s", "images/s")]
    panels = [(u, rs) for u, rs in panels if rs]
    if not panels:
        return None
    backends = sorted({r["backend"] for _, rs in panels for r in rs}, key=lambda b: (b != "numpy", b))
    colors = {b: plt.cm.tab10(i % 10) for i, b in enumerate(backends)}
    heights = [max(2.0, 0.2 * len({(r["op"], r["shape"]) for r in rs}) * max(1, len({r["backend"] for r in rs})) ** 0.5)
               for _, rs in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, sum(heights) + 1.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    ceil = (ctx or {}).get("ceilings") or {}
    for ax, (unit, rs) in zip(axes[:, 0], panels):
        labels = []
        for r in rs:
            lab = f"{r['op']}  {r['shape']}"
            if lab not in labels:
                labels.append(lab)
        ypos = {lab: i for i, lab in enumerate(labels)}
        bks = [b for b in backends if any(r["backend"] == b for r in rs)]
        h = 0.8 / len(bks)
        for j, b in enumerate(bks):
            sel = [r for r in rs if r["backend"] == b]
            ax.barh([ypos[f"{r['op']}  {r['shape']}"] - 0.4 + h * (j + 0.5) for r in sel],
                    [r["throughput"] for r in sel], height=h, color=colors[b], label=b)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(unit)
        ax.grid(axis="x", which="both", alpha=0.3)
        key = {"GB/s": "GB/s", "GFLOP/s": "GFLOP/s"}.get(unit)
        for dev, style in (("cpu", "--"), ("gpu", ":")):
            c = ceil.get(dev)
            if key and c:
                ax.axvline(c[key], color="k", linestyle=style, linewidth=1,
                           label=f"{dev.upper()} ceiling {c[key]:.0f} {unit}")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"cganraw throughput per op and backend\n{machine_label(info)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(records, out_dir, ctx=None, info=None):
    """Write results.md, results.json and throughput.png into out_dir; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = dict(ctx or {})
    info = info or machine_info(ctx.get("threads"))
    rows = rows_from_records(records, ctx.get("ceilings"))
    paths = []
    p = out / "results.json"
    p.write_text(json.dumps({"machine": info, "context": ctx, "rows": rows, "records": records},
                            indent=1, default=str))
    paths.append(p)
    p = out / "results.md"
    p.write_text(markdown(rows, info, ctx))
    paths.append(p)
    try:
        png = chart(rows, info, ctx, out / "throughput.png")
        if png:
            paths.append(png)
    except ImportError as e:
        print(f"cganraw bench: no chart ({e})", file=sys.stderr)
    return paths


# ------------------------------------------------------------------ CLI -----------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m cganraw.bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="output folder (default bench/results)")
    p.add_argument("--quick", action="store_true", help="short run: batch 64, fewer rounds, smaller ceilings")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (batch 2): checks the pipeline, numbers mean nothing")
    p.add_argument("--filter", default=None, metavar="EXPR", help="pytest -k expression selecting benchmarks")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS, Numba and PyTorch (default: the CPUs this process may use)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="only redraw the report from a results.json written earlier")
    p.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--census" in argv:     # the step census (cganraw.census): counted, not timed
        from cganraw import census  # noqa: PLC0415
        return census.main([a for a in argv if a != "--census"])
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else BENCH_DIR / "results"
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        for path in write_report(data["records"], out, ctx=data.get("context"), info=data.get("machine")):
            print(path)
        return 0
    if not BENCH_DIR.is_dir():
        print(f"cganraw bench: no bench/ folder next to the package ({BENCH_DIR}); run from a source checkout",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    threads = args.threads or int(env.get("CGANRAW_BENCH_THREADS", 0) or 0) or len(os.sched_getaffinity(0))
    env["CGANRAW_BENCH_THREADS"] = str(threads)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["CGANRAW_BENCH_OUT"] = str(out)
    env.setdefault("CGANRAW_BACKEND", "numpy")
    if args.quick:
        env["CGANRAW_BENCH_QUICK"] = "1"
    if args.smoke:
        env["CGANRAW_BENCH_SMOKE"] = "1"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(BENCH_DIR), "--benchmark-enable", "--benchmark-only",
           f"--benchmark-json={out / 'pytest-benchmark.json'}", f"--bench-out={out}", "-q",
           "-p", "no:cacheprovider", "--benchmark-columns=median,iqr,rounds,iterations", "--benchmark-sort=name"]
    if args.filter:
        cmd += ["-k", args.filter]
    cmd += args.pytest_args
    print("cganraw bench:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=str(REPO), env=env)
    if rc == 5:
        print("cganraw bench: no benchmark matched" + (f" --filter {args.filter!r}" if args.filter else ""),
              file=sys.stderr)
    elif rc == 0:
        print(f"cganraw bench: report in {out}/results.md, chart {out}/throughput.png")
    return rc


if __name__ == "__main__":
    sys.exit(main())

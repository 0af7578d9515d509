"""The benchmark report: records (pytest-benchmark's JSON form, from pytest or from
cganraw.bench.runner) -> rows -> results.md, results.json and throughput.png.

    results.md      machine, ceilings, the training-step comparison with PyTorch, and the
                    table (op, shape, backend, time, throughput, % of ceiling, ratio to NumPy)
    results.json    the records, the machine and the ceilings (`--from-json` redraws from it)
    throughput.png  throughput per op and backend, labelled with the machine
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from cganraw import fileio
from cganraw.bench.machine import machine_info, machine_label

log = logging.getLogger(__name__)

FAMILY_ORDER = ["elementwise", "bias", "im2col", "batchnorm", "embedding", "bce", "adam", "gemm", "conv", "train"]


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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

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
    fileio.atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


def write_report(records, out_dir, ctx=None, info=None):
    """Write results.json, results.md and throughput.png into out_dir (each atomically);
    return their paths. Without matplotlib the chart is left out, with a warning."""
    out = Path(out_dir)
    ctx = dict(ctx or {})
    info = info or machine_info(ctx.get("threads"))
    rows = rows_from_records(records, ctx.get("ceilings"))
    data = {"machine": info, "context": ctx, "rows": rows, "records": records}
    paths = [fileio.atomic_write(out / "results.json", json.dumps(data, indent=1, default=str).encode()),
             fileio.atomic_write(out / "results.md", markdown(rows, info, ctx).encode())]
    try:
        png = chart(rows, info, ctx, out / "throughput.png")
    except ImportError as e:
        log.warning("no chart: %s", e)
    else:
        if png:
            paths.append(png)
    return paths

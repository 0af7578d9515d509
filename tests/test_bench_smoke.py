"""`python -m cganraw.bench` end to end at tiny sizes, and its report writer."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cganraw import bench

REPO = Path(__file__).resolve().parents[1]


def _record(op, shape, backend, t, unit, thr, family="elementwise", **extra):
    return {"name": f"test_x[{backend}]", "fullname": f"bench/x.py::test_x[{backend}]", "param": backend,
            "group": f"{op} {shape}", "stats": {"median": t, "iqr": 0.0, "rounds": 3},
            "extra_info": {"op": op, "shape": shape, "backend": backend, "family": family, "time_s": t,
                           "throughput": thr, "unit": unit, **extra}}


def test_write_report_table_ratios_and_chart(tmp_path):
    records = [
        _record("relu fwd", "64x256", "numpy", 2e-4, "GB/s", 0.66, pct_ceiling=5.0),
        _record("relu fwd", "64x256", "cuda", 1e-5, "GB/s", 13.1, pct_ceiling=1.0),
        _record("gemm G.fc fwd", "M=64 N=6272 K=100 NT", "numpy", 4e-3, "GFLOP/s", 20.0, family="gemm"),
        _record("train_step cgan-conv", "N=64 width=128", "numpy", 2.0, "images/s", 32.0, family="train",
                peer="torch", torch_time_s=2.5, torch_images_per_s=25.6, ratio_vs_torch=0.8,
                ratio_vs_torch_paired_median=0.79),
    ]
    ctx = {"mode": "quick", "threads": 2, "ceilings": {"cpu": {"GB/s": 10.0, "GFLOP/s": 50.0, "sgemm_n": 1536}}}
    paths = bench.write_report(records, tmp_path, ctx=ctx)
    names = {p.name for p in paths}
    assert {"results.md", "results.json"} <= names
    md = (tmp_path / "results.md").read_text()
    assert "| relu fwd | 64x256 | cuda | 10.0 µs | 13.1 GB/s | 1.0% | 20.00 |" in md   # 2e-4 / 1e-5
    assert "**0.80x**" in md and "torch (peer)" in md
    assert "SGEMM 50.0 GFLOP/s" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["cpu"] and data["machine"]["versions"]["numpy"]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "throughput.png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_quick_runs_and_writes_the_report(tmp_path):
    """--quick through pytest with a filter that keeps one tiny benchmark (plus --smoke
    shapes, so the test takes seconds): the report appears with that row."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cganraw.bench", "--quick", "--smoke", "--out", str(out),
                           "--filter", "test_bias_add and numpy and 1x28x28"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (out / "results.md").read_text()
    assert "| bias add | 2x1x28x28 | numpy |" in md
    assert (out / "pytest-benchmark.json").is_file()


def test_cli_redraws_from_json(tmp_path):
    records = [_record("relu fwd", "64x256", "numpy", 2e-4, "GB/s", 0.66)]
    bench.write_report(records, tmp_path / "a", ctx={"mode": "quick", "ceilings": {}})
    assert bench.main(["--from-json", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "b")]) == 0
    assert "relu fwd" in (tmp_path / "b" / "results.md").read_text()

"""python -m cganraw.cuda_emu: one ptxas table over every kernel of every file."""
import os
import shutil

import pytest

from cganraw.cuda_emu.__main__ import format_ptxas_table, main

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
ROWS = [{"file": "a.cu", "name": "k_long_name", "registers": 32, "spill_stores": 0, "spill_loads": 0,
         "stack_frame": 0, "smem": 4096, "barriers": 1},
        {"file": "b.cu", "name": "k2", "registers": 255, "spill_stores": 8, "spill_loads": 12,
         "stack_frame": 16, "smem": 0, "barriers": 0}]


def test_ptxas_table_text_and_markdown():
    text = format_ptxas_table(ROWS).splitlines()
    assert text[0].split() == ["file", "kernel", "regs", "spill", "st", "spill", "ld", "stack", "smem", "bar"]
    assert text[2].split() == ["a.cu", "k_long_name", "32", "0", "0", "0", "4096", "1"]
    assert len({len(line) for line in text}) == 1        # aligned columns
    md = format_ptxas_table(ROWS, markdown=True).splitlines()
    assert md[0] == "| file | kernel | regs | spill st | spill ld | stack | smem | bar |"
    assert md[3] == "| b.cu | k2 | 255 | 8 | 12 | 16 | 0 | 0 |"


def test_cli_reports_every_kernel_once(capsys):
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("nvcc not found")
    assert main([os.path.join(FIX, "reduce.cu"), "--arch", "sm_80", "--markdown"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| reduce.cu |")]
    names = [r.split("|")[2].strip() for r in rows]
    assert "block_sum" in names and "warp_sum" in names and names == sorted(set(names))
    assert "| reduce.cu | block_sum | " in out and "| 4096 | 1 |" in out


def test_cli_names_a_file_that_fails(tmp_path, capsys):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) { x[0] = nope; }\n')
    assert main([str(bad), "--no-ptxas"]) == 1
    assert "FAILED" in capsys.readouterr().out

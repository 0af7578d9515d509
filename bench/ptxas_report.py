"""Resource use of every kernel in kernels/*.cu as ptxas reports it (no GPU needed).

    python bench/ptxas_report.py [--arch sm_80] [--markdown] [kernels/gemm.cu ...]

Runs `nvcc -arch=<arch> -cubin -Xptxas -v -ftz=true` on each file (through
cganraw.cuda_emu.ptxas_report) and prints one row per kernel: registers per thread,
spill stores/loads and stack frame in bytes, static shared memory in bytes, barriers.
Spills or a stack frame in a hot kernel are worth a look; registers x threads per block
bound how many blocks fit on an SM (65536 registers on sm_80/sm_90).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cganraw import cuda_emu  # noqa: E402
from cganraw.ops import _launch  # noqa: E402

COLUMNS = [("file", "file"), ("kernel", "name"), ("regs", "registers"), ("spill st", "spill_stores"),
           ("spill ld", "spill_loads"), ("stack", "stack_frame"), ("smem", "smem"), ("bar", "barriers")]


def report(paths, arch="sm_80") -> list[dict]:
    rows = []
    for path in paths:
        kernels = cuda_emu.ptxas_report(str(path), arch=arch)
        for k in sorted(kernels, key=lambda k: k["name"]):
            rows.append({"file": Path(path).name, **k})
    return rows


def format_table(rows, markdown=False) -> str:
    cells = [[str(r[key]) for _, key in COLUMNS] for r in rows]
    heads = [h for h, _ in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*heads), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in cells])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="kernel sources (default: every kernels/*.cu)")
    ap.add_argument("--arch", default="sm_80", help="GPU architecture for nvcc (default sm_80)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    paths = [Path(f) for f in args.files] or sorted(_launch.kernel_dir().glob("*.cu"))
    if not paths:
        print(f"no .cu files in {_launch.kernel_dir()}", file=sys.stderr)
        return 1
    rows = report(paths, args.arch)
    print(f"ptxas resource use, {args.arch} (bytes; regs per thread)")
    print(format_table(rows, args.markdown))
    spilling = [r["name"] for r in rows if r["spill_stores"] or r["spill_loads"]]
    if spilling:
        print(f"\nkernels that spill: {', '.join(spilling)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

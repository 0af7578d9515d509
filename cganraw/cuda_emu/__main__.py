"""python -m cganraw.cuda_emu FILE.cu...: emulator build, NVRTC compile and ptxas report per file.

The ptxas report (no GPU needed, nvcc is) is one table over every kernel of every file:
registers per thread, spill stores/loads and stack frame in bytes, static shared memory
in bytes, barriers. Spills or a stack frame in a hot kernel are worth a look; registers x
threads per block bound how many blocks fit on an SM (65536 registers on sm_80/sm_90).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import CompileError, RawModule, nvrtc_check, nvrtc_library, ptxas_report

PTXAS_COLUMNS = [("file", "file"), ("kernel", "name"), ("regs", "registers"), ("spill st", "spill_stores"),
                 ("spill ld", "spill_loads"), ("stack", "stack_frame"), ("smem", "smem"), ("bar", "barriers")]


def format_ptxas_table(rows, markdown=False) -> str:
    """rows: ptxas_report dicts with a `file` key -> a text (or Markdown) table."""
    heads = [h for h, _ in PTXAS_COLUMNS]
    cells = [[str(r[key]) for _, key in PTXAS_COLUMNS] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
                         + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*heads), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in cells])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cganraw.cuda_emu", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--arch", action="append", help="GPU architectures (default sm_80 and sm_90)")
    p.add_argument("--no-ptxas", action="store_true", help="skip the nvcc resource report")
    p.add_argument("--markdown", action="store_true", help="print the ptxas report as a Markdown table")
    a = p.parse_args(argv)
    archs = a.arch or ["sm_80", "sm_90"]
    failed = False
    ptxas_rows = []
    for f in a.files:
        print(f"== {f}")
        try:
            mod = RawModule(path=f)
            print(f"   emulator: {len(mod.kernel_names)} kernel(s): {', '.join(mod.kernel_names)}")
            if nvrtc_library():
                for arch in archs:
                    nvrtc_check(f, arch=arch, options=(f"-I{os.path.dirname(os.path.abspath(f))}",))
                    print(f"   nvrtc {arch}: ok")
            else:
                print("   nvrtc: no libnvrtc.so found, skipped")
            if not a.no_ptxas:
                kernels = sorted(ptxas_report(f, arch=archs[0]), key=lambda k: k["name"])
                ptxas_rows += [{"file": os.path.basename(f), **k} for k in kernels]
        except (CompileError, FileNotFoundError) as e:
            failed = True
            print(f"   FAILED: {e}")
    if ptxas_rows:
        print(f"\nptxas resource use, {archs[0]} (bytes; regs per thread)")
        print(format_ptxas_table(ptxas_rows, a.markdown))
        spilling = [r["name"] for r in ptxas_rows if r["spill_stores"] or r["spill_loads"]]
        if spilling:
            print(f"\nkernels that spill: {', '.join(spilling)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

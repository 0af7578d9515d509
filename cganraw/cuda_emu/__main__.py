"""python -m cganraw.cuda_emu FILE.cu...: emulator build, NVRTC compile and ptxas report per file."""
from __future__ import annotations

import argparse
import os
import sys

from . import CompileError, RawModule, nvrtc_check, nvrtc_library, ptxas_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cganraw.cuda_emu", description=__doc__)
    p.add_argument("files", nargs="+")
    p.add_argument("--arch", action="append", help="GPU architectures (default sm_80 and sm_90)")
    p.add_argument("--no-ptxas", action="store_true", help="skip the nvcc resource report")
    a = p.parse_args(argv)
    archs = a.arch or ["sm_80", "sm_90"]
    failed = False
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
                for k in ptxas_report(f, arch=archs[0]):
                    print(f"   {k['name']}: {k['registers']} regs, {k['smem']} B smem, "
                          f"{k['stack_frame']} B stack, spills {k['spill_stores']}/{k['spill_loads']} B")
        except (CompileError, FileNotFoundError) as e:
            failed = True
            print(f"   FAILED: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

// Stand-in for the CUDA toolkit's <mma.h> under cganraw.cuda_emu: nvcuda::wmma is defined
// by the force-included cuda_emu.h (TF32 m16n16k8 fragments), so this file only lets
// `#include <mma.h>` resolve when a .cu file is compiled for the CPU.
#pragma once

// reduce.cuh: block-wide reductions shared by the kernels that reduce over batch, pixels
// or rows (bias.cu, batchnorm.cu, bce.cu, cross_entropy.cu). Included by relative path: the
// emulator finds it beside the .cu file, NVRTC through the -I<kernels dir> that
// cganraw.ops._launch passes.
//
//   warp_sum   sum over the 32 lanes of a warp (shuffles), total in lane 0
//   block_sum  sum over the block (shuffles, shared partials, shuffles), total in thread 0
#pragma once

// Sum over the 32 lanes of a warp; the total lands in lane 0.
__device__ __forceinline__ float warp_sum(float v)
{
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffff, v, offset);
    return v;
}

// Sum of v over the block; the total lands in thread 0. partials: 32 floats of shared
// memory; blockDim.x a multiple of 32. Every thread of the block must call it (it has
// barriers). It ends with a barrier, so the caller may call it again with the same partials.
__device__ float block_sum(float v, float* partials)
{
    int lane = threadIdx.x % 32;
    int warp = threadIdx.x / 32;
    int nwarps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) partials[warp] = v;
    __syncthreads();                       // every warp's partial is written
    if (warp == 0) {
        v = lane < nwarps ? partials[lane] : 0.0f;
        v = warp_sum(v);
    }
    __syncthreads();                       // partials are read before anyone reuses them
    return v;
}

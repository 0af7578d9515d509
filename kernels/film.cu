// FiLM (Perez et al. 2018): y = x * (1 + gamma) + beta, a per-sample, per-channel scale and
// shift of x (N, C, H, W), gamma and beta (N, C) broadcast over the H*W pixels; for
// cganraw.ops.film (launchers film_forward_cuda, film_backward_cuda), G's conditional norms.
//
// Kernels:
//   film_forward_v1    one thread per element, grid-strided over N*C*HW:
//                      y[i] = x[i] * (1 + gamma[n, c]) + beta[n, c]
//   film_backward_v1   one block per (n, c) plane (block-striding over the N*C planes): the
//                      threads sweep the plane (coalesced), write dx = dy * (1 + gamma[n, c])
//                      (need_dx), and two block reductions (reduce.cuh) give
//                      dgamma[n, c] = sum_hw dy x and dbeta[n, c] = sum_hw dy, written by
//                      thread 0. No atomics: the same bits every run.
//   film_backward_v2   as v1 with one warp per plane (warp-striding over the planes, shuffles
//                      only, no barriers): for small planes (7x7, 14x14) a block of v1 leaves
//                      most of its threads idle. Also deterministic.
//
// Shapes: x, y, dy, dx (N*C, HW) contiguous. gamma, beta: element (n, c) at
// gamma[n * ld_g + c], beta[n * ld_b + c] (ld >= C: the halves of the projection's (N, 2C)
// output are read where they lie). dgamma at dgb[n * ld_o + c], dbeta at
// dgb[n * ld_o + off_b + c] (the launcher's (N, 2C) buffer: ld_o = 2C, off_b = C).
// blockDim.x of the backward kernels: a multiple of 32, at most 1024.
// total: N*C*HW, below 2^31 minus a grid (checked by the launcher).
// The arithmetic is ops/film.py's operation by operation (1 + gamma, times x, plus beta), so
// the emulator (no FMA contraction) gives NumPy's float32 values for y and dx exactly.

#include "reduce.cuh"   // warp_sum, block_sum

extern "C" __global__ void film_forward_v1(float* y, const float* x, const float* gamma, const float* beta,
                                           int N, int C, int HW, int ld_g, int ld_b)
{
    const long long total = (long long)N * C * HW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long p = i / HW;                 // the (n, c) plane
        const int n = (int)(p / C), c = (int)(p - (long long)n * C);
        const float s = 1.0f + gamma[(long long)n * ld_g + c];
        y[i] = x[i] * s + beta[(long long)n * ld_b + c];
    }
}

extern "C" __global__ void film_backward_v1(float* dx, float* dgb, const float* dy, const float* x,
                                            const float* gamma, int N, int C, int HW, int ld_g, int ld_o,
                                            int off_b, int need_dx)
{
    __shared__ float partials[32];
    const long long planes = (long long)N * C;
    for (long long p = blockIdx.x; p < planes; p += gridDim.x) {     // uniform in the block: barriers are safe
        const int n = (int)(p / C), c = (int)(p - (long long)n * C);
        const float s = 1.0f + gamma[(long long)n * ld_g + c];
        const long long base = p * HW;
        float s_dy = 0.0f, s_dyx = 0.0f;
        for (int k = threadIdx.x; k < HW; k += blockDim.x) {
            const float d = dy[base + k];
            if (need_dx) dx[base + k] = d * s;
            s_dy += d;
            s_dyx += d * x[base + k];
        }
        s_dy = block_sum(s_dy, partials);
        s_dyx = block_sum(s_dyx, partials);
        if (threadIdx.x == 0) {
            dgb[(long long)n * ld_o + c] = s_dyx;
            dgb[(long long)n * ld_o + off_b + c] = s_dy;
        }
    }
}

extern "C" __global__ void film_backward_v2(float* dx, float* dgb, const float* dy, const float* x,
                                            const float* gamma, int N, int C, int HW, int ld_g, int ld_o,
                                            int off_b, int need_dx)
{
    const int lane = threadIdx.x % 32;
    const int warps_per_block = blockDim.x / 32;
    const long long planes = (long long)N * C;
    const long long stride = (long long)gridDim.x * warps_per_block;
    for (long long p = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32; p < planes; p += stride) {
        // uniform in the warp: the full-mask shuffles are safe
        const int n = (int)(p / C), c = (int)(p - (long long)n * C);
        const float s = 1.0f + gamma[(long long)n * ld_g + c];
        const long long base = p * HW;
        float s_dy = 0.0f, s_dyx = 0.0f;
        for (int k = lane; k < HW; k += 32) {
            const float d = dy[base + k];
            if (need_dx) dx[base + k] = d * s;
            s_dy += d;
            s_dyx += d * x[base + k];
        }
        s_dy = warp_sum(s_dy);
        s_dyx = warp_sum(s_dyx);
        if (lane == 0) {
            dgb[(long long)n * ld_o + c] = s_dyx;
            dgb[(long long)n * ld_o + off_b + c] = s_dy;
        }
    }
}

// channels.cuh: per-channel work over axis 1 of (N, C, HW) float32 tensors, split over
// (channels x slices of the other axes), as in llm.c's matmul_backward_bias kernels 7-9:
// the v3 reductions and the fused kernels of bias.cu and batchnorm.cu. Included by
// relative path, like reduce.cuh.
//
//   ch_partials<NV>(op, partials, ...)  pass 1: block (channel group, split s) sums NV
//                                       values per element of its slice; writes
//                                       partials[(v * splits + s) * C + c], no atomics
//   ch_total(partials, v, splits, C, c) pass 2: the sum over s, in order (deterministic:
//                                       every caller gets the same bits)
//   ch_finish<NV>(partials, counter, ...) pass 2 in pass 1's launch: the grid's last
//                                       block to finish adds the partials up (ch_total's
//                                       order: the same bits), so a reduction is one launch
//   ch_apply(op, ...)                   an elementwise pass over the same slices, with
//                                       per-channel constants op.consts(c, write) (the
//                                       apply kernels reduce the partials there, so the
//                                       second pass costs no launch of its own)
//
// Two layouts, picked by HW (uniform over the grid):
//   planes, HW > 1   block (c, s): values j in [j0, j1) of channel c's N*HW, j = n*HW + p,
//                    cut into `splits` quad-aligned chunks; each thread takes quads of 4
//                    consecutive j: one float4 per array when HW % 4 == 0 and every
//                    pointer is 16-byte aligned (the quad is then 4 pixels of one row),
//                    else 4 scalar accesses (bounds-checked; a quad may cross rows).
//                    Block sums: reduce.cuh's block_sum.
//   rows, HW == 1    an (N, C) matrix, channels contiguous: block (g, s) owns channels
//                    [128 g, 128 g + 128) and rows [n0, n1) of split s; lane l takes 4
//                    consecutive channels (one float4 when C % 4 == 0 and aligned), the 8
//                    warps stride the rows; the warps' sums meet in shared memory and
//                    are added in warp order.
// Grid: x = channels (planes) or channel groups (rows), grid-strided; y = splits.
// blockDim.x must be CH_THREADS. Sizes are int: the launcher checks N*C*HW < 2^31.
#pragma once

#include "reduce.cuh"   // block_sum

#define CH_THREADS 256
#define CH_ROW_WARPS (CH_THREADS / 32)
#define CH_ROW_CHANNELS 128

__device__ __forceinline__ bool ch_aligned16(const void* p)
{
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

// planes: split s of a channel's count values, in quads: [j0, j1)
__device__ __forceinline__ void ch_plane_slice(int count, int splits, int s, int& j0, int& j1)
{
    const int chunk = (((count + splits - 1) / splits) + 3) & ~3;
    j0 = min(s * chunk, count);              // s * chunk <= count + 4 * splits: no overflow
    j1 = min(j0 + chunk, count);
}

// planes: offset of value j of channel c
__device__ __forceinline__ long long ch_plane_offset(int j, int c, int C, int HW)
{
    const int n = j / HW;
    return ((long long)n * C + c) * HW + (j - n * HW);
}

// rows: split s of the N rows: [n0, n1)
__device__ __forceinline__ void ch_row_slice(int N, int splits, int s, int& n0, int& n1)
{
    const int chunk = (N + splits - 1) / splits;
    n0 = min(s * chunk, N);
    n1 = min(n0 + chunk, N);
}

// sum over the splits of partial v for channel c, in split order
__device__ __forceinline__ float ch_total(const float* partials, int v, int splits, int C, int c)
{
    float t = 0.0f;
    for (int s = 0; s < splits; ++s) t += partials[((long long)v * splits + s) * C + c];
    return t;
}

// Pass 1. Op: static const int NV; bool vec (its pointers aligned, set by the caller);
//   at(i, c, out[NV])                       the summands of element i (channel c)
//   at4(i, c, cstep, out[4][NV])            elements i..i+3 (16-byte aligned), channels c + k*cstep
template <int NV, class Op>
__device__ void ch_partials(const Op& op, float* partials, int N, int C, int HW, int splits)
{
    __shared__ float warp_partials[32];
    __shared__ float rows_red[NV][CH_ROW_WARPS][CH_ROW_CHANNELS];
    const int s = blockIdx.y;
    if (HW > 1) {
        const int count = N * HW;
        const bool vec = op.vec && HW % 4 == 0;
        for (int c = blockIdx.x; c < C; c += gridDim.x) {   // uniform in the block: barriers are safe
            int j0, j1;
            ch_plane_slice(count, splits, s, j0, j1);
            float acc[NV];
            for (int v = 0; v < NV; ++v) acc[v] = 0.0f;
            for (int j = j0 + 4 * threadIdx.x; j < j1; j += 4 * blockDim.x) {
                if (vec) {                       // j1 is a multiple of 4 here
                    float e[4][NV];
                    op.at4(ch_plane_offset(j, c, C, HW), c, 0, e);
                    for (int k = 0; k < 4; ++k)
                        for (int v = 0; v < NV; ++v) acc[v] += e[k][v];
                } else {
                    for (int k = 0; k < 4 && j + k < j1; ++k) {
                        float e[NV];
                        op.at(ch_plane_offset(j + k, c, C, HW), c, e);
                        for (int v = 0; v < NV; ++v) acc[v] += e[v];
                    }
                }
            }
            for (int v = 0; v < NV; ++v) {
                const float t = block_sum(acc[v], warp_partials);
                if (threadIdx.x == 0) partials[((long long)v * splits + s) * C + c] = t;
            }
        }
    } else {
        const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
        const bool vec = op.vec && C % 4 == 0;
        int n0, n1;
        ch_row_slice(N, splits, s, n0, n1);
        for (int g = blockIdx.x; g < (C + CH_ROW_CHANNELS - 1) / CH_ROW_CHANNELS; g += gridDim.x) {
            const int c0 = g * CH_ROW_CHANNELS + 4 * lane;
            float acc[4][NV];
            for (int k = 0; k < 4; ++k)
                for (int v = 0; v < NV; ++v) acc[k][v] = 0.0f;
            for (int n = n0 + w; n < n1; n += CH_ROW_WARPS) {
                const long long i = (long long)n * C + c0;
                if (vec && c0 < C) {             // C % 4 == 0: all four channels exist
                    float e[4][NV];
                    op.at4(i, c0, 1, e);
                    for (int k = 0; k < 4; ++k)
                        for (int v = 0; v < NV; ++v) acc[k][v] += e[k][v];
                } else {
                    for (int k = 0; k < 4 && c0 + k < C; ++k) {
                        float e[NV];
                        op.at(i + k, c0 + k, e);
                        for (int v = 0; v < NV; ++v) acc[k][v] += e[v];
                    }
                }
            }
            for (int k = 0; k < 4; ++k)
                for (int v = 0; v < NV; ++v) rows_red[v][w][4 * lane + k] = acc[k][v];
            __syncthreads();                     // every warp's sums are in shared memory
            for (int e = threadIdx.x; e < NV * CH_ROW_CHANNELS; e += blockDim.x) {
                const int v = e / CH_ROW_CHANNELS, cc = e % CH_ROW_CHANNELS;
                const int c = g * CH_ROW_CHANNELS + cc;
                if (c < C) {
                    float t = 0.0f;
                    for (int ww = 0; ww < CH_ROW_WARPS; ++ww) t += rows_red[v][ww][cc];
                    partials[((long long)v * splits + s) * C + c] = t;
                }
            }
            __syncthreads();                     // read before the next group overwrites
        }
    }
}

// Pass 2 in the same launch, after ch_partials: the last block of the grid to finish
// (counted on `counter`, a zeroed unsigned that this block sets back to 0 for the next
// launch) sums the splits in order, as ch_total, into out[v * C + c] (accumulate: added
// to it). Every thread of every block must call it (it has barriers). The counter is
// shared by the launches of one stream, which run one after another.
template <int NV>
__device__ void ch_finish(const float* partials, unsigned int* counter, float* out, int splits, int C,
                          bool accumulate)
{
    __shared__ bool last;
    __threadfence();                         // this thread's partials are visible device-wide
    __syncthreads();                         // ... for every thread of the block
    if (threadIdx.x == 0) {
        const unsigned int blocks = gridDim.x * gridDim.y;
        last = atomicAdd(counter, 1u) == blocks - 1u;
    }
    __syncthreads();
    if (!last) return;                       // uniform in the block
    __threadfence();                         // the other blocks' partials are read after the count
    const volatile float* p = partials;      // not from a stale cache line
    for (int e = threadIdx.x; e < NV * C; e += blockDim.x) {
        const int v = e / C, c = e - v * C;
        float t = 0.0f;
        for (int s = 0; s < splits; ++s) t += p[((long long)v * splits + s) * C + c];
        out[e] = accumulate ? out[e] + t : t;
    }
    if (threadIdx.x == 0) *counter = 0u;
}

// Elementwise pass over the same slices. Op: typedef ... Consts; bool vec;
//   consts(c, write) -> Consts      per-channel constants (write: this thread stores the
//                                   channel's outputs, exactly one thread per channel)
//   apply(i, k)                     element i with its channel's constants
//   apply4(i, k0, k1, k2, k3)       elements i..i+3 (16-byte aligned)
template <class Op>
__device__ void ch_apply(const Op& op, int N, int C, int HW, int splits)
{
    typedef typename Op::Consts K;
    const int s = blockIdx.y;
    if (HW > 1) {
        const int count = N * HW;
        const bool vec = op.vec && HW % 4 == 0;
        for (int c = blockIdx.x; c < C; c += gridDim.x) {
            const K k = op.consts(c, s == 0 && threadIdx.x == 0);
            int j0, j1;
            ch_plane_slice(count, splits, s, j0, j1);
            for (int j = j0 + 4 * threadIdx.x; j < j1; j += 4 * blockDim.x) {
                if (vec) {
                    op.apply4(ch_plane_offset(j, c, C, HW), k, k, k, k);
                } else {
                    for (int q = 0; q < 4 && j + q < j1; ++q) op.apply(ch_plane_offset(j + q, c, C, HW), k);
                }
            }
        }
    } else {
        const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
        const bool vec = op.vec && C % 4 == 0;
        int n0, n1;
        ch_row_slice(N, splits, s, n0, n1);
        for (int g = blockIdx.x; g < (C + CH_ROW_CHANNELS - 1) / CH_ROW_CHANNELS; g += gridDim.x) {
            const int c0 = g * CH_ROW_CHANNELS + 4 * lane;
            if (c0 >= C) continue;               // no barrier below: lanes may leave
            K k[4];
            for (int q = 0; q < 4; ++q)
                if (c0 + q < C) k[q] = op.consts(c0 + q, s == 0 && w == 0);
            for (int n = n0 + w; n < n1; n += CH_ROW_WARPS) {
                const long long i = (long long)n * C + c0;
                if (vec) {
                    op.apply4(i, k[0], k[1], k[2], k[3]);
                } else {
                    for (int q = 0; q < 4 && c0 + q < C; ++q) op.apply(i + q, k[q]);
                }
            }
        }
    }
}

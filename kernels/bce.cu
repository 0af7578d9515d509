// Binary cross-entropy on logits with a mean reduction: the op bce_with_logits of
// cganraw.ops.bce (launchers bce_with_logits_forward_cuda, bce_with_logits_backward_cuda).
//
//   l(x, t) = max(x, 0) - x t + log1p(exp(-|x|))       loss = mean over all n elements
//   dloss/dx = (sigmoid(x) - t) * dloss / n
// The stable form never exponentiates a positive number: logits of +-1e4 give finite
// losses and gradients. Targets may be soft (label smoothing).
//
// Kernels:
//   bce_with_logits_forward_v1         naive: one thread per element, each atomically adds
//                                      its term / n into the zeroed loss (n atomics on one
//                                      address, in no fixed order)
//   bce_with_logits_forward_v2         adds a block reduction: grid-stride with a bounded
//                                      grid; each block reduces its terms (warp shuffles,
//                                      shared memory) to one partial sum,
//   bce_with_logits_forward_reduce_v2  then one block sums the partials in a fixed order
//                                      and divides by n. Two passes and no atomics: the
//                                      loss is bit-reproducible run to run.
//   bce_with_logits_backward_v1/v2     dx = (sigmoid(x) - t) * scale, scale = dloss / n from
//                                      the host; v1 one element per thread, v2 grid-stride.
//   bce_with_logits_segments_v1        a step's loss terms in one launch: x holds `parts`
//                                      segments of n logits ([real | wrong | fake] of D's
//                                      batch), each with its own constant target t_s and
//                                      gradient weight w_s (params = t_0..t_{p-1}, w_0..w_{p-1});
//                                      one block per segment sums its terms in a fixed order
//                                      (loss[s] = mean, bit-reproducible) and writes
//                                      dx = (sigmoid(x) - t_s) * (w_s / n) in the same pass.
// Block reductions need blockDim.x a multiple of 32 (full-mask shuffles), at most 1024.
//
// Shapes: x, t, dx (n,) contiguous (any shape flattened); loss (1,); partials (gridDim.x,);
// segments: x, dx (parts * n,), loss (parts,), params (2 parts,), grid (parts,).

// ---------------------------------------------------------------- maths

__device__ __forceinline__ float bce_term(float x, float t)
{
    // the reference's operations in its order: (max(x, 0) - x t) + log1p(exp(-|x|))
    return ((x > 0.0f ? x : 0.0f) - x * t) + log1pf(expf(-fabsf(x)));
}

__device__ __forceinline__ float stable_sigmoid(float x)
{
    float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

#include "reduce.cuh"   // warp_sum, block_sum

// ---------------------------------------------------------------- forward

// x, t: (n,) -> loss: (1,), zeroed by the caller; inv_n = 1/n
extern "C" __global__ void bce_with_logits_forward_v1(float* loss, const float* x, const float* t, float inv_n, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(loss, bce_term(x[i], t[i]) * inv_n);
}

// x, t: (n,) -> block_sums: (gridDim.x,), one partial sum per block
extern "C" __global__ void bce_with_logits_forward_v2(float* block_sums, const float* x, const float* t, int n)
{
    __shared__ float partials[32];
    float sum = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        sum += bce_term(x[i], t[i]);
    sum = block_sum(sum, partials);        // no early return above: every thread gets here
    if (threadIdx.x == 0) block_sums[blockIdx.x] = sum;
}

// block_sums: (num_blocks,) -> loss: (1,) = sum / n; launched as a single block
extern "C" __global__ void bce_with_logits_forward_reduce_v2(float* loss, const float* block_sums, int num_blocks, int n)
{
    __shared__ float partials[32];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < num_blocks; i += blockDim.x) sum += block_sums[i];
    sum = block_sum(sum, partials);
    if (threadIdx.x == 0) loss[0] = sum / (float)n;
}

// ---------------------------------------------------------------- backward

// x, t: (n,) -> dx: (n,); scale = dloss / n
extern "C" __global__ void bce_with_logits_backward_v1(float* dx, const float* x, const float* t, float scale, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = (stable_sigmoid(x[i]) - t[i]) * scale;
}

extern "C" __global__ void bce_with_logits_backward_v2(float* dx, const float* x, const float* t, float scale, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        dx[i] = (stable_sigmoid(x[i]) - t[i]) * scale;
}

// ---------------------------------------------------------------- all terms in one launch

// x: (parts * n,) -> loss: (parts,), dx: (parts * n,); params: (2 parts,) targets then weights.
// Launched with gridDim.x == parts (a block per segment; blocks past `parts` do nothing).
extern "C" __global__ void bce_with_logits_segments_v1(float* loss, float* dx, const float* x, const float* params,
                                                       int n, int parts)
{
    __shared__ float partials[32];
    int s = blockIdx.x;
    if (s >= parts) return;                // uniform in the block: no barrier is skipped by half of it
    float t = params[s], scale = params[parts + s] / (float)n;
    long long base = (long long)s * n;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float xi = x[base + i];
        sum += bce_term(xi, t);
        dx[base + i] = (stable_sigmoid(xi) - t) * scale;
    }
    sum = block_sum(sum, partials);
    if (threadIdx.x == 0) loss[s] = sum / (float)n;
}

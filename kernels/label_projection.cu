// The projection discriminator's label term (Miyato & Koyama 2018): out[n] = <E[y[n]], h[n]>,
// for cganraw.ops.label_projection (launchers label_projection_forward_cuda,
// label_projection_backward_cuda). h (N, F) is what D's last Linear(F, 1) reads; the term is
// added into that Linear's output (accumulate), and its dh into the Linear's dx, so the
// projection costs one launch each way and no separate add.
//
// Kernels:
//   label_projection_forward_v1   out[n] (+)= sum_f E[y[n], f] h[n, f]: one block per row
//                                 (block-striding over rows), the threads along f
//                                 (coalesced), a block reduction (reduce.cuh); thread 0
//                                 writes, or adds into out (accumulate).
//   label_projection_backward_v1  one thread per (k, f) of E (grid-strided over K*F): walks
//                                 the batch in n order and, for the rows with y[n] == k,
//                                 writes (or adds into, acc_dh) dh[n, f] = dy[n] E[k, f]
//                                 (need_dh: each (n, f) has exactly one owner, thread
//                                 (y[n], f)) and sums dE[k, f] = sum dy[n] h[n, f] (need_dE),
//                                 written or added into (acc_dE: the weight's .grad). A
//                                 deterministic per-class pass, no atomics: the same bits
//                                 every run, like the rest of D's backward; the label reads
//                                 are the same address across a warp (a broadcast) and the
//                                 batch is small, so the K-fold label scan is cheap.
//   label_projection_backward_v2  two launches' worth in one grid of N*F threads (grid-
//                                 strided): dh[n, f] as v1, and dE[y[n], f] += dy[n] h[n, f]
//                                 by atomicAdd into a dE the launcher zeroed (or the .grad):
//                                 fewer label reads, but the float sums land in a
//                                 scheduling-dependent order, so the bits can differ run to
//                                 run. Kept and tested; not the default.
//
// Shapes: h, dh (N, F), E, dE (K, F), y (N,) int32 in [0, K) (checked by the launcher; a
// label out of range adds nothing and owns no dh row), out, dy (N,), all contiguous.
// blockDim.x of the forward: a multiple of 32, at most 1024.

#include "reduce.cuh"   // block_sum

extern "C" __global__ void label_projection_forward_v1(float* out, const float* h, const float* E, const int* y,
                                                       int N, int F, int K, int accumulate)
{
    __shared__ float partials[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {     // uniform in the block: barriers are safe
        const int k = y[n];
        float s = 0.0f;
        if (k >= 0 && k < K) {
            const float* row = h + (long long)n * F;
            const float* e = E + (long long)k * F;
            for (int f = threadIdx.x; f < F; f += blockDim.x) s += e[f] * row[f];
        }
        s = block_sum(s, partials);
        if (threadIdx.x == 0) out[n] = accumulate ? out[n] + s : s;
    }
}

extern "C" __global__ void label_projection_backward_v1(float* dh, float* dE, const float* dy, const float* h,
                                                        const float* E, const int* y, int N, int F, int K,
                                                        int need_dh, int need_dE, int acc_dh, int acc_dE)
{
    const long long total = (long long)K * F;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i / F), f = (int)(i - (long long)k * F);
        const float e = E[i];
        float s = 0.0f;
        for (int n = 0; n < N; ++n) {
            if (y[n] != k) continue;
            const float d = dy[n];
            const long long j = (long long)n * F + f;
            if (need_dh) dh[j] = acc_dh ? dh[j] + d * e : d * e;
            s += d * h[j];
        }
        if (need_dE) dE[i] = acc_dE ? dE[i] + s : s;
    }
}

extern "C" __global__ void label_projection_backward_v2(float* dh, float* dE, const float* dy, const float* h,
                                                        const float* E, const int* y, int N, int F, int K,
                                                        int need_dh, int need_dE, int acc_dh)
{
    const long long total = (long long)N * F;
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < total;
         j += (long long)gridDim.x * blockDim.x) {
        const int n = (int)(j / F), f = (int)(j - (long long)n * F);
        const int k = y[n];
        if (k < 0 || k >= K) continue;
        const float d = dy[n];
        const long long i = (long long)k * F + f;
        if (need_dh) dh[j] = acc_dh ? dh[j] + d * E[i] : d * E[i];
        if (need_dE) atomicAdd(dE + i, d * h[j]);
    }
}

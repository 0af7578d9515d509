// A Linear layer with one output (a discriminator's logit, Linear(F, 1)), for
// cganraw.ops.linear (launchers linear_one_output_forward_cuda, linear_one_output_backward_cuda).
// Such a layer is a matrix-vector product: as a GEMM it costs a cuBLAS launch and a bias
// launch forward and three launches backward (the two GEMMs and the bias sum). Here:
//
// Kernels:
//   linear_one_output_forward_v1   y[n] = x[n] . w + b: one block per row (block-striding
//                                  over rows), the threads along f (coalesced), a block
//                                  reduction (reduce.cuh); the bias added by thread 0
//   linear_one_output_backward_v1  one thread per column f (grid-strided over F + 1 slots):
//                                  dx[n, f] = dy[n] w[f] for every n (need_dx; coalesced
//                                  along f), dw[f] = sum_n dy[n] x[n, f] in n order
//                                  (need_dw), and slot F: db = sum_n dy[n] (need_db); each
//                                  sum written or added into (accumulate: the .grad). No
//                                  atomics: the same bits every run. dx is an exact product,
//                                  the GEMM's own value (a sum of one term).
//
// Shapes: x, dx (N, F), w, dw (F,), y, dy (N,), b, db (1,), all contiguous.
// blockDim.x of the forward: a multiple of 32, at most 1024.

#include "reduce.cuh"   // block_sum

extern "C" __global__ void linear_one_output_forward_v1(float* y, const float* x, const float* w, const float* b,
                                                        int N, int F, int has_b)
{
    __shared__ float partials[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {     // uniform in the block: barriers are safe
        const float* row = x + (long long)n * F;
        float s = 0.0f;
        for (int f = threadIdx.x; f < F; f += blockDim.x) s += row[f] * w[f];
        s = block_sum(s, partials);
        if (threadIdx.x == 0) y[n] = has_b ? s + b[0] : s;
    }
}

extern "C" __global__ void linear_one_output_backward_v1(float* dx, float* dw, float* db, const float* dy,
                                                         const float* x, const float* w, int N, int F,
                                                         int need_dx, int need_dw, int need_db, int accumulate)
{
    for (int f = blockIdx.x * blockDim.x + threadIdx.x; f <= F; f += gridDim.x * blockDim.x) {
        if (f == F) {
            if (need_db) {
                float s = 0.0f;
                for (int n = 0; n < N; ++n) s += dy[n];
                db[0] = accumulate ? db[0] + s : s;
            }
            continue;
        }
        const float wf = w[f];
        float s = 0.0f;
        for (int n = 0; n < N; ++n) {
            const float d = dy[n];
            if (need_dx) dx[(long long)n * F + f] = d * wf;
            s += d * x[(long long)n * F + f];
        }
        if (need_dw) dw[f] = accumulate ? dw[f] + s : s;
    }
}

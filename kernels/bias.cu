// Per-channel bias over axis 1 of (N, C) or (N, C, H, W): the op bias_add of
// cganraw.ops.bias (launchers bias_add_forward_cuda, bias_add_backward_cuda), used by
// Linear, Conv2d and ConvTranspose2d.
//
// Kernels:
//   bias_add_forward_v1/v2    y[n, c, p] += b[c]          in place
//   bias_add_backward_v1/v2   db[c] = sum_{n, p} dy[n, c, p]
// Shapes: y, dy (N, C, HW) contiguous, HW = H*W (1 for a Linear layer's (N, C));
// b, db (C,).
//
// Versions:
//   bias_add_forward_v1   naive: one thread per element; the channel is (i / HW) % C.
//   bias_add_forward_v2   adds a block per (n, c) row, block-striding over rows: the bias
//                         is read once per row and the threads sweep the row's HW pixels,
//                         with no division per element. Pays off when HW is at least a
//                         warp (conv maps); Linear outputs (HW = 1) want v1.
//   bias_add_backward_v1  naive: one thread per channel, looping over N and HW in order.
//                         Coalesced when HW = 1 (threads read neighbouring channels of a
//                         row), strided by HW otherwise, and only C threads of work.
//   bias_add_backward_v2  adds a block per channel (block-striding over channels): the
//                         threads sweep the channel's N*HW values (coalesced within each
//                         row), then a block reduction: warp shuffles, one partial per
//                         warp in shared memory, shuffles again in warp 0.
//                         blockDim.x must be a multiple of 32 (full warps for the
//                         full-mask shuffles), at most 1024; the launcher picks it.

// ---------------------------------------------------------------- reductions

#include "reduce.cuh"   // warp_sum, block_sum

// ---------------------------------------------------------------- bias add (forward)

// y: (N, C, HW) updated in place, b: (C,), total = N*C*HW
extern "C" __global__ void bias_add_forward_v1(float* y, const float* b, int C, int HW, int total)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] += b[(i / HW) % C];
}

// y: (N, C, HW) in place, b: (C,), rows = N*C
extern "C" __global__ void bias_add_forward_v2(float* y, const float* b, int rows, int C, int HW)
{
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        float bias = b[row % C];
        float* yrow = y + (long long)row * HW;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) yrow[p] += bias;
    }
}

// ---------------------------------------------------------------- bias gradient (backward)

// dy: (N, C, HW), db: (C,) overwritten
extern "C" __global__ void bias_add_backward_v1(float* db, const float* dy, int N, int C, int HW)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int n = 0; n < N; n++) {
        const float* row = dy + ((long long)n * C + c) * HW;
        for (int p = 0; p < HW; p++) sum += row[p];
    }
    db[c] = sum;
}

// dy: (N, C, HW), db: (C,) overwritten; blockDim.x a multiple of 32
extern "C" __global__ void bias_add_backward_v2(float* db, const float* dy, int N, int C, int HW)
{
    __shared__ float partials[32];
    int count = N * HW;  // values per channel
    for (int c = blockIdx.x; c < C; c += gridDim.x) {  // uniform in the block: barriers are safe
        float sum = 0.0f;
        for (int j = threadIdx.x; j < count; j += blockDim.x) {
            int n = j / HW;
            int p = j - n * HW;
            sum += dy[((long long)n * C + c) * HW + p];
        }
        sum = block_sum(sum, partials);
        if (threadIdx.x == 0) db[c] = sum;
    }
}

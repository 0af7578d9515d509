// Batch normalisation over axis 1 of (N, C) or (N, C, H, W): the ops batchnorm_forward,
// batchnorm_backward and batchnorm_running_update of cganraw.ops.batchnorm (launchers
// <op>_cuda).
//
// Kernels:
//   batchnorm_forward_stats_v1/v2   training, first pass: per-channel mean and biased
//                                   variance (two passes over x: mean, then mean of
//                                   squared deviations), written as mean, invstd =
//                                   1/sqrt(var + eps) and the unbiased variance
//                                   var * count/(count - 1) that the running statistics
//                                   take (as PyTorch does)
//   batchnorm_forward_invstd_v1     eval, first pass: invstd = 1/sqrt(running_var + eps)
//   batchnorm_forward_v1/v2         xhat = (x - mean) * invstd;  y = xhat * gamma + beta
//   batchnorm_backward_v1/v2        dbeta = sum dy, dgamma = sum dy * xhat, and
//                                   training: dx = (dy - xhat * dgamma/count - dbeta/count) * gamma * invstd
//                                   eval:     dx = dy * gamma * invstd
//   batchnorm_running_update_v1     r = (1 - momentum) r + momentum * batch statistic, in place
//
// Shapes: x, y, xhat, dy, dx (N, C, HW) contiguous, HW = H*W (1 for (N, C));
// gamma, beta, mean, invstd, var, dgamma, dbeta (C,); count = N*HW values per channel.
// The arithmetic follows ops/batchnorm.py operation by operation (same operands, same
// order), so the emulator (no FMA contraction) agrees with NumPy to summation order.
//
// Versions:
//   *_v1  naive: one thread per channel (reductions, looping over its N*HW values in
//         order) or one thread per element (forward). Fine for (N, C) inputs, where the
//         channels alone give the parallelism; a few hundred threads for conv maps.
//   *_v2  adds block-level parallelism. Reductions: one block per channel (block-striding
//         over channels), the threads sweep the channel's values row by row (coalesced),
//         then a block reduction (warp shuffles, a partial per warp in shared memory,
//         shuffles in warp 0) whose total is broadcast through shared memory for the next
//         pass; blockDim.x must be a multiple of 32 (full-mask shuffles), at most 1024.
//         Forward: one block per (n, c) row, threads over its HW pixels, the channel's
//         parameters read once per row.

// ---------------------------------------------------------------- reductions

#include "reduce.cuh"   // warp_sum, block_sum

// element (n, p) of channel c in an (N, C, HW) array
__device__ __forceinline__ long long at(int n, int c, int p, int C, int HW)
{
    return ((long long)n * C + c) * HW + p;
}

// ---------------------------------------------------------------- statistics (training)

// x: (N, C, HW) -> mean, var_unbiased, invstd: (C,); unbias = count / max(count - 1, 1)
extern "C" __global__ void batchnorm_forward_stats_v1(float* mean, float* var_unbiased, float* invstd,
                                                   const float* x, float eps, float unbias,
                                                   int N, int C, int HW)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float count = (float)(N * HW);
    float sum = 0.0f;
    for (int n = 0; n < N; n++)
        for (int p = 0; p < HW; p++) sum += x[at(n, c, p, C, HW)];
    float m = sum / count;
    float sq = 0.0f;  // second pass over the centred values: no cancellation of E[x^2] - m^2
    for (int n = 0; n < N; n++)
        for (int p = 0; p < HW; p++) {
            float d = x[at(n, c, p, C, HW)] - m;
            sq += d * d;
        }
    float var = sq / count;
    mean[c] = m;
    invstd[c] = 1.0f / sqrtf(var + eps);  // not rsqrtf: the reference divides by a rounded sqrt
    var_unbiased[c] = var * unbias;
}

// as v1, one block per channel; blockDim.x a multiple of 32
extern "C" __global__ void batchnorm_forward_stats_v2(float* mean, float* var_unbiased, float* invstd,
                                                   const float* x, float eps, float unbias,
                                                   int N, int C, int HW)
{
    __shared__ float partials[32];
    __shared__ float channel_mean;
    int count = N * HW;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {  // uniform in the block: barriers are safe
        float sum = 0.0f;
        for (int j = threadIdx.x; j < count; j += blockDim.x) {
            int n = j / HW;
            sum += x[at(n, c, j - n * HW, C, HW)];
        }
        sum = block_sum(sum, partials);
        if (threadIdx.x == 0) channel_mean = sum / (float)count;
        __syncthreads();                   // the mean is visible to every thread
        float m = channel_mean;
        float sq = 0.0f;
        for (int j = threadIdx.x; j < count; j += blockDim.x) {
            int n = j / HW;
            float d = x[at(n, c, j - n * HW, C, HW)] - m;
            sq += d * d;
        }
        // block_sum's first barrier also keeps thread 0 from overwriting channel_mean (next
        // channel) before every thread has read it
        sq = block_sum(sq, partials);
        if (threadIdx.x == 0) {
            float var = sq / (float)count;
            mean[c] = m;
            invstd[c] = 1.0f / sqrtf(var + eps);
            var_unbiased[c] = var * unbias;
        }
    }
}

// eval: var (C,) running variance -> invstd (C,)
extern "C" __global__ void batchnorm_forward_invstd_v1(float* invstd, const float* var, float eps, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) invstd[c] = 1.0f / sqrtf(var[c] + eps);
}

// ---------------------------------------------------------------- normalise + affine

// x: (N, C, HW) -> y, xhat: (N, C, HW); mean, invstd, gamma, beta: (C,); total = N*C*HW
extern "C" __global__ void batchnorm_forward_v1(float* y, float* xhat, const float* x,
                                                     const float* mean, const float* invstd,
                                                     const float* gamma, const float* beta,
                                                     int C, int HW, int total)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    int c = (i / HW) % C;
    float h = (x[i] - mean[c]) * invstd[c];
    xhat[i] = h;
    y[i] = h * gamma[c] + beta[c];
}

// as v1, one block per (n, c) row, block-striding over the rows = N*C rows
extern "C" __global__ void batchnorm_forward_v2(float* y, float* xhat, const float* x,
                                                     const float* mean, const float* invstd,
                                                     const float* gamma, const float* beta,
                                                     int rows, int C, int HW)
{
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        int c = row % C;
        float m = mean[c], s = invstd[c], g = gamma[c], b = beta[c];
        long long base = (long long)row * HW;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            float h = (x[base + p] - m) * s;
            xhat[base + p] = h;
            y[base + p] = h * g + b;
        }
    }
}

// ---------------------------------------------------------------- backward

// dy, xhat: (N, C, HW) -> dx: (N, C, HW), dgamma, dbeta: (C,) overwritten.
// gamma, invstd: (C,) from the forward; training: 1 when the forward used batch statistics.
extern "C" __global__ void batchnorm_backward_v1(float* dx, float* dgamma, float* dbeta,
                                                      const float* dy, const float* xhat,
                                                      const float* gamma, const float* invstd,
                                                      int training, int N, int C, int HW)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    for (int n = 0; n < N; n++)
        for (int p = 0; p < HW; p++) {
            long long i = at(n, c, p, C, HW);
            sum_dy += dy[i];
            sum_dy_xhat += dy[i] * xhat[i];
        }
    dbeta[c] = sum_dy;
    dgamma[c] = sum_dy_xhat;
    float scale = gamma[c] * invstd[c];
    float count = (float)(N * HW);
    float a = training ? sum_dy_xhat / count : 0.0f;  // eval: the statistics are constants
    float b = training ? sum_dy / count : 0.0f;
    for (int n = 0; n < N; n++)
        for (int p = 0; p < HW; p++) {
            long long i = at(n, c, p, C, HW);
            dx[i] = training ? (dy[i] - (xhat[i] * a + b)) * scale : dy[i] * scale;
        }
}

// as v1, one block per channel; blockDim.x a multiple of 32
extern "C" __global__ void batchnorm_backward_v2(float* dx, float* dgamma, float* dbeta,
                                                      const float* dy, const float* xhat,
                                                      const float* gamma, const float* invstd,
                                                      int training, int N, int C, int HW)
{
    __shared__ float partials[32];
    __shared__ float channel_sums[2];   // sum dy, sum dy * xhat, broadcast to the block
    int count = N * HW;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {  // uniform in the block: barriers are safe
        float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
        for (int j = threadIdx.x; j < count; j += blockDim.x) {
            int n = j / HW;
            long long i = at(n, c, j - n * HW, C, HW);
            sum_dy += dy[i];
            sum_dy_xhat += dy[i] * xhat[i];
        }
        // the first block_sum's barriers also order the previous channel's reads of
        // channel_sums before thread 0 overwrites them below
        sum_dy = block_sum(sum_dy, partials);
        sum_dy_xhat = block_sum(sum_dy_xhat, partials);
        if (threadIdx.x == 0) {
            channel_sums[0] = sum_dy;
            channel_sums[1] = sum_dy_xhat;
            dbeta[c] = sum_dy;
            dgamma[c] = sum_dy_xhat;
        }
        __syncthreads();                   // the sums are visible to every thread
        float scale = gamma[c] * invstd[c];
        float a = training ? channel_sums[1] / (float)count : 0.0f;
        float b = training ? channel_sums[0] / (float)count : 0.0f;
        for (int j = threadIdx.x; j < count; j += blockDim.x) {
            int n = j / HW;
            long long i = at(n, c, j - n * HW, C, HW);
            dx[i] = training ? (dy[i] - (xhat[i] * a + b)) * scale : dy[i] * scale;
        }
    }
}

// ---------------------------------------------------------------- running statistics

// running_mean, running_var: (C,) in place; mean, var_unbiased: (C,) of this batch.
// keep = 1 - momentum, rounded to float on the host as the reference does.
extern "C" __global__ void batchnorm_running_update_v1(float* running_mean, float* running_var,
                                                            const float* mean, const float* var_unbiased,
                                                            float keep, float momentum, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    running_mean[c] = running_mean[c] * keep + momentum * mean[c];
    running_var[c] = running_var[c] * keep + momentum * var_unbiased[c];
}

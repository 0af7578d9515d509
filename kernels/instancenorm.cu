// Instance normalisation of (N, C, H, W): every (n, c) plane normalised by its own mean and
// biased variance, then gamma[c] xhat + beta[c] (torch's InstanceNorm2d with input
// statistics), for cganraw.ops.instancenorm. Evaluation with running statistics is
// BatchNorm's eval path (kernels/batchnorm.cu) and is launched from there.
//
// Kernels:
//   instancenorm_forward_v1          one thread per row (plane): mean, then the mean of the
//                                    squared deviations (two passes, no E[x^2] - m^2
//                                    cancellation), invstd = 1/sqrt(var + eps);
//                                    xhat = (x - mean) invstd, y = xhat gamma[c] + beta[c];
//                                    writes mean, var (biased), invstd per row
//   instancenorm_forward_v2          one block per row (block-striding over rows): the threads
//                                    sweep the row (coalesced), block reductions (reduce.cuh),
//                                    the statistics broadcast through shared memory
//   instancenorm_backward_v1         one thread per row: s1 = sum dy, s2 = sum dy xhat;
//                                    dx = (dy - (xhat s2/HW + s1/HW)) gamma[c] invstd;
//                                    s1, s2 written per row for the parameter gradients
//   instancenorm_backward_v2         as v1, one block per row
//   instancenorm_backward_param_grad_v1
//                                    one thread per channel: dbeta[c] = sum_n s1[n, c],
//                                    dgamma[c] = sum_n s2[n, c], in n order
//   instancenorm_leaky_relu_forward_v1
//                                    forward_v2 with y = leaky_relu(xhat gamma + beta): the
//                                    InstanceNorm2d + LeakyReLU pair of G in one pass
//   instancenorm_leaky_relu_backward_v1
//                                    backward_v2 on dpre = dy where xhat gamma + beta > 0, else
//                                    slope dy (recomputed from xhat: no stored mask), then the
//                                    grid's last block (a counter, as channels.cuh's ch_finish)
//                                    adds param_grad_v1's sums into dgamma, dbeta (accumulate:
//                                    the parameters' .grad) or writes them: one launch where
//                                    the unfused layers took five (activation, norm, parameter
//                                    sums, two gradient adds)
//   instancenorm_leaky_relu_forward_v2
//                                    leaky_relu_forward_v1 writing y channel-major (C, N, HW)
//                                    when y_cm (0: v1 exactly): the layout the next
//                                    convolution's GEMM takes x in (ops/conv.py), so G's
//                                    activations reach it without a layout copy
//   instancenorm_leaky_relu_backward_v2
//                                    backward_v1 reading dy channel-major (C, N, HW) when dy_cm
//                                    (0: v1 exactly): the data gradient of the convolution
//                                    after the pair comes out of its GEMM in that layout
//   instancenorm_running_update_v1   one thread per channel, in place, as torch (which runs
//                                    batch_norm on the (1, N*C, H, W) view and averages the
//                                    N per-instance running values back):
//                                    r[c] = mean_n(keep r[c] + momentum stat[n, c]), the
//                                    variance unbiased by HW / (HW - 1)
//
// Shapes: x, y, xhat, dy, dx (rows, HW) contiguous, rows = N*C, row r is channel r % C;
// mean, var, invstd, s1, s2 (rows,); gamma, beta, dgamma, dbeta, running stats (C,).
// blockDim.x of the v2 kernels: a multiple of 32, at most 1024.
// The arithmetic follows ops/instancenorm.py operation by operation, so the emulator (no
// FMA contraction) agrees with NumPy to summation order.

#include "reduce.cuh"   // block_sum

// ---------------------------------------------------------------- forward

extern "C" __global__ void instancenorm_forward_v1(float* y, float* xhat, float* mean, float* var, float* invstd,
                                                   const float* x, const float* gamma, const float* beta,
                                                   float eps, int rows, int C, int HW)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* row = x + (long long)r * HW;
    float sum = 0.0f;
    for (int p = 0; p < HW; p++) sum += row[p];
    float m = sum / (float)HW;
    float sq = 0.0f;
    for (int p = 0; p < HW; p++) {
        float d = row[p] - m;
        sq += d * d;
    }
    float v = sq / (float)HW;
    float s = 1.0f / sqrtf(v + eps);   // not rsqrtf: the reference divides by a rounded sqrt
    float g = gamma[r % C], b = beta[r % C];
    for (int p = 0; p < HW; p++) {
        float h = (row[p] - m) * s;
        xhat[(long long)r * HW + p] = h;
        y[(long long)r * HW + p] = h * g + b;
    }
    mean[r] = m;
    var[r] = v;
    invstd[r] = s;
}

extern "C" __global__ void instancenorm_forward_v2(float* y, float* xhat, float* mean, float* var, float* invstd,
                                                   const float* x, const float* gamma, const float* beta,
                                                   float eps, int rows, int C, int HW)
{
    __shared__ float partials[32];
    __shared__ float stats[2];        // the row's mean and invstd, broadcast to the block
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {   // uniform in the block: barriers are safe
        const float* row = x + (long long)r * HW;
        float sum = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) sum += row[p];
        // block_sum's first barrier also keeps thread 0 from overwriting stats (this row)
        // before every thread has read the previous row's
        sum = block_sum(sum, partials);
        if (threadIdx.x == 0) stats[0] = sum / (float)HW;
        __syncthreads();
        float m = stats[0];
        float sq = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            float d = row[p] - m;
            sq += d * d;
        }
        sq = block_sum(sq, partials);
        if (threadIdx.x == 0) {
            float v = sq / (float)HW;
            float s = 1.0f / sqrtf(v + eps);
            stats[1] = s;
            mean[r] = m;
            var[r] = v;
            invstd[r] = s;
        }
        __syncthreads();
        float s = stats[1], g = gamma[r % C], b = beta[r % C];
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            float h = (row[p] - m) * s;
            xhat[(long long)r * HW + p] = h;
            y[(long long)r * HW + p] = h * g + b;
        }
    }
}

// ---------------------------------------------------------------- backward

extern "C" __global__ void instancenorm_backward_v1(float* dx, float* s1, float* s2, const float* dy,
                                                    const float* xhat, const float* gamma, const float* invstd,
                                                    int rows, int C, int HW)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    long long base = (long long)r * HW;
    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    for (int p = 0; p < HW; p++) {
        sum_dy += dy[base + p];
        sum_dy_xhat += dy[base + p] * xhat[base + p];
    }
    s1[r] = sum_dy;
    s2[r] = sum_dy_xhat;
    float scale = gamma[r % C] * invstd[r];
    float a = sum_dy_xhat / (float)HW, b = sum_dy / (float)HW;
    for (int p = 0; p < HW; p++) dx[base + p] = (dy[base + p] - (xhat[base + p] * a + b)) * scale;
}

extern "C" __global__ void instancenorm_backward_v2(float* dx, float* s1, float* s2, const float* dy,
                                                    const float* xhat, const float* gamma, const float* invstd,
                                                    int rows, int C, int HW)
{
    __shared__ float partials[32];
    __shared__ float sums[2];          // sum dy, sum dy xhat of the row, broadcast
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {   // uniform in the block: barriers are safe
        long long base = (long long)r * HW;
        float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            sum_dy += dy[base + p];
            sum_dy_xhat += dy[base + p] * xhat[base + p];
        }
        // the first block_sum's barriers order the previous row's reads of sums before
        // thread 0 overwrites them
        sum_dy = block_sum(sum_dy, partials);
        sum_dy_xhat = block_sum(sum_dy_xhat, partials);
        if (threadIdx.x == 0) {
            sums[0] = sum_dy;
            sums[1] = sum_dy_xhat;
            s1[r] = sum_dy;
            s2[r] = sum_dy_xhat;
        }
        __syncthreads();
        float scale = gamma[r % C] * invstd[r];
        float a = sums[1] / (float)HW, b = sums[0] / (float)HW;
        for (int p = threadIdx.x; p < HW; p += blockDim.x)
            dx[base + p] = (dy[base + p] - (xhat[base + p] * a + b)) * scale;
    }
}

extern "C" __global__ void instancenorm_backward_param_grad_v1(float* dgamma, float* dbeta,
                                                               const float* s1, const float* s2, int N, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float g = 0.0f, b = 0.0f;
    for (int n = 0; n < N; n++) {
        b += s1[n * C + c];
        g += s2[n * C + c];
    }
    dgamma[c] = g;
    dbeta[c] = b;
}

// ---------------------------------------------------------------- fused with LeakyReLU

extern "C" __global__ void instancenorm_leaky_relu_forward_v1(float* y, float* xhat, float* mean, float* var,
                                                              float* invstd, const float* x, const float* gamma,
                                                              const float* beta, float eps, float slope, int rows,
                                                              int C, int HW)
{
    __shared__ float partials[32];
    __shared__ float stats[2];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {   // uniform in the block: barriers are safe
        const float* row = x + (long long)r * HW;
        float sum = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) sum += row[p];
        sum = block_sum(sum, partials);
        if (threadIdx.x == 0) stats[0] = sum / (float)HW;
        __syncthreads();
        float m = stats[0];
        float sq = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            float d = row[p] - m;
            sq += d * d;
        }
        sq = block_sum(sq, partials);
        if (threadIdx.x == 0) {
            float v = sq / (float)HW;
            float s = 1.0f / sqrtf(v + eps);
            stats[1] = s;
            mean[r] = m;
            var[r] = v;
            invstd[r] = s;
        }
        __syncthreads();
        float s = stats[1], g = gamma[r % C], b = beta[r % C];
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            float h = (row[p] - m) * s;
            float o = h * g + b;
            xhat[(long long)r * HW + p] = h;
            y[(long long)r * HW + p] = o > 0.0f ? o : o * slope;
        }
    }
}

// dy (rows, HW) of the activated output -> dx; s1, s2 (rows,) scratch; dgamma, dbeta (C,)
// (+= when accumulate); counter: a zeroed unsigned, left zeroed. N = rows / C.
extern "C" __global__ void instancenorm_leaky_relu_backward_v1(float* dx, float* s1, float* s2, float* dgamma,
                                                               float* dbeta, unsigned int* counter, const float* dy,
                                                               const float* xhat, const float* gamma,
                                                               const float* beta, const float* invstd, float slope,
                                                               int rows, int C, int HW, int accumulate)
{
    __shared__ float partials[32];
    __shared__ float sums[2];
    __shared__ bool last;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {   // uniform in the block: barriers are safe
        long long base = (long long)r * HW;
        const float g = gamma[r % C], b = beta[r % C];
        float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            const float h = xhat[base + p];
            const float d = h * g + b > 0.0f ? dy[base + p] : dy[base + p] * slope;
            sum_dy += d;
            sum_dy_xhat += d * h;
        }
        sum_dy = block_sum(sum_dy, partials);
        sum_dy_xhat = block_sum(sum_dy_xhat, partials);
        if (threadIdx.x == 0) {
            sums[0] = sum_dy;
            sums[1] = sum_dy_xhat;
            s1[r] = sum_dy;
            s2[r] = sum_dy_xhat;
        }
        __syncthreads();
        float scale = g * invstd[r];
        float a = sums[1] / (float)HW, bb = sums[0] / (float)HW;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            const float h = xhat[base + p];
            const float d = h * g + b > 0.0f ? dy[base + p] : dy[base + p] * slope;
            dx[base + p] = (d - (h * a + bb)) * scale;
        }
    }
    // the parameter gradients: the last block to finish sums the rows' s1, s2 in n order
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1u;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const volatile float* v1 = s1;
    const volatile float* v2 = s2;
    const int N = rows / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float gs = 0.0f, bs = 0.0f;
        for (int n = 0; n < N; n++) {
            bs += v1[n * C + c];
            gs += v2[n * C + c];
        }
        dgamma[c] = accumulate ? dgamma[c] + gs : gs;
        dbeta[c] = accumulate ? dbeta[c] + bs : bs;
    }
    if (threadIdx.x == 0) *counter = 0u;
}

// as backward_v1; dy (C, N, HW) when dy_cm, else (rows, HW)
extern "C" __global__ void instancenorm_leaky_relu_backward_v2(float* dx, float* s1, float* s2, float* dgamma,
                                                               float* dbeta, unsigned int* counter, const float* dy,
                                                               const float* xhat, const float* gamma,
                                                               const float* beta, const float* invstd, float slope,
                                                               int rows, int C, int HW, int accumulate,
                                                               int dy_cm)
{
    __shared__ float partials[32];
    __shared__ float sums[2];
    __shared__ bool last;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {   // uniform in the block: barriers are safe
        long long base = (long long)r * HW;
        const long long dbase = dy_cm ? ((long long)(r % C) * (rows / C) + r / C) * HW : base;
        const float g = gamma[r % C], b = beta[r % C];
        float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            const float h = xhat[base + p];
            const float d = h * g + b > 0.0f ? dy[dbase + p] : dy[dbase + p] * slope;
            sum_dy += d;
            sum_dy_xhat += d * h;
        }
        sum_dy = block_sum(sum_dy, partials);
        sum_dy_xhat = block_sum(sum_dy_xhat, partials);
        if (threadIdx.x == 0) {
            sums[0] = sum_dy;
            sums[1] = sum_dy_xhat;
            s1[r] = sum_dy;
            s2[r] = sum_dy_xhat;
        }
        __syncthreads();
        float scale = g * invstd[r];
        float a = sums[1] / (float)HW, bb = sums[0] / (float)HW;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            const float h = xhat[base + p];
            const float d = h * g + b > 0.0f ? dy[dbase + p] : dy[dbase + p] * slope;
            dx[base + p] = (d - (h * a + bb)) * scale;
        }
    }
    // the parameter gradients: the last block to finish sums the rows' s1, s2 in n order
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1u;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const volatile float* v1 = s1;
    const volatile float* v2 = s2;
    const int N = rows / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float gs = 0.0f, bs = 0.0f;
        for (int n = 0; n < N; n++) {
            bs += v1[n * C + c];
            gs += v2[n * C + c];
        }
        dgamma[c] = accumulate ? dgamma[c] + gs : gs;
        dbeta[c] = accumulate ? dbeta[c] + bs : bs;
    }
    if (threadIdx.x == 0) *counter = 0u;
}

// ---------------------------------------------------------------- running statistics

// running_mean, running_var (C,) in place; mean, var (N*C,) biased per row;
// keep = 1 - momentum and unbias = HW / (HW - 1), rounded to float on the host
extern "C" __global__ void instancenorm_running_update_v1(float* running_mean, float* running_var,
                                                          const float* mean, const float* var,
                                                          float keep, float momentum, float unbias,
                                                          int N, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float rm = running_mean[c], rv = running_var[c];
    float sum_m = 0.0f, sum_v = 0.0f;
    for (int n = 0; n < N; n++) {
        sum_m += rm * keep + momentum * mean[n * C + c];
        sum_v += rv * keep + momentum * (var[n * C + c] * unbias);
    }
    running_mean[c] = sum_m / (float)N;
    running_var[c] = sum_v / (float)N;
}

// as instancenorm_leaky_relu_forward_v1; y (C, N, HW) when y_cm, else (N, C, HW) (xhat stays (N, C, HW))
extern "C" __global__ void instancenorm_leaky_relu_forward_v2(float* y, float* xhat, float* mean, float* var,
                                                              float* invstd, const float* x, const float* gamma,
                                                              const float* beta, float eps, float slope, int rows,
                                                              int C, int HW, int y_cm)
{
    __shared__ float partials[32];
    __shared__ float stats[2];
    const int N = rows / C;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {   // uniform in the block: barriers are safe
        const float* row = x + (long long)r * HW;
        float sum = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) sum += row[p];
        sum = block_sum(sum, partials);
        if (threadIdx.x == 0) stats[0] = sum / (float)HW;
        __syncthreads();
        float m = stats[0];
        float sq = 0.0f;
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            float d = row[p] - m;
            sq += d * d;
        }
        sq = block_sum(sq, partials);
        if (threadIdx.x == 0) {
            float v = sq / (float)HW;
            float s = 1.0f / sqrtf(v + eps);
            stats[1] = s;
            mean[r] = m;
            var[r] = v;
            invstd[r] = s;
        }
        __syncthreads();
        const int c = r % C, n = r / C;
        const long long ybase = y_cm ? ((long long)c * N + n) * HW : (long long)r * HW;
        float s = stats[1], g = gamma[c], b = beta[c];
        for (int p = threadIdx.x; p < HW; p += blockDim.x) {
            float h = (row[p] - m) * s;
            float o = h * g + b;
            xhat[(long long)r * HW + p] = h;
            y[ybase + p] = o > 0.0f ? o : o * slope;
        }
    }
}

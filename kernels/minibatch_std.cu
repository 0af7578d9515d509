// ProGAN's minibatch standard deviation (Karras et al. 2018), for cganraw.ops.minibatch_std.
// The batch of N samples, F = C*H*W features each, splits into M = N / G groups of G: sample
// n = g*M + m is member g of group m (ProGAN's reshape(G, M, ...)). For every group,
//   stat[m] = mean over f of sqrt(var_g(x[g*M + m, f]) + eps)     (biased variance over the group)
// and the output appends one channel holding stat[n % M] at every pixel: (N, C + 1, H, W).
//
// Kernels:
//   minibatch_std_forward_stat_v1   one thread per group: the G-member mean and variance of
//                                   every feature in turn, sqrt, summed in feature order, / F
//   minibatch_std_forward_stat_v2   one block per group (block-striding over groups): threads
//                                   over the features (coalesced), a block reduction (reduce.cuh)
//   minibatch_std_forward_v1        one thread per output element: x copied, the stat channel filled
//   minibatch_std_forward_v2        as v1 in a bounded grid that grid-strides
//   minibatch_std_backward_stat_v1  one thread per group: dstat[m] = the sum of dy's stat
//                                   channel over the group's G members and HW pixels
//   minibatch_std_backward_stat_v2  as v1, one block per group, a block reduction
//   minibatch_std_backward_v1       one thread per input element: the group mean and std of
//                                   its feature recomputed (G reads), then
//                                   dx = dy[n, f] + dstat[m] / F * (x - mean) / (G std)
//   minibatch_std_backward_v2       as v1 in a bounded grid that grid-strides
//   minibatch_std_*_v3              as the v2 kernels, for a batch of S segments of G*M
//                                   samples each grouped on its own (the D step's real,
//                                   wrong-label and fake terms as one batch): group
//                                   q = s*M + m of segment s has members (s*G + g)*M + m, so
//                                   each segment's statistics are those it has alone (S = 1:
//                                   exactly v2). Q = S*M groups.
//
// Shapes: x, dx (N, F) and y, dy (N, F + HW) contiguous (F = C*HW); stat, dstat (M,) (v3: (Q,)).
// blockDim.x of the block-per-group kernels: a multiple of 32, at most 1024.
// total: the element count of a flat kernel, below 2^31 minus a grid (checked by the launcher).

#include "reduce.cuh"   // block_sum

// sqrt of the biased variance over the G members of group m, feature f; mean out
__device__ __forceinline__ float feature_std(const float* x, int m, int f, int M, int G, int F, float eps,
                                             float* mean_out)
{
    float sum = 0.0f;
    for (int g = 0; g < G; g++) sum += x[(long long)(g * M + m) * F + f];
    float mu = sum / (float)G;
    float sq = 0.0f;
    for (int g = 0; g < G; g++) {
        float d = x[(long long)(g * M + m) * F + f] - mu;
        sq += d * d;
    }
    *mean_out = mu;
    return sqrtf(sq / (float)G + eps);
}

// ---------------------------------------------------------------- forward

extern "C" __global__ void minibatch_std_forward_stat_v1(float* stat, const float* x, int M, int G, int F, float eps)
{
    int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= M) return;
    float acc = 0.0f, mu;
    for (int f = 0; f < F; f++) acc += feature_std(x, m, f, M, G, F, eps, &mu);
    stat[m] = acc / (float)F;
}

extern "C" __global__ void minibatch_std_forward_stat_v2(float* stat, const float* x, int M, int G, int F, float eps)
{
    __shared__ float partials[32];
    for (int m = blockIdx.x; m < M; m += gridDim.x) {   // uniform in the block: barriers are safe
        float acc = 0.0f, mu;
        for (int f = threadIdx.x; f < F; f += blockDim.x) acc += feature_std(x, m, f, M, G, F, eps, &mu);
        acc = block_sum(acc, partials);
        if (threadIdx.x == 0) stat[m] = acc / (float)F;
    }
}

// y (N, F + HW): row n is x's row, then HW copies of stat[n % M]
__device__ __forceinline__ float concat_value(const float* x, const float* stat, long long i, int M, int F, int HW)
{
    int row = F + HW;
    int n = (int)(i / row), j = (int)(i - (long long)n * row);
    return j < F ? x[(long long)n * F + j] : stat[n % M];
}

extern "C" __global__ void minibatch_std_forward_v1(float* y, const float* x, const float* stat,
                                                    int M, int F, int HW, int total)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] = concat_value(x, stat, i, M, F, HW);
}

extern "C" __global__ void minibatch_std_forward_v2(float* y, const float* x, const float* stat,
                                                    int M, int F, int HW, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        y[i] = concat_value(x, stat, i, M, F, HW);
}

// ---------------------------------------------------------------- backward

extern "C" __global__ void minibatch_std_backward_stat_v1(float* dstat, const float* dy, int M, int G, int F, int HW)
{
    int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= M) return;
    float acc = 0.0f;
    for (int g = 0; g < G; g++) {
        const float* channel = dy + (long long)(g * M + m) * (F + HW) + F;
        for (int p = 0; p < HW; p++) acc += channel[p];
    }
    dstat[m] = acc;
}

extern "C" __global__ void minibatch_std_backward_stat_v2(float* dstat, const float* dy, int M, int G, int F, int HW)
{
    __shared__ float partials[32];
    int work = G * HW;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {   // uniform in the block: barriers are safe
        float acc = 0.0f;
        for (int j = threadIdx.x; j < work; j += blockDim.x) {
            int g = j / HW;
            acc += dy[(long long)(g * M + m) * (F + HW) + F + (j - g * HW)];
        }
        acc = block_sum(acc, partials);
        if (threadIdx.x == 0) dstat[m] = acc;
    }
}

__device__ __forceinline__ float input_grad(const float* dy, const float* x, const float* dstat, int i,
                                            int M, int G, int F, int HW, float eps)
{
    int n = i / F, f = i - n * F, m = n % M;
    float mu;
    float s = feature_std(x, m, f, M, G, F, eps, &mu);
    float through_stat = dstat[m] / (float)F * ((x[i] - mu) / ((float)G * s));
    return dy[(long long)n * (F + HW) + f] + through_stat;
}

extern "C" __global__ void minibatch_std_backward_v1(float* dx, const float* dy, const float* x, const float* dstat,
                                                     int M, int G, int F, int HW, float eps, int total)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) dx[i] = input_grad(dy, x, dstat, i, M, G, F, HW, eps);
}

extern "C" __global__ void minibatch_std_backward_v2(float* dx, const float* dy, const float* x, const float* dstat,
                                                     int M, int G, int F, int HW, float eps, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        dx[i] = input_grad(dy, x, dstat, i, M, G, F, HW, eps);
}

// ---------------------------------------------------------------- segmented (v3)

// row of member g of group q (segment q / M, group q % M within it)
__device__ __forceinline__ long long member_row(int q, int g, int M, int G)
{
    int s = q / M;
    return (long long)(s * G + g) * M + (q - s * M);
}

// the group of sample n: its segment's groups come after those of the segments before
__device__ __forceinline__ int group_of(int n, int M, int G)
{
    return (n / (G * M)) * M + n % M;
}

__device__ __forceinline__ float feature_std_seg(const float* x, int q, int f, int M, int G, int F, float eps,
                                                 float* mean_out)
{
    float sum = 0.0f;
    for (int g = 0; g < G; g++) sum += x[member_row(q, g, M, G) * F + f];
    float mu = sum / (float)G;
    float sq = 0.0f;
    for (int g = 0; g < G; g++) {
        float d = x[member_row(q, g, M, G) * F + f] - mu;
        sq += d * d;
    }
    *mean_out = mu;
    return sqrtf(sq / (float)G + eps);
}

extern "C" __global__ void minibatch_std_forward_stat_v3(float* stat, const float* x, int Q, int M, int G, int F,
                                                         float eps)
{
    __shared__ float partials[32];
    for (int q = blockIdx.x; q < Q; q += gridDim.x) {   // uniform in the block: barriers are safe
        float acc = 0.0f, mu;
        for (int f = threadIdx.x; f < F; f += blockDim.x) acc += feature_std_seg(x, q, f, M, G, F, eps, &mu);
        acc = block_sum(acc, partials);
        if (threadIdx.x == 0) stat[q] = acc / (float)F;
    }
}

extern "C" __global__ void minibatch_std_forward_v3(float* y, const float* x, const float* stat,
                                                    int M, int G, int F, int HW, int total)
{
    int row = F + HW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        int n = i / row, j = i - n * row;
        y[i] = j < F ? x[(long long)n * F + j] : stat[group_of(n, M, G)];
    }
}

extern "C" __global__ void minibatch_std_backward_stat_v3(float* dstat, const float* dy, int Q, int M, int G, int F,
                                                          int HW)
{
    __shared__ float partials[32];
    int work = G * HW;
    for (int q = blockIdx.x; q < Q; q += gridDim.x) {   // uniform in the block: barriers are safe
        float acc = 0.0f;
        for (int j = threadIdx.x; j < work; j += blockDim.x) {
            int g = j / HW;
            acc += dy[member_row(q, g, M, G) * (F + HW) + F + (j - g * HW)];
        }
        acc = block_sum(acc, partials);
        if (threadIdx.x == 0) dstat[q] = acc;
    }
}

extern "C" __global__ void minibatch_std_backward_v3(float* dx, const float* dy, const float* x, const float* dstat,
                                                     int M, int G, int F, int HW, float eps, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        int n = i / F, f = i - n * F, q = group_of(n, M, G);
        float mu;
        float s = feature_std_seg(x, q, f, M, G, F, eps, &mu);
        float through_stat = dstat[q] / (float)F * ((x[i] - mu) / ((float)G * s));
        dx[i] = dy[(long long)n * (F + HW) + f] + through_stat;
    }
}

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
//   batchnorm_forward_stats_v3      training, pass 1 of 3: per (channel, split) partial sums of x
//   batchnorm_forward_stats_centered_v3  pass 2: the mean from pass 1's partials (in split
//                                   order), partial sums of (x - mean)^2
//   batchnorm_forward_v3            pass 3: each block adds its channel's partials (in split
//                                   order), finishes mean/invstd/unbiased var (written once,
//                                   by split 0), and normalises its slice; eval: mean and
//                                   invstd given (batchnorm_forward_invstd_v1)
//   batchnorm_backward_partial_v3   pass 1: partial sums of dy and dy * xhat
//   batchnorm_backward_v3           pass 2: dgamma, dbeta from the partials (split 0 writes
//                                   them), dx over the block's slice
//   batchnorm_leaky_relu_forward_v1          v3's pass 2 with y = leaky_relu(xhat gamma + beta)
//                                            (after batchnorm_forward_stats_v3 in training)
//   batchnorm_leaky_relu_backward_partial_v1 v3's passes with dpre = dy where xhat gamma +
//   batchnorm_leaky_relu_backward_v1         beta > 0, else slope * dy, recomputed from
//                                            xhat: the activation's gradient costs no pass
//                                            and no stored mask
//   batchnorm_leaky_relu_forward_v2          as _v1 in training, the thread that writes a
//                                            channel's mean and variance also updating its
//                                            running statistics (batchnorm_running_update_v1's
//                                            arithmetic): no launch of their own
//   batchnorm_leaky_relu_backward_v2         as _v1, adding dgamma, dbeta into the arrays
//                                            given (the parameters' .grad) instead of
//                                            writing them: no separate gradient adds
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
//   *_v3  adds a (channels x splits) grid (channels.cuh, as llm.c's matmul_backward_bias
//         kernels 7-9): each block takes one slice of a channel (or of 128 channels when
//         HW = 1, the rows split across warps) with float4 loads where aligned, writes
//         partial sums, and the pass after adds the splits' partials in a fixed order, so
//         results are the same every run (no float atomics). v2 gives C blocks (128 for
//         132 SMs) that each stream a whole channel with 1-2 loads in flight per thread;
//         v3 gives C x splits blocks (the launcher aims at 528). The statistics keep the
//         reference's two passes (the mean, then the mean of squared deviations), so for
//         an (N, C) input of at most 8 rows per split the sums run in NumPy's order and
//         agree to the bit; a one-read shifted variant (sums of x - x0 and (x - x0)^2)
//         saved a read of x but rounded differently, which a BatchNorm over 3 samples
//         amplifies by invstd into visible differences.
//   fused (batchnorm_leaky_relu_*_v1): v3 with LeakyReLU after the affine map, as
//         BatchNorm + LeakyReLU run in nn.Sequential (cganraw.nn.fused). Forward: one pass
//         writes xhat and the activated y (no separate activation pass, no BatchNorm
//         output kept for it). Backward: the activation gradient is folded into both
//         passes.

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

// ---------------------------------------------------------------- version 3: split reductions

#include "channels.cuh"   // ch_partials, ch_total, ch_apply

struct BnSum {         // pass 1 summand: x
    static const int NV = 1;
    const float* x;
    bool vec;
    __device__ void at(long long i, int, float* out) const { out[0] = x[i]; }
    __device__ void at4(long long i, int, int, float (*out)[1]) const
    {
        const float4 v = *reinterpret_cast<const float4*>(x + i);
        out[0][0] = v.x; out[1][0] = v.y; out[2][0] = v.z; out[3][0] = v.w;
    }
};

struct BnSqDevSum {    // pass 2 summand: (x - mean)^2, the mean from pass 1's partials
    static const int NV = 1;
    const float* x;
    const float* partials;
    int splits, C;
    float count;
    bool vec;
    // the means this thread needs, finished once per channel (group), not once per value
    mutable int c1 = -1, c4 = -1;     // channel of m1; first of the four channels of m4
    mutable float m1, m4[4];
    __device__ float mean_of(int c) const { return ch_total(partials, 0, splits, C, c) / count; }
    __device__ float mean1(int c) const
    {
        if (c1 != c) { m1 = mean_of(c); c1 = c; }
        return m1;
    }
    __device__ void at(long long i, int c, float* out) const
    {
        const float d = x[i] - mean1(c);
        out[0] = d * d;
    }
    __device__ void at4(long long i, int c, int cstep, float (*out)[1]) const
    {
        const float4 v = *reinterpret_cast<const float4*>(x + i);
        const float xs[4] = {v.x, v.y, v.z, v.w};
        if (cstep && c4 != c) {               // rows layout: channels c..c+3
            for (int q = 0; q < 4; ++q) m4[q] = mean_of(c + q);
            c4 = c;
        }
        for (int q = 0; q < 4; ++q) {
            const float d = xs[q] - (cstep ? m4[q] : mean1(c));
            out[q][0] = d * d;
        }
    }
};

// pass 1: x (N, C, HW) -> partials[0] (splits, C) of the (2, splits, C) buffer: sums of x.
// grid (C or ceil(C/128), splits), block CH_THREADS
extern "C" __global__ void batchnorm_forward_stats_v3(float* partials, const float* x, int N, int C, int HW,
                                                      int splits)
{
    BnSum op{x, ch_aligned16(x)};
    ch_partials<1>(op, partials, N, C, HW, splits);
}

// pass 2: partials[1] = sums of (x - mean)^2, each block finishing the mean from partials[0]
extern "C" __global__ void batchnorm_forward_stats_centered_v3(float* partials, const float* x, int N, int C,
                                                               int HW, int splits)
{
    BnSqDevSum op{x, partials, splits, C, (float)(N * HW), ch_aligned16(x)};
    ch_partials<1>(op, partials + (long long)splits * C, N, C, HW, splits);
}

struct BnChannel { float mean, invstd, gamma, beta; };

// normalise + affine (+ LeakyReLU when ACT); training: the statistics from the partials
template <bool ACT>
struct BnApply {
    typedef BnChannel Consts;
    float* y;
    float* xhat;
    const float* x;
    const float* partials;    // training: (2, splits, C); eval: unused
    float* mean;              // training: written; eval: read
    float* var_unbiased;      // training: written
    float* invstd;            // training: written; eval: read
    const float* gamma;
    const float* beta;
    float eps, unbias, slope;
    int training, N, C, HW, splits;
    bool vec;
    float* running_mean = nullptr;   // training with update_running: updated by the writing thread
    float* running_var = nullptr;
    float keep = 0.0f, momentum = 0.0f;
    int update_running = 0;
    __device__ BnChannel consts(int c, bool write) const
    {
        BnChannel k;
        k.gamma = gamma[c];
        k.beta = beta[c];
        if (training) {
            const float count = (float)(N * HW);
            const float var = ch_total(partials, 1, splits, C, c) / count;   // E[(x - mean)^2]
            k.mean = ch_total(partials, 0, splits, C, c) / count;
            k.invstd = 1.0f / sqrtf(var + eps);   // not rsqrtf: the reference divides by a rounded sqrt
            if (write) {
                mean[c] = k.mean;
                invstd[c] = k.invstd;
                const float vu = var * unbias;
                var_unbiased[c] = vu;
                if (update_running) {
                    running_mean[c] = running_mean[c] * keep + momentum * k.mean;
                    running_var[c] = running_var[c] * keep + momentum * vu;
                }
            }
        } else {
            k.mean = mean[c];
            k.invstd = invstd[c];
        }
        return k;
    }
    __device__ float out(float h, const BnChannel& k) const
    {
        const float v = h * k.gamma + k.beta;
        return ACT ? (v > 0.0f ? v : v * slope) : v;
    }
    __device__ void apply(long long i, const BnChannel& k) const
    {
        const float h = (x[i] - k.mean) * k.invstd;
        xhat[i] = h;
        y[i] = out(h, k);
    }
    __device__ void apply4(long long i, const BnChannel& k0, const BnChannel& k1, const BnChannel& k2,
                           const BnChannel& k3) const
    {
        const float4 v = *reinterpret_cast<const float4*>(x + i);
        const float4 h = make_float4((v.x - k0.mean) * k0.invstd, (v.y - k1.mean) * k1.invstd,
                                     (v.z - k2.mean) * k2.invstd, (v.w - k3.mean) * k3.invstd);
        *reinterpret_cast<float4*>(xhat + i) = h;
        *reinterpret_cast<float4*>(y + i) = make_float4(out(h.x, k0), out(h.y, k1), out(h.z, k2), out(h.w, k3));
    }
};

template <bool ACT>
__device__ __forceinline__ void bn_forward_apply(float* y, float* xhat, float* mean, float* var_unbiased,
                                                 float* invstd, const float* x, const float* partials,
                                                 const float* gamma, const float* beta, float eps, float unbias,
                                                 float slope, int training, int N, int C, int HW, int splits)
{
    BnApply<ACT> op{y, xhat, x, partials, mean, var_unbiased, invstd, gamma, beta, eps, unbias, slope,
                    training, N, C, HW, splits,
                    ch_aligned16(y) && ch_aligned16(xhat) && ch_aligned16(x)};
    ch_apply(op, N, C, HW, splits);
}

// x: (N, C, HW) -> y, xhat; training: partials from batchnorm_forward_stats_v3 -> mean,
// var_unbiased, invstd (C,) written; eval: mean, invstd read (partials, var_unbiased unused)
extern "C" __global__ void batchnorm_forward_v3(float* y, float* xhat, float* mean, float* var_unbiased,
                                                float* invstd, const float* x, const float* partials,
                                                const float* gamma, const float* beta, float eps, float unbias,
                                                int training, int N, int C, int HW, int splits)
{
    bn_forward_apply<false>(y, xhat, mean, var_unbiased, invstd, x, partials, gamma, beta, eps, unbias, 0.0f,
                            training, N, C, HW, splits);
}

// as batchnorm_forward_v3, y = leaky_relu(xhat * gamma + beta)
extern "C" __global__ void batchnorm_leaky_relu_forward_v1(float* y, float* xhat, float* mean, float* var_unbiased,
                                                           float* invstd, const float* x, const float* partials,
                                                           const float* gamma, const float* beta, float eps,
                                                           float unbias, float slope, int training,
                                                           int N, int C, int HW, int splits)
{
    bn_forward_apply<true>(y, xhat, mean, var_unbiased, invstd, x, partials, gamma, beta, eps, unbias, slope,
                           training, N, C, HW, splits);
}

// as _v1 (training), and running_mean, running_var (C,) updated in place: r = r keep + momentum s
extern "C" __global__ void batchnorm_leaky_relu_forward_v2(float* y, float* xhat, float* mean, float* var_unbiased,
                                                           float* invstd, const float* x, const float* partials,
                                                           const float* gamma, const float* beta, float eps,
                                                           float unbias, float slope, float* running_mean,
                                                           float* running_var, float keep, float momentum,
                                                           int N, int C, int HW, int splits)
{
    BnApply<true> op{y, xhat, x, partials, mean, var_unbiased, invstd, gamma, beta, eps, unbias, slope,
                     1, N, C, HW, splits, ch_aligned16(y) && ch_aligned16(xhat) && ch_aligned16(x),
                     running_mean, running_var, keep, momentum, 1};
    ch_apply(op, N, C, HW, splits);
}

// ---- backward

// the gradient reaching the affine output: dy, or through LeakyReLU recomputed from xhat
template <bool ACT>
__device__ __forceinline__ float bn_dpre(float d, float h, float g, float b, float slope)
{
    if (!ACT) return d;
    return h * g + b > 0.0f ? d : d * slope;
}

template <bool ACT>
struct BnGradSum {     // summands dpre, dpre * xhat
    static const int NV = 2;
    const float* dy;
    const float* xhat;
    const float* gamma;
    const float* beta;
    float slope;
    bool vec;
    __device__ void at(long long i, int c, float* out) const
    {
        const float h = xhat[i];
        const float d = bn_dpre<ACT>(dy[i], h, ACT ? gamma[c] : 0.0f, ACT ? beta[c] : 0.0f, slope);
        out[0] = d;
        out[1] = d * h;
    }
    __device__ void at4(long long i, int c, int cstep, float (*out)[2]) const
    {
        const float4 d = *reinterpret_cast<const float4*>(dy + i);
        const float4 h = *reinterpret_cast<const float4*>(xhat + i);
        const float dd[4] = {d.x, d.y, d.z, d.w}, hh[4] = {h.x, h.y, h.z, h.w};
        for (int q = 0; q < 4; ++q) {
            const int cq = c + q * cstep;
            const float p = bn_dpre<ACT>(dd[q], hh[q], ACT ? gamma[cq] : 0.0f, ACT ? beta[cq] : 0.0f, slope);
            out[q][0] = p;
            out[q][1] = p * hh[q];
        }
    }
};

struct BnGradChannel { float scale, a, b, gamma, beta; };

template <bool ACT>
struct BnGradApply {
    typedef BnGradChannel Consts;
    float* dx;
    float* dgamma;
    float* dbeta;
    const float* partials;
    const float* dy;
    const float* xhat;
    const float* gamma;
    const float* beta;
    const float* invstd;
    float slope;
    int training, N, C, HW, splits;
    bool vec;
    bool accumulate;     // dgamma, dbeta += the sums (else =)
    __device__ BnGradChannel consts(int c, bool write) const
    {
        const float sum_dy = ch_total(partials, 0, splits, C, c);
        const float sum_dy_xhat = ch_total(partials, 1, splits, C, c);
        if (write && accumulate) {
            dbeta[c] += sum_dy;
            dgamma[c] += sum_dy_xhat;
        } else if (write) {
            dbeta[c] = sum_dy;
            dgamma[c] = sum_dy_xhat;
        }
        BnGradChannel k;
        const float count = (float)(N * HW);
        k.gamma = gamma[c];
        k.beta = ACT ? beta[c] : 0.0f;
        k.scale = k.gamma * invstd[c];
        k.a = training ? sum_dy_xhat / count : 0.0f;   // eval: the statistics are constants
        k.b = training ? sum_dy / count : 0.0f;
        return k;
    }
    __device__ float grad(float d, float h, const BnGradChannel& k) const
    {
        const float p = bn_dpre<ACT>(d, h, k.gamma, k.beta, slope);
        return training ? (p - (h * k.a + k.b)) * k.scale : p * k.scale;
    }
    __device__ void apply(long long i, const BnGradChannel& k) const { dx[i] = grad(dy[i], xhat[i], k); }
    __device__ void apply4(long long i, const BnGradChannel& k0, const BnGradChannel& k1, const BnGradChannel& k2,
                           const BnGradChannel& k3) const
    {
        const float4 d = *reinterpret_cast<const float4*>(dy + i);
        const float4 h = *reinterpret_cast<const float4*>(xhat + i);
        *reinterpret_cast<float4*>(dx + i) =
            make_float4(grad(d.x, h.x, k0), grad(d.y, h.y, k1), grad(d.z, h.z, k2), grad(d.w, h.w, k3));
    }
};

template <bool ACT>
__device__ __forceinline__ void bn_backward_partial(float* partials, const float* dy, const float* xhat,
                                                    const float* gamma, const float* beta, float slope,
                                                    int N, int C, int HW, int splits)
{
    BnGradSum<ACT> op{dy, xhat, gamma, beta, slope, ch_aligned16(dy) && ch_aligned16(xhat)};
    ch_partials<2>(op, partials, N, C, HW, splits);
}

template <bool ACT>
__device__ __forceinline__ void bn_backward_apply(float* dx, float* dgamma, float* dbeta, const float* partials,
                                                  const float* dy, const float* xhat, const float* gamma,
                                                  const float* beta, const float* invstd, float slope,
                                                  int training, int N, int C, int HW, int splits,
                                                  bool accumulate = false)
{
    BnGradApply<ACT> op{dx, dgamma, dbeta, partials, dy, xhat, gamma, beta, invstd, slope, training, N, C, HW,
                        splits, ch_aligned16(dx) && ch_aligned16(dy) && ch_aligned16(xhat), accumulate};
    ch_apply(op, N, C, HW, splits);
}

// dy, xhat: (N, C, HW) -> partials (2, splits, C): sums of dy and dy * xhat
extern "C" __global__ void batchnorm_backward_partial_v3(float* partials, const float* dy, const float* xhat,
                                                         int N, int C, int HW, int splits)
{
    bn_backward_partial<false>(partials, dy, xhat, nullptr, nullptr, 0.0f, N, C, HW, splits);
}

// partials -> dgamma, dbeta (C,) (split 0 writes them); dx (N, C, HW) over each block's slice
extern "C" __global__ void batchnorm_backward_v3(float* dx, float* dgamma, float* dbeta, const float* partials,
                                                 const float* dy, const float* xhat, const float* gamma,
                                                 const float* invstd, int training, int N, int C, int HW,
                                                 int splits)
{
    bn_backward_apply<false>(dx, dgamma, dbeta, partials, dy, xhat, gamma, nullptr, invstd, 0.0f, training,
                             N, C, HW, splits);
}

// as batchnorm_backward_partial_v3 with dpre = dy where xhat * gamma + beta > 0, else slope * dy
extern "C" __global__ void batchnorm_leaky_relu_backward_partial_v1(float* partials, const float* dy,
                                                                    const float* xhat, const float* gamma,
                                                                    const float* beta, float slope,
                                                                    int N, int C, int HW, int splits)
{
    bn_backward_partial<true>(partials, dy, xhat, gamma, beta, slope, N, C, HW, splits);
}

// as batchnorm_backward_v3 with the same dpre
extern "C" __global__ void batchnorm_leaky_relu_backward_v1(float* dx, float* dgamma, float* dbeta,
                                                            const float* partials, const float* dy,
                                                            const float* xhat, const float* gamma, const float* beta,
                                                            const float* invstd, float slope, int training,
                                                            int N, int C, int HW, int splits)
{
    bn_backward_apply<true>(dx, dgamma, dbeta, partials, dy, xhat, gamma, beta, invstd, slope, training,
                            N, C, HW, splits);
}

// as batchnorm_leaky_relu_backward_v1, adding dgamma and dbeta into the arrays given
extern "C" __global__ void batchnorm_leaky_relu_backward_v2(float* dx, float* dgamma, float* dbeta,
                                                            const float* partials, const float* dy,
                                                            const float* xhat, const float* gamma, const float* beta,
                                                            const float* invstd, float slope, int training,
                                                            int N, int C, int HW, int splits)
{
    bn_backward_apply<true>(dx, dgamma, dbeta, partials, dy, xhat, gamma, beta, invstd, slope, training,
                            N, C, HW, splits, true);
}

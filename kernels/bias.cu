// Per-channel bias over axis 1 of (N, C) or (N, C, H, W): the op bias_add of
// cganraw.ops.bias (launchers bias_add_forward_cuda, bias_add_backward_cuda), used by
// Linear, Conv2d and ConvTranspose2d.
//
// Kernels:
//   bias_add_forward_v1/v2    y[n, c, p] += b[c]          in place
//   bias_add_backward_v1/v2   db[c] = sum_{n, p} dy[n, c, p]
//   bias_add_backward_partial_v3 + bias_add_backward_reduce_v3   the same in two passes
//   bias_add_backward_reduce_v4   as reduce_v3, adding the total into db (the bias's .grad)
//                                 instead of writing it: no separate gradient add
//   bias_leaky_relu_forward_v1            y = leaky_relu(y + b[c]), in place (fused)
//   bias_leaky_relu_backward_partial_v1   dpre = y > 0 ? dy : slope * dy (written), and
//                                         its per-channel partial sums; then
//                                         bias_add_backward_reduce_v3 gives db
//   bias_leaky_relu_forward_v2            as v1, reading the pre-activation channel-major
//                                         (C, N*HW), the conv GEMM's output, and writing y
//                                         (N, C, HW): the layout copy folded in
//   bias_leaky_relu_backward_partial_v2   as v1, writing dpre channel-major (C, N*HW),
//                                         the layout the conv's weight and input GEMMs
//                                         take: the layout copy folded in
//   bias_add_backward_v5                  bias_add_backward_partial_v3 and the reduction
//                                         in one launch (channels.cuh ch_finish: the last
//                                         block to finish adds the partials in split order,
//                                         the same bits as reduce_v3/v4), into db or added
//                                         to it; dy may be row-strided (rows ld apart, a
//                                         column slice of a concatenation: no copy)
//   bias_leaky_relu_backward_v3/v4        partial_v1/v2 and the reduction in one launch
//   bias_tanh_forward_v1                  y = tanh(y + b[c]), in place: a layer with bias +
//                                         Tanh (G's last Conv2d) in one pass, as
//                                         bias_leaky_relu_forward_v1 (ch_apply)
//   bias_tanh_backward_v1                 dpre = dy (1 - y^2) (written) and db = its channel
//                                         sums in one launch, as bias_leaky_relu_backward_v3:
//                                         tanh_backward and the bias reduction (two launches)
// Shapes: y, dy, dpre (N, C, HW) contiguous, HW = H*W (1 for a Linear layer's (N, C));
// b, db (C,); partials (splits, C); counter: one zeroed unsigned, left zeroed.
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
//   bias_add_backward_v3  adds a (channels x splits) grid (channels.cuh): each block sums
//                         one slice of a channel (or of 128 channels when HW = 1, rows
//                         split across warps) with float4 loads where aligned, writes a
//                         partial sum, and bias_add_backward_reduce_v3 adds the splits'
//                         partials in order: no float atomics, the same bits every run.
//                         v2 has one block per channel: 128 blocks for 132 SMs with one
//                         or two loads in flight per thread; v3 has C x splits blocks
//                         (the launcher aims at 528) and 4 values per load.
//   bias_leaky_relu_*_v1  the fusion of bias_add and leaky_relu (ops.activation) that
//                         Linear/Conv2d/ConvTranspose2d + LeakyReLU run as (nn.fused):
//                         forward one read-modify-write of y instead of two; backward the
//                         activation gradient folded into the bias reduction (dy and y read
//                         once, dpre written once, instead of a leaky_relu_backward pass
//                         and a bias reduction pass over dpre). The mask comes from the
//                         output: y > 0 exactly when y + b > 0 for slope >= 0 (the op
//                         refuses a negative slope), so the forward keeps no extra array.

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

// ---------------------------------------------------------------- version 3: split reduction

#include "channels.cuh"   // ch_partials, ch_total, ch_apply

struct BiasGradSum {   // summand: dy
    static const int NV = 1;
    const float* dy;
    bool vec;
    __device__ void at(long long i, int, float* out) const { out[0] = dy[i]; }
    __device__ void at4(long long i, int, int, float (*out)[1]) const
    {
        const float4 v = *reinterpret_cast<const float4*>(dy + i);
        out[0][0] = v.x; out[1][0] = v.y; out[2][0] = v.z; out[3][0] = v.w;
    }
};

// dy: (N, C, HW) -> partials: (splits, C); grid (C or ceil(C/128), splits), block CH_THREADS
extern "C" __global__ void bias_add_backward_partial_v3(float* partials, const float* dy,
                                                        int N, int C, int HW, int splits)
{
    BiasGradSum op{dy, ch_aligned16(dy)};
    ch_partials<1>(op, partials, N, C, HW, splits);
}

// partials: (splits, C) -> db: (C,), one thread per channel
extern "C" __global__ void bias_add_backward_reduce_v3(float* db, const float* partials, int C, int splits)
{
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x)
        db[c] = ch_total(partials, 0, splits, C, c);
}

// partials: (splits, C) -> db: (C,) += their total, one thread per channel
extern "C" __global__ void bias_add_backward_reduce_v4(float* db, const float* partials, int C, int splits)
{
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x)
        db[c] += ch_total(partials, 0, splits, C, c);
}

struct BiasGradSumLd {   // summand: dy, its rows (of C*HW values) ld apart
    static const int NV = 1;
    const float* dy;
    long long row, ld;       // C*HW and the row stride
    bool vec;                // ld == row and dy 16-byte aligned
    __device__ long long at_row(long long i) const { return (i / row) * ld + i % row; }
    __device__ void at(long long i, int, float* out) const { out[0] = dy[at_row(i)]; }
    __device__ void at4(long long i, int, int, float (*out)[1]) const
    {
        const float4 v = *reinterpret_cast<const float4*>(dy + i);
        out[0][0] = v.x; out[1][0] = v.y; out[2][0] = v.z; out[3][0] = v.w;
    }
};

// dy: (N, C, HW), rows ld apart -> db: (C,) (= or +=, accumulate), in one launch;
// partials: (splits, C) scratch; grid (C or ceil(C/128), splits), block CH_THREADS
extern "C" __global__ void bias_add_backward_v5(float* db, float* partials, unsigned int* counter, const float* dy,
                                                int N, int C, int HW, int ld, int splits, int accumulate)
{
    const long long row = (long long)C * HW;
    BiasGradSumLd op{dy, row, (long long)ld, ld == row && ch_aligned16(dy)};
    ch_partials<1>(op, partials, N, C, HW, splits);
    ch_finish<1>(partials, counter, db, splits, C, accumulate != 0);
}

// ---------------------------------------------------------------- fused bias + LeakyReLU

struct BiasLeaky {     // y = leaky(y + b[c]) in place
    typedef float Consts;
    float* y;
    const float* b;
    float slope;
    bool vec;
    __device__ float consts(int c, bool) const { return b[c]; }
    __device__ float f(float v, float bias) const
    {
        v += bias;
        return v > 0.0f ? v : v * slope;
    }
    __device__ void apply(long long i, float k) const { y[i] = f(y[i], k); }
    __device__ void apply4(long long i, float k0, float k1, float k2, float k3) const
    {
        float4 v = *reinterpret_cast<float4*>(y + i);
        v.x = f(v.x, k0); v.y = f(v.y, k1); v.z = f(v.z, k2); v.w = f(v.w, k3);
        *reinterpret_cast<float4*>(y + i) = v;
    }
};

// y: (N, C, HW) in place, b: (C,); grid (C or ceil(C/128), splits), block CH_THREADS
extern "C" __global__ void bias_leaky_relu_forward_v1(float* y, const float* b, float slope,
                                                      int N, int C, int HW, int splits)
{
    BiasLeaky op{y, b, slope, ch_aligned16(y)};
    ch_apply(op, N, C, HW, splits);
}

struct BiasLeakyGradSum {   // dpre = y > 0 ? dy : slope * dy, written; summand: dpre
    static const int NV = 1;
    float* dpre;
    const float* dy;
    const float* y;
    float slope;
    bool vec;
    __device__ float g(float d, float out) const { return out > 0.0f ? d : d * slope; }
    __device__ void at(long long i, int, float* out) const
    {
        const float d = g(dy[i], y[i]);
        dpre[i] = d;
        out[0] = d;
    }
    __device__ void at4(long long i, int, int, float (*out)[1]) const
    {
        const float4 d = *reinterpret_cast<const float4*>(dy + i);
        const float4 o = *reinterpret_cast<const float4*>(y + i);
        const float4 r = make_float4(g(d.x, o.x), g(d.y, o.y), g(d.z, o.z), g(d.w, o.w));
        *reinterpret_cast<float4*>(dpre + i) = r;
        out[0][0] = r.x; out[1][0] = r.y; out[2][0] = r.z; out[3][0] = r.w;
    }
};

// dy, y: (N, C, HW) -> dpre: (N, C, HW), partials: (splits, C)
extern "C" __global__ void bias_leaky_relu_backward_partial_v1(float* dpre, float* partials, const float* dy,
                                                               const float* y, float slope,
                                                               int N, int C, int HW, int splits)
{
    BiasLeakyGradSum op{dpre, dy, y, slope, ch_aligned16(dpre) && ch_aligned16(dy) && ch_aligned16(y)};
    ch_partials<1>(op, partials, N, C, HW, splits);
}

// ---------------------------------------------------------------- fused, channel-major side (v2)

// offset in a channel-major (C, N*HW) array of element i of an (N, C, HW) array, channel c
__device__ __forceinline__ long long cm_offset(long long i, int c, int N, int C, int HW)
{
    const long long n = i / ((long long)C * HW);
    const long long p = i % HW;
    return ((long long)c * N + n) * HW + p;
}

// y_cm: (C, N*HW) -> y: (N, C, HW) = leaky(y_cm + b[c]); grid-strided over y
extern "C" __global__ void bias_leaky_relu_forward_v2(float* y, const float* y_cm, const float* b, float slope,
                                                      int N, int C, int HW, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int c = (i / HW) % C;
        float v = y_cm[cm_offset(i, c, N, C, HW)] + b[c];
        y[i] = v > 0.0f ? v : v * slope;
    }
}

struct BiasLeakyGradSumCM {   // as BiasLeakyGradSum, dpre stored channel-major
    static const int NV = 1;
    float* dpre_cm;
    const float* dy;
    const float* y;
    float slope;
    int N, C, HW;
    bool vec;
    __device__ float g(float d, float out) const { return out > 0.0f ? d : d * slope; }
    __device__ void at(long long i, int c, float* out) const
    {
        const float d = g(dy[i], y[i]);
        dpre_cm[cm_offset(i, c, N, C, HW)] = d;
        out[0] = d;
    }
    // elements i..i+3, channels c + k*cstep (cstep 0: four pixels of one channel)
    __device__ void at4(long long i, int c, int cstep, float (*out)[1]) const
    {
        const float4 d = *reinterpret_cast<const float4*>(dy + i);
        const float4 o = *reinterpret_cast<const float4*>(y + i);
        const float r[4] = {g(d.x, o.x), g(d.y, o.y), g(d.z, o.z), g(d.w, o.w)};
        for (int k = 0; k < 4; ++k) {
            dpre_cm[cm_offset(i + k, c + k * cstep, N, C, HW)] = r[k];
            out[k][0] = r[k];
        }
    }
};

// dy, y: (N, C, HW) -> dpre_cm: (C, N*HW), partials: (splits, C)
extern "C" __global__ void bias_leaky_relu_backward_partial_v2(float* dpre_cm, float* partials, const float* dy,
                                                               const float* y, float slope,
                                                               int N, int C, int HW, int splits)
{
    BiasLeakyGradSumCM op{dpre_cm, dy, y, slope, N, C, HW, ch_aligned16(dy) && ch_aligned16(y)};
    ch_partials<1>(op, partials, N, C, HW, splits);
}

// ---------------------------------------------------------------- fused, one launch (v3, v4)

// as partial_v1, then db (C,) (= or +=, accumulate) by the last block (need_db 0: no db)
extern "C" __global__ void bias_leaky_relu_backward_v3(float* dpre, float* db, float* partials, unsigned int* counter,
                                                       const float* dy, const float* y, float slope,
                                                       int N, int C, int HW, int splits, int accumulate)
{
    BiasLeakyGradSum op{dpre, dy, y, slope, ch_aligned16(dpre) && ch_aligned16(dy) && ch_aligned16(y)};
    ch_partials<1>(op, partials, N, C, HW, splits);
    ch_finish<1>(partials, counter, db, splits, C, accumulate != 0);
}

// as partial_v2 (dpre channel-major), then db as v3
extern "C" __global__ void bias_leaky_relu_backward_v4(float* dpre_cm, float* db, float* partials,
                                                       unsigned int* counter, const float* dy, const float* y,
                                                       float slope, int N, int C, int HW, int splits, int accumulate)
{
    BiasLeakyGradSumCM op{dpre_cm, dy, y, slope, N, C, HW, ch_aligned16(dy) && ch_aligned16(y)};
    ch_partials<1>(op, partials, N, C, HW, splits);
    ch_finish<1>(partials, counter, db, splits, C, accumulate != 0);
}

// ---------------------------------------------------------------- fused bias + Tanh

struct BiasTanh {      // y = tanh(y + b[c]) in place
    typedef float Consts;
    float* y;
    const float* b;
    bool vec;
    __device__ float consts(int c, bool) const { return b[c]; }
    __device__ float f(float v, float bias) const { return tanhf(v + bias); }
    __device__ void apply(long long i, float k) const { y[i] = f(y[i], k); }
    __device__ void apply4(long long i, float k0, float k1, float k2, float k3) const
    {
        float4 v = *reinterpret_cast<float4*>(y + i);
        v.x = f(v.x, k0); v.y = f(v.y, k1); v.z = f(v.z, k2); v.w = f(v.w, k3);
        *reinterpret_cast<float4*>(y + i) = v;
    }
};

// y: (N, C, HW) in place, b: (C,); grid (C or ceil(C/128), splits), block CH_THREADS
extern "C" __global__ void bias_tanh_forward_v1(float* y, const float* b, int N, int C, int HW, int splits)
{
    BiasTanh op{y, b, ch_aligned16(y)};
    ch_apply(op, N, C, HW, splits);
}

struct BiasTanhGradSum {   // dpre = dy (1 - y^2), written; summand: dpre
    static const int NV = 1;
    float* dpre;
    const float* dy;
    const float* y;
    bool vec;
    __device__ float g(float d, float out) const { return d * (1.0f - out * out); }
    __device__ void at(long long i, int, float* out) const
    {
        const float d = g(dy[i], y[i]);
        dpre[i] = d;
        out[0] = d;
    }
    __device__ void at4(long long i, int, int, float (*out)[1]) const
    {
        const float4 d = *reinterpret_cast<const float4*>(dy + i);
        const float4 o = *reinterpret_cast<const float4*>(y + i);
        const float4 r = make_float4(g(d.x, o.x), g(d.y, o.y), g(d.z, o.z), g(d.w, o.w));
        *reinterpret_cast<float4*>(dpre + i) = r;
        out[0][0] = r.x; out[1][0] = r.y; out[2][0] = r.z; out[3][0] = r.w;
    }
};

// dy, y: (N, C, HW) -> dpre (N, C, HW), db (C,) written or (accumulate) added to;
// partials (splits, C) scratch; counter: a zeroed unsigned, left zeroed
extern "C" __global__ void bias_tanh_backward_v1(float* dpre, float* db, float* partials, unsigned int* counter,
                                                 const float* dy, const float* y, int N, int C, int HW, int splits,
                                                 int accumulate)
{
    BiasTanhGradSum op{dpre, dy, y, ch_aligned16(dpre) && ch_aligned16(dy) && ch_aligned16(y)};
    ch_partials<1>(op, partials, N, C, HW, splits);
    ch_finish<1>(partials, counter, db, splits, C, accumulate != 0);
}

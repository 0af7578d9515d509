// Spectral normalisation of a weight (Miyato et al. 2018), as torch.nn.utils.spectral_norm,
// for cganraw.ops.spectral_norm. The weight is read as the matrix Wm (H, Wd) whose rows are
// the slices along axis `dim`: a contiguous weight of shape (outer..., H, inner...) has
// Wm[i, j] at ((o * H + i) * inner + r) with j = o * inner + r, so no permuted copy is made
// (dim 0: outer = 1, the plain reshape; ConvTranspose2d's dim 1: outer = in_channels).
//
// Forward (the launcher sequences the kernels; training mode runs the power iteration):
//   v = normalize(Wm^T u), u = normalize(Wm v)      n_power_iterations times
//   sigma = u . (Wm v);   W_sn = W / sigma
// Backward, with u and v held fixed as torch does (the gradient flows through sigma):
//   dW = dW_sn / sigma - (<dW_sn, W> / sigma^2) u v^T
//
// Kernels:
//   spectral_norm_forward_matvec_t_v1   out (Wd) = Wm^T u: one thread per column j, summing
//                                       over i (neighbouring threads read neighbouring
//                                       columns: coalesced)
//   spectral_norm_forward_matvec_v1     out (H) = Wm v: one thread per row i, summing over j
//   spectral_norm_forward_matvec_v2     as v1, one block per row (block-striding over rows):
//                                       the threads sweep the row (coalesced), a block
//                                       reduction (reduce.cuh)
//   spectral_norm_forward_normalize_v1  one block, in place: x /= max(||x||, eps) (torch's
//                                       F.normalize)
//   spectral_norm_dot_v1                one block: out[0] = sum a * b (the forward's sigma,
//                                       the backward's <dW_sn, W>)
//   spectral_norm_forward_v1            one thread per weight element: W_sn = W / sigma[0]
//   spectral_norm_forward_v2            as v1 in a bounded grid that grid-strides
//   spectral_norm_backward_v1           one thread per weight element: dW = dW_sn / sigma
//                                       - (gw / (sigma sigma)) (u[i] v[j]), gw = <dW_sn, W>
//   spectral_norm_backward_v2           as v1 in a bounded grid that grid-strides
//
// Fused (the launcher's default: two launches a forward, two a backward):
//   spectral_norm_power_v1              one block: the whole power iteration and sigma.
//                                       u_out, v_out = u, v; `iterations` times
//                                       v_out = normalize(Wm^T u_out) (a thread per column),
//                                       rows = Wm v_out (a warp per row), u_out = normalize(rows);
//                                       (no iteration: rows = Wm v_out); sigma = u_out . rows.
//                                       With iterations > 0 and write_back it also writes u_out,
//                                       v_out into u, v (the module's buffers). rows: H floats of
//                                       scratch. The same arithmetic as the unfused kernels,
//                                       sums in another order.
//   spectral_norm_forward_v3            as v2, and zeroes `zero` (the normalised weight's
//                                       gradient accumulator, the weight's size), into
//                                       which the layer's GEMM then adds (beta = 1)
//   spectral_norm_backward_v3           as v2, adding into dW (the raw weight's .grad)
//                                       instead of writing it
//
// Every layer of a model in one launch each (the _multi kernels, at the end): see there.
//
// sigma and gw stay on the device (one-float arrays): no host round trip between kernels.
// blockDim.x of the block kernels: a multiple of 32, at most 1024. total: the weight's
// element count, below 2^31 minus a grid (checked by the launcher).

#include "reduce.cuh"   // block_sum

__device__ __forceinline__ long long matrix_at(int i, int j, int H, int inner)
{
    int o = j / inner;
    return ((long long)o * H + i) * inner + (j - o * inner);
}

// ---------------------------------------------------------------- power iteration

extern "C" __global__ void spectral_norm_forward_matvec_t_v1(float* out, const float* W, const float* u,
                                                     int outer, int H, int inner)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= outer * inner) return;
    float acc = 0.0f;
    for (int i = 0; i < H; i++) acc += W[matrix_at(i, j, H, inner)] * u[i];
    out[j] = acc;
}

extern "C" __global__ void spectral_norm_forward_matvec_v1(float* out, const float* W, const float* v,
                                                   int outer, int H, int inner)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= H) return;
    float acc = 0.0f;
    int cols = outer * inner;
    for (int j = 0; j < cols; j++) acc += W[matrix_at(i, j, H, inner)] * v[j];
    out[i] = acc;
}

extern "C" __global__ void spectral_norm_forward_matvec_v2(float* out, const float* W, const float* v,
                                                   int outer, int H, int inner)
{
    __shared__ float partials[32];
    int cols = outer * inner;
    for (int i = blockIdx.x; i < H; i += gridDim.x) {   // uniform in the block: barriers are safe
        float acc = 0.0f;
        for (int j = threadIdx.x; j < cols; j += blockDim.x) acc += W[matrix_at(i, j, H, inner)] * v[j];
        acc = block_sum(acc, partials);
        if (threadIdx.x == 0) out[i] = acc;
    }
}

// launched as a single block
extern "C" __global__ void spectral_norm_forward_normalize_v1(float* x, int n, float eps)
{
    __shared__ float partials[32];
    __shared__ float denom;
    float sq = 0.0f;
    for (int k = threadIdx.x; k < n; k += blockDim.x) sq += x[k] * x[k];
    sq = block_sum(sq, partials);
    if (threadIdx.x == 0) {
        float norm = sqrtf(sq);
        denom = norm > eps ? norm : eps;
    }
    __syncthreads();
    float d = denom;
    for (int k = threadIdx.x; k < n; k += blockDim.x) x[k] = x[k] / d;
}

// launched as a single block
extern "C" __global__ void spectral_norm_dot_v1(float* out, const float* a, const float* b, int n)
{
    __shared__ float partials[32];
    float acc = 0.0f;
    for (int k = threadIdx.x; k < n; k += blockDim.x) acc += a[k] * b[k];
    acc = block_sum(acc, partials);
    if (threadIdx.x == 0) out[0] = acc;
}

// ---------------------------------------------------------------- W / sigma and its gradient

extern "C" __global__ void spectral_norm_forward_v1(float* w_sn, const float* W, const float* sigma, int total)
{
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < total) w_sn[k] = W[k] / sigma[0];
}

extern "C" __global__ void spectral_norm_forward_v2(float* w_sn, const float* W, const float* sigma, int total)
{
    float s = sigma[0];
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x)
        w_sn[k] = W[k] / s;
}

// element k of the weight as (i, j) of Wm: i = (k / inner) % H, j = (k / (H inner)) inner + k % inner
__device__ __forceinline__ float weight_grad(const float* dw_sn, const float* u, const float* v, float s,
                                             float coef, int k, int H, int inner)
{
    int r = k % inner, i = (k / inner) % H, o = k / (inner * H);
    return dw_sn[k] / s - coef * (u[i] * v[o * inner + r]);
}

extern "C" __global__ void spectral_norm_backward_v1(float* dW, const float* dw_sn, const float* u, const float* v,
                                                     const float* sigma, const float* gw, int H, int inner, int total)
{
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= total) return;
    float s = sigma[0];
    dW[k] = weight_grad(dw_sn, u, v, s, gw[0] / (s * s), k, H, inner);
}

extern "C" __global__ void spectral_norm_backward_v2(float* dW, const float* dw_sn, const float* u, const float* v,
                                                     const float* sigma, const float* gw, int H, int inner, int total)
{
    float s = sigma[0];
    float coef = gw[0] / (s * s);
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x)
        dW[k] = weight_grad(dw_sn, u, v, s, coef, k, H, inner);
}

// ---------------------------------------------------------------- fused (launched as one block)

// rows = Wm x: a warp per row, lanes over the columns. Ends with a barrier.
__device__ void rows_times(float* rows, const float* W, const float* x, int H, int cols, int inner)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int i = warp; i < H; i += nwarps) {       // uniform in the warp: the shuffles are safe
        float acc = 0.0f;
        for (int j = lane; j < cols; j += 32) acc += W[matrix_at(i, j, H, inner)] * x[j];
        acc = warp_sum(acc);
        if (lane == 0) rows[i] = acc;
    }
    __syncthreads();
}

// out = x / max(||x||, eps), out and x may be the same array. Ends with a barrier.
__device__ void normalize_into(float* out, const float* x, int n, float eps, float* partials, float* denom)
{
    float sq = 0.0f;
    for (int k = threadIdx.x; k < n; k += blockDim.x) sq += x[k] * x[k];
    sq = block_sum(sq, partials);
    if (threadIdx.x == 0) {
        float norm = sqrtf(sq);
        *denom = norm > eps ? norm : eps;
    }
    __syncthreads();
    float d = *denom;
    for (int k = threadIdx.x; k < n; k += blockDim.x) out[k] = x[k] / d;
    __syncthreads();
}

// the body of spectral_norm_power_v1, for one weight, run by the whole block
__device__ void power_block(float* u, float* v, float* u_out, float* v_out, float* rows, float* sigma,
                            const float* W, int outer, int H, int inner, int iterations, int write_back, float eps,
                            float* partials, float* denom_p)
{
    float& denom = *denom_p;
    int cols = outer * inner;
    for (int k = threadIdx.x; k < H; k += blockDim.x) u_out[k] = u[k];
    for (int k = threadIdx.x; k < cols; k += blockDim.x) v_out[k] = v[k];
    __syncthreads();
    for (int it = 0; it < iterations; it++) {
        // v_out = normalize(Wm^T u_out): a thread per column, the rows in order
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            float acc = 0.0f;
            for (int i = 0; i < H; i++) acc += W[matrix_at(i, j, H, inner)] * u_out[i];
            v_out[j] = acc;
        }
        __syncthreads();
        normalize_into(v_out, v_out, cols, eps, partials, &denom);
        rows_times(rows, W, v_out, H, cols, inner);
        normalize_into(u_out, rows, H, eps, partials, &denom);
    }
    if (iterations == 0) rows_times(rows, W, v_out, H, cols, inner);
    // rows = Wm v_out here either way: sigma = u . (Wm v)
    float acc = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) acc += u_out[i] * rows[i];
    acc = block_sum(acc, partials);
    if (threadIdx.x == 0) sigma[0] = acc;
    if (iterations > 0 && write_back) {
        for (int k = threadIdx.x; k < H; k += blockDim.x) u[k] = u_out[k];
        for (int k = threadIdx.x; k < cols; k += blockDim.x) v[k] = v_out[k];
    }
}

extern "C" __global__ void spectral_norm_power_v1(float* u, float* v, float* u_out, float* v_out, float* rows,
                                                  float* sigma, const float* W, int outer, int H, int inner,
                                                  int iterations, int write_back, float eps)
{
    __shared__ float partials[32];
    __shared__ float denom;
    power_block(u, v, u_out, v_out, rows, sigma, W, outer, H, inner, iterations, write_back, eps, partials, &denom);
}

extern "C" __global__ void spectral_norm_forward_v3(float* w_sn, float* zero, const float* W, const float* sigma,
                                                    int total)
{
    float s = sigma[0];
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x) {
        w_sn[k] = W[k] / s;
        zero[k] = 0.0f;
    }
}

extern "C" __global__ void spectral_norm_backward_v3(float* dW, const float* dw_sn, const float* u, const float* v,
                                                     const float* sigma, const float* gw, int H, int inner, int total)
{
    float s = sigma[0];
    float coef = gw[0] / (s * s);
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x)
        dW[k] += weight_grad(dw_sn, u, v, s, coef, k, H, inner);
}

// ---------------------------------------------------------------- every layer of a model at once
// A model's spectrally normalised weights, normalised together (cganraw.nn.utils
// SpectralNormGroup): the raw weights are views into one flat array (the optimiser's packed
// parameters) and so are their gradients (at the same offsets), u and v into one flat array
// (u at uv_off, v right after), the normalised weights and their gradient accumulators into
// two more (at wsn_off, layer after layer). A table of ints, SN_COLS per layer:
//   w_off outer H inner uv_off rows_off iterations wsn_off
//   spectral_norm_power_multi_v1     a block per layer (block-striding): power_block, the
//                                    fused power iteration and sigma of spectral_norm_power_v1
//   spectral_norm_forward_multi_v1   every layer's W / sigma and zeroed accumulator, one grid
//   spectral_norm_dot_multi_v1       a block per layer: gw[l] = <dW_sn, W> (as spectral_norm_dot_v1)
//   spectral_norm_backward_multi_v1  every layer's dW += dW_sn / sigma - (gw / sigma^2) u v^T
// Six launches a step for D's three layers where there were eighteen. An element finds its
// layer by a scan of the (few) layers' wsn_off, in order.
#define SN_COLS 8

__device__ __forceinline__ int sn_layer_of(long long k, const int* table, int layers)
{
    int l = 0;
    while (l + 1 < layers && k >= table[(l + 1) * SN_COLS + 7]) ++l;
    return l;
}

extern "C" __global__ void spectral_norm_power_multi_v1(float* uv, float* uv_out, float* rows, float* sigma,
                                                        const float* W, const int* table, int layers,
                                                        int write_back, float eps)
{
    __shared__ float partials[32];
    __shared__ float denom;
    for (int l = blockIdx.x; l < layers; l += gridDim.x) {   // uniform in the block: barriers are safe
        const int* t = table + l * SN_COLS;
        const int H = t[2];
        power_block(uv + t[4], uv + t[4] + H, uv_out + t[4], uv_out + t[4] + H, rows + t[5], sigma + l, W + t[0],
                    t[1], H, t[3], t[6], write_back, eps, partials, &denom);
        __syncthreads();
    }
}

// w_sn, zero: (total,) the layers' normalised weights and accumulators, back to back
extern "C" __global__ void spectral_norm_forward_multi_v1(float* w_sn, float* zero, const float* W, const float* sigma,
                                                          const int* table, int layers, int total)
{
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x) {
        const int l = sn_layer_of(k, table, layers);
        const int* t = table + l * SN_COLS;
        w_sn[k] = W[t[0] + (k - t[7])] / sigma[l];
        zero[k] = 0.0f;
    }
}

extern "C" __global__ void spectral_norm_dot_multi_v1(float* gw, const float* dw_sn, const float* W, const int* table,
                                                      int layers)
{
    __shared__ float partials[32];
    for (int l = blockIdx.x; l < layers; l += gridDim.x) {
        const int* t = table + l * SN_COLS;
        const int n = t[1] * t[2] * t[3];
        float acc = 0.0f;
        for (int k = threadIdx.x; k < n; k += blockDim.x) acc += dw_sn[t[7] + k] * W[t[0] + k];
        acc = block_sum(acc, partials);
        if (threadIdx.x == 0) gw[l] = acc;
    }
}

// dW: the raw weights' flat gradient (W's layout), added into; u, v from uv_out
extern "C" __global__ void spectral_norm_backward_multi_v1(float* dW, const float* dw_sn, const float* uv,
                                                           const float* sigma, const float* gw, const int* table,
                                                           int layers, int total)
{
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x) {
        const int l = sn_layer_of(k, table, layers);
        const int* t = table + l * SN_COLS;
        const float s = sigma[l];
        const float coef = gw[l] / (s * s);
        const int local = k - t[7];
        dW[t[0] + local] += weight_grad(dw_sn + t[7], uv + t[4], uv + t[4] + t[2], s, coef, local, t[2], t[3]);
    }
}

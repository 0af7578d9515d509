// Fused, bias-corrected Adam step in place: the op adam_update of cganraw.ops.adam
// (launcher adam_update_cuda), PyTorch's arithmetic:
//
//   g = g + weight_decay * p                  (only when weight_decay != 0)
//   m = beta1 m + (1 - beta1) g
//   v = beta2 v + (1 - beta2) g^2
//   p = p - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)
//
// with step_size = lr / (1 - beta1^t) and bias_correction2_sqrt = sqrt(1 - beta2^t)
// computed on the host in double and rounded to float, as the reference does; so are
// 1 - beta1 and 1 - beta2. Each operation is the reference's, in its order (the emulator
// does not contract multiply-adds, so it matches NumPy bit for bit; nvcc fuses them on a
// GPU, a difference of an ulp or so).
//
// Kernels:
//   adam_update_v1  naive: one element per thread.
//   adam_update_v2  adds a grid-stride loop over a bounded grid.
// One pass reads p, g, m, v and writes p, m, v: 7 floats of traffic per parameter, where
// the unfused NumPy chain makes a temporary per operation.
//
// p, m, v: (n,) updated in place; g: (n,) read only. All contiguous float32.

__device__ __forceinline__ void adam_element(float* p, float* m, float* v, const float* g, int i,
                                             float beta1, float beta2, float one_minus_beta1,
                                             float one_minus_beta2, float step_size,
                                             float bias_correction2_sqrt, float eps, float weight_decay)
{
    float gi = g[i];
    float pi = p[i];
    if (weight_decay != 0.0f) gi = gi + weight_decay * pi;
    float mi = m[i] * beta1 + one_minus_beta1 * gi;
    float vi = v[i] * beta2 + one_minus_beta2 * (gi * gi);
    float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * (mi / denom);
}

extern "C" __global__ void adam_update_v1(float* p, float* m, float* v, const float* g,
                                               float beta1, float beta2, float one_minus_beta1,
                                               float one_minus_beta2, float step_size,
                                               float bias_correction2_sqrt, float eps, float weight_decay, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        adam_element(p, m, v, g, i, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size,
                     bias_correction2_sqrt, eps, weight_decay);
}

extern "C" __global__ void adam_update_v2(float* p, float* m, float* v, const float* g,
                                               float beta1, float beta2, float one_minus_beta1,
                                               float one_minus_beta2, float step_size,
                                               float bias_correction2_sqrt, float eps, float weight_decay, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        adam_element(p, m, v, g, i, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size,
                     bias_correction2_sqrt, eps, weight_decay);
}

// The arithmetic of the R1 penalty (Mescheder et al. 2018) between D's passes: the op r1 of
// cganraw.ops.r1 (launchers r1_scalars_cuda, r1_perturb_cuda), for cganraw.step.r1_penalty.
// With g (N, ...) the gradient of the sum of D's logits at the real images x (N, ...):
//
//   penalty = gamma / (2N) * sum g^2
//   e = step / sqrt(max(mean g^2, FLT_MIN))     (e g moves the pixels by `step`, rms)
//   c = gamma / (2N) / e                        (the central difference's weight)
//   images = [x + e g | x - e g] (2N, ...),   dlogits = [c | -c] (2N, 1)
//
// Kernels (one version each):
//   r1_scalars_v1   one block: sums g^2 (reduce.cuh, in float, fixed order), writes
//                   out[0] = penalty, out[1] = e, out[2] = c
//   r1_perturb_v1   grid-stride over the N * P pixels: both perturbed halves of the images;
//                   over the N rows: both halves of dlogits
// The scalars stay on the device: the host never reads them.

#include "reduce.cuh"

// FLT_MIN (<cfloat> is not on NVRTC's path): the smallest normal float, numpy's finfo.tiny
#define R1_MIN_NORMAL 1.17549435e-38f

// g: size floats (n rows) -> out: (3,) = penalty, e, c
extern "C" __global__ void r1_scalars_v1(float* out, const float* g, long long size, int n, float gamma,
                                         float step)
{
    __shared__ float partials[32];
    float sq = 0.0f;
    for (long long i = threadIdx.x; i < size; i += blockDim.x) sq += g[i] * g[i];
    sq = block_sum(sq, partials);
    if (threadIdx.x == 0) {
        float e = step / sqrtf(fmaxf(sq / (float)size, R1_MIN_NORMAL));
        out[0] = sq * (0.5f * gamma / (float)n);
        out[1] = e;
        out[2] = (gamma / (2.0f * (float)n)) / e;
    }
}

// x, g: size floats (n rows), scalars: out of r1_scalars_v1 -> images: 2 * size floats,
// dlogits: (2n, 1)
extern "C" __global__ void r1_perturb_v1(float* images, float* dlogits, const float* x, const float* g,
                                         const float* scalars, long long size, int n)
{
    const float e = scalars[1], c = scalars[2];
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    for (long long i = first; i < size; i += stride) {
        float shift = __fmul_rn(e, g[i]);       // rounded as the reference's e * g: no FMA
        images[i] = x[i] + shift;
        images[size + i] = x[i] - shift;
    }
    for (long long i = first; i < n; i += stride) {
        dlogits[i] = c;
        dlogits[n + i] = -c;
    }
}

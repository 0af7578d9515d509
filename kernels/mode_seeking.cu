// The mode-seeking term of MSGAN (Mao et al. 2019): the op mode_seeking of
// cganraw.ops.mode_seeking (launchers mode_seeking_forward_cuda, mode_seeking_backward_cuda),
// the loss cganraw.losses.mode_seeking. Rows i and M + i of a batch of 2M share a label:
//
//   ratio = mean |x_a - x_b| / mean |z_a - z_b|,   loss = 1 / (ratio + eps)
//   dloss/dx_a = -loss^2 / (z_dist * M * P) * sign(x_a - x_b),   dloss/dx_b = its negative
//
// with x (2M, P) the images, z (2M, L) the noise (no gradient), z_dist = mean |z_a - z_b|.
//
// Kernels (one version each):
//   mode_seeking_forward_v1   one block: sums |x_a - x_b| and |z_a - z_b| (reduce.cuh, in
//                             float, fixed order), writes out[0] = loss and out[1] = the
//                             gradient's scale -loss^2 / (z_dist * M * P)
//   mode_seeking_backward_v1  grid-stride over M * P: dx[i] = scale * sign(x_a - x_b) for the
//                             first half, its negative for the second
// The scalars stay on the device: the host never reads them.

#include "reduce.cuh"

__device__ __forceinline__ float sign_of(float v)
{
    return (float)((v > 0.0f) - (v < 0.0f));
}

// x: (2m, p), z: (2m, l) -> out: (2,) = loss, gradient scale
extern "C" __global__ void mode_seeking_forward_v1(float* out, const float* x, const float* z, int m, int p, int l,
                                                   float eps)
{
    __shared__ float partials[32];
    long long nx = (long long)m * p, nz = (long long)m * l;
    float sx = 0.0f, sz = 0.0f;
    for (long long i = threadIdx.x; i < nx; i += blockDim.x) sx += fabsf(x[i] - x[nx + i]);
    for (long long i = threadIdx.x; i < nz; i += blockDim.x) sz += fabsf(z[i] - z[nz + i]);
    sx = block_sum(sx, partials);
    sz = block_sum(sz, partials);
    if (threadIdx.x == 0) {
        float x_dist = sx / (float)nx, z_dist = sz / (float)nz;
        float loss = 1.0f / (x_dist / z_dist + eps);
        out[0] = loss;
        out[1] = -loss * loss / (z_dist * (float)nx);
    }
}

// x: (2m, p), scale: &out[1] of the forward -> dx: (2m, p)
extern "C" __global__ void mode_seeking_backward_v1(float* dx, const float* x, const float* scale, int m, int p)
{
    long long nx = (long long)m * p;
    float s = scale[0];
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nx; i += (long long)gridDim.x * blockDim.x) {
        float d = sign_of(x[i] - x[nx + i]) * s;
        dx[i] = d;
        dx[nx + i] = -d;
    }
}

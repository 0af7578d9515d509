// Nearest-neighbour upsampling by an integer factor s (torch's Upsample(scale_factor=s,
// mode="nearest")), for cganraw.ops.upsample.
//
// Kernels:
//   upsample_nearest2d_forward_v1   one thread per output: y[p, i, j] = x[p, i / s, j / s]
//   upsample_nearest2d_forward_v2   as v1 in a bounded grid that grid-strides over the outputs
//   upsample_nearest2d_backward_v1  one thread per input: dx = the sum of the gradients of its
//                                   s*s copies, row-major (a gather: no atomics)
//   upsample_nearest2d_backward_v2  as v1 in a bounded grid that grid-strides over the inputs
//
// Shapes: x, dx (P, H, W) and y, dy (P, H*s, W*s), contiguous, P = N*C planes.
// total = the element count the kernel covers (P*H*s*W*s forward, P*H*W backward), below
// 2^31 minus a grid (checked by the launcher).

__device__ __forceinline__ float nearest(const float* x, int i, int H, int W, int s)
{
    int Wo = W * s, Ho = H * s;
    int j = i % Wo, r = (i / Wo) % Ho, p = i / (Wo * Ho);
    return x[((long long)p * H + r / s) * W + j / s];
}

__device__ __forceinline__ float copies_grad(const float* dy, int i, int H, int W, int s)
{
    int Wo = W * s;
    int w = i % W, h = (i / W) % H, p = i / (W * H);
    const float* block = dy + ((long long)p * H * s + h * s) * Wo + w * s;
    float sum = 0.0f;
    for (int a = 0; a < s; a++)
        for (int b = 0; b < s; b++) sum += block[a * Wo + b];
    return sum;
}

extern "C" __global__ void upsample_nearest2d_forward_v1(float* y, const float* x, int H, int W, int s, int total)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] = nearest(x, i, H, W, s);
}

extern "C" __global__ void upsample_nearest2d_forward_v2(float* y, const float* x, int H, int W, int s, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        y[i] = nearest(x, i, H, W, s);
}

extern "C" __global__ void upsample_nearest2d_backward_v1(float* dx, const float* dy, int H, int W, int s, int total)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) dx[i] = copies_grad(dy, i, H, W, s);
}

extern "C" __global__ void upsample_nearest2d_backward_v2(float* dx, const float* dy, int H, int W, int s, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        dx[i] = copies_grad(dy, i, H, W, s);
}

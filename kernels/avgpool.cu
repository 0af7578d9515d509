// Average pooling over k x k windows with stride s, no padding, floor output size (torch's
// AvgPool2d with padding 0, ceil_mode False), for cganraw.ops.avgpool.
//
// Kernels:
//   avgpool2d_forward_v1   one thread per output: y = (sum of its k*k window, row-major) / (k*k)
//   avgpool2d_forward_v2   as v1 in a bounded grid that grid-strides over the outputs
//   avgpool2d_backward_v1  one thread per input pixel: the sum of dy / (k*k) over the windows
//                          that cover it (a gather: no atomics, any stride, overlapping or not)
//   avgpool2d_backward_v2  as v1 in a bounded grid that grid-strides over the inputs
//
// Shapes: x, dx (P, H, W) and y, dy (P, Ho, Wo), contiguous, P = N*C planes,
// Ho = (H - k) / s + 1, Wo = (W - k) / s + 1. total = the element count the kernel covers
// (P*Ho*Wo forward, P*H*W backward), below 2^31 minus a grid (checked by the launcher).
// The sums run in the reference's order (taps row-major; windows in output order), so the
// emulator (no FMA contraction) matches NumPy exactly where the windows do not overlap.

__device__ __forceinline__ float window_mean(const float* x, int i, int H, int W, int Ho, int Wo,
                                             int k, int s)
{
    int ow = i % Wo, oh = (i / Wo) % Ho, p = i / (Wo * Ho);
    const float* plane = x + (long long)p * H * W;
    float sum = 0.0f;
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) sum += plane[(oh * s + a) * W + ow * s + b];
    return sum / (float)(k * k);
}

// windows covering input row h: oh in [ceil((h - k + 1) / s), h / s], clipped to [0, Ho)
__device__ __forceinline__ void covering(int h, int k, int s, int Ho, int* lo, int* hi)
{
    int first = h - k + 1;
    *lo = first <= 0 ? 0 : (first + s - 1) / s;
    int last = h / s;
    *hi = last < Ho - 1 ? last : Ho - 1;
}

__device__ __forceinline__ float window_grad(const float* dy, int i, int H, int W, int Ho, int Wo,
                                             int k, int s)
{
    int w = i % W, h = (i / W) % H, p = i / (W * H);
    const float* plane = dy + (long long)p * Ho * Wo;
    int oh0, oh1, ow0, ow1;
    covering(h, k, s, Ho, &oh0, &oh1);
    covering(w, k, s, Wo, &ow0, &ow1);
    float kk = (float)(k * k), sum = 0.0f;
    for (int oh = oh0; oh <= oh1; oh++)
        for (int ow = ow0; ow <= ow1; ow++) sum += plane[oh * Wo + ow] / kk;
    return sum;
}

extern "C" __global__ void avgpool2d_forward_v1(float* y, const float* x, int H, int W, int Ho, int Wo,
                                                int k, int s, int total)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] = window_mean(x, i, H, W, Ho, Wo, k, s);
}

extern "C" __global__ void avgpool2d_forward_v2(float* y, const float* x, int H, int W, int Ho, int Wo,
                                                int k, int s, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        y[i] = window_mean(x, i, H, W, Ho, Wo, k, s);
}

extern "C" __global__ void avgpool2d_backward_v1(float* dx, const float* dy, int H, int W, int Ho, int Wo,
                                                 int k, int s, int total)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) dx[i] = window_grad(dy, i, H, W, Ho, Wo, k, s);
}

extern "C" __global__ void avgpool2d_backward_v2(float* dx, const float* dy, int H, int W, int Ho, int Wo,
                                                 int k, int s, int total)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
        dx[i] = window_grad(dy, i, H, W, Ho, Wo, k, s);
}

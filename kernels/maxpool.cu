// MaxPool2d with argmax routing: the op maxpool2d of cganraw.ops.maxpool (launchers
// maxpool2d_forward_cuda, maxpool2d_backward_cuda), for the layer cganraw.nn.MaxPool2d.
//
// Kernels:
//   maxpool2d_forward_v1    one thread per output (n, c, oy, ox): the max of its k x k
//                           window and the winning tap t = i*k + j (row-major in the
//                           window). On ties the first max wins, and a NaN wins over
//                           numbers (the first NaN of the window), as the NumPy reference
//                           and PyTorch's CPU kernel do.
//   maxpool2d_backward_v1   naive scatter: one thread per output, atomicAdd of dy into the
//                           input pixel its tap names (dx zeroed first). Overlapping windows
//                           (s < k) collide on a pixel and add in no fixed order.
//   maxpool2d_backward_v2   adds a gather: one thread per input pixel, summing dy over the
//                           windows that cover it and chose it, in the reference's tap order
//                           (at most ceil(k/s)^2 windows: i = y mod s, +s, ... < k). No
//                           atomics, no zero fill, the same bits on every run. THE DEFAULT.
//
// Shapes: x, dx (N, C, H, W); y, dy, tap (N, C, Ho, Wo), tap int32; all contiguous.
// Ho = (H - k) / s + 1 (padding 0, floor, as PyTorch), computed by the launcher. No size
// has to divide a block: every loop grid-strides over a 64-bit element index, and every
// window tap is checked against H and W, so a wrong Ho never reads outside x. A tap
// outside [0, k*k) (never written by the forward) routes no gradient.

// x (N, C, H, W) -> y, tap (N, C, Ho, Wo)
extern "C" __global__ void maxpool2d_forward_v1(float* y, int* tap, const float* x,
                                                int N, int C, int H, int W, int k, int s,
                                                int Ho, int Wo)
{
    const long long total = (long long)N * C * Ho * Wo;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / ((long long)Ho * Wo);   // n*C + c
        const int q = (int)(e - plane * Ho * Wo);
        const int ox = q % Wo, oy = q / Wo;
        const float* xplane = x + plane * H * W;
        float best = 0.0f;
        int best_t = -1;                                    // no tap seen yet
        for (int i = 0; i < k; i++) {
            const int yy = oy * s + i;
            if (yy >= H) break;
            for (int j = 0; j < k; j++) {
                const int xx = ox * s + j;
                if (xx >= W) break;
                const float v = xplane[(long long)yy * W + xx];
                // strictly greater: the first max keeps a tie; a NaN beats any number,
                // and once best is NaN nothing replaces it
                if (best_t < 0 || v > best || (v != v && best == best)) {
                    best = v;
                    best_t = i * k + j;
                }
            }
        }
        y[e] = best;
        tap[e] = best_t;
    }
}

// dy, tap (N, C, Ho, Wo) -> dx (N, C, H, W), scatter-add. dx must hold zeros on entry.
extern "C" __global__ void maxpool2d_backward_v1(float* dx, const float* dy, const int* tap,
                                                 int N, int C, int H, int W, int k, int s,
                                                 int Ho, int Wo)
{
    const long long total = (long long)N * C * Ho * Wo;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int t = tap[e];
        if (t < 0 || t >= k * k) continue;
        const long long plane = e / ((long long)Ho * Wo);
        const int q = (int)(e - plane * Ho * Wo);
        const int yy = (q / Wo) * s + t / k, xx = (q % Wo) * s + t % k;
        if (yy >= H || xx >= W) continue;
        atomicAdd(&dx[(plane * H + yy) * W + xx], dy[e]);
    }
}

// dy, tap (N, C, Ho, Wo) -> dx (N, C, H, W), gather: dx is written, not accumulated.
// Pixel (yy, xx) is tap (i, j) of window (oy, ox) when yy = oy*s + i and xx = ox*s + j.
extern "C" __global__ void maxpool2d_backward_v2(float* dx, const float* dy, const int* tap,
                                                 int N, int C, int H, int W, int k, int s,
                                                 int Ho, int Wo)
{
    const long long total = (long long)N * C * H * W;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / ((long long)H * W);
        const int pix = (int)(e - plane * H * W);
        const int xx = pix % W, yy = pix / W;
        float acc = 0.0f;
        for (int i = yy % s; i < k && i <= yy; i += s) {      // increasing i, then j: tap order
            const int oy = (yy - i) / s;
            if (oy >= Ho) continue;                           // window row past the last one
            for (int j = xx % s; j < k && j <= xx; j += s) {
                const int ox = (xx - j) / s;
                if (ox >= Wo) continue;
                const long long o = (plane * Ho + oy) * Wo + ox;
                if (tap[o] == i * k + j) acc += dy[o];
            }
        }
        dx[e] = acc;
    }
}

// Exponential moving average of weights in place: the op ema_update of cganraw.ops.ema
// (launcher ema_update_cuda), for the moving average of G (cganraw.step.update_ema):
//
//   avg = avg - one_minus_decay * (avg - value)
//
// the reference's operations in its order (the emulator matches NumPy bit for bit). The
// trainer keeps every parameter of G, and of its average, in one flat buffer each
// (cganraw.optim.flatten), so one launch moves all of them.
//
// Kernels:
//   ema_update_v1  naive: one element per thread.
//   ema_update_v2  adds a grid-stride loop over a bounded grid.
//   ema_update_v3  as v2, and in the same grid copy_src into copy_dst (m floats: G's
//                  BatchNorm running statistics, which the average takes as they are):
//                  one launch where the average and the copy took two.
//
// avg: (n,) updated in place; value: (n,) read only. Contiguous float32.

extern "C" __global__ void ema_update_v1(float* avg, const float* value, float one_minus_decay, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) avg[i] = avg[i] - one_minus_decay * (avg[i] - value[i]);
}

extern "C" __global__ void ema_update_v2(float* avg, const float* value, float one_minus_decay, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        avg[i] = avg[i] - one_minus_decay * (avg[i] - value[i]);
}

// avg, value: (n,); copy_dst, copy_src: (m,); the grid strides over n + m
extern "C" __global__ void ema_update_v3(float* avg, const float* value, float one_minus_decay, int n,
                                         float* copy_dst, const float* copy_src, int m)
{
    const long long total = (long long)n + m;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        if (i < n) avg[i] = avg[i] - one_minus_decay * (avg[i] - value[i]);
        else copy_dst[i - n] = copy_src[i - n];
    }
}

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

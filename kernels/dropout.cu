// Inverted dropout with a given keep mask: the op dropout of cganraw.ops.dropout
// (launchers dropout_forward_cuda, dropout_backward_cuda).
//
// Kernels:
//   dropout_forward_v1/v2   y  = (x  * keep) * scale
//   dropout_backward_v1/v2  dx = (dy * keep) * scale
// scale = 1 / (1 - p), computed on the host in float32 exactly as the NumPy op does.
//
// The mask is drawn on the CPU by the layer's own NumPy generator and uploaded as bytes
// (0 or 1), so the "cuda" and "emu" backends drop exactly the elements the "numpy"
// backend drops, and a checkpointed generator resumes the same mask sequence anywhere.
// The product keeps NumPy's order of operations, (v * keep) * scale, so results match the
// reference bit for bit, NaN and -0 included (a dropped NaN stays NaN, as in NumPy).
//
// Versions:
//   v1  naive: one element per thread.
//   v2  adds a grid-stride loop over a bounded grid; float4 values and uchar4 mask bytes
//       when the pointers are 16- and 4-byte aligned, then a scalar tail for the n % 4
//       rest; a misaligned pointer (a view into an array) takes the scalar loop throughout.
//
// in, keep, out: (n,) contiguous; in == out is allowed (each element read before written).

__device__ __forceinline__ bool aligned_to(const void* p, unsigned long long bytes)
{
    return (reinterpret_cast<unsigned long long>(p) & (bytes - 1ull)) == 0ull;
}

__device__ __forceinline__ float drop(float v, unsigned char k, float scale)
{
    return (v * (float)k) * scale;
}

__device__ __forceinline__ void dropout_v1(float* out, const float* in, const unsigned char* keep, float scale, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = drop(in[i], keep[i], scale);
}

__device__ __forceinline__ void dropout_v2(float* out, const float* in, const unsigned char* keep, float scale, int n)
{
    int tid = blockIdx.x * blockDim.x + threadIdx.x;
    int stride = gridDim.x * blockDim.x;
    int start = 0;
    if (aligned_to(out, 16) && aligned_to(in, 16) && aligned_to(keep, 4)) {
        int n4 = n / 4;  // whole groups of four; the rest goes to the scalar loop below
        const float4* in4 = reinterpret_cast<const float4*>(in);
        const uchar4* keep4 = reinterpret_cast<const uchar4*>(keep);
        float4* out4 = reinterpret_cast<float4*>(out);
        for (int i = tid; i < n4; i += stride) {
            float4 v = in4[i];
            uchar4 k = keep4[i];
            float4 r;
            r.x = drop(v.x, k.x, scale); r.y = drop(v.y, k.y, scale);
            r.z = drop(v.z, k.z, scale); r.w = drop(v.w, k.w, scale);
            out4[i] = r;
        }
        start = n4 * 4;
    }
    for (int i = start + tid; i < n; i += stride) out[i] = drop(in[i], keep[i], scale);
}

// x, keep, y: (n,)
extern "C" __global__ void dropout_forward_v1(float* y, const float* x, const unsigned char* keep, float scale, int n)
{
    dropout_v1(y, x, keep, scale, n);
}

extern "C" __global__ void dropout_forward_v2(float* y, const float* x, const unsigned char* keep, float scale, int n)
{
    dropout_v2(y, x, keep, scale, n);
}

// dy, keep, dx: (n,); keep is the forward's mask (the gradient flows where the value did)
extern "C" __global__ void dropout_backward_v1(float* dx, const float* dy, const unsigned char* keep, float scale, int n)
{
    dropout_v1(dx, dy, keep, scale, n);
}

extern "C" __global__ void dropout_backward_v2(float* dx, const float* dy, const unsigned char* keep, float scale, int n)
{
    dropout_v2(dx, dy, keep, scale, n);
}

// Inverted dropout with a given keep mask: the op dropout of cganraw.ops.dropout
// (launchers dropout_forward_cuda, dropout_backward_cuda).
//
// Kernels:
//   dropout_forward_v1/v2   y  = (x  * keep) * scale
//   dropout_backward_v1/v2  dx = (dy * keep) * scale
// scale = 1 / (1 - p), computed on the host in float32 exactly as the NumPy op does.
//
// v1/v2 take the mask as bytes (0 or 1) from the caller; v3 draws it itself (below).
// The product keeps NumPy's order of operations, (v * keep) * scale, so results match the
// reference bit for bit, NaN and -0 included (a dropped NaN stays NaN, as in NumPy).
//
// Versions:
//   v1  naive: one element per thread.
//   v2  adds a grid-stride loop over a bounded grid; float4 values and uchar4 mask bytes
//       when the pointers are 16- and 4-byte aligned, then a scalar tail for the n % 4
//       rest; a misaligned pointer (a view into an array) takes the scalar loop throughout.
//   v3  adds the mask drawn in the kernel: no mask array at all. Element e is kept iff
//       (word >> 8) >= threshold, word e & 3 of Philox4x32-10 block e >> 2 of the layer's
//       stream (philox.cuh); the backward draws the same words again, so it needs only the
//       stream. One thread per block of four elements, grid-stride; cganraw.ops.philox's
//       keep_mask_numpy is the reference. Every backend drops the same elements, and a
//       resumed run draws the masks it would have drawn (they depend on the step alone).
//
// in, keep, out: (n,) contiguous; in == out is allowed (each element read before written).

#include "philox.cuh"

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

// ---------------------------------------------------------------- v3: the mask from Philox

__device__ __forceinline__ void dropout_v3(float* out, const float* in, unsigned int threshold, float scale, int n,
                                           unsigned int seed_lo, unsigned int seed_hi, unsigned int stream,
                                           unsigned int step, unsigned int call)
{
    int blocks = (n + 3) / 4;
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += gridDim.x * blockDim.x) {
        philox_words r = philox_block((unsigned int)b, seed_lo, seed_hi, stream, step, call);
        for (int j = 0; j < 4; ++j) {
            int e = 4 * b + j;
            if (e < n) out[e] = drop(in[e], philox_keep(r.w[j], threshold) ? 1 : 0, scale);
        }
    }
}

// x, y: (n,); threshold = ceil(p 2^24); the stream names the mask
extern "C" __global__ void dropout_forward_v3(float* y, const float* x, unsigned int threshold, float scale, int n,
                                              unsigned int seed_lo, unsigned int seed_hi, unsigned int stream,
                                              unsigned int step, unsigned int call)
{
    dropout_v3(y, x, threshold, scale, n, seed_lo, seed_hi, stream, step, call);
}

// dy, dx: (n,); the forward's threshold and stream give back its mask
extern "C" __global__ void dropout_backward_v3(float* dx, const float* dy, unsigned int threshold, float scale, int n,
                                               unsigned int seed_lo, unsigned int seed_hi, unsigned int stream,
                                               unsigned int step, unsigned int call)
{
    dropout_v3(dx, dy, threshold, scale, n, seed_lo, seed_hi, stream, step, call);
}

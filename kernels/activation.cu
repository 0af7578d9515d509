// Elementwise activations, forward and backward: the ops leaky_relu, relu, tanh and
// sigmoid of cganraw.ops.activation (launchers <op>_forward_cuda / <op>_backward_cuda).
//
// Kernels (each in two versions, _v1 and _v2):
//   leaky_relu_forward_v1/v2   y = x > 0 ? x : slope * x
//   leaky_relu_backward_v1/v2  dx = x > 0 ? dy : slope * dy        (cache: x)
//   relu_forward_v1/v2         y = max(x, 0)
//   relu_backward_v1/v2        dx = x > 0 ? dy : 0                 (cache: x)
//   tanh_forward_v1/v2         y = tanh(x)
//   tanh_backward_v1/v2        dx = dy * (1 - y^2)                 (cache: y)
//   sigmoid_forward_v1/v2      y = 1 / (1 + e^-x), stable form
//   sigmoid_backward_v1/v2     dx = dy * y * (1 - y)               (cache: y)
//
// Versions:
//   v1  naive: one element per thread, grid = ceil(n / block).
//   v2  adds a grid-stride loop over a bounded grid; when every pointer is 16-byte aligned
//       the body moves float4s (one 128-bit load per operand), then a scalar tail covers
//       the n % 4 last elements. A misaligned pointer (a view into the middle of an
//       array) falls back to the scalar grid-stride loop, so any n and any offset work.
//
// All arrays are float32, contiguous, of n elements (any shape flattened). Inputs and
// outputs may not overlap except exactly (y == x is fine: each element is read once,
// before it is written, by the same thread).

// ---------------------------------------------------------------- the pointwise maths
// The same expressions as the NumPy reference (ops/activation.py), so results agree to
// rounding: leaky/relu are exact; tanh/sigmoid differ by libm vs CUDA ulp errors.

struct LeakyRelu {
    float slope;
    __device__ __forceinline__ float operator()(float x) const { return x > 0.0f ? x : x * slope; }
};
struct LeakyReluGrad {  // (dy, x) -> dx
    float slope;
    __device__ __forceinline__ float operator()(float dy, float x) const { return x > 0.0f ? dy : dy * slope; }
};
struct Relu {
    // written as a select, not fmaxf: NumPy's maximum propagates NaN, fmaxf drops it
    __device__ __forceinline__ float operator()(float x) const { return x > 0.0f ? x : (x == x ? 0.0f : x); }
};
struct ReluGrad {  // (dy, x) -> dx
    __device__ __forceinline__ float operator()(float dy, float x) const { return x > 0.0f ? dy : 0.0f; }
};
struct Tanh {
    __device__ __forceinline__ float operator()(float x) const { return tanhf(x); }
};
struct TanhGrad {  // (dy, y) -> dx
    __device__ __forceinline__ float operator()(float dy, float y) const { return dy * (1.0f - y * y); }
};
struct Sigmoid {
    // e = exp(-|x|) never overflows: 1/(1+e) for x >= 0, e/(1+e) below
    __device__ __forceinline__ float operator()(float x) const {
        float e = expf(-fabsf(x));
        return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    }
};
struct SigmoidGrad {  // (dy, y) -> dx
    __device__ __forceinline__ float operator()(float dy, float y) const { return dy * y * (1.0f - y); }
};

// ---------------------------------------------------------------- generic bodies

__device__ __forceinline__ bool aligned16(const void* p)
{
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

// version 1: thread i handles element i
template <class Op>
__device__ __forceinline__ void map1_v1(float* out, const float* a, Op op, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = op(a[i]);
}

template <class Op>
__device__ __forceinline__ void map2_v1(float* out, const float* a, const float* b, Op op, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = op(a[i], b[i]);
}

// version 2: grid-stride over float4 groups when aligned, then the scalar tail
template <class Op>
__device__ __forceinline__ void map1_v2(float* out, const float* a, Op op, int n)
{
    int tid = blockIdx.x * blockDim.x + threadIdx.x;
    int stride = gridDim.x * blockDim.x;
    int start = 0;  // first element left for the scalar loop
    if (aligned16(out) && aligned16(a)) {
        int n4 = n / 4;  // whole float4 groups; the n % 4 rest goes to the scalar loop
        const float4* a4 = reinterpret_cast<const float4*>(a);
        float4* o4 = reinterpret_cast<float4*>(out);
        for (int i = tid; i < n4; i += stride) {
            float4 v = a4[i];
            float4 r;
            r.x = op(v.x); r.y = op(v.y); r.z = op(v.z); r.w = op(v.w);
            o4[i] = r;
        }
        start = n4 * 4;
    }
    for (int i = start + tid; i < n; i += stride) out[i] = op(a[i]);
}

template <class Op>
__device__ __forceinline__ void map2_v2(float* out, const float* a, const float* b, Op op, int n)
{
    int tid = blockIdx.x * blockDim.x + threadIdx.x;
    int stride = gridDim.x * blockDim.x;
    int start = 0;
    if (aligned16(out) && aligned16(a) && aligned16(b)) {
        int n4 = n / 4;
        const float4* a4 = reinterpret_cast<const float4*>(a);
        const float4* b4 = reinterpret_cast<const float4*>(b);
        float4* o4 = reinterpret_cast<float4*>(out);
        for (int i = tid; i < n4; i += stride) {
            float4 u = a4[i];
            float4 v = b4[i];
            float4 r;
            r.x = op(u.x, v.x); r.y = op(u.y, v.y); r.z = op(u.z, v.z); r.w = op(u.w, v.w);
            o4[i] = r;
        }
        start = n4 * 4;
    }
    for (int i = start + tid; i < n; i += stride) out[i] = op(a[i], b[i]);
}

// ---------------------------------------------------------------- leaky ReLU
// x, y: (n,)
extern "C" __global__ void leaky_relu_forward_v1(float* y, const float* x, float slope, int n)
{
    map1_v1(y, x, LeakyRelu{slope}, n);
}

extern "C" __global__ void leaky_relu_forward_v2(float* y, const float* x, float slope, int n)
{
    map1_v2(y, x, LeakyRelu{slope}, n);
}

// dy, x, dx: (n,); x is the forward input
extern "C" __global__ void leaky_relu_backward_v1(float* dx, const float* dy, const float* x, float slope, int n)
{
    map2_v1(dx, dy, x, LeakyReluGrad{slope}, n);
}

extern "C" __global__ void leaky_relu_backward_v2(float* dx, const float* dy, const float* x, float slope, int n)
{
    map2_v2(dx, dy, x, LeakyReluGrad{slope}, n);
}

// ---------------------------------------------------------------- ReLU
extern "C" __global__ void relu_forward_v1(float* y, const float* x, int n)
{
    map1_v1(y, x, Relu{}, n);
}

extern "C" __global__ void relu_forward_v2(float* y, const float* x, int n)
{
    map1_v2(y, x, Relu{}, n);
}

// dy, x, dx: (n,); x is the forward input
extern "C" __global__ void relu_backward_v1(float* dx, const float* dy, const float* x, int n)
{
    map2_v1(dx, dy, x, ReluGrad{}, n);
}

extern "C" __global__ void relu_backward_v2(float* dx, const float* dy, const float* x, int n)
{
    map2_v2(dx, dy, x, ReluGrad{}, n);
}

// ---------------------------------------------------------------- tanh
extern "C" __global__ void tanh_forward_v1(float* y, const float* x, int n)
{
    map1_v1(y, x, Tanh{}, n);
}

extern "C" __global__ void tanh_forward_v2(float* y, const float* x, int n)
{
    map1_v2(y, x, Tanh{}, n);
}

// dy, y, dx: (n,); y is the forward output
extern "C" __global__ void tanh_backward_v1(float* dx, const float* dy, const float* y, int n)
{
    map2_v1(dx, dy, y, TanhGrad{}, n);
}

extern "C" __global__ void tanh_backward_v2(float* dx, const float* dy, const float* y, int n)
{
    map2_v2(dx, dy, y, TanhGrad{}, n);
}

// ---------------------------------------------------------------- sigmoid
extern "C" __global__ void sigmoid_forward_v1(float* y, const float* x, int n)
{
    map1_v1(y, x, Sigmoid{}, n);
}

extern "C" __global__ void sigmoid_forward_v2(float* y, const float* x, int n)
{
    map1_v2(y, x, Sigmoid{}, n);
}

// dy, y, dx: (n,); y is the forward output
extern "C" __global__ void sigmoid_backward_v1(float* dx, const float* dy, const float* y, int n)
{
    map2_v1(dx, dy, y, SigmoidGrad{}, n);
}

extern "C" __global__ void sigmoid_backward_v2(float* dx, const float* dy, const float* y, int n)
{
    map2_v2(dx, dy, y, SigmoidGrad{}, n);
}

"""How the emulator reads a .cu: kernel discovery, which kernels need fibers, __shared__ rewriting."""
import numpy as np

from cganraw import cuda_emu
from cganraw.cuda_emu import _compile

i32, f32 = np.int32, np.float32


def kernels(src):
    return {k.name: k for k in _compile.find_kernels(src)[0]}


def test_kernel_discovery_forms():
    ks = kernels("""
        extern "C" __global__ void plain(float* x, int n) {}
        extern "C" { __global__ void in_block(const float* __restrict__ x) {} }
        namespace outer { namespace inner { __global__ void nested(double d) {} } }
        extern "C" __global__ void __launch_bounds__(256, 2) bounded(unsigned char* b, long long k) {}
        template <typename T> __global__ void templated(T* x) {}
        __device__ float helper(float v) { return v; }
        extern "C" __global__ void declared_only(float* x);
        struct S { int a; };
        extern "C" __global__ void unnamed(float*, int) {}
    """)
    assert set(ks) == {"plain", "in_block", "outer::inner::nested", "bounded", "unnamed"}
    assert ks["plain"].params == [("float*", "x"), ("int", "n")]
    assert ks["in_block"].params == [("const float* __restrict__", "x")]
    assert ks["bounded"].params == [("unsigned char*", "b"), ("long long", "k")]
    assert ks["unnamed"].params == [("float*", ""), ("int", "")]


def test_fibers_only_where_needed():
    ks = kernels("""
        __device__ float wsum(float v) { for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o); return v; }
        __device__ float twice(float v) { return 2 * wsum(v); }
        extern "C" __global__ void uses_helper(float* x) { x[0] = twice(x[0]); }
        extern "C" __global__ void elementwise(float* x) { x[threadIdx.x] *= 2; }
        extern "C" __global__ void direct(float* x) { __syncthreads(); }
        extern "C" __global__ void calls_plain(float* x) { elementwise_helper(x); }
        __device__ void elementwise_helper(float* x) { x[0] = 1; }
    """)
    assert ks["uses_helper"].fibers and ks["direct"].fibers
    assert not ks["elementwise"].fibers and not ks["calls_plain"].fibers


def test_barrier_in_unrecognized_code_gives_every_kernel_fibers():
    ks = kernels("""
        struct Reduce { __device__ float operator()(float v) const { return __shfl_down_sync(~0u, v, 1); } };
        extern "C" __global__ void a(float* x) { x[0] = Reduce{}(x[0]); }
        extern "C" __global__ void b(float* x) { x[0] = 1; }
    """)
    assert ks["a"].fibers and ks["b"].fibers


def test_shared_rewrite_keeps_lines():
    src = """// __shared__ in a comment stays
extern __shared__ float gbuf[];
__shared__ int gcount;
extern "C" __global__ void k(float* x)
{
    extern __shared__ __align__(16) unsigned char raw[];
    __shared__ float a[32], b[4][5];
    const char* s = "__shared__ float fake[3];";
}
"""
    out, hook = _compile.rewrite_shared(src)
    lines = out.split("\n")
    assert len(lines) == len(src.split("\n"))
    assert lines[0] == "// __shared__ in a comment stays"
    assert lines[1] == "static thread_local float* gbuf;"
    assert "unsigned char* const raw = (unsigned char*)::__emu::dyn_smem();" in lines[5]
    assert "poison_once((void*)&a, sizeof(a)" in lines[6] and "poison_once((void*)&b, sizeof(b)" in lines[6]
    assert lines[7] == src.split("\n")[7]
    assert hook == ["gbuf = (float*)::__emu::dyn_smem();", "memset((void*)&gcount, 0xFF, sizeof(gcount));"]


def test_macro_generated_kernels_and_included_barriers(tmp_path):
    (tmp_path / "blockops.cuh").write_text("""
        __device__ float block_total(float v, float* s) {
            s[threadIdx.x] = v;
            __syncthreads();
            float t = 0;
            for (int k = 0; k < blockDim.x; k++) t += s[k];
            __syncthreads();
            return t;
        }
    """)
    (tmp_path / "macro.cu").write_text("""
        #include "blockops.cuh"
        #define UNARY(name, expr) \\
            extern "C" __global__ void name(float* x, int n) { \\
                int i = blockIdx.x * blockDim.x + threadIdx.x; \\
                if (i < n) { float v = x[i]; x[i] = (expr); } }
        UNARY(square, v * v)
        UNARY(negate, -v)
        extern "C" __global__ void total(float* x) {
            __shared__ float s[64];
            x[threadIdx.x] = block_total(x[threadIdx.x], s);
        }
    """)
    mod = cuda_emu.RawModule(path=str(tmp_path / "macro.cu"))
    assert set(mod.kernel_names) == {"square", "negate", "total"}
    assert not mod.get_function("square").uses_fibers and mod.get_function("total").uses_fibers
    x = np.arange(5, dtype=f32)
    mod.get_function("square")((1,), (8,), (x, i32(5)))
    np.testing.assert_array_equal(x, np.arange(5) ** 2)
    y = np.arange(64, dtype=f32)
    mod.get_function("total")((1,), (64,), (y,))
    np.testing.assert_array_equal(y, np.full(64, np.arange(64).sum()))

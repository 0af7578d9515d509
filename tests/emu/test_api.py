"""Argument and launch checks, compile errors, modules from code, and the build cache."""
import os

import numpy as np
import pytest

from cganraw import cuda_emu

i32, f32 = np.int32, np.float32


def saxpy_args(n=8):
    return (i32(n), f32(2.0), np.zeros(n, f32), np.zeros(n, f32))


def test_python_float_for_float_param(basic):
    n, _a, x, y = saxpy_args()
    with pytest.raises(TypeError) as e:
        basic.get_function("saxpy")((1,), (8,), (n, 2.0, x, y))
    msg = str(e.value)
    assert "'saxpy'" in msg and "argument 1" in msg and "float a" in msg
    assert "numpy.float32 scalar" in msg and "Python float" in msg


def test_python_int_for_int_param(basic):
    _n, a, x, y = saxpy_args()
    with pytest.raises(TypeError, match=r"'saxpy' argument 0 \(int n\): expected a numpy.int32 scalar, got Python int 8"):
        basic.get_function("saxpy")((1,), (8,), (8, a, x, y))


def test_wrong_numpy_scalar_type(basic):
    _n, a, x, y = saxpy_args()
    with pytest.raises(TypeError, match=r"argument 0 \(int n\).*numpy.int64 scalar"):
        basic.get_function("saxpy")((1,), (8,), (np.int64(8), a, x, y))


def test_float64_array_for_float_pointer(basic):
    n, a, x, _y = saxpy_args()
    with pytest.raises(TypeError, match=r"argument 3 \(float\* y\): expected a C-contiguous numpy.float32 array, "
                                        r"got numpy.float64 array of shape \(8,\)"):
        basic.get_function("saxpy")((1,), (8,), (n, a, x, np.zeros(8)))


def test_non_contiguous_array(basic):
    n, a, _x, y = saxpy_args()
    with pytest.raises(TypeError, match=r"argument 2 \(float\* x\).*not C-contiguous"):
        basic.get_function("saxpy")((1,), (8,), (n, a, np.zeros(16, f32)[::2], y))


def test_scalar_for_pointer_and_array_for_scalar(basic):
    n, a, x, y = saxpy_args()
    with pytest.raises(TypeError, match=r"argument 2 \(float\* x\)"):
        basic.get_function("saxpy")((1,), (8,), (n, a, f32(1), y))
    with pytest.raises(TypeError, match=r"argument 1 \(float a\)"):
        basic.get_function("saxpy")((1,), (8,), (n, np.ones(1, f32), x, y))


def test_wrong_argument_count(basic):
    n, a, x, _y = saxpy_args()
    with pytest.raises(TypeError, match=r"'saxpy' takes 4 argument\(s\) \(int n, float a, float\* x, float\* y\), got 3"):
        basic.get_function("saxpy")((1,), (8,), (n, a, x))
    with pytest.raises(TypeError, match="args must be a tuple"):
        basic.get_function("saxpy")((1,), (8,), x)


def test_other_integer_pointer_types(basic):
    out = np.zeros(1, np.int64)
    with pytest.raises(TypeError, match=r"argument 3 \(unsigned char\* bytes\).*numpy.uint8"):
        basic.get_function("typed_args")((1,), (1,), (out, np.uint32(1), np.float64(1), np.zeros(1, np.int8), np.int64(1)))
    with pytest.raises(TypeError, match=r"argument 1 \(unsigned int u\).*numpy.uint32"):
        basic.get_function("typed_args")((1,), (1,), (out, np.int32(1), np.float64(1), np.zeros(1, np.uint8), np.int64(1)))


@pytest.mark.parametrize("grid,block", [
    ((1,), (1025,)), ((1,), (32, 33)), ((1,), (1, 1, 65)), ((1, 65536), (32,)), ((1, 1, 65536), (32,)),
    ((0,), (32,)), ((1,), (0,)), ((1,), (16, 16, 8)), ((1, 2, 3, 4), (1,)), ("x", (1,)), ((1.0,), (1,)),
])
def test_bad_launch_dimensions(basic, grid, block):
    with pytest.raises(ValueError, match="'saxpy'"):
        basic.get_function("saxpy")(grid, block, saxpy_args())


def test_launch_dimension_limits_that_are_fine(basic):
    args = saxpy_args()
    k = basic.get_function("saxpy")
    for grid, block in [(1, 1024), ((1, 65535), (1,)), (3, (1, 1, 64)), ((2, 1, 1), (32, 32))]:
        k(grid, block, args)


def test_dynamic_shared_memory_limit(reduce):
    k = reduce.get_function("reverse_block")
    x = np.zeros(32, f32)
    args = (x, x.copy(), i32(32))
    with pytest.raises(ValueError, match="dynamic shared memory"):
        k((1,), (32,), args, shared_mem=48 * 1024 + 4)
    with pytest.raises(ValueError, match="shared_mem"):
        k((1,), (32,), args, shared_mem=-1)
    k.max_dynamic_shared_size_bytes = 227 * 1024
    try:
        k((1,), (32,), args, shared_mem=100 * 1024)
        with pytest.raises(ValueError, match="dynamic shared memory"):
            k((1,), (32,), args, shared_mem=228 * 1024)
    finally:
        k.max_dynamic_shared_size_bytes = 48 * 1024


def test_compile_error_names_file_and_line(tmp_path):
    src = tmp_path / "broken_kernel.cu"
    src.write_text('extern "C" __global__ void k(float* x)\n{\n    x[0] = undefined_name;\n}\n')
    with pytest.raises(cuda_emu.CompileError) as e:
        cuda_emu.RawModule(path=str(src))
    msg = str(e.value)
    assert f"{src}:3:" in msg and "undefined_name" in msg and "error" in msg


def test_missing_kernel_name(basic):
    with pytest.raises(LookupError, match=r"no kernel 'nope'.*saxpy"):
        basic.get_function("nope")


def test_module_from_code_with_options_and_templates(rng):
    code = """
    template <typename T> __global__ void scale(T* x, T a, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) x[i] *= a * (T)FACTOR;
    }
    namespace inner { extern "C" __global__ void fill(int* x, int v) { x[threadIdx.x] = v; } }
    """
    mod = cuda_emu.RawModule(code=code, name="templated.cu", options=("-DFACTOR=3", "--use_fast_math"),
                             name_expressions=("scale<float>", "scale<double>"))
    assert set(mod.kernel_names) == {"inner::fill", "scale<float>", "scale<double>"}
    x = rng.standard_normal(10).astype(f32)
    y = x.copy()
    mod.get_function("scale<float>")((1,), (16,), (x, f32(2), i32(10)))
    np.testing.assert_allclose(x, y * 6)
    with pytest.raises(TypeError, match="numpy.float64"):
        mod.get_function("scale<double>")((1,), (16,), (x, np.float64(2), i32(10)))
    v = np.zeros(4, i32)
    mod.get_function("inner::fill")((1,), (4,), (v, i32(9)))
    assert (v == 9).all()


def test_raw_kernel_shortcut(rng):
    k = cuda_emu.RawKernel('extern "C" __global__ void neg(float* x) { x[threadIdx.x] = -x[threadIdx.x]; }', "neg")
    x = rng.standard_normal(5).astype(f32)
    want = -x
    k((1,), (5,), (x,))
    np.testing.assert_array_equal(x, want)


def test_local_include_is_part_of_the_cache_key(tmp_path):
    (tmp_path / "consts.cuh").write_text("#define VALUE 1\n")
    (tmp_path / "k.cu").write_text('#include "consts.cuh"\nextern "C" __global__ void k(int* x) { x[0] = VALUE; }\n')
    x = np.zeros(1, i32)
    cuda_emu.RawModule(path=str(tmp_path / "k.cu")).get_function("k")((1,), (1,), (x,))
    assert x[0] == 1
    (tmp_path / "consts.cuh").write_text("#define VALUE 2\n")
    os.utime(tmp_path / "consts.cuh", (1, 1))  # a new mtime even within the same second
    cuda_emu.RawModule(path=str(tmp_path / "k.cu")).get_function("k")((1,), (1,), (x,))
    assert x[0] == 2


def test_cache_reuses_the_library(basic):
    again = cuda_emu.RawModule(path=basic.path)
    assert again._lib is basic._lib
    assert os.path.dirname(basic._lib.path) == cuda_emu.cache_dir()
    assert os.path.isfile(basic._lib.path)


def test_settings_validation():
    with pytest.raises(ValueError, match="thread order"):
        cuda_emu.set_order("sideways")
    with pytest.raises(TypeError, match="unknown cuda_emu setting"):
        with cuda_emu.settings(speed=3):
            pass
    with cuda_emu.order("reverse", seed=5):
        assert cuda_emu.current_settings()["order"] == "reverse"
        assert cuda_emu.current_settings()["seed"] == 5
    assert cuda_emu.current_settings(order="forward")["order"] == "forward"

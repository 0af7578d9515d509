"""GEMM at the shapes the layers really run (conv layers' forward / weight-gradient /
data-gradient GEMMs and the dense layers'), in cganraw.ops.gemm's convention.

Implementations side by side, one group per shape:
    numpy        cganraw.ops.gemm on the CPU (numpy.matmul, i.e. the BLAS NumPy links)
    cuda:cublas  cupy.matmul
    cuda:v1..v4  the hand-written SGEMM kernels, cganraw.ops.gemm.gemm_cuda(..., version=N)
                 (v3 with float4 loads and split-K, v4 TF32 tensor cores: compared with
                 cuBLAS at 1e-2, TF32's rounding)
Estimated H100 figures for the same ladder: bench/roofline.py.

    pytest bench/bench_gemm.py --benchmark-enable --benchmark-only
"""
import importlib

import numpy as np
import pytest

import _benchlib as bl

IMPLS = ["numpy", bl.gpu_param("cuda:cublas", id="cuda-cublas")] + [
    bl.gpu_param(f"cuda:v{v}", id=f"cuda-v{v}") for v in (1, 2, 3, 4)]


def _gemm_module():
    return importlib.import_module("cganraw.ops.gemm")


def _cases():
    # the ids are batch-free (M and N scale with the batch); the batch is its own parameter
    return [pytest.param(i, id=label.replace(" ", "-")) for i, (label, *_rest) in enumerate(bl.gemm_cases(1))]


def _impl_fn(impl, a, b, ta, tb):
    gm = _gemm_module()
    if impl == "numpy":
        return lambda: gm.gemm(a, b, trans_a=ta, trans_b=tb)
    cp = bl.cupy()
    if impl == "cuda:cublas":
        opa, opb = (a.T if ta else a), (b.T if tb else b)
        return lambda: cp.matmul(opa, opb)
    kernel = getattr(gm, "gemm_cuda", None)
    if kernel is None:
        pytest.skip("cganraw.ops.gemm.gemm_cuda (the hand-written SGEMM launcher) does not exist yet")
    version = int(impl.split(":v")[1])
    return lambda: kernel(a, b, trans_a=ta, trans_b=tb, version=version)


@pytest.mark.parametrize("case", _cases())
@pytest.mark.parametrize("impl", IMPLS)
def test_gemm(benchmark, bench_ctx, request, batch, case, impl):
    label, m, n, k, ta, tb = bl.gemm_cases(batch)[case]
    backend_name = "numpy" if impl == "numpy" else "cuda"
    if backend_name == "cuda":
        request.getfixturevalue("gpu_ceiling")
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b_np = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    with bl.backend_ctx(backend_name) as xp:
        a, b = xp.asarray(a_np), xp.asarray(b_np)
        fn = _impl_fn(impl, a, b, ta, tb)
        out = bl.measure(benchmark, fn, op=f"gemm {label}",
                         shape=f"M={m} N={n} K={k} {'T' if ta else 'N'}{'T' if tb else 'N'}",
                         backend=impl, family="gemm", ctx=bench_ctx, flops=2 * m * n * k,
                         extra={"m": m, "n": n, "k": k, "trans_a": ta, "trans_b": tb})
        assert tuple(out.shape) == (m, n)
        if impl.startswith("cuda:v") and not benchmark.enabled:
            # the smoke run also checks the kernel against cuBLAS
            want = bl.cupy().matmul(a.T if ta else a, b.T if tb else b)
            tol = 1e-2 if impl == "cuda:v4" else 1e-3      # TF32 inputs: 10-bit mantissa
            np.testing.assert_allclose(bl.cupy().asnumpy(out), bl.cupy().asnumpy(want), rtol=tol, atol=tol * k ** 0.5)

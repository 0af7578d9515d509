"""GEMM: C = alpha * op(A) @ op(B) + beta * C, with op = identity or transpose.

Every dense and convolution layer funnels its heavy work through `gemm`, so one
switch picks the implementation: BLAS through `numpy.matmul` on the CPU, cuBLAS
or the hand-written SGEMM kernels (kernels/gemm.cu) on the GPU and in the emulator.
The transposes are taken as views, never copied.
"""
from __future__ import annotations

from cganraw import backend


def gemm_numpy(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    xp = backend.array_module(a)
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if out is None or beta == 0.0:
        res = xp.matmul(opa, opb, out=out)
    else:
        res = out
        res *= beta
        res += xp.matmul(opa, opb) if alpha == 1.0 else alpha * xp.matmul(opa, opb)
        return res
    if alpha != 1.0:
        res *= alpha
    return res


def gemm(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """a: (M, K) or (K, M) if trans_a; b: (K, N) or (N, K) if trans_b -> (M, N)."""
    return gemm_numpy(a, b, trans_a, trans_b, alpha, beta, out)

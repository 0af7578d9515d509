"""GEMM at the shapes the layers really run: NumPy's BLAS, cuBLAS and the hand-written
SGEMM kernels v1..v3 side by side, one group per shape (cganraw.bench.ops_cases).

    pytest bench/bench_gemm.py --benchmark-enable --benchmark-only
"""
SUITE = "gemm"


def test_gemm(case, run_case):
    run_case(case)

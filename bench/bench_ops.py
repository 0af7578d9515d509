"""Memory-bound op families at the models' real shapes, CPU (NumPy reference, with its
Numba fast paths where the op has one) and GPU side by side: elementwise, bias,
batchnorm, embedding, BCE-with-logits, Adam (cganraw.bench.ops_cases).

    pytest bench/bench_ops.py --benchmark-enable --benchmark-only
"""
SUITE = "ops"


def test_ops(case, run_case):
    run_case(case)

"""Forward and backward of the conv cGAN's G and D at widths 64 and 128, NumPy backend
(cganraw.bench.train_cases).

    pytest bench/bench_model_pass.py --benchmark-enable --benchmark-only
"""
SUITE = "model_pass"


def test_model_pass(case, run_case):
    run_case(case)

"""One full training step of each model, with the same step in PyTorch run interleaved
where it is installed, and the ratio of the two (cganraw.bench.train_cases).

    pytest bench/bench_train_step.py --benchmark-enable --benchmark-only
"""
SUITE = "train_step"


def test_train_step(case, run_case):
    run_case(case)

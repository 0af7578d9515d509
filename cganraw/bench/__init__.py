"""Benchmarks of cganraw's ops, layers and training steps at the models' real shapes, with
the machine's copy bandwidth and SGEMM rate measured in the same run.

    python -m cganraw.bench --quick                        # in-process runner, report in bench/results
    pytest bench/ --benchmark-only --benchmark-enable      # the same cases through pytest-benchmark

    shapes       the models' layer shapes, and the im2col and GEMM calls they make
    cases        every benchmark as a Spec; ops_cases and train_cases define them
    harness      modes, threads, ceilings and run_case, the timing both runners share
    runner       runs cases without pytest (`python -m cganraw.bench`)
    report       records -> results.md, results.json, throughput.png
    machine      the CPU, BLAS, GPU and package versions a report names
    profile      where one training step's time goes (`python -m cganraw.bench.profile`)

Importing this package loads none of numpy's heavy friends: matplotlib, CuPy and PyTorch
are imported by the functions that need them.
"""
from cganraw.bench.machine import blas_runtime, machine_info, set_blas_threads
from cganraw.bench.report import write_report

__all__ = ["blas_runtime", "machine_info", "set_blas_threads", "write_report"]

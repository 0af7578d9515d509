"""Convolution at the conv cGAN's real layer shapes (width 128): im2col/col2im as each
layer calls them, col2im per kernel version, and conv2d / conv_transpose2d forward and
backward (cganraw.bench.ops_cases).

    pytest bench/bench_conv.py --benchmark-enable --benchmark-only
"""
SUITE = "conv"


def test_conv(case, run_case):
    run_case(case)

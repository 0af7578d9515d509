"""cganraw.bench.roofline: the launch recorder counts exactly what the kernels are handed, and
the whole ladder runs (recorded, not executed) at a tiny size. No timing is asserted."""
import importlib

import numpy as np

from cganraw.bench import roofline as R


def test_recorded_bytes_and_flops_are_the_launch_arguments():
    G = importlib.import_module("cganraw.ops.gemm")
    B = importlib.import_module("cganraw.ops.bias")
    a = np.ones((5, 7), np.float32)
    b = np.ones((7, 3), np.float32)
    with R.recording() as log:
        G.gemm_cuda(a, b, version=4)
        B.bias_add_backward_cuda(np.ones((4, 6, 8, 8), np.float32), version=3, splits=2)
    assert [L.kernel for L in log] == ["gemm_v4", "bias_add_backward_partial_v3", "bias_add_backward_reduce_v3"]
    nbytes, flops, t, frac, peak = R.estimate(log[0], "h100")
    assert flops == 2 * 5 * 3 * 7 and nbytes == (5 * 7 + 7 * 3 + 5 * 3) * 4 and peak == "TF32"
    assert t >= R.LAUNCH_FLOOR_S and 0 < frac < 1
    nbytes, flops, *_ = R.estimate(log[1], "h100")
    assert flops == 0 and nbytes == (4 * 6 * 64 + 2 * 6) * 4          # dy read, (splits, C) partials written
    assert log[1].grid == (6, 2) and log[1].block == (256,)


def test_the_ladder_runs_recorded_at_a_tiny_size():
    rows = R.run("h100", batch=2, width=8)
    families = {r[0] for r in rows}
    assert {"gemm", "bias grad", "batchnorm fwd+bwd", "batchnorm+leaky fwd+bwd", "bias+leaky fwd+bwd", "im2col",
            "col2im", "convT k4s2p1 fwd", "embedding bwd"} <= families
    assert all(r[4] >= 1 and r[7] > 0 for r in rows)
    assert "| gemm |" in R.markdown(rows, "h100")

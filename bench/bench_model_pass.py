"""Forward and backward of the conv cGAN's G and D, 64 images, float32, NumPy backend.

    pytest bench/bench_model_pass.py --benchmark-enable --benchmark-only

Under the normal test run (benchmarks disabled) each body runs once as a smoke check,
at batch 2 to keep that cheap; timed runs use 64 images.
"""
import numpy as np
import pytest

import _benchlib as bl
from cganraw import models
from cganraw.losses import bce_with_logits


@pytest.mark.parametrize("width", [64, 128])
def test_cgan_conv_forward_backward_64(benchmark, width):
    n = 64 if benchmark.enabled else bl.SMOKE_BATCH
    G, D = models.build("cgan-conv", 10, width=width, seed=0)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 100), dtype=np.float32)
    labels = rng.integers(0, 10, n)

    def fwd_bwd():
        x = G(z, labels)
        logits = D(x, labels)
        _, dlogits = bce_with_logits(logits, 1.0)
        return G.backward(D.backward(dlogits))

    dz = benchmark.pedantic(fwd_bwd, rounds=5, warmup_rounds=1)
    if benchmark.enabled:
        benchmark.extra_info["images_per_s"] = 64 / benchmark.stats.stats.median
        benchmark.extra_info.update({"op": "G+D fwd+bwd cgan-conv", "shape": f"N=64 width={width}", "backend": "numpy",
                                     "family": "train", "time_s": benchmark.stats.stats.median,
                                     "throughput": 64 / benchmark.stats.stats.median, "unit": "images/s"})
    assert dz.shape == (n, 100) and dz.dtype == np.float32 and np.isfinite(dz).all()

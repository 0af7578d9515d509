"""col2im scatter (col2im_v1, atomicAdd) against gather (col2im_v2): memory traffic on paper and
time in the CUDA emulator (or on a GPU with --backend cuda), on the conv cGAN's layers.

    python bench/col2im_compare.py [--batch 3 16] [--width 128] [--backend emu|cuda] [--repeat 5]

Traffic counts float32 words: scatter reads cols once, zero-fills x and does one atomic
read-modify-write per in-bounds cols element; gather reads the same cols elements once
and writes x once. The emulator times CPU work, not GPU bandwidth: they only say which
kernel does less work, and that the two agree.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cganraw import backend  # noqa: E402
from cganraw.ops.conv import col2im_cuda, conv_output_size  # noqa: E402


def layers(batch, width):
    # (name, x shape, k, s, p, out_hw): the col2im calls of one G forward + D backward
    return [
        ("G.convT1 fwd", (batch, width, 14, 14), 4, 2, 1, (7, 7)),
        ("G.convT2 fwd", (batch, width, 28, 28), 4, 2, 1, (14, 14)),
        ("G.conv7 fwd (as convT)", (batch, 1, 28, 28), 7, 1, 3, (28, 28)),
        ("D.conv1 dx", (batch, 2, 28, 28), 3, 2, 1, None),
        ("D.conv2 dx", (batch, width, 14, 14), 3, 2, 1, None),
    ]


def in_bounds_taps(shape, k, s, p, ho, wo):
    """How many cols elements land inside x (the atomics the scatter does)."""
    n, c, h, w = shape
    ys = sum(1 for i in range(k) for oy in range(ho) if 0 <= oy * s + i - p < h)
    xs = sum(1 for j in range(k) for ox in range(wo) if 0 <= ox * s + j - p < w)
    return n * c * ys * xs


def bench(fn, repeat, sync):
    fn()
    sync()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[3, 16])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--backend", default="emu", choices=["emu", "cuda"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    backend.use(args.backend)
    xp = backend.get_xp()
    sync = (lambda: xp.cuda.Device().synchronize()) if args.backend == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    print(f"col2im on {args.backend}; traffic in float32 words; times are the best of {args.repeat}")
    print(f"{'layer':<24} {'N':>3} {'|cols|':>9} {'|x|':>8} {'atomics':>9} {'v1 words':>9} "
          f"{'v2 words':>9} {'v1 ms':>8} {'v2 ms':>8} {'v1/v2':>6} {'max|diff|':>9}")
    for batch in args.batch:
        for name, shape, k, s, p, out_hw in layers(batch, args.width):
            n, c, h, w = shape
            ho, wo = out_hw or (conv_output_size(h, k, s, p), conv_output_size(w, k, s, p))
            cols = xp.asarray(rng.standard_normal((c * k * k, n * ho * wo)).astype(np.float32))
            ncols, nx = cols.size, n * c * h * w
            atomics = in_bounds_taps(shape, k, s, p, ho, wo)
            v1_words = ncols + nx + 2 * atomics        # read cols, memset x, RMW per atomic
            v2_words = atomics + nx                    # read the in-bounds cols, write x once
            t1 = bench(lambda: col2im_cuda(cols, shape, k, s, p, out_hw, version=1), args.repeat, sync)
            t2 = bench(lambda: col2im_cuda(cols, shape, k, s, p, out_hw, version=2), args.repeat, sync)
            diff = float(abs(backend.asnumpy(col2im_cuda(cols, shape, k, s, p, out_hw, version=1))
                             - backend.asnumpy(col2im_cuda(cols, shape, k, s, p, out_hw, version=2))).max())
            print(f"{name:<24} {batch:>3} {ncols:>9} {nx:>8} {atomics:>9} {v1_words:>9} {v2_words:>9} "
                  f"{t1 * 1e3:>8.2f} {t2 * 1e3:>8.2f} {t1 / t2:>6.1f} {diff:>9.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

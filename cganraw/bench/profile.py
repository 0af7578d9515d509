"""Where one training step's time goes, on the NumPy backend.

    python -m cganraw.bench.profile                                  # cgan-conv, batch 128, width 128
    python -m cganraw.bench.profile --model cgan-mlp --batch 64 --steps 5
    python -m cganraw.bench.profile --trainer                        # the step `python -m cganraw.train` runs

The models are models.build's plain ones (the --vs-torch benchmark's), unless --trainer: then
the trainer's step with every per-model default (cgan-conv: width 48, batch 32, instance norm
and FiLM in G, the projection D with minibatch stddev, R1 every 4th step, the moving average).

A few steps run under cProfile; each function's own time is summed into categories
(matrix products, im2col, col2im, activations, ...), and every matrix product is timed
by shape, against the machine's SGEMM rate measured in the same run. cProfile adds its
own overhead to every Python call, so the shares matter more than the totals.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import logging
import pstats
import sys
import time
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np

from cganraw import cli, models
from cganraw.bench import harness, train_cases
from cganraw.ops import _blas

log = logging.getLogger(__name__)

_FILE_CATEGORIES = (
    ("activations", ("ops/activation.py", "nn/activation.py")),
    ("bias add/grad", ("ops/bias.py",)),
    ("batchnorm", ("ops/batchnorm.py", "nn/batchnorm.py")),
    ("Adam", ("ops/adam.py", "cganraw/optim.py")),
    ("dropout", ("ops/dropout.py", "nn/dropout.py")),
    ("BCE", ("ops/bce.py", "cganraw/losses.py")),
    ("embedding", ("ops/embedding.py", "nn/embedding.py")),
    ("instance norm and FiLM", ("ops/instancenorm.py", "nn/instancenorm.py", "ops/instancenorm_film.py",
                                "ops/film.py", "nn/film.py")),
    ("minibatch stddev", ("ops/minibatch_std.py", "nn/minibatch_std.py")),
    ("label projection", ("ops/label_projection.py",)),
    ("moving average", ("ops/ema.py",)),
)
_LAYOUT_NAMES = ("ascontiguousarray", "reshape", "concatenate", "copy", "astype", "transpose", "copyto")


def _category(filename: str, name: str) -> str:
    """The category of a function's own time, from its file and name."""
    path = PurePath(filename)
    where = f"{path.parent.name}/{path.name}"
    if name in ("_timed_matmul", "_timed_gemm_into") or where == "ops/_blas.py":
        return "matrix products (BLAS)"
    if where == "ops/_layout.py":
        return "layout copies (transpose, reshape, concatenate)"
    if "im2col" in name and where == "ops/conv.py":
        return "im2col"
    if "col2im" in name and where == "ops/conv.py":
        return "col2im"
    if ("batch_minor" in name or name.endswith("_bm")) and where == "ops/conv.py":
        return "conv layout turns (batch-minor)"
    for label, files in _FILE_CATEGORIES:
        if where in files:
            return label
    if any(word in name for word in _LAYOUT_NAMES):
        return "layout copies (transpose, reshape, concatenate)"
    if "reduce" in name or "sum" in name:
        return "reductions"
    if "fill" in name or "zeros" in name:
        return "fills (zero_grad, buffers)"
    return "other (Python, random numbers, ...)"


@dataclass
class StepProfile:
    model: str
    batch: int
    width: int
    steps: int
    step_s: float                                            # wall time per profiled step
    categories: list = field(default_factory=list)           # (label, seconds per step), largest first
    gemms: list = field(default_factory=list)                # (m, n, k, layout, calls per step, seconds per step)
    trainer: bool = False                                    # the trainer's step (its defaults), not the plain model's

    @property
    def gemm_s(self) -> float:
        return sum(g[5] for g in self.gemms)

    @property
    def gemm_flops(self) -> float:
        return sum(2.0 * m * n * k * calls for m, n, k, _, calls, _ in self.gemms)


class _MatmulTimer:
    """numpy.matmul and cganraw.ops._blas.gemm_into (the accumulating GEMMs) replaced, for the
    duration of a with block, by wrappers that time each call by (M, N, K, layout): every
    GEMM of the NumPy backend goes through one of them."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.calls = collections.Counter()

    def _record(self, a, b, dt):
        if a.ndim == 2 and b.ndim == 2:
            layout = ("N" if a.flags.c_contiguous else "T") + ("N" if b.flags.c_contiguous else "T")
            key = (a.shape[0], b.shape[1], a.shape[1], layout)
            self.seconds[key] += dt
            self.calls[key] += 1

    def __enter__(self):
        self._original = original = np.matmul
        self._original_into = original_into = _blas.gemm_into

        def _timed_matmul(a, b, *args, **kwargs):
            t = time.perf_counter()
            out = original(a, b, *args, **kwargs)
            self._record(a, b, time.perf_counter() - t)
            return out

        def _timed_gemm_into(a, b, out, trans_a=False, trans_b=False, *args, **kwargs):
            t = time.perf_counter()
            done = original_into(a, b, out, trans_a, trans_b, *args, **kwargs)
            if done:
                self._record(a.T if trans_a else a, b.T if trans_b else b, time.perf_counter() - t)
            return done
        np.matmul = _timed_matmul
        _blas.gemm_into = _timed_gemm_into
        return self

    def __exit__(self, *exc):
        np.matmul = self._original
        _blas.gemm_into = self._original_into


def profile_step(model="cgan-conv", batch=128, width=128, steps=3, seed=0, trainer=False) -> StepProfile:
    """Profile `steps` training steps of `model` (after two warm-up steps) on the NumPy backend:
    the plain model's step, or with `trainer` the trainer's (width and batch None: its defaults)."""
    with harness.backend_ctx("numpy") as xp:
        if trainer:
            one_step, cfg = train_cases.trainer_step(model, width, batch, seed=seed)
            batch, width = cfg["batch_size"], cfg["width"]
            count = iter(range(1 << 62))
            step = lambda: one_step(next(count), False)      # noqa: E731 (steps 0, 1, ...: R1 on its own)
        else:
            x, y = train_cases.fake_batch(batch, model.startswith("cgan"), seed)
            step = train_cases.our_step(model, batch, width, xp, x, y, seed)
        step()
        step()
        profiler = cProfile.Profile()
        with _MatmulTimer() as mm:
            start = time.perf_counter()
            profiler.enable()
            for _ in range(steps):
                step()
            profiler.disable()
            wall = time.perf_counter() - start
    totals = collections.defaultdict(float)
    for (filename, _, name), (_, _, own_time, _, _) in pstats.Stats(profiler).stats.items():
        totals[_category(filename, name)] += own_time / steps
    gemms = sorted(((m, n, k, layout, mm.calls[key] / steps, mm.seconds[key] / steps)
                    for key in mm.seconds for m, n, k, layout in [key]), key=lambda g: -g[5])
    return StepProfile(model, batch, width, steps, wall / steps,
                       sorted(totals.items(), key=lambda kv: -kv[1]), gemms, trainer)


def format_profile(p: StepProfile, sgemm_gflops: float | None = None, top: int = 14) -> str:
    lines = [f"{p.model}" + (" (the trainer's step)" if p.trainer else "") + f", batch {p.batch}"
             + (f", width {p.width}" if p.model in ("cgan-conv", "dcgan") else "")
             + f": {p.step_s * 1e3:.1f} ms per step under cProfile ({p.steps} steps)", ""]
    for label, seconds in p.categories:
        lines.append(f"  {label:<50} {seconds * 1e3:9.1f} ms  {100 * seconds / p.step_s:5.1f}%")
    rate = p.gemm_flops / p.gemm_s / 1e9 if p.gemm_s else 0.0
    lines += ["", f"matrix products: {p.gemm_s * 1e3:.1f} ms per step, {p.gemm_flops / 1e9:.2f} GFLOP "
                  f"-> {rate:.1f} GFLOP/s"]
    if sgemm_gflops:
        lines.append(f"  = {100 * rate / sgemm_gflops:.0f}% of this machine's SGEMM rate ({sgemm_gflops:.1f} GFLOP/s); "
                     f"at that rate they would take {p.gemm_flops / sgemm_gflops / 1e6:.1f} ms")
    for m, n, k, layout, calls, seconds in p.gemms[:top]:
        gflops = 2.0 * m * n * k * calls / seconds / 1e9 if seconds else 0.0
        lines.append(f"  M={m:6d} N={n:7d} K={k:6d} {layout} x{calls:g}  {seconds * 1e3:8.2f} ms  "
                     f"{gflops:7.1f} GFLOP/s")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cganraw.bench.profile", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="cgan-conv", choices=models.MODELS)
    p.add_argument("--batch", type=cli.positive_int, default=None,
                   help="images per step (default: 128; with --trainer the trainer's)")
    p.add_argument("--width", type=cli.positive_int, default=None,
                   help="channels of the conv models (default: 128; with --trainer the trainer's)")
    p.add_argument("--steps", type=cli.positive_int, default=None,
                   help="steps profiled after two warm-up steps (default: 3; with --trainer 8, so that R1's "
                        "every-4th step counts twice in eight)")
    p.add_argument("--trainer", action="store_true",
                   help="profile the trainer's step for --model with its per-model defaults instead of the plain model")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="threads for BLAS and Numba (default: $CGANRAW_BENCH_THREADS, else the CPUs this process "
                        "may use)")
    p.add_argument("--no-ceiling", action="store_true", help="skip measuring the machine's SGEMM rate")
    return cli.add_common_flags(p)


def _main(args) -> int:
    cli.setup_logging(args)
    harness.set_threads(args.threads or harness.bench_threads())
    ceiling = None if args.no_ceiling else harness.cpu_ceilings("quick")["GFLOP/s"]
    plain = 128 if not args.trainer else None
    steps = args.steps or (8 if args.trainer else 3)
    log.info("profiling %d step(s) of %s%s ...", steps, args.model, " (the trainer's)" if args.trainer else "")
    print(format_profile(profile_step(args.model, args.batch or plain, args.width or plain, steps,
                                      trainer=args.trainer), ceiling))
    return 0


def main(argv=None) -> int:
    return cli.run(_main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

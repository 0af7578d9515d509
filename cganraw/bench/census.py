"""The step census: what one training step asks of the device, counted, and what it would
cost on a named GPU. `python -m cganraw.bench --census` (or `python -m cganraw.bench.census`):

    python -m cganraw.bench --census --backend emu --model cgan-conv --width 128 --batch-size 128

It builds the model and the trainer's state (both Adams with their flat buffers, the moving
average of G, the loss flag) with the trainer's defaults, runs one warm-up step, then records
one more (cganraw.devicelog): the batch upload, the step and the moving-average update, as
the trainer runs them between two log steps (--log-step adds the flag and stats reads of a
log step). Every launch is real: on emu the kernels run in the emulator, GEMMs in NumPy's
BLAS standing for cuBLAS (the cuda backend's default), so every count is that of the cuda
backend (tests/test_census.py checks this against a stand-in CuPy that counts every call).

Counted: launches by kernel (kernels/*.cu, cuBLAS SGEMMs, memsets, fills, CuPy copies and adds),
host<->device copies and syncs; bytes per launch from its array arguments (each counted
once, read or written); FLOPs per GEMM (2mnk). The estimate puts each launch at its roofline
on the GPU, max(bytes / bandwidth, flops / rate) (kernels are taken as memory-bound), adds
a fixed overhead per launch, and per copy its bytes over PCIe plus a latency, and per sync
a drain. The last line is

    census: launches=N syncs=M copies=C est_step_ms=X (gpu=h100)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
import time
from collections import defaultdict

import numpy as np

from cganraw import backend, cli, devicelog, models

log = logging.getLogger("cganraw.census")


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float        # bytes/s of HBM
    fp32: float             # FLOP/s, FP32 (CUDA cores)
    tf32: float             # FLOP/s, TF32 tensor cores, dense


GPUS = {
    "h100": GPU("H100 SXM (HBM3)", 3.35e12, 67e12, 495e12),
    "h200": GPU("H200 SXM (HBM3e)", 4.8e12, 67e12, 495e12),
    "a100": GPU("A100 SXM 80GB (HBM2e)", 2.039e12, 19.5e12, 156e12),
}
LAUNCH_US = 4.0      # per launch: CUDA's launch latency and a small kernel's ramp and tail
COPY_US = 10.0       # per host<->device copy, on top of its bytes over PCIe
PCIE = 25e9          # bytes/s, PCIe 4 x16 as reached from pageable memory
SYNC_US = 10.0       # per sync: the host waits, the queue drains and refills


def estimate_us(event, gpu, tf32=False, launch_us=LAUNCH_US):
    """Microseconds the GPU spends on one devicelog Event (a sync: its drain)."""
    if event.kind in devicelog.LAUNCH_KINDS:
        t = event.bytes / gpu.bandwidth
        if event.kind == "gemm":
            t = max(t, event.flops / (gpu.tf32 if tf32 else gpu.fp32))
        return t * 1e6 + launch_us
    if event.kind in devicelog.COPY_KINDS:
        return event.bytes / PCIE * 1e6 + COPY_US
    if event.kind == "sync":
        return SYNC_US
    return 0.0


@dataclasses.dataclass
class Census:
    log: devicelog.Log
    gpu: str
    tf32: bool
    launch_us: float
    config: dict
    measured_ms: float | None = None

    def rows(self):
        """(kind, name, count, bytes, flops, est_us) per launch name, by estimated time."""
        gpu = GPUS[self.gpu]
        acc = defaultdict(lambda: [0, 0, 0, 0.0])
        for e in self.log.events:
            r = acc[(e.kind, e.name)]
            r[0] += 1
            r[1] += e.bytes
            r[2] += e.flops
            r[3] += estimate_us(e, gpu, self.tf32, self.launch_us)
        return sorted(((k, n, *v) for (k, n), v in acc.items()), key=lambda r: -r[5])

    @property
    def launches(self):
        return len(self.log.launches)

    @property
    def syncs(self):
        return len(self.log.syncs)

    @property
    def copies(self):
        return len(self.log.copies)

    def est_ms(self):
        gpu = GPUS[self.gpu]
        return sum(estimate_us(e, gpu, self.tf32, self.launch_us) for e in self.log.events) / 1e3

    def summary_line(self):
        return (f"census: launches={self.launches} syncs={self.syncs} copies={self.copies} "
                f"est_step_ms={self.est_ms():.3f} (gpu={self.gpu})")

    def report(self):
        gpu = GPUS[self.gpu]
        c = self.config
        flops = sum(e.flops for e in self.log.events)
        gemms = [e for e in self.log.launches if e.kind == "gemm"]
        lines = [f"step census: {c['model']} width {c['width']} batch {c['batch_size']} on {c['backend']} "
                 f"({'a log step' if c['log_step'] else 'a step between log steps'}; mismatch {c['mismatch']}, "
                 f"mode seeking {c['mode_seeking']}, G norm {c['g_norm']}, D norm {c.get('d_norm')}, "
                 f"minibatch std {c.get('minibatch_std')}, D stem {c.get('d_stem', 0)}, FiLM in G {c.get('g_film')}, "
                 f"EMA {c['ema_decay']}, "
                 f"R1 {c.get('r1', 0)} every {c.get('r1_every', 1)} steps; step {c.get('step', 1)})",
                 f"estimate for {gpu.name}: {gpu.bandwidth / 1e12:.2f} TB/s, GEMMs at "
                 f"{(gpu.tf32 if self.tf32 else gpu.fp32) / 1e12:.0f} TFLOP/s ({'TF32' if self.tf32 else 'FP32'}); "
                 f"{self.launch_us:g} us per launch, {COPY_US:g} us + bytes at {PCIE / 1e9:.0f} GB/s per copy, "
                 f"{SYNC_US:g} us per sync",
                 "",
                 f"{'kind':8s} {'name':40s} {'count':>6s} {'MB':>10s} {'GFLOP':>8s} {'est us':>9s}"]
        for kind, name, count, nbytes, fl, us in self.rows():
            lines.append(f"{kind:8s} {name:40s} {count:6d} {nbytes / 1e6:10.2f} {fl / 1e9:8.2f} {us:9.1f}")
        by_kind = defaultdict(int)
        for e in self.log.launches:
            by_kind[e.kind] += 1
        total_bytes = sum(e.bytes for e in self.log.launches)
        lines += ["",
                  "launches by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items(), key=lambda t: -t[1])),
                  f"GEMMs: {len(gemms)}, {flops / 1e9:.2f} GFLOP; device traffic {total_bytes / 1e9:.3f} GB; "
                  f"launch overhead {self.launches * self.launch_us / 1e3:.3f} ms of the estimate"]
        if self.measured_ms is not None:
            lines.append(f"measured on this machine ({backend.current()}): {self.measured_ms:.3f} ms per step")
        lines.append(self.summary_line())
        return "\n".join(lines)

    def to_json(self):
        return {"config": self.config, "gpu": self.gpu, "tf32": self.tf32, "launch_us": self.launch_us,
                "launches": self.launches, "syncs": self.syncs, "copies": self.copies, "est_step_ms": self.est_ms(),
                "measured_ms": self.measured_ms,
                "rows": [dict(zip(("kind", "name", "count", "bytes", "flops", "est_us"), r)) for r in self.rows()]}


def _gemm_module():
    return importlib.import_module("cganraw.ops.gemm")


def run_census(model="cgan-conv", width=128, batch_size=128, num_classes=10, gpu="h100", tf32=False,
               launch_us=LAUNCH_US, log_step=False, measure=0, seed=0, step=1, **overrides):
    """Census of training step `step` (>= 1; step 0 warms up) on the active backend (cuda or emu).
    Settings not given are the trainer's defaults for `model` (cganraw.settings.model_default).
    With R1 every K steps, a step that K divides runs the penalty. measure > 0 also times that
    many steps after the census (wall clock, synchronised at the end)."""
    from cganraw.bench.train_cases import trainer_step

    if backend.current() not in ("cuda", "emu"):
        raise ValueError(f"the census counts kernel launches: use the cuda or emu backend, not {backend.current()!r}")
    if step < 1:
        raise ValueError(f"step {step}: the census records a step after the warm-up step 0")
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {', '.join(GPUS)}")
    gemm = _gemm_module()
    prev_impl = gemm.set_gemm_impl("library")       # cuBLAS on cuda; NumPy's BLAS standing for it on emu
    try:
        one_step, cfg = trainer_step(model, width, batch_size, num_classes, seed, **overrides)
        cfg.update(backend=backend.current(), log_step=bool(log_step), step=int(step))
        with np.errstate(all="ignore"):
            t0 = time.perf_counter()
            one_step(0, True)                      # compiles kernels, makes constants, packs the average
            log.info("warm-up step: %.2f s", time.perf_counter() - t0)
            t0 = time.perf_counter()
            with devicelog.recording() as record:
                one_step(step, log_step)
            log.info("recorded step: %.2f s", time.perf_counter() - t0)
            measured = None
            if measure:
                t0 = time.perf_counter()
                for i in range(int(measure)):
                    one_step(step + 1 + i, i == measure - 1)   # the last one reads the stats: the queue drains
                measured = (time.perf_counter() - t0) / int(measure) * 1e3
    finally:
        gemm.set_gemm_impl(prev_impl)
    return Census(record, gpu, bool(tf32), float(launch_us), cfg, measured)


def build_parser():
    from cganraw import settings
    p = argparse.ArgumentParser(prog="python -m cganraw.bench --census",
                                description="Count one training step's launches, copies and syncs, and estimate "
                                            "its time on a GPU.")
    p.add_argument("--backend", choices=("emu", "cuda"), default="emu",
                   help="emu runs every kernel in the CPU emulator; cuda on a GPU")
    p.add_argument("--model", choices=models.MODELS, default="cgan-conv")
    p.add_argument("--width", type=cli.positive_int, default=128)
    p.add_argument("--batch-size", type=cli.positive_int, default=128)
    p.add_argument("--num-classes", type=cli.positive_int, default=10)
    p.add_argument("--mismatch", type=cli.nonneg_float, default=None, help="default: the trainer's, per model")
    p.add_argument("--d-norm", choices=("none", "spectral"), default=None, help="cgan-conv; default: the trainer's")
    p.add_argument("--minibatch-std", action=argparse.BooleanOptionalAction, default=None,
                   help="cgan-conv; default: the trainer's")
    p.add_argument("--d-stem", type=cli.nonneg_int, default=None, metavar="C",
                   help="cgan-conv: channels of D's stride-1 stem at 28x28 (0: none); default: the trainer's")
    p.add_argument("--mode-seeking", type=cli.nonneg_float, default=settings.DEFAULTS["mode_seeking"])
    p.add_argument("--ema-decay", type=cli.unit_float, default=settings.DEFAULTS["ema_decay"])
    p.add_argument("--g-norm", choices=models.G_NORMS, default=None,
                   help="cgan-conv: the norm after G's transposed convolutions; default: the trainer's")
    p.add_argument("--g-batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="old name of --g-norm batch (--no-g-batchnorm: --g-norm none)")
    p.add_argument("--g-film", action=argparse.BooleanOptionalAction, default=None,
                   help="cgan-conv: FiLM in G; default: the trainer's")
    p.add_argument("--r1", type=cli.nonneg_float, default=None, metavar="GAMMA",
                   help="weight of the R1 penalty; default: the trainer's, per model")
    p.add_argument("--r1-every", type=cli.positive_int, default=None, metavar="K",
                   help="R1 every K steps; default: the trainer's")
    p.add_argument("--step", type=cli.positive_int, default=1,
                   help="the step recorded (after the warm-up step 0): with R1 every K steps, a multiple of K "
                        "runs the penalty")
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100", help="the GPU the estimate is for")
    p.add_argument("--tf32", action="store_true", help="GEMMs at the TF32 tensor-core rate (default FP32)")
    p.add_argument("--launch-us", type=cli.nonneg_float, default=LAUNCH_US,
                   help="overhead added per launch in the estimate")
    p.add_argument("--log-step", action="store_true", help="census a log step (adds the flag and stats reads)")
    p.add_argument("--measure", type=cli.nonneg_int, default=0, metavar="N",
                   help="also time N steps on this backend (on cuda: the measured step time beside the estimate)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the census as JSON")
    return cli.add_common_flags(p)


def _main(args):
    cli.setup_logging(args)
    if args.json:
        cli.check_output_file(args.json, "--json")
    prev = backend.current()
    try:
        backend.use(args.backend)
    except RuntimeError as e:
        raise cli.CLIError(str(e)) from None
    try:
        return _census(args)
    finally:
        backend.use(prev)       # a caller in this process (bench's --census, a test) keeps its backend


def _census(args):
    c = run_census(args.model, args.width, args.batch_size, args.num_classes, args.gpu, args.tf32, args.launch_us,
                   args.log_step, args.measure, mismatch=args.mismatch, mode_seeking=args.mode_seeking,
                   ema_decay=args.ema_decay, g_norm=args.g_norm, g_batchnorm=args.g_batchnorm, d_norm=args.d_norm,
                   minibatch_std=args.minibatch_std, g_film=args.g_film, d_stem=args.d_stem, r1=args.r1,
                   r1_every=args.r1_every,
                   step=args.step)
    if args.json:
        from cganraw.fileio import atomic_write
        atomic_write(args.json, json.dumps(c.to_json(), indent=1).encode())
    print(c.report())
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return cli.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())

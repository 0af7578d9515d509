"""Per-kernel roofline estimates for a named GPU, counted from the launches themselves.

    python bench/roofline.py [--gpu h100] [--batch 128] [--width 128] [--markdown]

No GPU is needed: every op runs on the emu backend with its kernels recorded, not
executed (`recording()` replaces cganraw.ops._launch.function), at the conv cGAN's real
layer shapes. From each launch's kernel name, grid, block and arguments:

    bytes     the array arguments' sizes: each read or written once, plus the inputs a
              kernel reads twice (PASSES: BatchNorm v1/v2 make two passes over x, dy, xhat)
    FLOPs     2*M*N*K for the GEMM kernels, from their M, N, K arguments
    memory    bandwidth by Little's law: resident threads (the launch's threads, at most
              2048 per SM) x bytes each keeps in flight (INFLIGHT: 4 for a scalar load, 16
              for a float4, times the independent loads per iteration) / LATENCY_S, capped
              at BW_CAP of the HBM bandwidth
    compute   the version's fraction of its peak on a full GPU (GEMM_EFF: the published
              SGEMM ladder, see below) x the fraction of SMs its grid occupies
    index     integer instructions per element for the index-heavy kernels (INDEX_INSTR:
              im2col/col2im), at the GPU's 32-bit integer issue rate
    time      max(bytes / bandwidth, FLOPs / compute, index work, LAUNCH_FLOOR_S), where
              a block-per-channel reduction over an (N, C) matrix (HW = 1) moves 8x its
              bytes (one 4-byte value per 32-byte sector: STRIDED_WHEN_HW1)

Estimated fraction of peak: bytes / time / HBM bandwidth for memory-bound kernels, FLOPs /
time / the FP32 peak (TF32 for gemm_v4) for the GEMMs. These are estimates of a model, not
measurements: the inputs are stated here and in the README.

GEMM_EFF comes from the standard SGEMM worklog ladder (naive ~1-8% of cuBLAS, shared-memory
tiling ~13%, 2-D register blocking ~45-69%, vectorised loads ~78%; cuBLAS itself ~75% of an
H100's 67 TFLOP/s FP32) and, for TF32 WMMA with 64x64 block tiles and 2x2 fragments per
warp, a quarter of the dense TF32 peak (cuBLAS reaches ~60%).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
from dataclasses import dataclass, field

import numpy as np

from cganraw import backend
from cganraw.ops import _launch

GPUS = {
    "h100": dict(name="H100 SXM (HBM3 3.35 TB/s, 67 TFLOP/s FP32, 495 TFLOP/s TF32 dense, 132 SMs)",
                 bw=3.35e12, fp32=67e12, tf32=495e12, sms=132),
}
LATENCY_S = 600e-9            # loaded HBM latency: 2 MB in flight saturate 3.35 TB/s
BW_CAP = 0.90                 # the best a streaming kernel reaches of the HBM bandwidth
LAUNCH_FLOOR_S = 2e-6         # a kernel takes at least this long, however small
THREADS_PER_SM = 2048
GEMM_EFF = {"gemm_v1": 0.06, "gemm_v2": 0.10, "gemm_v3": 0.40, "gemm_v3 (before)": 0.35, "gemm_v4": 0.25}
GEMM_KERNELS = ("gemm_v1", "gemm_v2", "gemm_v3", "gemm_v4")
# bytes in flight per thread: (independent loads per iteration) x (bytes per load)
INFLIGHT = {
    "_forward_v1": 4, "_backward_v1": 8, "_forward_v2": 16, "_backward_v2": 32,   # activations
    "bias_add_forward_v1": 4, "bias_add_forward_v2": 4, "bias_add_backward_v1": 4, "bias_add_backward_v2": 4,
    "bias_add_backward_partial_v3": 16, "bias_add_backward_reduce_v3": 4,
    "bias_leaky_relu_forward_v1": 16, "bias_leaky_relu_backward_partial_v1": 32,
    "batchnorm_forward_stats_v1": 4, "batchnorm_forward_stats_v2": 4, "batchnorm_forward_stats_v3": 16,
    "batchnorm_forward_stats_centered_v3": 16,
    "batchnorm_forward_invstd_v1": 4, "batchnorm_forward_v1": 4, "batchnorm_forward_v2": 4,
    "batchnorm_forward_v3": 16, "batchnorm_backward_v1": 8, "batchnorm_backward_v2": 8,
    "batchnorm_backward_partial_v3": 32, "batchnorm_backward_v3": 32, "batchnorm_running_update_v1": 8,
    "batchnorm_leaky_relu_forward_v1": 16, "batchnorm_leaky_relu_backward_partial_v1": 32,
    "batchnorm_leaky_relu_backward_v1": 32,
    "im2col_v1": 4, "im2col_v2": 4, "col2im_v1": 4, "col2im_v2": 8, "col2im_v3": 8,
    "embedding_forward_v1": 4, "embedding_backward_v1": 4, "embedding_backward_v2": 4,
    "gemm_splitk_reduce_v1": 32,
}
INFLIGHT.update({"bias_add_backward_reduce_v3": 16})   # the split partials load independently
INFLIGHT.update({"bias_add_backward_reduce_v4": 16, "batchnorm_leaky_relu_backward_v2": 32,
                 "embedding_backward_v3": 4,
                 "bias_leaky_relu_forward_v2": 4,              # a scalar gather from the channel-major side
                 "bias_leaky_relu_backward_partial_v2": 32})   # v1's loads, scalar stores
# integer index work per element of the kernels dominated by it (instructions per thread
# and element: a 64-bit division is ~70 instructions on a GPU, a 32-bit one ~20), and the
# element each counts (argument index of the array whose size is the loop's trip count)
INDEX_INSTR = {"im2col_v1": (200, 1), "im2col_v2": (55, 1), "col2im_v1": (200, 0), "col2im_v2": (280, 1),
               "col2im_v3": (90, 1)}
INT_LANE_OPS = 132 * 128 * 1.755e9   # 32-bit integer lane-instructions per second (H100, 128 lanes/SM)
# reductions that read a channel's values strided by C when HW == 1 (a block per channel):
# one 4-byte value per 32-byte sector, 8x the bytes; (index of the HW argument)
STRIDED_WHEN_HW1 = {"bias_add_backward_v2": 4, "batchnorm_forward_stats_v2": 8, "batchnorm_backward_v2": 10}
# arguments a kernel reads twice (two passes): BatchNorm v1/v2 statistics (x) and backward (dy, xhat)
PASSES = {"batchnorm_forward_stats_v1": (3,), "batchnorm_forward_stats_v2": (3,),
          "batchnorm_backward_v1": (3, 4), "batchnorm_backward_v2": (3, 4)}


@dataclass
class Launch:
    kernel: str
    grid: tuple
    block: tuple
    args: tuple
    label: str = ""           # a kernel variant the model distinguishes ("gemm_v3 (before)")

    @property
    def threads(self):
        return int(np.prod(self.grid)) * int(np.prod(self.block))

    @property
    def blocks(self):
        return int(np.prod(self.grid))


@contextlib.contextmanager
def recording(label_for=None):
    """Inside: kernel launches on the emu backend are recorded (list of Launch), not run."""
    log = []
    prev, real = backend.current(), _launch.function

    def fake(family, name):
        def launch(grid, block, args, shared_mem=0):
            g = tuple(grid) if isinstance(grid, tuple) else (grid,)
            b = tuple(block) if isinstance(block, tuple) else (block,)
            log.append(Launch(name, g, b, tuple(args), (label_for or {}).get(name, name)))
        return launch

    backend.use("emu")
    _launch.function = fake
    try:
        yield log
    finally:
        _launch.function = real
        backend.use(prev)


def _arrays(args):
    return [a for a in args if isinstance(a, np.ndarray) and a.ndim > 0]


@dataclass
class Estimate:
    kernel: str
    launches: int = 0
    bytes: float = 0.0
    flops: float = 0.0
    time_s: float = 0.0
    peak: str = "HBM"
    items: list = field(default_factory=list)

    @property
    def fraction(self):
        return self.items[0] if self.items else 0.0


def estimate(launch, gpu):
    """(bytes, flops, time_s, fraction of peak, peak name) of one launch on `gpu`."""
    spec = GPUS[gpu]
    name = launch.kernel
    nbytes = sum(a.nbytes for a in _arrays(launch.args))
    nbytes += sum(launch.args[i].nbytes for i in PASSES.get(name, ()))
    moved = nbytes
    if name in STRIDED_WHEN_HW1 and int(launch.args[STRIDED_WHEN_HW1[name]]) == 1:
        moved = 8 * nbytes
    inflight = INFLIGHT.get(name)
    if inflight is None:
        inflight = next((v for k, v in INFLIGHT.items() if k.startswith("_") and name.endswith(k)), 4)
    resident = min(launch.threads, spec["sms"] * THREADS_PER_SM)
    bw = min(BW_CAP * spec["bw"], resident * inflight / LATENCY_S)
    flops, peak_name = 0.0, "HBM"
    t_mem = moved / bw
    t = t_mem
    if name in INDEX_INSTR:
        instr, arg = INDEX_INSTR[name]
        t = max(t, launch.args[arg].size * instr / (INT_LANE_OPS * (spec["sms"] / 132)))
    if name in GEMM_KERNELS:
        m, n, k = (int(v) for v in launch.args[3:6])
        flops = 2.0 * m * n * k               # split-K launches cover K once between their splits
        peak_name = "TF32" if name == "gemm_v4" else "FP32"
        peak = spec["tf32"] if name == "gemm_v4" else spec["fp32"]
        fill = min(1.0, launch.blocks / spec["sms"])
        t_mem = nbytes / (BW_CAP * spec["bw"])                           # tiles re-read through L2, not HBM
        t = max(flops / (peak * GEMM_EFF[launch.label] * fill), t_mem)
    t = max(t, LAUNCH_FLOOR_S)
    if flops:
        frac = flops / t / (spec["tf32"] if peak_name == "TF32" else spec["fp32"])
    else:
        frac = nbytes / t / spec["bw"]
    return nbytes, flops, t, frac, peak_name


def summarise(log, gpu):
    """Totals of a list of launches: launches, bytes, FLOPs, estimated time, and the
    kernels by name with their estimates."""
    per = {}
    for L in log:
        b, f, t, frac, peak = estimate(L, gpu)
        e = per.setdefault(L.label, Estimate(L.label, peak=peak))
        e.launches += 1
        e.bytes += b
        e.flops += f
        e.time_s += t
    tot = Estimate("total", sum(e.launches for e in per.values()), sum(e.bytes for e in per.values()),
                   sum(e.flops for e in per.values()), sum(e.time_s for e in per.values()))
    return tot, per


# ---------------------------------------------------------------- the ladder at real shapes

def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ladder(batch=128, width=128):
    """[(family, shape, variant, technique, callable)] at the conv cGAN's real shapes
    (and the MLP generator's BatchNorm1d): each callable runs one op chain."""
    # the op modules (cganraw.ops re-exports some functions under the modules' names)
    A, BN, B, CV, E, G = (importlib.import_module(f"cganraw.ops.{m}")
                          for m in ("activation", "batchnorm", "bias", "conv", "embedding", "gemm"))
    n, w = batch, width
    rows = []
    gemms = [("D.conv2 fwd", w, n * 49, w * 9, False, False), ("D.conv2 dW", w, w * 9, n * 49, False, True),
             ("G.convT2 phase tap", w, n * 256 - 34, w, False, False), ("G.fc fwd", n, w * 49, 100, False, True)]
    for label, m, nn_, k, ta, tb in gemms:
        a = _rand(k, m) if ta else _rand(m, k)
        b = _rand(nn_, k) if tb else _rand(k, nn_)
        for v, variant, tech, splits in (
                (1, "v1", "naive, one output per thread", None),
                (2, "v2", "32x32 shared-memory tiles", None),
                (3, "v3 (before)", "64x64 tiles, 4x4 per thread, scalar loads, no split-K", 1),
                (3, "v3", "+ float4 loads, split-K", None),
                (4, "v4", "TF32 WMMA, warp tiles, double-buffered cp.async, split-K", None)):
            rows.append(("gemm", f"{label} M={m} N={nn_} K={k}", variant, tech,
                         lambda a=a, b=b, ta=ta, tb=tb, v=v, s=splits: G.gemm_cuda(a, b, ta, tb, version=v, splits=s),
                         {"gemm_v3": "gemm_v3 (before)"} if variant == "v3 (before)" else None))
    for shape in ((n, w, 14, 14), (n, w * 49)):
        dy = _rand(*shape)
        for v, tech in ((1, "thread per channel"), (2, "block per channel, shuffles"),
                        (3, "channels x splits grid, float4, ordered second pass")):
            rows.append(("bias grad", "x".join(map(str, shape)), f"v{v}", tech,
                         lambda dy=dy, v=v: B.bias_add_backward_cuda(dy, version=v), None))
    for shape in ((n, w, 14, 14), (n, w, 28, 28), (n, 1024)):
        x, g, bt = _rand(*shape), _rand(shape[1]), _rand(shape[1])
        for v, tech in ((1, "thread per channel / element"), (2, "block per channel / row"),
                        (3, "channels x splits grid, float4, ordered second pass")):
            def chain(x=x, g=g, bt=bt, v=v):
                y, cache, _, _ = BN.batchnorm_forward_cuda(x, g, bt, version=v)
                BN.batchnorm_backward_cuda(y, cache, version=v)
            rows.append(("batchnorm fwd+bwd", "x".join(map(str, shape)), f"v{v}", tech, chain, None))
    x, g, bt = _rand(n, w, 28, 28), _rand(w), _rand(w)

    def bn_then_leaky():
        y, cache, _, _ = BN.batchnorm_forward_cuda(x, g, bt, version=2)
        y2, ac = A.leaky_relu_forward_cuda(y, 0.2)
        BN.batchnorm_backward_cuda(A.leaky_relu_backward_cuda(y2, ac), cache, version=2)

    def bn_leaky_fused():
        y, cache, _, _ = BN.batchnorm_leaky_relu_forward_cuda(x, g, bt, negative_slope=0.2)
        BN.batchnorm_leaky_relu_backward_cuda(y, cache)
    rows += [("batchnorm+leaky fwd+bwd", f"{n}x{w}x28x28", "before", "BatchNorm v2 + leaky_relu v2", bn_then_leaky, None),
             ("batchnorm+leaky fwd+bwd", f"{n}x{w}x28x28", "fused", "one apply pass each way, mask from xhat",
              bn_leaky_fused, None)]
    y0, b0 = _rand(n, w, 14, 14), _rand(w)

    def bias_then_leaky():
        B.bias_add_forward_cuda(y0, b0, version=2)
        y2, ac = A.leaky_relu_forward_cuda(y0, 0.2)
        B.bias_add_backward_cuda(A.leaky_relu_backward_cuda(y2, ac), version=2)

    def bias_leaky_fused():
        _, cache = B.bias_leaky_relu_forward_cuda(y0, b0, 0.2)
        B.bias_leaky_relu_backward_cuda(y0, cache)
    rows += [("bias+leaky fwd+bwd", f"{n}x{w}x14x14", "before", "bias_add v2 + leaky_relu v2 + bias grad v2",
              bias_then_leaky, None),
             ("bias+leaky fwd+bwd", f"{n}x{w}x14x14", "fused", "one pass each way, mask from y", bias_leaky_fused, None)]
    xi = _rand(n, w, 14, 14)
    for v, tech in ((1, "flat grid, 64-bit division per element"), (2, "2-D grid, 32-bit indices")):
        rows.append(("im2col", f"{n}x{w}x14x14 k3 s2 p1", f"v{v}", tech,
                     lambda v=v: CV.im2col_cuda(xi, 3, 2, 1, version=v), None))
    cols = _rand(w * 9, n * 49)
    for v, tech in ((1, "scatter, atomics"), (2, "gather, 64-bit index"), (3, "gather, 2-D grid, 32-bit indices")):
        rows.append(("col2im", f"({w * 9}, {n * 49}) -> {n}x{w}x14x14", f"v{v}", tech,
                     lambda v=v: CV.col2im_cuda(cols, (n, w, 14, 14), 3, 2, 1, version=v), None))
    xt, Wt = _rand(n, w, 14, 14), _rand(w, w, 4, 4)

    def convt_cols():
        x2 = CV._to_channel_major(xt)
        c = G.gemm_cuda(Wt.reshape(w, w * 16), x2, trans_a=True, version=4)
        CV.col2im_cuda(c, (n, w, 28, 28), 4, 2, 1, out_hw=(14, 14), version=3)

    def convt_phase():
        prev = G.set_gemm_impl("v4")
        try:
            CV.conv_transpose2d_phase_forward(xt, Wt)
        finally:
            G.set_gemm_impl(prev)
    rows += [("convT k4s2p1 fwd", f"{n}x{w}x14x14 -> 28x28", "before", "GEMM v4 to a (2048, N*196) cols + col2im v3",
              convt_cols, None),
             ("convT k4s2p1 fwd", f"{n}x{w}x14x14 -> 28x28", "phase", "16 GEMM v4 on bordered views, no cols",
              convt_phase, None)]
    labels, dye = np.random.default_rng(0).integers(0, 10, n), _rand(n, 50)
    for v, tech in ((1, "atomicAdd scatter"), (2, "segmented by label, deterministic")):
        rows.append(("embedding bwd", f"N={n} K=10 D=50", f"v{v}", tech,
                     lambda v=v: E.embedding_backward_cuda(dye, (labels.astype(np.int32), (10, 50)), version=v), None))
    return rows


def run(gpu="h100", batch=128, width=128):
    """[(family, shape, variant, technique, launches, bytes, flops, est_us, fraction, peak)]."""
    out = []
    for family, shape, variant, tech, fn, labels in ladder(batch, width):
        with recording(labels) as log:
            fn()
        tot, per = summarise(log, gpu)
        gemm = [e for e in per.values() if e.flops]
        if gemm:
            peak = "TF32" if any("v4" in e.kernel for e in gemm) else "FP32"
            ref = GPUS[gpu]["tf32" if peak == "TF32" else "fp32"]
            frac = tot.flops / tot.time_s / ref
        else:
            peak, frac = "HBM", tot.bytes / tot.time_s / GPUS[gpu]["bw"]
        out.append((family, shape, variant, tech, tot.launches, tot.bytes, tot.flops, tot.time_s * 1e6, frac, peak))
    return out


def markdown(rows, gpu):
    lines = [f"Estimated on {GPUS[gpu]['name']} by bench/roofline.py (a model, not a measurement).", "",
             "| family | shape | version | technique | launches | MB moved | GFLOP | est. µs | est. % of peak |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for fam, shape, var, tech, nl, nb, nf, us, frac, peak in rows:
        lines.append(f"| {fam} | {shape} | {var} | {tech} | {nl} | {nb / 1e6:.1f} | {nf / 1e9:.2f} | {us:.1f} | "
                     f"{100 * frac:.0f}% {peak} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--markdown", action="store_true", help="a markdown table (default: plain text)")
    a = p.parse_args(argv)
    rows = run(a.gpu, a.batch, a.width)
    if a.markdown:
        print(markdown(rows, a.gpu))
    else:
        for r in rows:
            print(f"{r[0]:26s} {r[1]:38s} {r[2]:12s} launches={r[4]:3d} MB={r[5] / 1e6:8.1f} "
                  f"GFLOP={r[6] / 1e9:7.2f} est_us={r[7]:9.1f} {100 * r[8]:5.1f}% {r[9]}")


if __name__ == "__main__":
    main()

"""Profile the conv cGAN training step (batch 128, width 128) and compare with PyTorch."""
import os, sys, time, cProfile, pstats, collections, importlib
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE), os.path.dirname(os.path.dirname(_HERE))]
import numpy as np
import _benchlib as bl
from cganraw import bench as cb
T = int(os.environ.get("THREADS", 2)); bl.set_threads(T)
import torch; torch.set_num_threads(T)
from bench_train_step import torch_train_step, _our_step, _data
N = int(os.environ.get("N", 128)); W = 128; R = int(os.environ.get("ROUNDS", 5))
x, y = _data(N, True)
ours = _our_step("cgan-conv", N, W, np, x, y)
peer = torch_train_step(torch, "cgan-conv", N, W, x, y)
gm = importlib.import_module("cganraw.ops.gemm")
rec = collections.defaultdict(float); flops = collections.defaultdict(float)
orig = gm.gemm_numpy
def wrapped(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    t = time.perf_counter(); r = orig(a, b, trans_a, trans_b, alpha, beta, out); dt = time.perf_counter() - t
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    key = (m, n, k, ("T" if trans_a else "N") + ("T" if trans_b else "N"))
    rec[key] += dt; flops[key] += 2 * m * n * k
    return r
for f in (ours, peer): f(); f()
cei = bl.cpu_ceilings("full")
to, tt = [], []
for i in range(R):
    a = time.perf_counter(); peer(); tt.append(time.perf_counter() - a)
    a = time.perf_counter(); ours(); to.append(time.perf_counter() - a)
print(f"threads {T} batch {N}: ours median {np.median(to):.3f} s  torch median {np.median(tt):.3f} s  ratio {np.median(to)/np.median(tt):.3f}  paired {np.median(np.array(to)/np.array(tt)):.3f}")
print("ours", [round(v, 3) for v in to]); print("torch", [round(v, 3) for v in tt])
print(f"ceilings: copy {cei['GB/s']:.1f} GB/s  sgemm {cei['GFLOP/s']:.1f} GFLOP/s")
gm.gemm_numpy = wrapped
P = 3
pr = cProfile.Profile(); pr.enable()
t0 = time.perf_counter()
for i in range(P): ours()
tot = (time.perf_counter() - t0) / P
pr.disable()
st = pstats.Stats(pr).stats
cat = collections.defaultdict(float)
def category(fn):
    file, line, name = fn
    if name in ("gemm_numpy", "wrapped"): return "GEMM (OpenBLAS)"
    if name == "im2col" and "conv.py" in file: return "im2col (numba)"
    if name == "col2im" and "conv.py" in file: return "col2im (numba)"
    if name in ("leaky", "leaky_backward") or "activation.py" in file: return "activations"
    if "bias.py" in file or "bias" in name: return "bias add/grad"
    if "adam" in file: return "Adam"
    if "dropout" in file: return "dropout"
    if "bce" in file or "losses" in file: return "BCE"
    if "embedding" in file: return "embedding"
    if name in ("<built-in method numpy.ascontiguousarray>", "<method 'reshape' of 'numpy.ndarray' objects>",
                "<built-in method numpy.concatenate>", "<method 'copy' of 'numpy.ndarray' objects>",
                "<method 'astype' of 'numpy.ndarray' objects>") or "concatenate" in name: return "layout copies (transpose/reshape/concat)"
    if "reduce" in name or "sum" in name: return "reductions"
    if "fill" in name or "zeros" in name: return "zero_grad/fill"
    return "other (python, rng, ...)"
for fn, (cc, nc, tt_, ct, callers) in st.items():
    cat[category(fn)] += tt_ / P
print(f"\nprofiled step: {tot:.3f} s (cProfile on)")
for k, v in sorted(cat.items(), key=lambda kv: -kv[1]):
    print(f"  {k:42s} {v*1e3:8.1f} ms  {100*v/tot:5.1f}%")
g = sum(rec.values()) / P; fl = sum(flops.values()) / P
print(f"\nGEMM total {g*1e3:.1f} ms/step, {fl/1e9:.1f} GFLOP/step -> {fl/g/1e9:.1f} GFLOP/s = {100*fl/g/1e9/cei['GFLOP/s']:.0f}% of the SGEMM ceiling")
print(f"  at the ceiling the GEMMs would take {fl/cei['GFLOP/s']/1e9*1e3:.0f} ms")
for key, v in sorted(rec.items(), key=lambda kv: -kv[1])[:14]:
    m, n, k, l = key
    print(f"  M={m:5d} N={n:6d} K={k:6d} {l}  {v/P*1e3:7.1f} ms  {flops[key]/v/1e9:6.1f} GFLOP/s")

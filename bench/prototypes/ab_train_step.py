"""Interleaved A/B of candidate CPU changes on the conv cGAN step (b128, w128), PyTorch in the same run."""
import os, sys, time, importlib
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE), os.path.dirname(os.path.dirname(_HERE))]
import numpy as np
import _benchlib as bl
from cganraw import bench as cb
T = int(os.environ.get("THREADS", 2)); bl.set_threads(T)
import torch; torch.set_num_threads(T)
import numba
from bench_train_step import torch_train_step, _our_step, _data
N = int(os.environ.get("N", 128)); R = int(os.environ.get("ROUNDS", 5))
MODEL = os.environ.get("MODEL", "cgan-conv"); x, y = _data(N, MODEL.startswith("cgan"))
gm = importlib.import_module("cganraw.ops.gemm")
cv = importlib.import_module("cganraw.ops.conv")
orig_gemm, orig_im2col, orig_col2im = gm.gemm_numpy, cv.im2col, cv.col2im
TH = float(os.environ.get("TH", 2**25))
def gemm_small_1thread(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    if 2.0 * m * n * k < TH:
        cb.set_blas_threads(1)
        try:
            return orig_gemm(a, b, trans_a, trans_b, alpha, beta, out)
        finally:
            cb.set_blas_threads(T)
    return orig_gemm(a, b, trans_a, trans_b, alpha, beta, out)
def numba1(f):
    def g(*a, **k):
        numba.set_num_threads(1)
        try: return f(*a, **k)
        finally: numba.set_num_threads(T)
    return g
act = importlib.import_module("cganraw.ops.activation")
orig_lf, orig_lb = act._leaky_relu_numba, act._leaky_relu_backward_numba
NTH = int(os.environ.get("NTH", 1 << 20))
def small_serial(f, idx=0):
    def g(*a):
        if a[idx].size < NTH:
            numba.set_num_threads(1)
            try: return f(*a)
            finally: numba.set_num_threads(T)
        return f(*a)
    return g
def setv(name):
    act._leaky_relu_numba, act._leaky_relu_backward_numba = orig_lf, orig_lb
    if "numbasmall1" in name:
        act._leaky_relu_numba, act._leaky_relu_backward_numba = small_serial(orig_lf), small_serial(orig_lb)
    gm.gemm_numpy, cv.im2col, cv.col2im = orig_gemm, orig_im2col, orig_col2im
    if "smallgemm1" in name: gm.gemm_numpy = gemm_small_1thread
    if "numba1" in name: cv.im2col, cv.col2im = numba1(orig_im2col), numba1(orig_col2im)
    if "phase" in name:
        import phase_cols as phase
        cv.im2col = lambda x, k, s=1, p=0, out_hw=None: phase.im2col_phase(x, k, s, p, out_hw)
        cv.col2im = lambda c, sh, k, s=1, p=0, out_hw=None: phase.col2im_phase(c, sh, k, s, p, out_hw)
    if "npim2col" in name: cv.im2col = lambda x, k, s=1, p=0, out_hw=None: cv.im2col_numpy(x, k, s, p, out_hw)
VARIANTS = os.environ.get("VARIANTS", "base,smallgemm1").split(",")
steps = {}
for v in VARIANTS:
    setv(v); steps[v] = _our_step(MODEL, N, 128, np, x, y); steps[v](); steps[v]()
peer = torch_train_step(torch, MODEL, N, 128, x, y); peer(); peer()
times = {v: [] for v in VARIANTS + ["torch"]}
for r in range(R):
    a = time.perf_counter(); peer(); times["torch"].append(time.perf_counter() - a)
    for v in VARIANTS:
        setv(v); a = time.perf_counter(); steps[v](); times[v].append(time.perf_counter() - a)
setv("base")
tt = np.array(times["torch"])
print(f"{MODEL} threads {T} batch {N} rounds {R}  load {os.getloadavg()}")
for v in VARIANTS + ["torch"]:
    a = np.array(times[v])
    print(f"  {v:28s} median {np.median(a):.3f} s   vs torch {np.median(a)/np.median(tt):.3f} (paired {np.median(a/tt):.3f})   vs base {np.median(a/np.array(times[VARIANTS[0]])):.3f}")

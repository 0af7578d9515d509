"""ConvTranspose2d(k=4, s=2, p=1) forward as 16 shifted GEMMs on the flattened padded input:
no im2col, no col2im (sub-pixel decomposition)."""
import time
import os, sys
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE), os.path.dirname(os.path.dirname(_HERE))]
import numpy as np
from cganraw.ops import conv
import _benchlib as _bl
_bl.set_threads(int(os.environ.get("THREADS", 1)))
# taps per output phase q: (kernel index i, input shift d)
TAPS = {0: ((1, 0), (3, -1)), 1: ((0, 1), (2, 0))}

def convT_s2k4_shift(x, W, b=None, stacked=False):
    n, cin, h, w = x.shape
    cout = W.shape[1]
    hp, wp = h + 2, w + 2
    xt = np.zeros((cin, n, hp, wp), dtype=x.dtype)            # channel-major, zero border
    xt[:, :, 1:h + 1, 1:w + 1] = x.transpose(1, 0, 2, 3)
    xf = xt.reshape(cin, n * hp * wp)
    p0 = wp + 1
    L = n * hp * wp - 2 * p0
    y = np.empty((n, cout, 2 * h, 2 * w), dtype=x.dtype)
    y6 = y.reshape(n, cout, h, 2, w, 2)
    Wt = np.ascontiguousarray(W.transpose(2, 3, 1, 0))        # (k, k, Cout, Cin)
    buf = np.empty((cout, n * hp * wp), dtype=x.dtype)
    tmp = np.empty((cout, L), dtype=x.dtype)
    for q in (0, 1):
        for r in (0, 1):
            acc = buf[:, p0:p0 + L]
            taps = [(i, j, di * wp + dj) for i, di in TAPS[q] for j, dj in TAPS[r]]
            if stacked:
                X = np.concatenate([xf[:, p0 + off:p0 + off + L] for _, _, off in taps])
                Wq = np.concatenate([Wt[i, j] for i, j, _ in taps], axis=1)
                np.matmul(Wq, X, out=acc)
            else:
                for t, (i, j, off) in enumerate(taps):
                    if t == 0:
                        np.matmul(Wt[i, j], xf[:, p0 + off:p0 + off + L], out=acc)
                    else:
                        np.matmul(Wt[i, j], xf[:, p0 + off:p0 + off + L], out=tmp)
                        acc += tmp
            ph = buf.reshape(cout, n, hp, wp)[:, :, 1:h + 1, 1:w + 1]
            y6[:, :, :, q, :, r] = ph.transpose(1, 0, 2, 3)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y

def t(fn, rep=5):
    fn(); ts = []
    for _ in range(rep):
        a = time.perf_counter(); fn(); ts.append(time.perf_counter() - a)
    return np.median(ts)

rng = np.random.default_rng(0)
for (n, cin, cout, h) in [(3, 5, 4, 6), (128, 128, 128, 14), (128, 129, 128, 7)]:
    x = rng.standard_normal((n, cin, h, h), dtype=np.float32)
    W = (0.05 * rng.standard_normal((cin, cout, 4, 4))).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    ref = conv.conv_transpose2d_forward(x, W, b, 2, 1)[0]
    for st in (False, True):
        np.testing.assert_allclose(convT_s2k4_shift(x, W, b, st), ref, rtol=1e-4, atol=1e-4)
    if n > 3:
        a = t(lambda: conv.conv_transpose2d_forward(x, W, b, 2, 1))
        s1 = t(lambda: convT_s2k4_shift(x, W, b, False)); s2 = t(lambda: convT_s2k4_shift(x, W, b, True))
        print(f"ConvT({cin}->{cout}) {h}->{2*h} N={n}: im2col/GEMM/col2im {a*1e3:.0f} ms | shifted GEMMs +acc {s1*1e3:.0f} ms (x{a/s1:.2f}) | stacked K {s2*1e3:.0f} ms (x{a/s2:.2f})")
print("matches conv_transpose2d_forward")

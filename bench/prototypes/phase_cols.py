"""Phase-split (space-to-depth) im2col/col2im: every copy/add is a contiguous slab."""
import time
import os, sys
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE), os.path.dirname(os.path.dirname(_HERE))]
import numpy as np
from cganraw.ops import conv

def im2col_phase(x, k, s, p, out_hw=None):
    n, c, h, w = x.shape
    ho, wo = out_hw or (conv.conv_output_size(h, k, s, p), conv.conv_output_size(w, k, s, p))
    m = (k - 1) // s + 1                       # taps per phase along an axis
    hq, wq = ho + m - 1, wo + m - 1            # phase plane size
    # padded input, channel-major, split into s*s phases: ph[q, r] = xpad[:, :, q::s, r::s]
    ph = np.zeros((s, s, c, n, hq, wq), dtype=x.dtype)
    xt = x.transpose(1, 0, 2, 3)               # (C, N, H, W) view
    for q in range(s):
        for r in range(s):
            # rows yy = Y*s + q - p of the input, Y in [0, hq)
            y0 = max(0, -((q - p) // s) if q - p < 0 else 0)
            Y0 = max(0, (p - q + s - 1) // s)
            Y1 = min(hq, (h - 1 - q + p) // s + 1)
            X0 = max(0, (p - r + s - 1) // s)
            X1 = min(wq, (w - 1 - r + p) // s + 1)
            if Y1 > Y0 and X1 > X0:
                ph[q, r, :, :, Y0:Y1, X0:X1] = xt[:, :, Y0 * s + q - p:(Y1 - 1) * s + q - p + 1:s,
                                                    X0 * s + r - p:(X1 - 1) * s + r - p + 1:s]
    cols = np.empty((c, k, k, n, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            a, q = divmod(i, s)
            b, r = divmod(j, s)
            cols[:, i, j] = ph[q, r, :, :, a:a + ho, b:b + wo]
    return cols.reshape(c * k * k, n * ho * wo)

def col2im_phase(cols, x_shape, k, s, p, out_hw=None):
    n, c, h, w = x_shape
    ho, wo = out_hw or (conv.conv_output_size(h, k, s, p), conv.conv_output_size(w, k, s, p))
    m = (k - 1) // s + 1
    hq, wq = ho + m - 1, wo + m - 1
    acc = np.zeros((s, s, c, n, hq, wq), dtype=cols.dtype)
    c6 = cols.reshape(c, k, k, n, ho, wo)
    for i in range(k):
        for j in range(k):
            a, q = divmod(i, s)
            b, r = divmod(j, s)
            acc[q, r, :, :, a:a + ho, b:b + wo] += c6[:, i, j]
    out = np.zeros((n, c, h, w), dtype=cols.dtype)
    ot = out.transpose(1, 0, 2, 3)
    for q in range(s):
        for r in range(s):
            Y0 = max(0, (p - q + s - 1) // s); Y1 = min(hq, (h - 1 - q + p) // s + 1)
            X0 = max(0, (p - r + s - 1) // s); X1 = min(wq, (w - 1 - r + p) // s + 1)
            if Y1 > Y0 and X1 > X0:
                ot[:, :, Y0 * s + q - p:(Y1 - 1) * s + q - p + 1:s, X0 * s + r - p:(X1 - 1) * s + r - p + 1:s] = acc[q, r, :, :, Y0:Y1, X0:X1]
    return out

def t(fn, rep=5):
    fn(); ts = []
    for _ in range(rep):
        a = time.perf_counter(); fn(); ts.append(time.perf_counter() - a)
    return np.median(ts)

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    # correctness on odd shapes
    for (sh, k, s, p, ohw) in [((2,3,9,9),3,2,1,None), ((2,4,14,14),4,2,1,(7,7)), ((1,2,8,8),7,1,3,None), ((2,1,9,11),3,3,2,None), ((1,2,8,8),3,2,1,(3,3)), ((3,2,7,5),3,2,1,None)]:
        x = rng.standard_normal(sh).astype(np.float32)
        assert np.array_equal(im2col_phase(x, k, s, p, ohw), conv.im2col_numpy(x, k, s, p, ohw)), sh
        cols = rng.standard_normal(conv.im2col_numpy(x, k, s, p, ohw).shape).astype(np.float32)
        np.testing.assert_allclose(col2im_phase(cols, sh, k, s, p, ohw), conv.col2im_numpy(cols, sh, k, s, p, ohw), atol=1e-5)
    print("phase versions match the references")
    N = 128
    cases = [("G.up2", (N,128,28,28), 4,2,1,(14,14)), ("G.up1", (N,128,14,14),4,2,1,(7,7)), ("D.conv2", (N,128,14,14),3,2,1,(7,7)),
             ("D.conv1", (N,2,28,28),3,2,1,(14,14)), ("G.out", (N,1,28,28),7,1,3,(28,28))]
    for name, shape, k, s, p, ohw in cases:
        x = rng.standard_normal(shape, dtype=np.float32)
        c2 = rng.standard_normal(conv.im2col_numpy(x, k, s, p, ohw).shape, dtype=np.float32)
        a = t(lambda: conv.im2col(x, k, s, p, out_hw=ohw)); b = t(lambda: im2col_phase(x, k, s, p, ohw))
        c = t(lambda: conv.col2im(c2, shape, k, s, p, out_hw=ohw)); d = t(lambda: col2im_phase(c2, shape, k, s, p, ohw))
        print(f"{name:8s} im2col numba {a*1e3:6.1f} ms  phase {b*1e3:6.1f} ms  x{a/b:4.2f} | col2im numba {c*1e3:6.1f} ms  phase {d*1e3:6.1f} ms  x{c/d:4.2f}")

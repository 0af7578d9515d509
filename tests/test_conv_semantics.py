"""Forward semantics of conv and transposed conv against loop definitions, and the
PyTorch output-size formulas."""
import numpy as np
import pytest

from cganraw import nn
from cganraw.ops import col2im, conv2d_forward, conv_transpose2d_forward, im2col


def conv2d_loops(x, W, b, s, p):
    # y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] x[n, c, i s + u - p, j s + v - p]
    n, c, h, w = x.shape
    o, _, k, _ = W.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = np.zeros((n, o, ho, wo))
    for nn_ in range(n):
        for oo in range(o):
            for i in range(ho):
                for j in range(wo):
                    acc = b[oo]
                    for cc in range(c):
                        for u in range(k):
                            for v in range(k):
                                yy, xx = i * s + u - p, j * s + v - p
                                if 0 <= yy < h and 0 <= xx < w:
                                    acc += W[oo, cc, u, v] * x[nn_, cc, yy, xx]
                    y[nn_, oo, i, j] = acc
    return y


def conv_transpose2d_loops(x, W, b, s, p, op=0):
    # each input pixel scatters W[c, :, :, :] * x into the output at (i s + u - p, j s + v - p)
    n, cin, h, w = x.shape
    _, cout, k, _ = W.shape
    ho, wo = (h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op
    y = np.zeros((n, cout, ho, wo)) + b[None, :, None, None]
    for nn_ in range(n):
        for c in range(cin):
            for i in range(h):
                for j in range(w):
                    for u in range(k):
                        for v in range(k):
                            yy, xx = i * s + u - p, j * s + v - p
                            if 0 <= yy < ho and 0 <= xx < wo:
                                y[nn_, :, yy, xx] += W[c, :, u, v] * x[nn_, c, i, j]
    return y


CASES = [  # (N, C, H, W, O, k, s, p)
    (1, 1, 5, 5, 1, 3, 1, 0),
    (2, 3, 7, 6, 4, 3, 2, 1),
    (1, 2, 7, 7, 3, 4, 2, 1),
    (2, 2, 6, 5, 3, 7, 1, 3),
    (1, 3, 8, 8, 2, 1, 2, 0),
    (3, 1, 9, 7, 2, 4, 3, 3),
]


@pytest.mark.parametrize("case", CASES)
def test_conv2d_matches_loops(case, rng):
    n, c, h, w, o, k, s, p = case
    x, W, b = rng.normal(size=(n, c, h, w)), rng.normal(size=(o, c, k, k)), rng.normal(size=o)
    y, _ = conv2d_forward(x, W, b, s, p)
    np.testing.assert_allclose(y, conv2d_loops(x, W, b, s, p), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case,op", [(c, op) for c in CASES for op in range(c[6])])  # op < stride
def test_conv_transpose2d_matches_loops(case, op, rng):
    n, c, h, w, o, k, s, p = case
    x, W, b = rng.normal(size=(n, c, h, w)), rng.normal(size=(c, o, k, k)), rng.normal(size=o)
    y, _ = conv_transpose2d_forward(x, W, b, s, p, op)
    np.testing.assert_allclose(y, conv_transpose2d_loops(x, W, b, s, p, op), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_col2im_is_adjoint_of_im2col(case, rng):
    # <im2col(x), c> == <x, col2im(c)> for all x, c: the defining property of the pair
    n, c, h, w, _, k, s, p = case
    x = rng.normal(size=(n, c, h, w))
    cols = im2col(x, k, s, p)
    r = rng.normal(size=cols.shape)
    lhs = (cols * r).sum()
    rhs = (x * col2im(r, x.shape, k, s, p)).sum()
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs))


@pytest.mark.parametrize("h,k,s,p", [(28, 3, 2, 1), (14, 3, 2, 1), (28, 4, 2, 1), (7, 4, 2, 1), (28, 7, 1, 3), (5, 2, 3, 0)])
def test_output_shapes_follow_pytorch(h, k, s, p):
    x = np.zeros((2, 3, h, h), np.float32)
    conv = nn.Conv2d(3, 4, k, s, p)
    assert conv(x).shape == (2, 4, (h + 2 * p - k) // s + 1, (h + 2 * p - k) // s + 1)
    deconv = nn.ConvTranspose2d(3, 4, k, s, p)
    ho = (h - 1) * s - 2 * p + k
    assert deconv(x).shape == (2, 4, ho, ho)


def test_gan_shapes():
    # the conv cGAN's spatial path: 7 -> 14 -> 28 -> 28 and 28 -> 14 -> 7
    x = np.zeros((1, 2, 7, 7), np.float32)
    x = nn.ConvTranspose2d(2, 3, 4, 2, 1)(x)
    assert x.shape == (1, 3, 14, 14)
    x = nn.ConvTranspose2d(3, 3, 4, 2, 1)(x)
    assert x.shape == (1, 3, 28, 28)
    assert nn.Conv2d(3, 1, 7, padding=3)(x).shape == (1, 1, 28, 28)
    d = nn.Conv2d(2, 3, 3, 2, 1)(np.zeros((1, 2, 28, 28), np.float32))
    assert d.shape == (1, 3, 14, 14)
    assert nn.Conv2d(3, 3, 3, 2, 1)(d).shape == (1, 3, 7, 7)

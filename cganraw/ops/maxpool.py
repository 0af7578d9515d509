"""MaxPool2d with argmax routing: forward keeps, for every output, which tap of its
k x k window won; backward sends each output's gradient to that one input.

Output size as PyTorch (padding 0, no ceil_mode): Ho = floor((H - k) / s) + 1.
The winning tap is numbered t = i*k + j (row-major in the window); on ties the first
max wins, as in PyTorch's CPU kernel, and a NaN wins over numbers (it propagates).

Both directions run one vectorised pass per tap (k*k strided slices of the input, each
(N, C, Ho, Wo)) instead of gathering the windows: for k = 2 that is about twice as fast
as argmax over a copied (N, C, Ho, Wo, k*k) window array, which remains as the
reference (`maxpool2d_forward_windows_numpy`) and the path for inputs holding NaN.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend


def maxpool_output_size(size, kernel_size, stride):
    """floor((size - k) / s) + 1, PyTorch's size for padding 0."""
    return (size - kernel_size) // stride + 1


def _tap(a, i, j, stride, ho, wo):
    # the (N, C, Ho, Wo) strided view of tap (i, j) of every window of a (N, C, H, W)
    return a[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]


def _index_dtype(k):
    return np.uint8 if k * k <= 256 else np.int32


def maxpool2d_forward_windows_numpy(x, kernel_size, stride):
    """Reference: a strided (N, C, Ho, Wo, k, k) view of the windows, copied to
    (..., k*k), argmax over the last axis (first max; NaN counts as the max)."""
    xp = backend.array_module(x)
    k, s = int(kernel_size), int(stride)
    n, c, h, w = x.shape
    ho, wo = maxpool_output_size(h, k, s), maxpool_output_size(w, k, s)
    x = xp.ascontiguousarray(x)
    sn, sc, sh, sw = x.strides
    win = xp.lib.stride_tricks.as_strided(
        x, shape=(n, c, ho, wo, k, k), strides=(sn, sc, sh * s, sw * s, sh, sw),
        writeable=False).reshape(n, c, ho, wo, k * k)
    idx = win.argmax(axis=-1)
    y = xp.take_along_axis(win, idx[..., None], axis=-1)[..., 0]
    return y, (idx.astype(_index_dtype(k)), x.shape, k, s)


def maxpool2d_forward_numpy(x, kernel_size, stride):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), cache (argmax tap (N, C, Ho, Wo) uint8, x shape, k, s)."""
    xp = backend.array_module(x)
    k, s = int(kernel_size), int(stride)
    n, c, h, w = x.shape
    ho, wo = maxpool_output_size(h, k, s), maxpool_output_size(w, k, s)
    taps = [_tap(x, i, j, s, ho, wo) for i in range(k) for j in range(k)]
    y = xp.array(taps[0])
    for t in taps[1:]:
        xp.maximum(y, t, out=y)
    if xp.isnan(y).any():   # NaN == NaN is False: let argmax find the first NaN
        return maxpool2d_forward_windows_numpy(x, k, s)
    # the first tap equal to the max wins: assign from the last tap down to the first
    idx = xp.full(y.shape, k * k - 1, dtype=_index_dtype(k))
    for t in range(k * k - 2, -1, -1):
        idx[taps[t] == y] = t
    return y, (idx, x.shape, k, s)


def maxpool2d_backward_numpy(dy, cache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): dy routed to each window's argmax.
    One pass per tap; overlapping windows (s < k) add up."""
    idx, x_shape, k, s = cache
    xp = backend.array_module(dy)
    _, _, h, w = x_shape
    ho, wo = idx.shape[2:]
    covered = s == k and ho * k == h and wo * k == w     # every input pixel in one window
    dx = (xp.empty if covered else xp.zeros)(x_shape, dtype=dy.dtype)
    for t in range(k * k):
        i, j = divmod(t, k)
        if s >= k:      # disjoint windows: write the tap's slice in place
            xp.multiply(idx == t, dy, out=_tap(dx, i, j, s, ho, wo))
        else:
            _tap(dx, i, j, s, ho, wo)[...] += xp.where(idx == t, dy, dy.dtype.type(0))
    return dx


def maxpool2d_forward(x, kernel_size, stride=None):
    """x (N, C, H, W) -> (y (N, C, Ho, Wo), cache); stride defaults to kernel_size."""
    return maxpool2d_forward_numpy(x, kernel_size, kernel_size if stride is None else stride)


def maxpool2d_backward(dy, cache):
    return maxpool2d_backward_numpy(dy, cache)

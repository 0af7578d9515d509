"""MaxPool2d with argmax routing, for the layer cganraw.nn.MaxPool2d: forward keeps, for
every output, which tap of its k x k window won; backward sends each output's gradient
to that one input.

    maxpool2d_forward    maxpool2d_forward_numpy, maxpool2d_forward_cuda (kernels/maxpool.cu:
                         maxpool2d_forward_v1)
    maxpool2d_backward   maxpool2d_backward_numpy, maxpool2d_backward_cuda (maxpool2d_backward_v1
                         scatter with atomics, maxpool2d_backward_v2 gather, the default)

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
from cganraw.ops import _launch


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


# ---------------------------------------------------------------- CUDA kernels (kernels/maxpool.cu)
# The cache is the reference's structure, (tap, x shape, k, s), with the tap as int32: the
# NumPy backward takes it as it is, and the kernel backward converts a uint8 tap from the
# reference's forward.

FORWARD_VERSIONS = (1,)
BACKWARD_VERSIONS = (1, 2)
_BLOCK = 256
_MAX_BLOCKS = 8192      # the kernels grid-stride past this


def _pool_args(n, c, h, w, k, s, ho, wo):
    i32 = _launch.i32
    return (i32(n), i32(c), i32(h), i32(w), i32(k), i32(s), i32(ho), i32(wo))


def maxpool2d_forward_cuda(x, kernel_size, stride=None, version=None):
    """As maxpool2d_forward_numpy: x (N, C, H, W) float32 -> y (N, C, Ho, Wo),
    cache (tap (N, C, Ho, Wo) int32, x shape, k, s)."""
    op = "maxpool2d_forward"
    version = _launch.pick_version(op, version, 1, FORWARD_VERSIONS)
    xc = _launch.arg(x, np.float32, f"{op}: x")
    if xc.ndim != 4:
        raise ValueError(f"{op}: x must have shape (N, C, H, W), got {tuple(xc.shape)}")
    k = int(kernel_size)
    s = k if stride is None else int(stride)
    if k < 1 or s < 1:
        raise ValueError(f"{op}: need kernel_size >= 1 and stride >= 1, got k={k}, s={s}")
    n, c, h, w = (int(v) for v in xc.shape)
    if min(h, w) < k:
        raise ValueError(f"{op}: a {k}x{k} window does not fit a {h}x{w} input")
    ho, wo = maxpool_output_size(h, k, s), maxpool_output_size(w, k, s)
    y, tap = _launch.empty((n, c, ho, wo)), _launch.empty((n, c, ho, wo), np.int32)
    if y.size:
        grid, block = _launch.grid_for(y.size, _BLOCK, _MAX_BLOCKS)
        _launch.function("maxpool", f"maxpool2d_forward_v{version}")(
            grid, block, (y, tap, xc, *_pool_args(n, c, h, w, k, s, ho, wo)))
    return y, (tap, xc.shape, k, s)


def maxpool2d_backward_cuda(dy, cache, version=None):
    """As maxpool2d_backward_numpy: dy (N, C, Ho, Wo) -> dx (N, C, H, W); version 1
    scatters with atomics into a zeroed dx, 2 (the default) gathers."""
    op = "maxpool2d_backward"
    version = _launch.pick_version(op, version, 2, BACKWARD_VERSIONS)
    tap, x_shape, k, s = cache
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    if tuple(dyc.shape) != tuple(tap.shape):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, the forward's output {tuple(tap.shape)}")
    tc = _launch.arg(tap.astype(np.int32, copy=False), np.int32, f"{op}: tap")
    n, c, h, w = (int(v) for v in x_shape)
    ho, wo = int(tap.shape[2]), int(tap.shape[3])
    dx = (_launch.zeros if version == 1 else _launch.empty)((n, c, h, w))
    total = dyc.size if version == 1 else dx.size
    if total:
        grid, block = _launch.grid_for(total, _BLOCK, _MAX_BLOCKS)
        _launch.function("maxpool", f"maxpool2d_backward_v{version}")(
            grid, block, (dx, dyc, tc, *_pool_args(n, c, h, w, k, s, ho, wo)))
    return dx


# ---------------------------------------------------------------- public ops: dispatch

def maxpool2d_forward(x, kernel_size, stride=None):
    """x (N, C, H, W) -> (y (N, C, Ho, Wo), cache); stride defaults to kernel_size."""
    stride = kernel_size if stride is None else stride
    if backend.uses_kernels():
        return maxpool2d_forward_cuda(x, kernel_size, stride)
    return maxpool2d_forward_numpy(x, kernel_size, stride)


def maxpool2d_backward(dy, cache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W)."""
    if backend.uses_kernels():
        return maxpool2d_backward_cuda(dy, cache)
    return maxpool2d_backward_numpy(dy, cache)

"""ProGAN's minibatch standard deviation (Karras et al. 2018, section 3).

The batch splits into M = N / G groups of G samples; sample n = g*M + m is member g of
group m (ProGAN's reshape(G, M, ...), so consecutive samples land in different groups).
For each group, the standard deviation of every feature over its G members (biased
variance, + eps inside the sqrt), averaged over the C*H*W features, is one number; the
output appends it to each member as an extra constant channel: (N, C, H, W) -> (N, C + 1,
H, W). A batch the group size does not divide uses the largest divisor of N not above it
(`effective_group_size`), so any N works (N = 1: a group of one, whose std is sqrt(eps)).

    minibatch_std_forward(x, group_size=4, eps=1e-8, segments=1) -> y, cache (x, G, eps, segments)
    minibatch_std_backward(dy, cache) -> dx

segments S > 1: the batch is S equal segments (the D step's real, wrong-label and fake terms
run as one batch), each grouped on its own exactly as if it were the whole batch: its own G
(the segment size's divisor) and its own groups, so every statistic and gradient is what
the segment alone would give.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch


def effective_group_size(n, group_size):
    """The largest divisor of n that is at most group_size (and at most n)."""
    n, g = int(n), int(group_size)
    if n <= 0 or g <= 0:
        raise ValueError(f"minibatch_std: batch and group size must be positive, got {n} and {g}")
    for d in range(min(g, n), 0, -1):
        if n % d == 0:
            return d
    return 1


def _dims(x, op):
    if x.ndim != 4:
        raise ValueError(f"{op}: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = map(int, x.shape)
    if n == 0:
        raise ValueError(f"{op}: the batch is empty")
    return n, c, h * w


def _segment_size(n, segments, op):
    s = int(segments)
    if s <= 0 or n % s:
        raise ValueError(f"{op}: {n} samples do not split into {segments} equal segments")
    return n // s


def _group_stats_numpy(x, g):
    # (G, M, F) view; mean and std per (group, feature), summed in member order as the kernels do
    n = x.shape[0]
    xg = x.reshape(g, n // g, -1)
    f = x.dtype.type
    mu = xg.sum(axis=0) / f(g)
    d = xg - mu
    return d, mu


def minibatch_std_forward_numpy(x, group_size=4, eps=1e-8, segments=1):
    xp = backend.array_module(x)
    n, c, hw = _dims(x, "minibatch_std_forward")
    seg = _segment_size(n, segments, "minibatch_std_forward")
    if segments != 1:       # each segment as a batch of its own
        parts = [minibatch_std_forward_numpy(x[k * seg:(k + 1) * seg], group_size, eps)[0] for k in range(segments)]
        return xp.concatenate(parts), (x, effective_group_size(seg, group_size), eps, int(segments))
    g = effective_group_size(n, group_size)
    m = n // g
    f = x.dtype.type
    d, _ = _group_stats_numpy(x, g)
    std = xp.sqrt((d * d).sum(axis=0) / f(g) + f(eps))      # (M, F)
    stat = std.sum(axis=1) / f(std.shape[1])                 # (M,)
    y = xp.empty((n, c + 1) + tuple(x.shape[2:]), dtype=x.dtype)
    y[:, :c] = x
    y[:, c] = stat[xp.arange(n) % m].reshape(n, 1, 1)
    return y, (x, g, eps, 1)


def minibatch_std_backward_numpy(dy, cache):
    x, g, eps, segments = cache
    xp = backend.array_module(dy)
    n, c, hw = _dims(x, "minibatch_std_backward")
    if segments != 1:
        seg = n // segments
        return xp.concatenate([minibatch_std_backward_numpy(dy[k * seg:(k + 1) * seg],
                                                            (x[k * seg:(k + 1) * seg], g, eps, 1))
                               for k in range(segments)])
    m, feat = n // g, c * hw
    f = x.dtype.type
    dstat = dy[:, c].reshape(g, m, hw).sum(axis=(0, 2))          # (M,)
    d, _ = _group_stats_numpy(x, g)
    std = xp.sqrt((d * d).sum(axis=0) / f(g) + f(eps))
    through = (dstat / f(feat))[None, :, None] * (d / (f(g) * std))
    return dy[:, :c] + through.reshape(x.shape)


# ---------------------------------------------------------------- CUDA kernels (kernels/minibatch_std.cu)
# version None picks the block-per-group reductions (2) when a group holds at least a warp
# of values, else a thread per group (1); the flat kernels take 2. A segmented batch
# (segments > 1) takes the v3 kernels, the only ones that know segments.
VERSIONS = (1, 2, 3)


def _pick(op, version, default, segments):
    v = _launch.pick_version(op, version, 3 if segments != 1 else default, VERSIONS)
    if segments != 1 and v != 3:
        raise ValueError(f"{op}: a segmented batch needs kernel version 3, got {v}")
    return v


def _flat_launch(op, version, n, args):
    if version == 3:
        grid, block = _launch.grid_for(n, max_blocks=_launch.ELEMENTWISE_MAX_BLOCKS)
        _launch.function("minibatch_std", f"{op}_v3")(grid, block, args)
    else:
        _launch.elementwise_launch("minibatch_std", op, version, n, args)

def _reduce(kernel, version, groups, work, args):
    if version == 1:
        _launch.thread_per_row_launch("minibatch_std", kernel, 1, groups, args)
    else:
        _launch.row_launch("minibatch_std", kernel, version, groups, work, args)


def minibatch_std_forward_cuda(x, group_size=4, eps=1e-8, segments=1, version=None):
    """As minibatch_std_forward_numpy, on the GPU (or the emulator)."""
    op = "minibatch_std_forward"
    n, c, hw = _dims(x, op)
    seg = _segment_size(n, segments, op)
    xc = _launch.arg(x, np.float32, f"{op}: x")
    g = effective_group_size(seg, group_size)
    m, feat = seg // g, c * hw
    groups = m * int(segments)
    v = _pick(op, version, 2 if feat >= 32 else 1, segments)
    stat = _launch.empty((groups,))
    seg_args = (_launch.i32(groups),) if v == 3 else ()
    _reduce("minibatch_std_forward_stat", v, groups, feat,
            (stat, xc) + seg_args + (_launch.i32(m), _launch.i32(g), _launch.i32(feat), _launch.f32(eps)))
    y = _launch.empty((n, c + 1) + tuple(x.shape[2:]))
    total = _launch.element_count(y.size, op)
    v = _pick(op, version, 2, segments)
    _flat_launch(op, v, y.size, (y, xc, stat, _launch.i32(m)) + ((_launch.i32(g),) if v == 3 else ())
                 + (_launch.i32(feat), _launch.i32(hw), total))
    return y, (xc, g, eps, int(segments))


def minibatch_std_backward_cuda(dy, cache, version=None):
    op = "minibatch_std_backward"
    x, g, eps, segments = cache
    n, c, hw = _dims(x, op)
    dyc = _launch.arg(dy, np.float32, f"{op}: dy")
    if tuple(dyc.shape) != (n, c + 1) + tuple(x.shape[2:]):
        raise ValueError(f"{op}: dy has shape {tuple(dyc.shape)}, expected {(n, c + 1) + tuple(x.shape[2:])}")
    xc = _launch.arg(x, np.float32, f"{op}: x")
    m, feat = n // segments // g, c * hw
    groups = m * segments
    v = _pick(op, version, 2 if g * hw >= 32 else 1, segments)
    dstat = _launch.empty((groups,))
    seg_args = (_launch.i32(groups),) if v == 3 else ()
    _reduce("minibatch_std_backward_stat", v, groups, g * hw,
            (dstat, dyc) + seg_args + (_launch.i32(m), _launch.i32(g), _launch.i32(feat), _launch.i32(hw)))
    dx = _launch.empty(x.shape)
    total = _launch.element_count(dx.size, op)
    _flat_launch(op, _pick(op, version, 2, segments), dx.size,
                 (dx, dyc, xc, dstat, _launch.i32(m), _launch.i32(g), _launch.i32(feat), _launch.i32(hw),
                  _launch.f32(eps), total))
    return dx


# ---------------------------------------------------------------- public ops: dispatch

def minibatch_std_forward(x, group_size=4, eps=1e-8, segments=1):
    """x (N, C, H, W) -> (y (N, C + 1, H, W), cache); segments: see the module's docstring."""
    if backend.uses_kernels():
        return minibatch_std_forward_cuda(x, group_size, eps, segments)
    return minibatch_std_forward_numpy(x, group_size, eps, segments)


def minibatch_std_backward(dy, cache):
    """dy (N, C + 1, H, W) -> dx (N, C, H, W)."""
    if backend.uses_kernels():
        return minibatch_std_backward_cuda(dy, cache)
    return minibatch_std_backward_numpy(dy, cache)

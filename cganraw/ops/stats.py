"""The training step's statistics, gathered on the device (kernels/stats.cu step_stats_v1):
the losses and mean D outputs into one vector, the first non-finite or exploded value into
a health flag. One op with no backward, used by cganraw.step:

    step_stats   step_stats_numpy (reference), step_stats_cuda (launcher), step_stats

STAT_NAMES is the vector's order. The flag is int32 (4,): (code, step, index, value bits),
code 0 while healthy, 1 for a non-finite value, 2 for one past `bound`; it keeps the first.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _launch

STAT_NAMES = ("d_loss", "d_loss_real", "d_loss_fake", "d_loss_mismatch", "g_loss", "g_loss_mode_seeking",
              "d_real", "d_fake")
HEALTH_OK, HEALTH_NONFINITE, HEALTH_PAST_BOUND = 0, 1, 2
REDUCE_BLOCK = 256


def bounded_mask(names):
    """The bit mask of STAT_NAMES held to the bound."""
    return sum(1 << STAT_NAMES.index(n) for n in names)


def _sigmoid_mean(x, f=np.float32):
    x = np.asarray(x, f).reshape(-1)
    e = np.exp(-np.abs(x))
    s = np.where(x >= 0, f(1) / (f(1) + e), e / (f(1) + e))
    return f(s.sum(dtype=f) / f(max(x.size, 1))) if x.size else f(0)


def step_stats_numpy(loss_real, loss_fake, loss_mismatch, loss_g, loss_ms, mismatch_weight, logits_real,
                     logits_fake, health, step, bound, bounded):
    """The losses (0-d arrays, or None for an absent term) -> stats (8,), float32 (float64
    when the losses or logits are: a double-precision model keeps its precision); health
    (int32 (4,)) updated in place as the kernel does."""
    f = np.result_type(np.float32, *(np.asarray(a).dtype for a in (loss_real, loss_fake, loss_g, logits_real)
                                     if a is not None)).type
    mm = f(0) if loss_mismatch is None else f(loss_mismatch)
    v = np.array([(f(loss_real) + f(loss_fake)) + f(mismatch_weight) * mm, f(loss_real), f(loss_fake), mm,
                  f(loss_g), f(0) if loss_ms is None else f(loss_ms), _sigmoid_mean(logits_real, f),
                  _sigmoid_mean(logits_fake, f)], dtype=f)
    if health[0] == HEALTH_OK:
        bad = np.flatnonzero(~np.isfinite(v))
        code = HEALTH_NONFINITE
        if not bad.size:
            bad = [i for i in range(len(v)) if (bounded >> i) & 1 and abs(v[i]) > f(bound)]
            code = HEALTH_PAST_BOUND
        if len(bad):
            i = int(bad[0])
            health[:] = (code, int(step), i, int(v[i:i + 1].astype(np.float32).view(np.int32)[0]))
    return v


def _scalar_arg(a, op, name):
    return _launch.arg(a.reshape(1) if a.ndim == 0 else a, np.float32, f"{op}: {name}")


def step_stats_cuda(loss_real, loss_fake, loss_mismatch, loss_g, loss_ms, mismatch_weight, logits_real,
                    logits_fake, health, step, bound, bounded, version=None):
    op = "step_stats"
    _launch.pick_version(op, version, 1, (1,))
    hc = _launch.arg(health, np.int32, f"{op}: health")
    if hc is not health or hc.shape != (4,):
        raise ValueError(f"{op}: health must be a contiguous int32 (4,) array, updated in place")
    losses = [_scalar_arg(a, op, n) if a is not None else None for a, n in
              ((loss_real, "loss_real"), (loss_fake, "loss_fake"), (loss_mismatch, "loss_mismatch"),
               (loss_g, "loss_g"), (loss_ms, "loss_ms"))]
    present = (1 if losses[2] is not None else 0) | (2 if losses[4] is not None else 0)
    stand_in = losses[0]                    # an absent term's pointer is never read
    xr = _launch.arg(logits_real, np.float32, f"{op}: logits_real")
    xf = _launch.arg(logits_fake, np.float32, f"{op}: logits_fake")
    stats = _launch.empty((len(STAT_NAMES),))
    _launch.function("stats", "step_stats_v1")(
        (1,), (REDUCE_BLOCK,),
        (stats, hc, losses[0], losses[1], stand_in if losses[2] is None else losses[2], losses[3],
         stand_in if losses[4] is None else losses[4], _launch.f32(mismatch_weight), xr, xf,
         _launch.element_count(xr.size, op), _launch.element_count(xf.size, op), _launch.i32(present),
         _launch.i32(step % 2 ** 31), _launch.f32(bound), _launch.i32(bounded)))
    return stats


def step_stats(loss_real, loss_fake, loss_mismatch, loss_g, loss_ms, mismatch_weight, logits_real, logits_fake,
               health, step, bound, bounded):
    """stats (8,) in STAT_NAMES' order on the device; health updated in place."""
    if backend.uses_kernels():
        return step_stats_cuda(loss_real, loss_fake, loss_mismatch, loss_g, loss_ms, mismatch_weight, logits_real,
                               logits_fake, health, step, bound, bounded)
    return step_stats_numpy(loss_real, loss_fake, loss_mismatch, loss_g, loss_ms, mismatch_weight, logits_real,
                            logits_fake, health, step, bound, bounded)

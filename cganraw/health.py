"""Is a run healthy? Non-finite values or values past a bound in losses, parameters,
optimiser state and buffers. Every training step records its losses' health on the device
(LossFlag, set by cganraw.ops.stats without the host waiting for it); the trainer reads that
flag every --log-every steps and before every checkpoint, and checks its whole state before
every checkpoint too (so a bad one is never written); sample/evaluate refuse a checkpoint
that fails.

The bounds, on |value|:
    LOSS_BOUND   1e4   the BCE losses (d_loss and its parts, g_loss). A healthy GAN's stay
                       below ~20; 1e4 means logits of ~1e4, a D that has blown up. The
                       mode-seeking term is only checked for NaN/Inf: it is 1 / (ratio +
                       1e-5), up to 1e5 for a collapsed but still finite G.
    PARAM_BOUND  1e6   weights and buffers (BatchNorm's running mean and variance) of G,
                       its moving average and D. Healthy runs stay within ~1e2.
    STATE_BOUND  1e20  the optimisers' state (Adam's m and v). v holds squared gradients,
                       healthy within ~1e8; a run at --lr 1e6 reaches 1e34 while every
                       value is still finite.
"""
from __future__ import annotations

import math

import numpy as np

from cganraw import backend

PARAM_BOUND = 1e6
STATE_BOUND = 1e20
LOSS_BOUND = 1e4

# the losses of cganraw.step.train_step held to LOSS_BOUND (all its values must be finite)
BOUNDED_LOSSES = ("d_loss", "d_loss_real", "d_loss_fake", "d_loss_mismatch", "g_loss")


class HealthError(ValueError):
    """A tensor or loss is non-finite or past its bound: names the first bad one."""


def first_bad(named_arrays, bound=None):
    """(name, reason) of the first array with a NaN/Inf or a value past `bound`, else None.
    named_arrays: iterable of (name, array), on any backend."""
    for name, a in named_arrays:
        a = np.asarray(backend.asnumpy(a))
        if a.dtype.kind not in "fc" or a.size == 0:
            continue
        finite = np.isfinite(a)
        if not finite.all():
            bad = int((~finite).sum())
            return name, f"{bad} non-finite value{'s' if bad > 1 else ''} of {a.size}"
        if bound is not None:
            peak = float(np.abs(a).max())
            if peak > bound:
                return name, f"max |value| {peak:.3g} exceeds the bound {bound:.0e}"
    return None


def check(named_arrays, what, bound=None):
    """Raise HealthError naming the first bad array of `what` (e.g. a checkpoint path)."""
    found = first_bad(named_arrays, bound)
    if found is not None:
        raise HealthError(f"{what}: {found[0]} has {found[1]}")


class LossFlag:
    """The device's record of the first step whose losses went bad (non-finite, or one of
    BOUNDED_LOSSES past LOSS_BOUND): an int32 (4,) array (code, step, index, value bits)
    that cganraw.ops.stats.step_stats updates every step. Reading it is one copy and one
    sync, so the trainer reads it only at log steps and before checkpoints."""

    def __init__(self):
        from cganraw.ops import _launch
        self.array = _launch.zeros((4,), np.int32)

    def check(self):
        """HealthError for the first bad step recorded, naming its loss and value."""
        from cganraw.ops.stats import HEALTH_NONFINITE, STAT_NAMES
        code, step, index, bits = (int(v) for v in backend.to_host(self.array))
        if code == 0:
            return
        name = STAT_NAMES[index] if 0 <= index < len(STAT_NAMES) else f"statistic {index}"
        value = float(np.array([bits], np.int32).view(np.float32)[0])
        if code == HEALTH_NONFINITE:
            raise HealthError(f"at step {step}: {name} is {value}")
        raise HealthError(f"at step {step}: {name} is {value:.3g}, past the bound {LOSS_BOUND:.0e}")


def check_losses(stats, what):
    """Raise HealthError for the first non-finite value in `stats` (name -> float, as
    train_step returns), or the first of BOUNDED_LOSSES past LOSS_BOUND."""
    for name, value in stats.items():
        if not math.isfinite(float(value)):
            raise HealthError(f"{what}: {name} is {float(value)}")
    for name in BOUNDED_LOSSES:
        if name in stats and abs(float(stats[name])) > LOSS_BOUND:
            raise HealthError(f"{what}: {name} is {float(stats[name]):.3g}, past the bound {LOSS_BOUND:.0e}")


def module_arrays(prefix, module):
    """(name, array) for every parameter and buffer of `module`, named `prefix.<name>`."""
    for name, p in module.named_parameters():
        yield f"{prefix}.{name}", p.data
    for name, b in module.named_buffers():
        yield f"{prefix}.{name}", b


def adam_arrays(prefix, opt, param_names=None):
    """(name, array) for Adam's moments, named `prefix.m.<i>` (with the parameter's name
    when `param_names` gives it)."""
    for i, (m, v) in enumerate(zip(opt.m, opt.v)):
        of = f" (of {param_names[i]})" if param_names is not None and i < len(param_names) else ""
        yield f"{prefix}.m.{i}{of}", m
        yield f"{prefix}.v.{i}{of}", v


def check_training_state(modules, optimisers, what):
    """Raise HealthError for the first bad tensor of a live run. modules: name -> Module
    (checked against PARAM_BOUND); optimisers: name -> (Adam, its module) (STATE_BOUND)."""
    check((item for name, mod in modules.items() for item in module_arrays(name, mod)), what, PARAM_BOUND)
    for name, (opt, mod) in optimisers.items():
        names = [n for n, _ in mod.named_parameters()] if mod is not None else None
        check(adam_arrays(name, opt, names), what, STATE_BOUND)


def check_checkpoint(ckpt, what=None):
    """Raise HealthError for the first bad array of a checkpoint as cganraw.checkpoint.load
    returns it: G, G_ema and D against PARAM_BOUND, opt_g and opt_d against STATE_BOUND."""
    what = what or ckpt.get("path", "checkpoint")
    for part in ("G", "G_ema", "D"):
        check(((f"{part}.{k}", v) for k, v in (ckpt.get(part) or {}).items()), what, PARAM_BOUND)
    for part in ("opt_g", "opt_d"):
        check(((f"{part}.{k}", v) for k, v in (ckpt.get(part) or {}).items()), what, STATE_BOUND)

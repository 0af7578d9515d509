"""Is a run healthy? Non-finite values or values past a bound in losses, parameters,
optimiser state and buffers. The trainer checks before every checkpoint (so a bad one is
never written) and sample/evaluate refuse a checkpoint that fails."""
from __future__ import annotations

import numpy as np

from cganraw import backend

# |value| past which a tensor counts as exploded. Weights of these models stay within
# ~1e2 and Adam's second moments within ~1e8 in healthy runs; 1e34 is what a run at
# --lr 1e6 reaches while every value is still finite.
PARAM_BOUND = 1e6
STATE_BOUND = 1e20
LOSS_BOUND = 1e4


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

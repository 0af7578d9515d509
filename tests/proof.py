"""Helpers for the tests that prove the training loop rather than only run it: a
recording stand-in for train_step's rng and for its optimisers, finite differences of
an explicit objective on sampled elements, and the models exactly as the trainer builds
them. Everything here is float64-friendly and backend-neutral."""
from __future__ import annotations

import contextlib
import logging

import numpy as np

from cganraw import backend, models, train

# ------------------------------------------------------------------ recorders ------

class DrawRecorder:
    """Stands in for train_step's numpy Generator: the draws of a seeded Generator, in
    float64 (so a float64 model accepts its noise), each recorded as (method, args, value)
    in the order train_step made them. Any other method is an AttributeError, so a new
    kind of draw shows up here instead of going unmodelled."""

    def __init__(self, seed):
        self._gen = np.random.default_rng(seed)
        self.draws = []

    def standard_normal(self, size=None, dtype=None):
        value = self._gen.standard_normal(size)
        self.draws.append(("standard_normal", (size,), value.copy()))
        return value

    def integers(self, low, high=None, size=None):
        value = self._gen.integers(low, high, size)
        self.draws.append(("integers", (low, high, size), np.array(value, copy=True)))
        return value

    def of(self, method):
        return [value for name, _, value in self.draws if name == method]


def params_of(module):
    """name -> a host copy of every parameter's values."""
    return {n: np.array(backend.asnumpy(p.data), copy=True) for n, p in module.named_parameters()}


def grads_of(module):
    return {n: np.array(backend.asnumpy(p.grad), copy=True) for n, p in module.named_parameters()}


def load_params(module, values):
    for n, p in module.named_parameters():
        p.data[...] = backend.get_xp().asarray(values[n], dtype=p.data.dtype)


def dropout_states(*modules):
    """Where each Dropout's mask stream stands: (step, call) (cganraw.nn.Dropout's Philox
    masks are named by them, so setting them back replays the masks)."""
    return [(layer.step, layer.call) for m in modules for layer in models.dropout_layers(m)]


def set_dropout_states(modules, states):
    layers = [layer for m in modules for layer in models.dropout_layers(m)]
    assert len(layers) == len(states)
    for layer, (step, call) in zip(layers, states):
        layer.step, layer.call = step, call


class RecordingOptimizer:
    """An optimiser as train_step sees it (zero_grad, step) around a real one. At every
    step it records the gradients of `module` as they stand before the update, and the
    parameters of every module in `watch` (name -> Module) before and after the update;
    `log` (a list shared by both optimisers) gets the order of the steps."""

    def __init__(self, name, inner, module, watch, log):
        self.name, self.inner, self.module, self.watch, self.log = name, inner, module, watch, log
        self.records = []

    def zero_grad(self):
        self.inner.zero_grad()

    def step(self):
        rec = {"grads": grads_of(self.module), "dropout": dropout_states(*self.watch.values()),
               "before": {k: params_of(m) for k, m in self.watch.items()}}
        self.inner.step()
        rec["after"] = {k: params_of(m) for k, m in self.watch.items()}
        self.records.append(rec)
        self.log.append(self.name)

    def __getattr__(self, name):       # lr, params, state_dict: the real optimiser's
        return getattr(self.inner, name)


# ------------------------------------------------------------------ finite differences

def _close(numeric, analytic, atol, rtol):
    return abs(numeric - analytic) <= atol + rtol * abs(numeric)


def _matches(f, at, analytic, eps, atol, rtol):
    """Central differences of f along one direction, `at(t)` placing the arrays at offset
    t. Tries eps, then eps/10 and eps/100: a LeakyReLU or |.| kink within eps of some
    activation bends one difference, never all three. Rounding in f (float64) is allowed
    for in proportion to 1/eps. Returns (matched, the numeric values tried)."""
    tried = []
    try:
        for e in (eps, eps / 10, eps / 100):
            at(e)
            up = f()
            at(-e)
            down = f()
            numeric = (up - down) / (2 * e)
            tried.append(numeric)
            if _close(numeric, analytic, atol + 1e-15 * (1 + abs(up)) / e, rtol):
                return True, tried
    finally:
        at(0.0)
    return False, tried


def check_gradient(f, arrays, grads, what, *, seed=0, eps=1e-6, rtol=1e-5, atol=1e-8, samples=2):
    """Compare analytic gradients with central differences of the float64 scalar `f()`.

    arrays: name -> array perturbed in place (parameters' .data, or inputs `f` reads);
    grads: name -> the analytic gradient of f with respect to it. One directional
    derivative over every array at once (a wrong term anywhere shows up), then `samples`
    random elements of each array plus its largest-gradient element (names the culprit).
    atol is relative to the largest gradient, so scale-free; rtol to the numeric value.
    """
    rng = np.random.default_rng(seed)
    names = list(arrays)
    scale = max(float(np.abs(grads[n]).max()) for n in names) or 1.0
    originals = {n: np.array(backend.asnumpy(arrays[n]), copy=True) for n in names}
    xp = backend.get_xp()
    dirs = {n: rng.standard_normal(originals[n].shape) for n in names}
    norm = np.sqrt(sum(float((d * d).sum()) for d in dirs.values()))
    dirs = {n: d / norm for n, d in dirs.items()}

    def along_all(t):
        for n in names:
            arrays[n][...] = xp.asarray(originals[n] + t * dirs[n], dtype=arrays[n].dtype)

    analytic = float(sum((grads[n] * dirs[n]).sum() for n in names))
    ok, tried = _matches(f, along_all, analytic, eps, atol * scale, rtol)
    assert ok, (f"{what}: directional derivative: numeric {tried!r} (eps {eps:g}, /10, /100), "
                f"analytic {analytic!r}, largest gradient {scale:.3g}")

    bad = []
    for n in names:
        g = grads[n].reshape(-1)
        picks = set(rng.choice(g.size, size=min(samples, g.size), replace=False).tolist())
        picks.add(int(np.abs(g).argmax()))
        flat = arrays[n].reshape(-1)          # a view: parameters and inputs are contiguous
        for i in sorted(picks):
            v0 = originals[n].reshape(-1)[i]

            def along_one(t, flat=flat, i=i, v0=v0):
                flat[i] = v0 + t
            ok, tried = _matches(f, along_one, float(g[i]), eps, atol * scale, rtol)
            if not ok:
                bad.append(f"  {n}[{np.unravel_index(i, originals[n].shape)}]: numeric {tried!r}, "
                           f"analytic {float(g[i])!r}")
    assert not bad, f"{what}: element-wise mismatch (largest gradient {scale:.3g}):\n" + "\n".join(bad[:8])
    return analytic


# ------------------------------------------------------------------ the trainer's models

def run_trainer(argv):
    """train.main(argv) in this process, then the `cganraw` logger as it was: the command
    line installs a stderr handler bound to this test's captured stream, and sets a level."""
    logger = logging.getLogger("cganraw")
    handlers, level = list(logger.handlers), logger.level
    try:
        return train.main([str(a) for a in argv])
    finally:
        for h in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(h)
        logger.setLevel(level)


class _Built(Exception):
    """Raised from inside the trainer once it has built its models: nothing trains."""


def trainer_build_call(argv, monkeypatch):
    """The (args, kwargs) with which `python -m cganraw.train ARGV` calls models.build for
    the models it trains: the trainer runs its own path from its parser and defaults up
    to that call, and is stopped there. Rebuild with models.build(*args, **kwargs)."""
    calls = []
    real_build = models.build

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        real_build(*args, **kwargs)
        raise _Built
    monkeypatch.setattr(models, "build", recording)
    try:
        with contextlib.suppress(_Built):
            run_trainer(argv)
    finally:
        monkeypatch.setattr(models, "build", real_build)
    assert calls, f"python -m cganraw.train {' '.join(map(str, argv))} never called models.build"
    return calls[0]

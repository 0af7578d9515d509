"""Mutation testing by hand: plant known one-line bugs, one at a time, in a temporary
copy of the repository, run the tests that should catch each, and report the ones no
test caught.

    python tests/mutants.py                 # every mutant; the last line is the score
    python tests/mutants.py --list          # the mutants and the tests each runs
    python tests/mutants.py --only step-g-target-zero --only ema-no-warmup
    python tests/mutants.py --tests-ref main     # the same bugs against another commit's tests

Each mutant is a list of (file, old text, new text) edits; the old text must occur exactly
once (in the file, or in all the .py files under a folder given as `dir/`), so a mutant
that no longer applies (the code moved on) is an error, never a silent
survivor. Before the mutants, the chosen tests run once on the unmutated copy and must
pass (--no-baseline skips that). Tests run with `-x` and stop at the first failure; a
mutant is caught when pytest fails, errors or crashes. When a test suite changes
which bugs it catches, or a bug is fixed that a test should have caught, add it here.
Exit status: 0 when every mutant was caught, 1 when one survived, 2 on errors.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the tests each area's bugs should be caught by (new ones first: they fail fastest);
# files that do not exist (e.g. with --tests-ref) are skipped
TESTS = {
    "step": ["tests/test_train_objective.py", "tests/test_train.py", "tests/test_losses_optim.py"],
    "losses": ["tests/test_losses_optim.py", "tests/test_train_objective.py"],
    "adam": ["tests/test_losses_optim.py", "tests/test_train_state.py", "tests/kernels/test_adam.py"],
    "ema": ["tests/test_train_state.py", "tests/test_train.py"],
    "schedule": ["tests/test_train_state.py", "tests/test_train.py"],
    "op-activation": ["tests/test_gradcheck_layers.py", "tests/test_cpu_fast.py"],
    "kernel-activation": ["tests/kernels/test_elementwise.py"],
    "op-bce": ["tests/test_losses_optim.py", "tests/kernels/test_bce.py"],
    "kernel-bce": ["tests/kernels/test_bce.py"],
    "kernel-conv": ["tests/kernels/test_conv.py"],
    "kernel-r1": ["tests/kernels/test_r1.py"],
    "op-host": ["tests/test_cpu_fast.py"],
}
# slow end-to-end tests that exercise none of these bugs more than the rest do
DESELECT = "not killed_run and not eval_every"


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    what: str
    edits: tuple          # ((file, old, new), ...)


def one(name, area, what, path, old, new):
    return Mutant(name, area, what, ((path, old, new),))


# a folder (ending in /) means: wherever in it the text is (the trainer's modules and the
# kernel files get split and renamed)
STEP, LOSSES, TRAIN, KERNELS = "cganraw/step.py", "cganraw/losses.py", "cganraw/", "kernels/"
MODE_SEEKING = "cganraw/ops/mode_seeking.py"
R1_OP = "cganraw/ops/r1.py"
MUTANTS = [
    # --- the training step ----------------------------------------------------------
    one("step-g-target-zero", "step", "G trains towards target 0: it learns to look fake", STEP,
        "loss_g, dlogits = bce_with_logits(logits_gen, 1.0)", "loss_g, dlogits = bce_with_logits(logits_gen, 0.0)"),
    one("step-smoothing-ignored", "step", "label smoothing ignored", STEP,
        "real_target = 1.0 - label_smoothing", "real_target = 1.0"),
    # (D's terms run as one batch when D is per-sample, else as three passes: both paths)
    Mutant("step-fake-target-one", "step", "D scores fakes against target 1", (
        (STEP, "loss_fake, dlogits = bce_with_logits(logits_fake, 0.0)", "loss_fake, dlogits = bce_with_logits(logits_fake, 1.0)"),
        (STEP, "terms.append((0.0, 1.0))                # the fakes", "terms.append((1.0, 1.0))"))),
    Mutant("step-mismatch-weight-ignored", "step", "the mismatch term's gradient is not weighted", (
        (STEP, "terms.append((0.0, mismatch))", "terms.append((0.0, 1.0))"), (STEP, "0.0, weight=mismatch)", "0.0)"))),
    Mutant("step-mismatch-weight-squared", "step", "the mismatch term weighted by w^2", (
        (STEP, "terms.append((0.0, mismatch))", "terms.append((0.0, mismatch * mismatch))"),
        (STEP, "weight=mismatch)", "weight=mismatch * mismatch)"))),
    Mutant("step-mismatch-true-labels", "step", "some 'wrong' labels are the true ones (shift 0 allowed)", (
        ("cganraw/ops/philox.py", "shift = 1 + _below(stream_words_numpy(stream, labels.shape[0]), int(k) - 1)",
         "shift = _below(stream_words_numpy(stream, labels.shape[0]), int(k))"),
        (KERNELS, "int shift = 1 + (int)philox_below(r.w[i & 3], (unsigned int)(k - 1));",
         "int shift = (int)philox_below(r.w[i & 3], (unsigned int)k);"))),
    one("step-mode-seeking-sign", "step", "the mode-seeking gradient pulls pairs together", STEP,
        "_launch.add_into(dfake[:2 * pairs], dms", "_launch.add_into(dfake[:2 * pairs], -dms"),
    one("step-mode-seeking-weight-ignored", "step", "the mode-seeking term is not weighted", STEP,
        "_launch.add_into(dfake[:2 * pairs], dms * dms.dtype.type(mode_seeking))", "_launch.add_into(dfake[:2 * pairs], dms)"),
    one("step-mode-seeking-off-below-1", "step", "mode seeking silently off for weights <= 1", STEP,
        "pairs = n // 2 if mode_seeking > 0 else 0", "pairs = n // 2 if mode_seeking > 1 else 0"),
    Mutant("step-g-through-stale-d", "step", "G's step goes through D before D's update", (
        (STEP, "    opt_d.step()\n\n    # --- G step", "\n    # --- G step"),
        (STEP, "    opt_g.step()\n\n    flag = flag", "    opt_g.step()\n    opt_d.step()\n\n    flag = flag"))),
    one("step-r1-sign", "step", "the R1 gradient pushes D's input gradient up, not down", R1_OP,
        "dlogits[:n] = c\n    dlogits[n:] = -c", "dlogits[:n] = -c\n    dlogits[n:] = c"),
    one("step-r1-lazy-unweighted", "step", "a lazy R1 term is not weighted by its interval", STEP,
        "r1_penalty(D, real_images, real_labels, r1 * r1_every)", "r1_penalty(D, real_images, real_labels, r1)"),
    one("step-r1-training-mode", "step", "the R1 passes run D in training mode (dropout on)", STEP,
        "    was_training = D.training\n    D.eval()\n", "    was_training = D.training\n"),
    one("step-d-not-frozen", "step", "the G step accumulates D's weight gradients", STEP,
        "with frozen(D):\n        logits_gen", "with contextlib.nullcontext():\n        logits_gen"),
    # --- losses ---------------------------------------------------------------------
    one("losses-mode-seeking-grad-sign", "losses", "mode_seeking returns the gradient's negative", MODE_SEEKING,
        "scale = -loss * loss / (z_dist * f(diff.size))", "scale = loss * loss / (z_dist * f(diff.size))"),
    one("losses-mode-seeking-z-sum", "losses", "mode_seeking's noise distance summed, not averaged", MODE_SEEKING,
        "z_dist = xp.abs(z[:m] - z[m:]).mean(dtype=images.dtype)", "z_dist = xp.abs(z[:m] - z[m:]).sum(dtype=images.dtype)"),
    # --- the optimiser --------------------------------------------------------------
    one("adam-no-bias-correction", "adam", "Adam's first moment not bias-corrected", "cganraw/ops/adam.py",
        "step_size = lr / (1 - beta1 ** step)", "step_size = lr"),
    one("adam-beta-swap", "adam", "Adam's betas swapped", "cganraw/optim.py",
        "b1, b2 = self.betas", "b2, b1 = self.betas"),
    # --- the moving average ---------------------------------------------------------
    one("ema-decay-swapped", "ema", "the EMA keeps 1 - d of the old average, not d", "cganraw/ops/ema.py",
        "avg -= avg.dtype.type(1 - decay) * (avg - value)", "avg -= avg.dtype.type(decay) * (avg - value)"),
    one("ema-no-warmup", "ema", "no warm-up ramp: the full decay from step 1", STEP,
        "return min(float(decay), (1 + step) / (10 + step))", "return float(decay)"),
    Mutant("ema-buffers-not-copied", "ema", "BatchNorm's running statistics not copied into the EMA", (
        (STEP, "copy=None if pack[1].empty else (pack[2].data, pack[1].data))",
         "copy=None if pack[1].empty else (pack[2].data, pack[2].data))"),
        (STEP, "_launch.copy_into(b_ema, b)", "_launch.copy_into(b_ema, b_ema)"))),
    one("ema-step-off-by-one", "ema", "the trainer ramps the decay one step late", TRAIN,
        "ema_decay_at(self.step, self.cfg[\"ema_decay\"])", "ema_decay_at(self.step - 1, self.cfg[\"ema_decay\"])"),
    # --- the schedule ---------------------------------------------------------------
    one("schedule-no-rescale", "schedule", "the decay not stretched over the last 1 - F of the run", STEP,
        "return max(0.0, (1.0 - frac) / (1.0 - decay_start))", "return max(0.0, 1.0 - frac)"),
    one("schedule-lr-d-ignored", "schedule", "--lr-d ignored by the schedule: D runs at --lr", TRAIN,
        "self.opt_d.lr = (self.cfg[\"lr_d\"] or self.cfg[\"lr\"]) * scale", "self.opt_d.lr = self.cfg[\"lr\"] * scale"),
    one("schedule-d-constant", "schedule", "D's rate never decays", TRAIN,
        "self.opt_d.lr = (self.cfg[\"lr_d\"] or self.cfg[\"lr\"]) * scale", "self.opt_d.lr = (self.cfg[\"lr_d\"] or self.cfg[\"lr\"])"),  # noqa: E501
    # --- ops and kernels ------------------------------------------------------------
    one("op-leaky-relu-slope", "op-activation", "LeakyReLU's backward uses 1 - slope", "cganraw/ops/activation.py",
        "return xp.where(x > 0, dy, dy * dy.dtype.type(negative_slope))",
        "return xp.where(x > 0, dy, dy * dy.dtype.type(1 - negative_slope))"),
    one("kernel-leaky-relu-slope", "kernel-activation", "the LeakyReLU kernel's forward uses 1 - slope",
        KERNELS, "return x > 0.0f ? x : x * slope;", "return x > 0.0f ? x : x * (1.0f - slope);"),
    one("op-bce-grad-sign", "op-bce", "BCE's gradient with the wrong sign", "cganraw/ops/bce.py",
        "return (sigmoid_numpy(x) - t) * x.dtype.type(dloss / x.size)",
        "return (t - sigmoid_numpy(x)) * x.dtype.type(dloss / x.size)"),
    one("kernel-bce-grad-sign", "kernel-bce", "the BCE kernel's gradient with the wrong sign", KERNELS,
        "if (i < n) dx[i] = (stable_sigmoid(x[i]) - t[i]) * scale;", "if (i < n) dx[i] = (t[i] - stable_sigmoid(x[i])) * scale;"),
    one("kernel-bce-segments-grad-sign", "kernel-bce", "the one-launch BCE kernel's gradient with the wrong sign",
        KERNELS, "dx[base + i] = (stable_sigmoid(xi) - t) * scale;", "dx[base + i] = (t - stable_sigmoid(xi)) * scale;"),
    one("kernel-im2col-bound", "kernel-conv", "im2col reads one column past the right edge", KERNELS,
        "if (yy < 0 || yy >= H || xx < 0 || xx >= W) return -1;", "if (yy < 0 || yy >= H || xx < 0 || xx > W) return -1;"),
    one("kernel-r1-minus-half-sign", "kernel-r1", "the R1 kernel moves both halves to x + e g", KERNELS,
        "images[size + i] = x[i] - shift;", "images[size + i] = x[i] + shift;"),
    # --- the host's Numba paths -------------------------------------------------------------
    one("op-in-film-mask", "op-host", "the fused InstanceNorm2d + FiLM + LeakyReLU backward masks on the norm's output",
        "cganraw/ops/instancenorm_film.py", "dv = gr[p] if v > 0 else gr[p] * slope",
        "dv = gr[p] if u > 0 else gr[p] * slope"),
    one("op-film-halves-swapped", "op-host", "FiLM's Numba backward writes dbeta where dgamma goes", "cganraw/ops/film.py",
        "dgb[i, ch], dgb[i, c + ch] = sum_dyx, sum_dy", "dgb[i, ch], dgb[i, c + ch] = sum_dy, sum_dyx"),
    one("op-scatter-add-overwrites", "op-host", "the rows' scatter-add keeps the last of a repeated label only",
        "cganraw/ops/embedding.py", "row[d] += f * s[d]", "row[d] = f * s[d]"),
]


# ------------------------------------------------------------------ the copy --------

def make_copy(dest: Path, tests_ref: str | None):
    """The working tree's files (tracked, and untracked but not ignored) under dest; with
    tests_ref, tests/ replaced by that commit's."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if tests_ref:
        shutil.rmtree(dest / "tests")
        archive = subprocess.run(["git", "archive", tests_ref, "tests"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env = {**os.environ, "PYTHONPATH": str(dest), "PYTHONDONTWRITEBYTECODE": "1"}
    where = subprocess.run([sys.executable, "-c", "import cganraw; print(cganraw.__file__)"], cwd=dest, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(dest.resolve()):
        raise SystemExit(f"error: the copy's tests would import cganraw from {where}, not from {dest}")
    return env


def locate(copy: Path, rel: str, old: str):
    """The one file (relative path) that holds `old` exactly once: `rel` itself, or for a
    folder `rel/` the one source file (.py, .cu, .cuh) under it that does. ValueError otherwise."""
    if not rel.endswith("/"):
        count = (copy / rel).read_text().count(old)
        if count != 1:
            raise ValueError(f"{rel} holds {count} copies of {old!r} (expected 1)")
        return rel
    sources = [p for p in sorted((copy / rel).rglob("*")) if p.suffix in (".py", ".cu", ".cuh")]
    hits = [(p, p.read_text().count(old)) for p in sources]
    hits = [(p, n) for p, n in hits if n]
    if len(hits) != 1 or hits[0][1] != 1:
        raise ValueError(f"{rel} holds {sum(n for _, n in hits)} copies of {old!r} (expected 1)")
    return str(hits[0][0].relative_to(copy))


def apply(copy: Path, mutant: Mutant):
    """Plant the mutant; returns the original texts to restore. Raises ValueError (with
    the copy untouched) when an edit's old text is not found exactly once."""
    originals = {}
    try:
        for rel, old, new in mutant.edits:
            rel = locate(copy, rel, old)
            path = copy / rel
            text = path.read_text()
            originals.setdefault(rel, text)
            path.write_text(text.replace(old, new))
    except (ValueError, OSError):
        restore(copy, originals)
        raise
    return originals


def restore(copy: Path, originals):
    for rel, text in originals.items():
        (copy / rel).write_text(text)


def run_tests(copy: Path, env, files, timeout):
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-k", DESELECT, *files]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s", time.monotonic() - t0
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.MULTILINE)
    summary = failed[0] if failed else (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return proc.returncode, summary, time.monotonic() - t0


def existing(copy: Path, files):
    return [f for f in files if (copy / f).exists()]


# ------------------------------------------------------------------ main ------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python tests/mutants.py", description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    ap.add_argument("--only", action="append", metavar="NAME", help="run this mutant (repeatable)")
    ap.add_argument("--tests-ref", metavar="REF", help="run against tests/ as of this git commit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run (default 1200)")
    args = ap.parse_args(argv)

    chosen = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
        if unknown:
            ap.error(f"unknown mutant(s) {', '.join(unknown)}; see --list")
        chosen = [m for m in MUTANTS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:34s} {m.what}\n{'':34s} {', '.join(f for f, _, _ in m.edits)} -> {' '.join(TESTS[m.area])}")
        return 0

    with tempfile.TemporaryDirectory(prefix="cganraw-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        copy.mkdir()
        env = make_copy(copy, args.tests_ref)
        print(f"copy of {ROOT} in {copy}" + (f", tests from {args.tests_ref}" if args.tests_ref else ""), flush=True)
        if not args.no_baseline:
            files = existing(copy, list(dict.fromkeys(f for m in chosen for f in TESTS[m.area])))
            rc, summary, secs = run_tests(copy, env, files, args.timeout * 3)
            if rc != 0:
                print(f"error: the tests fail without any mutant ({summary}); fix them first", flush=True)
                return 2
            print(f"baseline: {summary} ({secs:.0f} s)", flush=True)
        caught, errors, survivors = 0, 0, []
        for m in chosen:
            try:
                originals = apply(copy, m)
            except (ValueError, OSError) as e:
                print(f"ERROR     {m.name}: {e}", flush=True)
                errors += 1
                continue
            try:
                files = existing(copy, TESTS[m.area])
                if not files:
                    rc, summary, secs = 0, "no tests to run", 0.0
                else:
                    rc, summary, secs = run_tests(copy, env, files, args.timeout)
            finally:
                restore(copy, originals)
            if rc == 0 or rc == 5:                      # passed, or nothing collected
                survivors.append(m.name)
                print(f"SURVIVED  {m.name:34s} {m.what} ({secs:.0f} s)", flush=True)
            else:
                caught += 1
                print(f"caught    {m.name:34s} by {summary} ({secs:.0f} s)", flush=True)
        total = len(chosen)
        if survivors:
            print("survivors: " + ", ".join(survivors))
        if errors:
            print(f"{errors} mutant(s) no longer apply: update their text in tests/mutants.py")
        print(f"mutation score: {caught}/{total}")
        return 2 if errors else (1 if survivors else 0)


if __name__ == "__main__":
    sys.exit(main())

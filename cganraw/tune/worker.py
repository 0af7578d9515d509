"""One worker of a study: it draws trials from the shared storage and runs each as a
`python -m cganraw.train` subprocess, following the run's metrics.jsonl to report FID to the
pruner at every evaluation, until the study holds --trials finished trials."""
from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import zlib

import numpy as np

from cganraw.cli import CLIError, describe_error
from cganraw.tune import study as st
from cganraw.tune.space import trainer_options

log = logging.getLogger("cganraw.tune")

# The time budget (--trial-minutes) ends a trial, not an epoch count.
UNBOUNDED_EPOCHS = 10_000
MAX_FAILURES_IN_A_ROW = 3
POLL_S = 0.5
TERM_WAIT_S = 60


class TrialError(RuntimeError):
    """A trial that failed on its own (the trainer's error, no FID): recorded, counted, not retried."""


# ------------------------------------------------------------------ the subprocess ---

def _die_with_parent():
    """In the trainer's process, before exec (Linux): SIGTERM it when the worker dies, so a
    killed worker leaves no orphan training on."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _stop(proc):
    """SIGTERM (the trainer saves and exits), then SIGKILL if it does not."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TERM_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MetricsFollower:
    """The records appended to a metrics.jsonl since the last call (whole lines only)."""

    def __init__(self, path):
        self.path, self.pos, self.buf = path, 0, b""

    def read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() < self.pos:          # rewritten: start over
                    self.pos, self.buf = 0, b""
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(chunk)
        lines = (self.buf + chunk).split(b"\n")
        self.buf = lines.pop()
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def _last_error_line(path):
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["no output"])[-1]


def _numbers(rec):
    return {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


# ------------------------------------------------------------------ the objective ----

class Objective:
    """Optuna's objective: one trial = one trainer subprocess, followed and maybe pruned."""

    def __init__(self, s: st.Settings, log_prefix=""):
        self.s, self.prefix = s, log_prefix
        self.options = trainer_options()
        self.failures_in_a_row = 0
        self.last_error = None

    # -- the trainer's command line
    def trainer_args(self, values, seed):
        """The trainer flags of a trial, without the run folder and the reporting flags: the
        command that reproduces it."""
        s = self.s
        args = ["--dataset", s.dataset, "--model", s.model, "--seed", str(seed),
                "--max-minutes", repr(float(s.trial_minutes)), "--epochs", str(UNBOUNDED_EPOCHS)]
        if s.trial_steps:
            args += ["--max-steps", str(s.trial_steps)]
        if s.data_dir:
            args += ["--data-dir", str(s.data_dir)]
        if s.backend:
            args += ["--backend", s.backend]
        if s.threads:   # the trainer's own pick would measure while the other workers train
            args += ["--threads", str(s.threads)]
        return args + s.space.argv(values)

    def env(self):
        env = dict(os.environ)
        if self.s.threads:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
                env.setdefault(var, str(self.s.threads))
        return env

    # -- one trial
    def __call__(self, trial):
        s = self.s
        values = s.space.suggest(trial)
        seed = trial.user_attrs.get("seed", s.seed + trial.number)   # a retried trial keeps its seed
        run_name = f"trial_{trial.number:04d}"
        run_dir = s.study_dir / run_name
        args = self.trainer_args(values, seed)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("run_dir", run_name)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("command", shlex.join(["python", "-m", "cganraw.train", *args]))
        if run_dir.exists() and any(run_dir.iterdir()):
            raise TrialError(self._fail(trial, f"{run_dir} is not empty (left by another study?)"))
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "cganraw.train", *args, "--out", str(run_dir),
                "--eval-every-steps", str(s.eval_every_steps), "--sample-every", str(s.eval_every_steps),
                "--quiet", "--no-download"]   # a sample grid at every evaluation: a pruned trial keeps its last
        log.info("%strial %d started: %s", self.prefix, trial.number,
                 " ".join(p.describe().split(" ")[0] + f"={values[p.name]!r}" for p in s.space.searched()))
        t0 = time.monotonic()
        last_eval = self._run(trial, argv, run_dir)
        try:
            final = self._final_metrics(run_dir, last_eval)
        except (CLIError, OSError, ValueError, KeyError) as e:   # a checkpoint or classifier it cannot read
            raise TrialError(self._fail(trial, f"the final evaluation failed: {describe_error(e)}")) from None
        fid, acc = final.get("fid"), final.get("label_accuracy")
        if fid is None or acc is None:
            raise TrialError(self._fail(trial, "the evaluation gave no FID or label accuracy"))
        trial.set_user_attr("fid", fid)
        trial.set_user_attr("label_accuracy", acc)
        trial.set_user_attr("metrics", final)
        trial.set_user_attr("steps", final["step"])
        trial.set_user_attr("minutes", round((time.monotonic() - t0) / 60, 2))
        self.failures_in_a_row = 0
        return (fid, 1.0 - acc) if s.multi_objective else fid

    def _fail(self, trial, message):
        trial.set_user_attr("error", message)
        self.failures_in_a_row += 1
        self.last_error = message
        return message

    def _run(self, trial, argv, run_dir):
        """Run the trainer, reporting each evaluation; returns the last evaluation record (or
        None). Raises optuna.TrialPruned (the trainer stopped) or TrialError."""
        import optuna
        follower = MetricsFollower(run_dir / "metrics.jsonl")
        last_eval = None
        with open(run_dir / "trainer.log", "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env(), preexec_fn=_die_with_parent if _PRCTL else None)
        trial.set_user_attr("trainer_pid", proc.pid)
        try:
            while True:
                rc = proc.poll()
                for rec in follower.read():
                    if "label_accuracy" not in rec and "fid" not in rec:
                        continue            # a training record
                    last_eval = rec
                    if self._report(trial, rec):
                        _stop(proc)
                        trial.set_user_attr("pruned_at_step", int(rec.get("step", 0)))
                        trial.set_user_attr("fid", rec.get("fid"))
                        raise optuna.TrialPruned(f"pruned at step {rec.get('step')}")
                if rc is not None:
                    break
                time.sleep(POLL_S)
        finally:
            _stop(proc)
        if rc != 0:
            why = _last_error_line(run_dir / "trainer.log")
            raise TrialError(self._fail(trial, f"the trainer failed (exit {rc}): {why}"))
        return last_eval

    def _report(self, trial, rec):
        """Report one evaluation record; True when the pruner says stop."""
        acc = rec.get("label_accuracy")
        if acc is not None:
            trial.set_user_attr("label_accuracy", acc)   # what the constraint of a pruned trial reads
        fid, step = rec.get("fid"), rec.get("step")
        if self.s.multi_objective or fid is None or step is None or not math.isfinite(fid):
            return False
        trial.report(float(fid), int(step))
        return trial.should_prune()

    def _final_metrics(self, run_dir, last_eval):
        """The metrics of the run's last weights (checkpoints/last.npz): the trainer's last
        evaluation when it was made at that step, else an evaluation like the trainer's."""
        from cganraw import backend, classifier, evaluate, load, train
        if self.s.backend:
            backend.use(self.s.backend)
        G, meta = load.load_generator(run_dir / "checkpoints" / "last.npz")
        step = int(meta["step"])
        if last_eval is not None and last_eval.get("step") == step:
            return {**_numbers(last_eval), "step": step}
        clf = classifier.load(classifier.default_path(self.s.dataset))
        res = evaluate.evaluate_generator(G, list(meta["class_names"]), clf, n_per_class=train.EVAL_N_PER_CLASS,
                                          seed=0, cas=False, log=lambda *a: None, data_dir=self.s.data_dir)
        res = {**_numbers(res), "step": step}
        (run_dir / "final_eval.json").write_text(json.dumps(res, indent=2) + "\n")
        return res

    # -- after each trial (Optuna callback)
    def after_trial(self, study, trial):
        from optuna.trial import TrialState
        a = trial.user_attrs
        if trial.state == TrialState.COMPLETE:
            ok = "meets" if st.feasible(trial, self.s) else "misses"
            log.info("%strial %d: FID %.3f, label accuracy %.2f%% (%s the %.0f%% bar), %d steps, %.1f min",
                     self.prefix, trial.number, a["fid"], 100 * a["label_accuracy"], ok,
                     100 * self.s.min_label_accuracy, a.get("steps", 0), a.get("minutes", 0))
        elif trial.state == TrialState.PRUNED:
            log.info("%strial %d pruned at step %s (FID %s)", self.prefix, trial.number, a.get("pruned_at_step"),
                     f"{a['fid']:.3f}" if a.get("fid") is not None else "n/a")
        elif trial.state == TrialState.FAIL:
            log.warning("%strial %d failed: %s", self.prefix, trial.number, a.get("error", "interrupted"))
        st.apply_disk_policy(study, self.s)


# ------------------------------------------------------------------ the worker loop --

def worker_seed(s: st.Settings, index, n_trials):
    """A sampler seed of its own for each worker, machine and start (else they draw alike)."""
    host = zlib.crc32(socket.gethostname().encode())
    return int(np.random.SeedSequence([s.seed, index, n_trials, host]).generate_state(1)[0])


def finished(study):
    """(trials counting toward --trials, trials running now)."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    return (sum(st.counts_toward_total(t) for t in trials),
            sum(t.state == TrialState.RUNNING for t in trials))


def run_worker(s: st.Settings, index=0, log_prefix=""):
    """Run trials until the study holds s.trials finished ones (a parallel worker may add
    one more when two start their last trial at the same moment)."""
    optuna = st.require_optuna()
    study = st.open_study(s)
    study.sampler = st.make_sampler(s, worker_seed(s, index, len(study.get_trials(deepcopy=False))))
    study.pruner = st.make_pruner(s)
    objective = Objective(s, log_prefix)
    while True:
        optuna.storages.fail_stale_trials(study)      # a dead worker's trial: failed, and queued again
        done, running = finished(study)
        if done + running >= s.trials:
            return done
        study.optimize(objective, n_trials=1, catch=(TrialError,), callbacks=[objective.after_trial],
                       gc_after_trial=False, show_progress_bar=False)
        if objective.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise CLIError(f"{MAX_FAILURES_IN_A_ROW} trials in a row failed; the last: {objective.last_error}")

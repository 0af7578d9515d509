"""`python -m cganraw.tune` (`cganraw-tune`): the command line of a hyperparameter study."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from cganraw import backend, cli, data
from cganraw.cli import CLIError
from cganraw.fileio import atomic_write
from cganraw.tune import report, worker
from cganraw.tune import space as sp
from cganraw.tune import study as st

log = logging.getLogger("cganraw.tune")

CONDITIONAL_MODELS = ("cgan-conv", "cgan-mlp")

DESCRIPTION = """\
Search the trainer's hyperparameters with Optuna. Each trial is one `python -m cganraw.train`
run of --trial-minutes, in its own folder under the study folder; every --eval-every-steps
steps it reports FID (on the evaluation classifier's features, 100 images per class) so that
the pruner can stop it early. The objective is the final FID, minimised, with label accuracy
>= --min-label-accuracy as a constraint. Re-running the command resumes the study until it
holds --trials finished trials; other machines join by running the same command against the
same --storage (SQLite serves one machine; use PostgreSQL or MySQL for many).
"""

EPILOG = """\
storage URLs: sqlite:///runs/tune/NAME.db (one machine), postgresql://USER:PASSWORD@HOST/DB
(pip install psycopg2-binary), mysql+pymysql://USER:PASSWORD@HOST/DB (pip install pymysql).

--space FILE (JSON or YAML) maps trainer flags to a range, choices or a fixed value:
  {"lr": {"low": 2e-5, "high": 1e-3, "log": true}, "batch-size": {"choices": [32, 64]},
   "g-batchnorm": {"choices": [true, false]}, "ema-decay": 0.999}
"""


def build_parser():
    epilog = EPILOG + "\nthe default space (cgan-conv; flags the trainer lacks are left out):\n  " + \
        "\n  ".join(sp.default_space("cgan-conv").describe())
    p = argparse.ArgumentParser(prog="python -m cganraw.tune", description=DESCRIPTION, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=sorted(set(data.DATASETS)),
                   help="training set of every trial (default: mnist)")
    p.add_argument("--model", default="cgan-conv", choices=CONDITIONAL_MODELS, help="the GAN (default: cgan-conv)")
    p.add_argument("--study", default=None, metavar="NAME", help="study name (default: <dataset>-<model>)")
    p.add_argument("--study-dir", default=None, metavar="DIR",
                   help="folder of the trial runs, plots and summary (default: runs/tune/<study>)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna RDB storage shared by the workers (default: sqlite:///<study-dir>/study.db)")
    p.add_argument("--trials", type=cli.positive_int, default=40,
                   help="finish when the study holds this many complete, pruned or failed trials (default: 40)")
    p.add_argument("--trial-minutes", type=cli.positive_float, default=5.0,
                   help="training time of one trial, its --max-minutes (default: 5)")
    p.add_argument("--trial-steps", type=cli.positive_int, default=None,
                   help="also stop each trial after this many steps (default: no limit)")
    p.add_argument("--eval-every-steps", type=cli.positive_int, default=100, metavar="N",
                   help="evaluate (and report FID to the pruner) every N training steps (default: 100)")
    p.add_argument("--sampler", choices=("tpe", "random", "qmc"), default="tpe",
                   help="Optuna sampler: TPE (multivariate, constant liar), random, or quasi-Monte Carlo "
                        "(Sobol) (default: tpe)")
    p.add_argument("--pruner", choices=("hyperband", "median", "none"), default="hyperband",
                   help="stop poor trials early, on FID at the same step (default: hyperband)")
    p.add_argument("--workers", type=cli.positive_int, default=1,
                   help="worker processes on this machine, each running one trial at a time (default: 1)")
    p.add_argument("--multi-objective", action="store_true",
                   help="optimise (FID, 1 - label accuracy) as a Pareto front instead of FID under the "
                        "label-accuracy constraint; pruning is off then (Optuna prunes on one objective)")
    p.add_argument("--min-label-accuracy", type=cli.unit_interval, default=0.98,
                   help="the constraint: a trial is feasible when its label accuracy is at least this (default: 0.98)")
    p.add_argument("--space", default=None, metavar="FILE",
                   help="search space as JSON or YAML (default: the built-in space; see below)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="make the study's first trial the trainer's own defaults, so that the summary "
                        "shows whether the search beat them at the same budget (default: yes)")
    p.add_argument("--seed", type=cli.nonneg_int, default=0,
                   help="trial N trains with seed + N; also seeds the samplers (default: 0)")
    p.add_argument("--heartbeat", type=cli.positive_int, default=60, metavar="SECONDS",
                   help="workers beat this often; a trial silent for twice as long is failed and run "
                        "again (default: 60)")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="BLAS threads per trial (default: this machine's cores / --workers)")
    p.add_argument("--top", type=cli.positive_int, default=10, help="rows of the summary table (default: 10)")
    p.add_argument("--print-best-command", action="store_true",
                   help="print the `python -m cganraw.train ...` command of the best trial at the end")
    p.add_argument("--backend", choices=backend.BACKENDS, default=None,
                   help="trainer backend (default: the trainer's own choice)")
    p.add_argument("--data-dir", default=None, help="folder with the IDX files (default: the trainer's)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="fetch missing data once, before the trials start (default: yes)")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    cli.add_common_flags(p)
    return p


def settings_from(args):
    name = args.study or f"{data.resolve_name(args.dataset)}-{args.model}"
    study_dir = Path(args.study_dir or Path("runs") / "tune" / name)
    storage = args.storage or f"sqlite:///{study_dir / 'study.db'}"
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    return st.Settings(
        study_name=name, storage_url=storage, study_dir=study_dir, dataset=data.resolve_name(args.dataset),
        model=args.model, space=sp.load_space(args.space, args.model), trials=args.trials,
        trial_minutes=args.trial_minutes, trial_steps=args.trial_steps, eval_every_steps=args.eval_every_steps,
        seed=args.seed, multi_objective=args.multi_objective, min_label_accuracy=args.min_label_accuracy,
        sampler=args.sampler, pruner=args.pruner, heartbeat=args.heartbeat, threads=threads,
        data_dir=args.data_dir, download=args.download, backend=args.backend)


def prepare(s: st.Settings, baseline=True):
    """Before any trial: the study (made or checked), the data and the evaluation classifier
    (trained once here, not by every trial at the same time); with `baseline`, a new study's
    first trial is queued with the trainer's defaults."""
    cli.check_output_dir(s.study_dir, "study folder")
    study = st.open_study(s, create=True)
    if not study.get_trials(deepcopy=False) and any(s.study_dir.glob("trial_*/metrics.jsonl")):
        raise CLIError(f"{s.study_dir} holds trial folders of another study: choose another --study-dir, "
                       "or remove them")
    for split in ("train", "test"):
        data.load(s.dataset, split, data_dir=s.data_dir, download=s.download)
    from cganraw import classifier
    classifier.load_or_train(s.dataset, data_dir=s.data_dir, log=log.info)
    if baseline and not study.get_trials(deepcopy=False):
        queue_baseline(study, s)
    return study


def queue_baseline(study, s: st.Settings):
    """Queue the trainer's defaults as the next trial, when the space holds every one of them."""
    defaults = s.space.trainer_defaults(s.model)
    outside = [f"{p.flag} {defaults[p.name]}" for p in s.space.searched() if not p.contains(defaults[p.name])]
    if outside:
        log.info("no baseline trial: the space does not hold the trainer's default %s", ", ".join(outside))
        return
    study.enqueue_trial(defaults, user_attrs={"baseline": True})
    log.info("the first trial is the baseline, the trainer's defaults: %s",
             " ".join(shlex.join(p.argv(defaults[p.name])) for p in s.space.searched()) or "(nothing searched)")


def _worker_argv(argv, index):
    return [sys.executable, "-m", "cganraw.tune", *argv, "--worker-index", str(index)]


def run_workers(s: st.Settings, argv, n):
    """n worker processes of this same command; waits for them. A SIGTERM to this process
    reaches them too (and, on Linux, they die with it)."""
    procs = [subprocess.Popen(_worker_argv(argv, i), stdin=subprocess.DEVNULL,
                              preexec_fn=worker._die_with_parent if worker._PRCTL else None) for i in range(n)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    if all(c != 0 for c in codes):
        raise CLIError(f"all {n} workers failed (exit {', '.join(map(str, codes))}): see their errors above")
    if any(c != 0 for c in codes):
        log.warning("%d of %d workers failed (see above); the others finished", sum(c != 0 for c in codes), n)


def finish(study, s: st.Settings, top, print_best):
    """The disk policy over the whole study, the summary, the plots, the best command."""
    dropped = st.apply_disk_policy(study, s)
    if dropped:
        log.info("removed the checkpoints of %d trials that are not the best", len(dropped))
    lines = report.summary_lines(study, s, top)
    path = s.study_dir / "summary.md"
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    sys.stdout.write("\n".join(lines) + "\n")
    for p in report.write_plots(study, s, s.study_dir):
        log.info("wrote %s", p)
    command = report.best_command(study, s)
    if command:
        atomic_write(s.study_dir / "best_command.txt", (command + "\n").encode())
        best = st.best_trials(study.get_trials(deepcopy=False), s)
        log.info("best trial %s: %s", ", ".join(str(t.number) for t in best),
                 s.study_dir / best[0].user_attrs["run_dir"])
        if print_best:
            sys.stdout.write(command + "\n")
    elif print_best:
        raise CLIError("no trial has completed yet: there is no best command")


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if args.multi_objective and args.pruner != "none" and "--pruner" in argv and args.worker_index is None:
        log.warning("--multi-objective: pruning is off (Optuna prunes on one objective only)")

    def body(args):
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)   # stop trials like Ctrl-C
        try:
            return study_command(args, argv)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return cli.run(body, args, expected=(data.DataError,))


def study_command(args, argv):
    """Prepare, run the workers, report (or, with --worker-index, be one worker)."""
    st.require_optuna()
    s = settings_from(args)
    if args.worker_index is not None:               # one of the processes of --workers
        worker.run_worker(s, args.worker_index, f"[worker {args.worker_index}] ")
        return 0
    study = prepare(s, baseline=args.baseline)
    done, running = worker.finished(study)
    log.info("study %s in %s: %d of %d trials finished, %d running; %d workers here; space: %s",
             s.study_name, st.shown_url(s.storage_url), done, s.trials, running, args.workers,
             "; ".join(s.space.describe()))
    if args.workers == 1:
        worker.run_worker(s, 0)
    else:
        run_workers(s, argv, args.workers)
    finish(st.open_study(s), s, args.top, args.print_best_command)
    return 0

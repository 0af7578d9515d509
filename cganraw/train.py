"""Train a (conditional) GAN: `python -m cganraw.train --dataset emnist`.

A run folder holds config.json, metrics.jsonl, samples/, loss.png and checkpoints/
(last.npz plus the last few per-epoch ones). `--resume RUN` picks a killed, interrupted or
finished run up from its last checkpoint; on the NumPy backend the result is bit-identical
to a run that was never interrupted.

This module is the command line and the loop. The step is cganraw.step, the run's state
(save, restore) cganraw.run, the folder (lock, checks, metrics) cganraw.rundir, Ctrl-C and
SIGTERM cganraw.signals, divergence cganraw.health, the display cganraw.progress.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

import cganraw
from cganraw import backend, checkpoint, cli, data, health, load, models, rundir, threads  # noqa: F401
from cganraw.cli import CLIError  # noqa: F401  (re-exported: the errors of this command)
from cganraw.ops.gemm import set_tf32
from cganraw.progress import Progress, format_eta
from cganraw.run import Run, fraction_done
from cganraw.settings import (  # noqa: F401
    CONFIG_KEYS,
    DEFAULT_EPOCHS,
    DEFAULTS,
    KEEP_EPOCH_CHECKPOINTS,
    MODEL_DEFAULTS,
    RESUMABLE_OVERRIDES,
    TrainingError,
    UsageError,
    build_parser,
    config_doc,
    flag_name,
    model_default,
    new_config,
    resume_settings,
    resumed_config,
)
from cganraw.signals import Aborted, StopSignals
from cganraw.step import ema_decay_at, lr_scale, train_step, update_ema, upload_batch  # noqa: F401  (the API)

log = logging.getLogger("cganraw.train")   # not __name__: that is __main__ under python -m
EVAL_N_PER_CLASS = 100   # images per class of an --eval-every(-steps) evaluation


def _use_backend(name):
    try:
        return backend.use(name) if name else backend.current()
    except RuntimeError as e:   # cuda without a usable GPU
        raise TrainingError(str(e)) from None


# ------------------------------------------------------------------ the run -------

class _Saved:
    """What is on disk, for the messages of an interrupted or failed run."""

    def __init__(self, path: Path):
        self.path = path
        self.locked = False      # True once this process may have written into the folder

    def step(self):
        """The step of the checkpoint at `path` as it is on disk now, or None."""
        try:
            return int(checkpoint.read_meta(self.path)["step"])
        except (checkpoint.CheckpointError, KeyError, TypeError, ValueError):
            return None

    def describe(self):
        step = self.step()
        if step is None:
            return "no checkpoint was written, so there is nothing to resume"
        return f"the last checkpoint, {self.path} (step {step}), is intact: resume with --resume {self.path.parent.parent}"


def _diverged(e, saved):
    step = saved.step()
    kept = (f"the last good one is {saved.path} (step {step})" if step is not None
            else "none was written")
    return TrainingError(f"training diverged {e}; stopped without writing a checkpoint ({kept}). "
                         "Try a lower --lr, or --label-smoothing 0.1")


def _save(run, path, saved):
    try:
        run.save(path)
    except health.HealthError as e:
        raise _diverged(e, saved) from None


def progress(run, planned_steps, cfg):
    """Fraction of the run done under the settings `cfg` (cganraw.run.fraction_done)."""
    return fraction_done(run.step, run.elapsed, planned_steps, cfg.get("max_minutes"))


def run_training(args, log=log):
    """Set up (or resume) the run that `args` (from build_parser) describes and train it.
    Returns (run, out); run.exit_code is 0, or 130/143 when SIGINT/SIGTERM stopped it after
    saving. Raises CLIError-class errors for the user, Aborted on a second signal."""
    saved = _Saved(Path("."))
    with StopSignals() as stop:
        try:
            return _train(args, log, stop, saved)
        except Aborted as e:
            if not saved.locked:
                log.warning("aborted by %s before training started: nothing was written", e)
            else:
                log.warning("aborted by %s at once: %s", e, saved.describe())
            raise


def _step_work(cfg, train_set):
    """One training step, with the moving average, of a throwaway copy of the run's models on
    its first batch (a zero-argument callable): what --threads 0 times at each count. It draws
    from the copy's own streams, so the run itself is untouched."""
    G, D = load.build_from_config(cfg, train_set.num_classes, seed=cfg["seed"])
    probe = Run(cfg, train_set, G, D)
    x, labels = probe.next_batch()
    x, labels = upload_batch(x, labels if G.conditional else None, G.num_classes)

    def one_step():
        with np.errstate(all="ignore"):
            probe.train_step(x, labels)
        probe.step += 1
        probe.update_ema()
    return one_step


def _set_threads(args, bk, resumed_out, cfg, train_set):
    """BLAS and Numba threads (cganraw.threads): --threads (and --numba-threads), else on a
    resume the BLAS count the run used (some BLAS results depend on it, and a resume is
    bit-exact only at the same count; Numba's kernels give the same bits at any count), else
    the fastest pair by measurement of this run's training step. Returns config.json's record."""
    if bk == "cuda":
        return {"requested": args.threads or "auto", "skipped": "cuda backend"}
    numba_threads = args.numba_threads or None
    if not args.threads and resumed_out is not None:
        try:
            kept = json.loads((resumed_out / "config.json").read_text())["threads"]["blas"]
        except (OSError, ValueError, KeyError, TypeError):
            kept = None
        if isinstance(kept, int) and kept > 0:
            return {**threads.apply(kept, numba_threads=numba_threads), "requested": "auto", "kept_from_run": kept}
    if bk == "emu":      # a step in the emulator takes long and says nothing of numpy's: the GEMM probe
        return threads.apply(args.threads, numba_threads=numba_threads)
    return threads.apply(args.threads, lambda: _step_work(cfg, train_set), numba_threads=numba_threads)


def _train(args, log, stop, saved):
    bk = _use_backend(args.backend)
    set_tf32(True if args.tf32 else None)
    ckpt, changes = None, {}
    if args.resume is not None:
        ckpt, out, cfg, changes = resume_settings(args)
    else:
        cfg, out = new_config(args)
    last_path = out / "checkpoints" / "last.npz"
    saved.path = last_path
    if ckpt is None and last_path.exists():
        raise TrainingError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    # everything that can fail without writing, before any long work or write
    rundir.check_writable(out)
    lock = rundir.RunLock(out)
    lock.check_free()

    train_set = data.load(cfg["dataset"], "train", data_dir=args.data_dir, download=args.download)
    for key in ("batch_size", "batch_size_final"):
        if (cfg.get(key) or 0) > len(train_set.labels):
            raise TrainingError(f"{flag_name(key)} {cfg[key]} exceeds the {len(train_set.labels)} training images")

    thread_record = _set_threads(args, bk, out if ckpt is not None else None, cfg, train_set)   # after the checks

    def fresh_run(ckpt):
        G, D = load.build_from_config(cfg, train_set.num_classes, seed=cfg["seed"])
        run = Run(cfg, train_set, G, D)
        if ckpt is not None:
            run.restore(ckpt)
        return run

    run = fresh_run(ckpt)
    param_bytes = sum(p.data.nbytes for m in (run.G, run.D) for p in m.parameters())
    rundir.check_free_space(out, (4 * param_bytes + (1 << 20)) * (KEEP_EPOCH_CHECKPOINTS + 3) + (20 << 20))

    with lock:
        saved.locked = True
        if ckpt is None and last_path.exists():   # another run wrote it since the check above
            raise TrainingError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        if ckpt is not None and checkpoint.read_meta(ckpt["path"]) != ckpt["meta"]:
            ckpt, out, cfg, changes = resume_settings(args)   # another run saved it since we read it
            run = fresh_run(ckpt)
        rundir.remove_leftovers(out)
        metrics = rundir.MetricsLog(out / "metrics.jsonl")
        metrics.truncate_to(run.step)
        (out / "samples").mkdir(exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        rundir.write_json(out / "config.json", {**config_doc(cfg, run, out, changes), "threads": thread_record})
        log.info("cganraw %s: training %s on %s (%d images, %d classes), backend %s, out %s%s",
                 cganraw.__version__, cfg["model"], cfg["dataset"], len(train_set.labels), train_set.num_classes,
                 bk, out, f", resumed at step {run.step}" if ckpt else "")
        if changes:
            log.info("changed on resume: %s", ", ".join(f"{flag_name(k)} {a} -> {b}" for k, (a, b) in changes.items()))
        with metrics:
            _loop(run, cfg, args, out, metrics, stop, saved, log)
    return run, out


def _loop(run, cfg, args, out, metrics, stop, saved, log):
    G = run.G
    planned_steps = run.planned_steps
    steps_per_epoch = planned_steps / cfg["epochs"]     # on average, with a rising batch size
    total_steps = min(planned_steps, cfg["max_steps"]) if cfg.get("max_steps") else planned_steps
    t_start, elapsed0, step0 = time.monotonic(), run.elapsed, run.step
    deadline = t_start + 60 * cfg["max_minutes"] - elapsed0 if cfg.get("max_minutes") else None
    window_t, window_imgs, session_imgs = t_start, 0, 0
    stop_reason = "finished" if total_steps == planned_steps else f"reached --max-steps {total_steps}"
    evaluates = cfg.get("eval_every") or cfg.get("eval_every_steps")
    evaluator = _make_evaluator(cfg, log, args.data_dir) if evaluates else None
    last_path = saved.path
    run.exit_code = 0

    stop.graceful = True   # from here a first signal stops after the step, with a checkpoint
    text = ""              # the bar's losses, refreshed at log steps (reading them is a sync)
    with Progress(total_steps, run.step, every=cfg["log_every"], enabled=not args.quiet) as bar:
        while run.step < total_steps:
            if stop.received:
                stop_reason = f"stopped by {stop.name}"
                break
            if deadline is not None and time.monotonic() >= deadline:
                stop_reason = f"time budget of {cfg['max_minutes']} min reached"
                break
            frac = run.fraction_done(planned_steps)
            run.set_lr(frac)
            run.set_growth(frac)
            epoch_before = run.batches.epoch
            x, labels = run.next_batch()
            # labels checked on the host, then uploaded: no layer checks them on the device
            x, labels = upload_batch(x, labels if G.conditional else None, G.num_classes)
            with np.errstate(all="ignore"):   # a bad loss is recorded on the device, read below
                stats = run.train_step(x, labels)
            run.step += 1
            run.update_ema()
            now = time.monotonic()
            window_imgs += x.shape[0]
            session_imgs += x.shape[0]
            run.elapsed = elapsed0 + now - t_start
            epoch_done = run.batches.epoch > epoch_before
            epochs_done = run.step / steps_per_epoch

            rate = (run.step - step0) / max(now - t_start, 1e-9)
            eta = (total_steps - run.step) / rate
            if deadline is not None:
                eta = min(eta, max(deadline - now, 0.0))
            if run.step % cfg["log_every"] == 0 or run.step == total_steps or epoch_done:
                # the only reads of the device in the loop: the loss flag, then the stats
                try:
                    run.check_losses()
                except health.HealthError as e:
                    raise _diverged(e, saved) from None
                values = stats.fetch()
                metrics.write({"step": run.step, "epoch": round(epochs_done, 6),
                               **{k: round(v, 6) for k, v in values.items()},
                               "images_per_s": round(window_imgs / max(now - window_t, 1e-9), 2),
                               "elapsed_s": round(run.elapsed, 2), **run.schedule_record(x.shape[0])})
                window_t, window_imgs = now, 0
                text = (f"D {values['d_loss']:.3f} G {values['g_loss']:.3f} D(x) {values['d_real']:.2f} "
                        f"D(G(z)) {values['d_fake']:.2f}")
            bar.update(run.step, f"epoch {epochs_done:.2f}/{cfg['epochs']} {text} "
                                 f"{session_imgs / max(now - t_start, 1e-9):.0f} img/s ETA {format_eta(eta)}",
                       force=epoch_done)
            if evaluator and cfg.get("eval_every_steps") and run.step % cfg["eval_every_steps"] == 0 \
                    and not (epoch_done and cfg.get("eval_every") and run.batches.epoch % cfg["eval_every"] == 0):
                _evaluate(run, evaluator, metrics, log, round(epochs_done, 6), f"step {run.step}")
            if cfg.get("sample_every") and run.step % cfg["sample_every"] == 0:
                run.sample_grid(out / "samples" / f"step_{run.step:07d}.png", f"step {run.step}")
            if epoch_done:
                run.epoch = run.batches.epoch
                run.sample_grid(out / "samples" / f"epoch_{run.epoch:03d}.png", f"epoch {run.epoch}, step {run.step}")
                if evaluator and cfg.get("eval_every") and run.epoch % cfg["eval_every"] == 0:
                    _evaluate(run, evaluator, metrics, log, run.epoch, f"epoch {run.epoch}")
                _save(run, out / "checkpoints" / f"epoch_{run.epoch:03d}.npz", saved)
                rundir.prune_epoch_checkpoints(out / "checkpoints", KEEP_EPOCH_CHECKPOINTS)
                _save(run, last_path, saved)
            elif run.step % cfg["checkpoint_every"] == 0:
                _save(run, last_path, saved)

        if saved.step() != run.step or not last_path.exists():
            _save(run, last_path, saved)
    if stop.received:
        run.exit_code = stop.exit_code
        log.warning("stopped by %s at step %d (epoch %.2f/%d): checkpoint saved to %s; resume with --resume %s",
                    stop.name, run.step, run.step / steps_per_epoch, cfg["epochs"], last_path, out)
        return
    stop.graceful = False
    run.sample_grid(out / "samples" / "final.png", f"{cfg['model']} on {cfg['dataset']}, step {run.step}")
    from cganraw.plots import plot_losses
    plot_losses(out / "metrics.jsonl", out / "loss.png")
    log.info("%s at step %d (epoch %.2f/%d), %.1f min; checkpoint %s", stop_reason, run.step,
             run.step / steps_per_epoch, cfg["epochs"], run.elapsed / 60, last_path)


def _evaluate(run, evaluator, metrics, log, epoch, where):
    """One evaluation record in metrics.jsonl: the step, the epoch and the metrics."""
    res = evaluator(run)
    metrics.write({"step": run.step, "epoch": epoch, **res})
    log.info("%s: %s", where, ", ".join(f"{k} {v:.4g}" for k, v in res.items()))


def _make_evaluator(cfg, log, data_dir=None):
    """Label accuracy etc. every N epochs or steps, through cganraw.evaluate."""
    from cganraw import classifier, evaluate
    clf = classifier.load_or_train(cfg["dataset"], data_dir=data_dir, log=log.info)

    def run_eval(run):
        res = evaluate.evaluate_generator(run.G_sample, list(run.train_set.class_names), clf,
                                          n_per_class=EVAL_N_PER_CLASS, seed=0, cas=False, log=lambda *a: None,
                                          data_dir=data_dir)
        return {k: v for k, v in res.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return run_eval


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args)

    def body(args):
        try:
            run, _ = run_training(args)
        except UsageError as e:
            sys.stderr.write(f"{parser.prog}: error: {e}\n")
            return cli.EXIT_USAGE
        except Aborted as e:
            return e.exit_code
        return run.exit_code

    return cli.run(body, args)


if __name__ == "__main__":
    sys.exit(main())

"""Train a (conditional) GAN: `python -m cganraw.train --dataset emnist`.

A run directory holds config.json, metrics.jsonl, samples/, loss.png and
checkpoints/ (last.npz plus the last few per-epoch ones). `--resume RUN` picks a
killed or finished run up from its last checkpoint; on the NumPy backend the result
is bit-identical to a run that was never interrupted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

import cganraw
from cganraw import backend, checkpoint, data, models
from cganraw.cli import nonneg_float as _nonneg_float
from cganraw.cli import positive_float as _positive_float
from cganraw.cli import positive_int as _positive_int
from cganraw.cli import unit_float as _unit_float
from cganraw.cli import unit_interval as _unit_interval
from cganraw.optim import Adam
from cganraw.step import ema_decay_at, lr_scale, train_step, update_ema  # noqa: F401  (train_step: API)

# Defaults tuned so that cgan-conv on MNIST reaches the label-accuracy bar on a
# 2-core CPU in 20 minutes (see README); the literature's are batch 64, lr 2e-4.
DEFAULTS = dict(model="cgan-conv", width=64, epochs=None, batch_size=64, lr=1e-4, lr_d=None, beta1=0.5,
                beta2=0.999, latent_dim=100, seed=0, label_smoothing=0.0, mismatch=1.0, mode_seeking=0.0, ema_decay=0.9995, lr_decay_start=1.0, g_batchnorm=True)
# Epochs when --epochs is not given. The conv cGAN (BatchNorm in G) draws the asked-for
# digit 99.9% of the time after two epochs of MNIST, about 10 CPU minutes; without
# BatchNorm it peaks there too (96-98%) and then grows speckle artefacts (92% after four).
# The MLP keeps improving for twenty.
DEFAULT_EPOCHS = {"cgan-conv": 2, "dcgan": 2, "cgan-mlp": 20, "gan-mlp": 20}
KEEP_EPOCH_CHECKPOINTS = 3


class TrainingError(RuntimeError):
    pass


# ------------------------------------------------------------------ CLI -----------

def build_parser():
    names = sorted(set(data.DATASETS))
    p = argparse.ArgumentParser(prog="python -m cganraw.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=names, help="emnist means emnist-letters")
    p.add_argument("--model", default=DEFAULTS["model"], choices=models.MODELS)
    p.add_argument("--width", type=_positive_int, default=DEFAULTS["width"], help="channels of the conv models")
    p.add_argument("--g-batchnorm", action=argparse.BooleanOptionalAction, default=DEFAULTS["g_batchnorm"],
                   help="BatchNorm2d after G's transposed convs (cgan-conv)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="default per model: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()))
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=_positive_float, default=DEFAULTS["lr"], help="Adam learning rate of G (and D)")
    p.add_argument("--lr-d", type=_positive_float, default=None, help="D's learning rate, if different")
    p.add_argument("--beta1", type=_unit_float, default=DEFAULTS["beta1"])
    p.add_argument("--beta2", type=_unit_float, default=DEFAULTS["beta2"])
    p.add_argument("--latent-dim", type=_positive_int, default=DEFAULTS["latent_dim"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--label-smoothing", type=_unit_float, default=DEFAULTS["label_smoothing"],
                   help="one-sided: real targets become 1 - s")
    p.add_argument("--mismatch", type=_nonneg_float, default=DEFAULTS["mismatch"],
                   help="weight of the D term that scores real images with wrong labels as fake")
    p.add_argument("--mode-seeking", type=_nonneg_float, default=DEFAULTS["mode_seeking"],
                   help="weight of MSGAN's mode-seeking term in G's loss (against one image per label)")
    p.add_argument("--ema-decay", type=_unit_float, default=DEFAULTS["ema_decay"],
                   help="keep an exponential moving average of G's weights for sampling (0: off)")
    p.add_argument("--lr-decay-start", type=_unit_interval, default=DEFAULTS["lr_decay_start"],
                   help="fraction of the run (steps, or --max-minutes) after which both learning "
                        "rates fall linearly to 0 at its end (1: constant)")
    p.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<model>-<time>)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="continue a run from its last checkpoint (default: the --out directory)")
    p.add_argument("--sample-every", type=_positive_int, default=None, metavar="STEPS",
                   help="also write a sample grid every N steps (one is always written per epoch)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=500, metavar="STEPS")
    p.add_argument("--log-every", type=_positive_int, default=50, metavar="STEPS")
    p.add_argument("--eval-every", type=_positive_int, default=None, metavar="EPOCHS",
                   help="run cganraw.evaluate's metrics every N epochs (needs a classifier)")
    p.add_argument("--max-steps", type=_positive_int, default=None)
    p.add_argument("--max-minutes", type=_positive_float, default=None)
    p.add_argument("--backend", choices=backend.BACKENDS, default=None,
                   help="default: $CGANRAW_BACKEND, else cuda when a GPU is usable, else numpy")
    p.add_argument("--data-dir", default=None, help="folder with the IDX files (or $CGANRAW_DATA_DIR)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="fetch missing data from the official sources into the user cache")
    p.add_argument("--quiet", action="store_true")
    return p


CONFIG_KEYS = ("dataset", "model", "width", "g_batchnorm", "epochs", "batch_size", "lr", "lr_d", "beta1",
               "beta2", "latent_dim", "seed", "label_smoothing", "mismatch", "mode_seeking", "ema_decay", "lr_decay_start", "sample_every", "checkpoint_every",
               "log_every", "eval_every", "max_steps", "max_minutes")
# settings a resumed run may change: how long it goes on, how often it reports
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "max_minutes", "sample_every", "checkpoint_every",
                       "log_every", "eval_every")


# ------------------------------------------------------------------ run dir -------

def _check_writable(out: Path, need_bytes: int):
    """Fail before training when the run directory cannot hold a checkpoint."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write to the run directory {out}: {e.strerror or e}") from None
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise TrainingError(f"not enough free disk in {out}: {free / 1e6:.1f} MB free, a run needs about "
                            f"{need_bytes / 1e6:.1f} MB for its checkpoints and samples")


def _param_bytes(*mods):
    return sum(p.data.nbytes for m in mods for p in m.parameters())


class Logger:
    """A live progress line on a terminal; plain periodic lines otherwise."""

    def __init__(self, quiet=False, stream=None):
        self.stream, self.quiet = stream or sys.stderr, quiet
        self.tty = self.stream.isatty()
        self._live = False

    def progress(self, text):
        if self.quiet or not self.tty:
            return
        self.stream.write("\r" + text[:160].ljust(100))
        self.stream.flush()
        self._live = True

    def line(self, text):
        if self.quiet:
            return
        if self._live:
            self.stream.write("\n")
            self._live = False
        self.stream.write(text + "\n")
        self.stream.flush()


# ------------------------------------------------------------------ the run -------

class Run:
    """A run's state: models, optimisers, data order, generators, counters."""

    def __init__(self, cfg, train_set, G, D):
        self.cfg, self.train_set, self.G, self.D = cfg, train_set, G, D
        lr_d = cfg["lr_d"] or cfg["lr"]
        betas = (cfg["beta1"], cfg["beta2"])
        self.opt_g = Adam(G.parameters(), lr=cfg["lr"], betas=betas)
        self.opt_d = Adam(D.parameters(), lr=lr_d, betas=betas)
        ss = np.random.SeedSequence(cfg["seed"])
        s_data, s_step, s_fixed = ss.spawn(3)
        self.rng_step = np.random.default_rng(s_step)
        self.batches = data.BatchIterator(train_set.images, train_set.labels, cfg["batch_size"],
                                          np.random.default_rng(s_data))
        self.fixed_z = np.random.default_rng(s_fixed).standard_normal((10, cfg["latent_dim"]), dtype=np.float32)
        self.step, self.epoch, self.elapsed = 0, 0, 0.0
        self.G_ema = None
        if cfg.get("ema_decay", 0) > 0:
            self.G_ema = models.build(cfg["model"], G.num_classes or 2, latent_dim=cfg["latent_dim"],
                                      width=cfg["width"], seed=cfg["seed"],
                                      batchnorm=cfg.get("g_batchnorm", False))[0]
            self.G_ema.load_state_dict(G.state_dict())
            self.G_ema.eval()

    def update_ema(self):
        """G_ema moves towards G at this step's decay (step.ema_decay_at); buffers are copied."""
        if self.G_ema is not None:
            update_ema(self.G_ema, self.G, ema_decay_at(self.step, self.cfg["ema_decay"]))

    def set_lr(self, frac):
        """Both rates scaled by step.lr_scale at this fraction of the run."""
        scale = lr_scale(frac, self.cfg.get("lr_decay_start", 1.0))
        self.opt_g.lr = self.cfg["lr"] * scale
        self.opt_d.lr = (self.cfg["lr_d"] or self.cfg["lr"]) * scale

    @property
    def G_sample(self):
        return self.G_ema if self.G_ema is not None else self.G

    def rngs(self):
        gens = {"step": self.rng_step}
        for prefix, mod in (("D", self.D), ("G", self.G)):
            for i, layer in enumerate(models.dropout_layers(mod)):
                gens[f"{prefix}.dropout{i}"] = layer.rng
        return gens

    def meta(self):
        ds = self.train_set
        return {"version": cganraw.__version__, "backend": backend.current(), "config": self.cfg,
                "dataset": self.cfg["dataset"], "model": self.cfg["model"],
                "num_classes": ds.num_classes if self.G.conditional else None,
                "class_names": list(ds.class_names), "latent_dim": self.cfg["latent_dim"],
                "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed,
                "batches": self.batches.state_dict()}

    def save(self, path):
        checkpoint.save(path, self.G, self.D, self.opt_g, self.opt_d, self.rngs(), self.meta(), self.G_ema)

    def restore(self, ckpt):
        try:
            self.G.load_state_dict(ckpt["G"])
            self.D.load_state_dict(ckpt["D"])
            self.opt_g.load_state_dict(ckpt["opt_g"])
            self.opt_d.load_state_dict(ckpt["opt_d"])
            if self.G_ema is not None:
                self.G_ema.load_state_dict(ckpt["G_ema"] or ckpt["G"])
        except (KeyError, ValueError) as e:
            raise TrainingError(f"{ckpt['path']}: does not fit this model: {e}") from None
        gens = self.rngs()
        for name, state in ckpt["rng"].items():
            if name in gens:
                checkpoint.restore_rng(gens[name], state)
        meta = ckpt["meta"]
        self.step, self.epoch, self.elapsed = int(meta["step"]), int(meta["epoch"]), float(meta.get("elapsed", 0))
        self.batches.load_state_dict(meta["batches"])

    def sample_grid(self, path, title):
        """Rows: every class (labelled with its character); columns: the fixed noise.
        Drawn by the moving-average generator where one is kept."""
        G = self.G_sample
        if G.conditional:
            k = G.num_classes
            imgs = models.generate(G, np.repeat(np.arange(k), len(self.fixed_z)), z=np.tile(self.fixed_z, (k, 1)))
            row_labels = list(self.train_set.class_names)
        else:
            imgs = models.generate(G, z=np.tile(self.fixed_z, (10, 1))[:100])
            row_labels = None
        from cganraw.plots import save_grid, to_uint8_images  # noqa: PLC0415  (matplotlib is slow to import)
        return save_grid(path, to_uint8_images(imgs), row_labels=row_labels,
                         cols=len(self.fixed_z) if row_labels else 10, title=title)


def _resolve_resume(args):
    target = Path(args.resume or args.out or "")
    if not str(target):
        raise TrainingError("--resume needs a run directory or checkpoint (or --out)")
    ckpt = checkpoint.load(target)   # accepts a run dir or a .npz
    path = Path(ckpt["path"])
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return ckpt, run_dir


def progress(run, planned_steps, cfg):
    """Fraction of the run done: of its --epochs, or of --max-minutes when that ends it
    sooner. --max-steps only cuts a run short, so a run stopped there and resumed follows
    the same schedule, exactly; by time the schedule follows the clock."""
    frac = run.step / planned_steps
    if cfg.get("max_minutes"):
        frac = max(frac, run.elapsed / (60 * cfg["max_minutes"]))
    return min(frac, 1.0)


def _prune_epoch_checkpoints(ckpt_dir: Path, keep: int):
    files = sorted(ckpt_dir.glob("epoch_*.npz"))
    for f in files[:-keep]:
        f.unlink(missing_ok=True)


def run_training(args, log: Logger):
    if args.backend:
        backend.use(args.backend)
    bk = backend.current()

    ckpt = None
    if args.resume is not None:
        ckpt, out = _resolve_resume(args)
        cfg = dict(ckpt["meta"]["config"])
        for key in RESUMABLE_OVERRIDES:
            if getattr(args, key) is not None and getattr(args, key) != build_parser().get_default(key):
                cfg[key] = getattr(args, key)
    else:
        cfg = {k: getattr(args, k) for k in CONFIG_KEYS}
        cfg["epochs"] = cfg["epochs"] or DEFAULT_EPOCHS[cfg["model"]]
        cfg["dataset"] = data.resolve_name(cfg["dataset"])
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.out or f"runs/{cfg['dataset']}-{cfg['model']}-{stamp}")
        if (out / "checkpoints" / "last.npz").exists():
            raise TrainingError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")

    train_set = data.load(cfg["dataset"], "train", data_dir=args.data_dir, download=args.download)
    G, D = models.build(cfg["model"], train_set.num_classes, latent_dim=cfg["latent_dim"], width=cfg["width"],
                        seed=cfg["seed"], batchnorm=cfg.get("g_batchnorm", False))
    if cfg["batch_size"] > len(train_set.labels):
        raise TrainingError(f"--batch-size {cfg['batch_size']} exceeds the {len(train_set.labels)} training images")
    run = Run(cfg, train_set, G, D)
    if ckpt is not None:
        run.restore(ckpt)

    ckpt_bytes = 3 * _param_bytes(G, D) + (1 << 20)
    _check_writable(out, ckpt_bytes * (KEEP_EPOCH_CHECKPOINTS + 3) + (20 << 20))
    (out / "samples").mkdir(exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    config_doc = {**cfg, "version": cganraw.__version__, "backend": bk, "num_classes": train_set.num_classes,
                  "class_names": list(train_set.class_names), "out": str(out)}
    checkpoint.atomic_write_bytes(out / "config.json", lambda f: f.write(json.dumps(config_doc, indent=2).encode()))
    metrics_path = out / "metrics.jsonl"
    last_path = out / "checkpoints" / "last.npz"

    log.line(f"cganraw {cganraw.__version__}: training {cfg['model']} on {cfg['dataset']} "
             f"({len(train_set.labels)} images, {train_set.num_classes} classes), backend {bk}, out {out}"
             + (f", resumed at step {run.step}" if ckpt else ""))
    xp = backend.get_xp()
    steps_per_epoch = len(run.batches)
    total_steps = cfg["epochs"] * steps_per_epoch
    if cfg.get("max_steps"):
        total_steps = min(total_steps, cfg["max_steps"])
    deadline = time.monotonic() + 60 * cfg["max_minutes"] if cfg.get("max_minutes") else None
    if deadline is not None and ckpt is not None:
        deadline -= run.elapsed  # the budget covers the whole run, resumed or not
    t_start, elapsed0 = time.monotonic(), run.elapsed
    window_t, window_imgs = time.monotonic(), 0
    stop_reason = "finished"
    evaluator = _make_evaluator(cfg, log, args.data_dir) if cfg.get("eval_every") else None

    with open(metrics_path, "a") as mlog:
        while run.step < total_steps:
            if deadline is not None and time.monotonic() >= deadline:
                stop_reason = f"time budget of {cfg['max_minutes']} min reached"
                break
            run.set_lr(progress(run, cfg["epochs"] * steps_per_epoch, cfg))
            epoch_before = run.batches.epoch
            x, labels = run.batches.next_batch()
            x = xp.asarray(x)
            labels = xp.asarray(labels) if G.conditional else None
            stats = train_step(G, D, run.opt_g, run.opt_d, x, labels, run.rng_step, cfg["label_smoothing"],
                               cfg.get("mismatch", 0.0), cfg.get("mode_seeking", 0.0))
            if not all(math.isfinite(stats[k]) for k in ("d_loss", "g_loss", "g_loss_mode_seeking")):
                raise TrainingError(
                    f"non-finite loss at step {run.step + 1} (D {stats['d_loss']}, G {stats['g_loss']}); "
                    f"stopped without overwriting {last_path}, the last good checkpoint. "
                    "Try a lower --lr or --label-smoothing 0.1.")
            run.step += 1
            run.update_ema()
            window_imgs += x.shape[0]
            run.elapsed = elapsed0 + time.monotonic() - t_start
            epoch_done = run.batches.epoch > epoch_before

            if run.step % cfg["log_every"] == 0 or run.step == total_steps or epoch_done:
                now = time.monotonic()
                rec = {"step": run.step, "epoch": run.epoch + (run.step % steps_per_epoch) / steps_per_epoch,
                       **{k: round(float(v), 6) for k, v in stats.items()},
                       "images_per_s": round(window_imgs / max(now - window_t, 1e-9), 2),
                       "elapsed_s": round(run.elapsed, 2)}
                mlog.write(json.dumps(rec) + "\n")
                mlog.flush()
                window_t, window_imgs = now, 0
                text = (f"epoch {run.epoch + 1}/{cfg['epochs']} step {run.step}/{total_steps} "
                        f"D {stats['d_loss']:.3f} G {stats['g_loss']:.3f} D(x) {stats['d_real']:.2f} "
                        f"D(G(z)) {stats['d_fake']:.2f} {rec['images_per_s']:.0f} img/s")
                (log.progress if log.tty else log.line)(text)
            if cfg.get("sample_every") and run.step % cfg["sample_every"] == 0:
                run.sample_grid(out / "samples" / f"step_{run.step:07d}.png", f"step {run.step}")
            if epoch_done:
                run.epoch = run.batches.epoch
                run.sample_grid(out / "samples" / f"epoch_{run.epoch:03d}.png", f"epoch {run.epoch}, step {run.step}")
                if evaluator and run.epoch % cfg["eval_every"] == 0:
                    res = evaluator(run)
                    mlog.write(json.dumps({"step": run.step, "epoch": run.epoch, **res}) + "\n")
                    mlog.flush()
                    log.line(f"epoch {run.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items()))
                run.save(out / "checkpoints" / f"epoch_{run.epoch:03d}.npz")
                _prune_epoch_checkpoints(out / "checkpoints", KEEP_EPOCH_CHECKPOINTS)
                run.save(last_path)
            elif run.step % cfg["checkpoint_every"] == 0:
                run.save(last_path)

    run.save(last_path)
    run.sample_grid(out / "samples" / "final.png", f"{cfg['model']} on {cfg['dataset']}, step {run.step}")
    from cganraw.plots import plot_losses  # noqa: PLC0415
    plot_losses(metrics_path, out / "loss.png")
    log.line(f"{stop_reason} at step {run.step} (epoch {run.epoch}), {run.elapsed / 60:.1f} min; "
             f"checkpoint {last_path}")
    return run, out


def _make_evaluator(cfg, log, data_dir=None):
    """Label accuracy etc. every N epochs, through cganraw.evaluate when it is available."""
    try:
        from cganraw import evaluate, classifier  # noqa: PLC0415
    except ImportError as e:
        raise TrainingError(f"--eval-every needs cganraw.evaluate: {e}") from None
    clf = classifier.load_or_train(cfg["dataset"], data_dir=data_dir, log=log.line)

    def run_eval(run):
        res = evaluate.evaluate_generator(run.G_sample, list(run.train_set.class_names), clf, n_per_class=100,
                                          seed=0, cas=False, log=lambda *a: None, data_dir=data_dir)
        return {k: v for k, v in res.items() if isinstance(v, (int, float))}
    return run_eval


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    log = Logger(quiet=args.quiet)
    try:
        run_training(args, log)
    except (TrainingError, data.DataError, checkpoint.CheckpointError) as e:
        log.line(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log.line("interrupted: resume with --resume (the last checkpoint is intact)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

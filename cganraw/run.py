"""A training run's state: the networks, their optimisers, the moving average of G, the
data order, the seeds and the counters. It saves to and restores from one checkpoint,
exactly: a resumed run is bit-identical to one that was never interrupted (on the NumPy
backend; on a GPU as far as its kernels are deterministic). Every random number of a step
(noise, labels, dropout masks) is a Philox stream of the run's seed and the step number
(cganraw.ops.philox), so the step, which the checkpoint holds, is all the random state
there is. The loop that advances it lives in cganraw.train."""
from __future__ import annotations

import numpy as np

import cganraw
from cganraw import backend, checkpoint, data, health, load, models
from cganraw.cli import CLIError
from cganraw.ops.philox import Key, seed_from
from cganraw.optim import Adam
from cganraw.step import ema_decay_at, lr_scale, train_step, update_ema


def fraction_done(step, elapsed_s, planned_steps, max_minutes=None):
    """Fraction of a run done: of its --epochs (`planned_steps`), or of --max-minutes when
    that ends it sooner. --max-steps only cuts a run short, so a run stopped there and
    resumed follows the same schedule, exactly; by time the schedule follows the clock."""
    frac = step / planned_steps
    if max_minutes:
        frac = max(frac, elapsed_s / (60 * max_minutes))
    return min(frac, 1.0)


def planned_steps(epochs, num_images, batch_size, batch_size_final=None):
    """Steps of a run of `epochs`: epochs * (num_images // batch_size) at a constant batch
    size; with a rising one (batch_size_at) as many steps as hold about `epochs` passes over
    the data, floor(2 * epochs * num_images / (batch_size + batch_size_final))."""
    if batch_size_final is None:
        return epochs * (num_images // batch_size)
    return max(1, (2 * epochs * num_images) // (batch_size + batch_size_final))


def batch_size_at(step, total_steps, batch_size, batch_size_final=None, multiple=1):
    """The batch size of step `step` (0-based) of `total_steps`: `batch_size` throughout, or
    rising linearly to `batch_size_final` at the last planned step,
    b0 + round((b1 - b0) * step / (total_steps - 1)) (halves rounded up), held after it.
    multiple: the size rises in steps of it (label groups), b0 and b1 being multiples of it.
    Integer arithmetic: the same sizes on every machine and after every resume."""
    if batch_size_final is None or total_steps <= 1:
        return batch_size
    k, span = min(step, total_steps - 1), total_steps - 1
    units = (batch_size_final - batch_size) // multiple
    return batch_size + multiple * ((2 * units * k + span) // (2 * span))


def growth_at(frac, grow_at, fade):
    """(phase, alpha) of progressive growing at fraction `frac` of the run: (14, 1.0) before
    `grow_at`, then (28, min(1, (frac - grow_at) / fade)): the 28x28 head fades in linearly."""
    if frac < grow_at:
        return 14, 1.0
    return 28, min(1.0, (frac - grow_at) / fade)


class Run:
    """cfg: the run's settings (cganraw.train.CONFIG_KEYS); train_set: images (N, 28, 28)
    uint8, labels, class_names, num_classes; G, D: the networks from models.build."""

    def __init__(self, cfg, train_set, G, D):
        self.cfg, self.train_set, self.G, self.D = cfg, train_set, G, D
        lr_d = cfg["lr_d"] or cfg["lr"]
        betas = (cfg["beta1"], cfg["beta2"])
        self.opt_g = Adam(G.parameters(), lr=cfg["lr"], betas=betas)
        self.opt_d = Adam(D.parameters(), lr=lr_d, betas=betas)
        ss = np.random.SeedSequence(cfg["seed"])
        s_data, s_step, s_fixed = ss.spawn(3)
        self.step_seed = seed_from(s_step)          # names every random number of every step
        self.loss_flag = health.LossFlag()          # the first bad loss, recorded on the device
        self.rising_batch = cfg.get("batch_size_final") is not None
        self.batches = data.BatchIterator(train_set.images, train_set.labels, cfg["batch_size"],
                                          np.random.default_rng(s_data), variable_size=self.rising_batch,
                                          group_size=models.MINIBATCH_STD_GROUP if cfg.get("label_groups") else 1)
        self.fixed_z = np.random.default_rng(s_fixed).standard_normal((10, cfg["latent_dim"]), dtype=np.float32)
        self.step, self.epoch, self.elapsed = 0, 0, 0.0
        self.G_ema = None
        if cfg.get("ema_decay", 0) > 0:
            self.G_ema = load.build_from_config(cfg, G.num_classes or 2, seed=cfg["seed"])[0]
            self.G_ema.load_state_dict(G.state_dict())
            self.G_ema.eval()

    # ------------------------------------------------------------- one step's extras ---

    @property
    def planned_steps(self):
        """Steps of the whole run under --epochs (run.planned_steps)."""
        return planned_steps(self.cfg["epochs"], self.batches.epoch_length, self.cfg["batch_size"],
                             self.cfg.get("batch_size_final"))

    def batch_size_at(self, step):
        return batch_size_at(step, self.planned_steps, self.cfg["batch_size"], self.cfg.get("batch_size_final"),
                             self.batches.group_size)

    def next_batch(self):
        """This step's (images, labels): of batch_size_at(step) images with a rising batch size."""
        if not self.rising_batch:
            return self.batches.next_batch()
        return self.batches.next_batch(self.batch_size_at(self.step), self.batch_size_at(self.step + 1))

    def schedule_record(self, batch_size):
        """The schedules' state at this step for metrics.jsonl: the batch size when it rises,
        the growth phase and alpha when growing (nothing for a plain run)."""
        rec = {"batch_size": int(batch_size)} if self.rising_batch else {}
        if getattr(self.G, "progressive", False):
            phase, alpha = self.G.growth
            rec.update(growth_phase=phase, growth_alpha=round(alpha, 6))
        return rec

    def set_growth(self, frac):
        """A progressive G, D and G_ema set to growth_at(frac, --grow-at, --fade); no-op otherwise."""
        if not getattr(self.G, "progressive", False):
            return
        phase, alpha = growth_at(frac, self.cfg["grow_at"], self.cfg["fade"])
        for m in (self.G, self.D, self.G_ema):
            if m is not None:
                m.set_growth(phase, alpha)

    def update_ema(self):
        """G_ema moves towards G at this step's decay (step.ema_decay_at); buffers are copied."""
        if self.G_ema is not None:
            update_ema(self.G_ema, self.G, ema_decay_at(self.step, self.cfg["ema_decay"]))

    def key(self):
        """The random streams of the next step: the run's seed and the number of steps done."""
        return Key(self.step_seed, self.step)

    def train_step(self, x, labels):
        """One D and G step on the uploaded batch (step.train_step with the run's settings), at
        the next step's streams; the caller counts the step."""
        cfg = self.cfg
        return train_step(self.G, self.D, self.opt_g, self.opt_d, x, labels, self.key(), cfg["label_smoothing"],
                          cfg.get("mismatch", 0.0), cfg.get("mode_seeking", 0.0), flag=self.loss_flag,
                          paired_labels=bool(cfg.get("label_groups")), r1=cfg.get("r1", 0.0),
                          r1_every=cfg.get("r1_every", 1))

    def fraction_done(self, planned_steps):
        """fraction_done(step, elapsed, planned_steps, --max-minutes) of this run."""
        return fraction_done(self.step, self.elapsed, planned_steps, self.cfg.get("max_minutes"))

    def set_lr(self, frac):
        """Both rates scaled by step.lr_scale at this fraction of the run."""
        scale = lr_scale(frac, self.cfg.get("lr_decay_start", 1.0))
        self.opt_g.lr = self.cfg["lr"] * scale
        self.opt_d.lr = (self.cfg["lr_d"] or self.cfg["lr"]) * scale

    @property
    def G_sample(self):
        return self.G_ema if self.G_ema is not None else self.G

    # ------------------------------------------------------------- health and files ---

    def check_losses(self):
        """HealthError naming the first step whose losses went bad, as the device recorded it
        (one read of the flag: a sync on a GPU)."""
        self.loss_flag.check()

    def check_health(self, what):
        """HealthError naming the first non-finite or exploded weight, buffer or optimiser
        moment (bounds in cganraw.health)."""
        modules = {"G": self.G, "D": self.D}
        if self.G_ema is not None:
            modules["G_ema"] = self.G_ema
        health.check_training_state(modules, {"opt_g": (self.opt_g, self.G), "opt_d": (self.opt_d, self.D)}, what)

    def rngs(self):
        """NumPy generators to checkpoint: none, since the step names every random number
        (checkpoints of earlier versions hold some; restore ignores them)."""
        return {}

    def meta(self):
        ds = self.train_set
        return {"version": cganraw.__version__, "backend": backend.current(), "config": self.cfg,
                "dataset": self.cfg["dataset"], "model": self.cfg["model"],
                "num_classes": ds.num_classes if self.G.conditional else None,
                "class_names": list(ds.class_names), "latent_dim": self.cfg["latent_dim"],
                "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed,
                "batches": self.batches.state_dict()}

    def save(self, path):
        """Check the losses' flag and the state's health (HealthError: nothing is written),
        then write the checkpoint atomically."""
        self.check_losses()
        self.check_health(f"in the state at step {self.step}")
        checkpoint.save(path, self.G, self.D, self.opt_g, self.opt_d, self.rngs(), self.meta(), self.G_ema)

    def restore(self, ckpt):
        """Load a checkpoint (checkpoint.load's dict) into this run; CLIError when it does
        not fit the model or fails the health check."""
        try:
            health.check_checkpoint(ckpt)
        except health.HealthError as e:
            raise CLIError(f"cannot resume: {e}; resume from an earlier checkpoint") from None
        try:
            self.G.load_state_dict(ckpt["G"])
            self.D.load_state_dict(ckpt["D"])
            # checkpoints from before the biases in front of BatchNorms were dropped: their
            # moments are left out (the models fold the biases themselves)
            self.opt_g.load_state_dict(models.upgrade_optimizer_state(self.G, ckpt["G"], ckpt["opt_g"]))
            self.opt_d.load_state_dict(models.upgrade_optimizer_state(self.D, ckpt["D"], ckpt["opt_d"]))
            if self.G_ema is not None:
                self.G_ema.load_state_dict(ckpt["G_ema"] or ckpt["G"])
        except (KeyError, ValueError) as e:
            raise CLIError(f"{ckpt['path']}: does not fit this model: {e}") from None
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
        from cganraw.plots import save_grid, to_uint8_images
        return save_grid(path, to_uint8_images(imgs), row_labels=row_labels,
                         cols=len(self.fixed_z) if row_labels else 10, title=title)

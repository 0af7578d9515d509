"""A training run's settings: the defaults, the command line of cganraw.train (every flag
with its help and default; `args.given` names the flags given explicitly), a new run's
config, and a resumed run's: the saved config, with only the RESUMABLE_OVERRIDES allowed to
change. Any other flag given with --resume that differs from the saved value is an error
listing each ("was X, asked Y"), whether or not the value equals the default."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import cganraw
from cganraw import backend, checkpoint, cli, data, health, models
from cganraw.cli import CLIError
from cganraw.ops.gemm import tf32_enabled

# The defaults of every model; MODEL_DEFAULTS overrides some per model.
DEFAULTS = dict(model="cgan-conv", width=64, epochs=None, batch_size=64, lr=1e-4, lr_d=None, beta1=0.5,
                beta2=0.999, latent_dim=100, seed=0, label_smoothing=0.0, mismatch=1.0, mode_seeking=0.0,
                ema_decay=0.9995, lr_decay_start=1.0, g_batchnorm=True, g_norm="batch", d_norm="none",
                minibatch_std=False, label_groups=False, progressive=False, grow_at=0.5, fade=0.25, batch_size_final=None,
                d_label="concat", g_film=False, d_stem=0, r1=0.0, r1_every=4)
# cgan-conv's, chosen by measurement (docs/ablation.md; MNIST, 20 minutes of a 2-core CPU):
# an R1 penalty (gamma 0.3, every 4th D step) and minibatch stddev in D, instance norm in G,
# D at 2.4x G's learning rate (TTUR). R1 replaced spectral norm in D (docs/ablation.md, eighth
# and ninth rounds: lower FID and fewer specks over three seeds). A small model (width 48) and
# batch (32) that buy three times the steps of width 64 and batch 64; a moving average of G;
# one-sided label smoothing; both rates falling over the last quarter of the run (over the
# last half the labels and FID come out worse). The label:
# FiLM in G (each block's scale and shift from [z, label], which widens stroke weight and
# width per image) and a projection D (no label map), with the matching-aware term at a
# light 0.1 (with the concat D, 0.25; at 1.3 and 2 G draws each digit too alike and CAS
# falls). Twelve epochs (tenth round: FID, CAS and the spreads up on both seeds against ten):
# about what 20 minutes of that CPU run; where they are more, --max-minutes ends the run and
# the schedule follows the clock. D reads the image first through a stride-1 conv at 28x28
# (d_stem 16; eleventh round: G's detached specks 5.1% -> 2.2% of images, the spreads kept).
MODEL_DEFAULTS = {"cgan-conv": dict(width=48, batch_size=32, lr=1.1e-4, lr_d=2.6e-4, beta1=0.6, label_smoothing=0.13,
                                    mismatch=0.1, ema_decay=0.999, lr_decay_start=0.75, g_norm="instance",
                                    r1=0.3, minibatch_std=True, d_label="projection",
                                    g_film=True, d_stem=16, epochs=12),
                  "dcgan": dict(epochs=2), "cgan-mlp": dict(epochs=20), "gan-mlp": dict(epochs=20)}
# the flags whose default is per model: argparse leaves them None, _validate fills them in
PER_MODEL = tuple(sorted({k for d in MODEL_DEFAULTS.values() for k in d} - {"epochs"}))
# what a config saved before these settings existed means by them: today's model
UPGRADE_DEFAULTS = dict(d_norm="none", minibatch_std=False, label_groups=False, progressive=False,
                        grow_at=DEFAULTS["grow_at"], fade=DEFAULTS["fade"], batch_size_final=None, d_label="concat",
                        g_film=False, d_stem=0, r1=0.0, r1_every=DEFAULTS["r1_every"])
DEFAULT_EPOCHS = {name: d["epochs"] for name, d in MODEL_DEFAULTS.items()}


def model_default(model, key):
    """The default of setting `key` for `model`."""
    return MODEL_DEFAULTS.get(model, {}).get(key, DEFAULTS[key])


def _per_model_help(key, show=str):
    """'(default: X for cgan-conv, Y otherwise)' for a per-model default."""
    special = {m: d[key] for m, d in MODEL_DEFAULTS.items() if key in d}
    if not special:
        return f"(default: {show(DEFAULTS[key])})"
    return "(default: " + ", ".join(f"{show(v)} for {m}" for m, v in special.items()) + \
        f", {show(DEFAULTS[key])} otherwise)"


def _g(v):
    return f"{v:g}"


def _flag_default(key, text, show=str):
    """add_argument's default= and help= for setting `key`: a per-model setting defaults to None
    (filled in per model once --model is known) and its help names each model's default."""
    if key in PER_MODEL:
        return dict(default=None, help=f"{text} {_per_model_help(key, show)}")
    return dict(default=DEFAULTS[key], help=text)


KEEP_EPOCH_CHECKPOINTS = 3

# what config.json and a checkpoint's meta record of a run
CONFIG_KEYS = ("dataset", "model", "width", "g_batchnorm", "epochs", "batch_size", "lr", "lr_d", "beta1",
               "beta2", "latent_dim", "seed", "label_smoothing", "mismatch", "mode_seeking", "ema_decay",
               "lr_decay_start", "g_norm", "d_norm", "minibatch_std", "label_groups", "progressive", "grow_at", "fade",
               "batch_size_final", "d_label", "g_film", "d_stem", "r1", "r1_every", "sample_every", "checkpoint_every",
               "log_every", "eval_every", "eval_every_steps", "max_steps", "max_minutes")
# what a checkpoint's config must hold to be resumed (later keys have defaults)
REQUIRED_KEYS = ("dataset", "model", "width", "epochs", "batch_size", "lr", "lr_d", "beta1", "beta2", "latent_dim",
                 "seed", "label_smoothing", "checkpoint_every", "log_every")
# settings a resumed run may change: how long it goes on, how often it reports. Any other
# setting given with --resume must equal the saved one.
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "max_minutes", "sample_every", "checkpoint_every",
                       "log_every", "eval_every", "eval_every_steps")


class TrainingError(CLIError):
    """A run that cannot start or go on, said in one line."""


class UsageError(CLIError):
    """Flags that contradict each other or the run being resumed (exit 2)."""


# ------------------------------------------------------------------ CLI -----------

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: X)' unless the help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """One line on a usage error (not the whole usage), and `args.given`: the names of the
    flags given on the command line, whatever their value (a resume must tell an explicit
    `--lr 1e-4` from the default)."""

    def __init__(self, *a, record_given=True, **kw):
        super().__init__(*a, **kw)
        self._record_given = record_given

    def error(self, message):
        self.exit(cli.EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if self._record_given:
            probe = build_parser(record_given=False)
            for action in probe._actions:     # no defaults: only what was given lands in `given`
                action.default = argparse.SUPPRESS
            given, _ = probe.parse_known_args(sys.argv[1:] if args is None else list(args))
            ns.given = frozenset(vars(given))
            _validate(self, ns)
        return ns, extras


def _validate(parser, ns):
    """Cross-flag checks (argparse errors, exit 2); sets ns.g_norm, and ns.g_batchnorm to match it."""
    given = ns.given
    if "g_norm" in given and "g_batchnorm" in given and ns.g_batchnorm != (ns.g_norm == "batch"):
        parser.error(f"--{'' if ns.g_batchnorm else 'no-'}g-batchnorm contradicts --g-norm {ns.g_norm} "
                     "(--g-batchnorm is the old name of --g-norm batch; give only --g-norm)")
    if "g_batchnorm" in given and "g_norm" not in given:
        ns.g_norm = "batch" if ns.g_batchnorm else "none"
    for key in PER_MODEL:
        if getattr(ns, key) is None:
            setattr(ns, key, model_default(ns.model, key))
    ns.g_batchnorm = ns.g_norm == "batch"
    if ns.progressive and "r1" not in given:
        ns.r1 = 0.0     # R1 on the growing D is not measured yet: asked for only (--r1 GAMMA)
    if ns.resume is not None:    # the saved run's settings apply; the conflict check covers changes
        return
    if not ns.progressive and given & {"grow_at", "fade"}:
        parser.error("--grow-at and --fade need --progressive")
    if ns.progressive and ns.grow_at + ns.fade > 1.0:
        parser.error(f"--grow-at {ns.grow_at} + --fade {ns.fade} fades past the run's end (their sum must be <= 1)")
    if ns.r1 == 0 and "r1_every" in given:
        parser.error("--r1-every needs --r1 > 0 (the penalty's weight)")
    if ns.r1 > 0 and ns.model == "dcgan":
        parser.error("--r1: the dcgan's D has BatchNorm, which mixes the samples whose input gradients R1 "
                     "penalises; use it with cgan-conv, cgan-mlp or gan-mlp")
    if ns.batch_size_final is not None and ns.batch_size_final < ns.batch_size:
        parser.error(f"--batch-size-final {ns.batch_size_final} is below --batch-size {ns.batch_size} "
                     "(the batch size rises from --batch-size to --batch-size-final)")
    if ns.label_groups and ns.model == "cgan-conv":
        if not ns.minibatch_std:
            parser.error("--label-groups needs --minibatch-std (its groups are what hold one label)")
        odd = [f"{flag} {v}" for flag, v in (("--batch-size", ns.batch_size),
                                              ("--batch-size-final", ns.batch_size_final))
               if v is not None and v % models.MINIBATCH_STD_GROUP]
        if odd:
            parser.error(f"{', '.join(odd)}: with --label-groups a batch is dealt in groups of "
                         f"{models.MINIBATCH_STD_GROUP} images of one label, so it must be a multiple of "
                         f"{models.MINIBATCH_STD_GROUP} (or give --no-label-groups)")
    if ns.model != "cgan-conv":
        extra = [flag for flag, on in (("--g-norm", ns.g_norm not in ("none", "batch") or
                                        (ns.g_norm == "batch" and "g_norm" in given)),
                                       ("--d-norm", ns.d_norm != "none"), ("--d-label", ns.d_label != "concat"),
                                       ("--minibatch-std", ns.minibatch_std), ("--g-film", ns.g_film),
                                       ("--d-stem", ns.d_stem != 0),
                                       ("--label-groups", ns.label_groups), ("--progressive", ns.progressive)) if on]
        if extra:
            parser.error(f"{', '.join(extra)}: options of --model cgan-conv only, not of {ns.model}")


_width = cli.number(int, lambda v: 1 <= v <= 1024, "an integer in 1..1024")
_latent = cli.number(int, lambda v: 1 <= v <= 4096, "an integer in 1..4096")
_stem = cli.number(int, lambda v: 0 <= v <= 1024, "an integer in 0..1024")


def build_parser(record_given=True):
    names = sorted(set(data.DATASETS))
    p = _Parser(prog="python -m cganraw.train", description="Train a (conditional) GAN on MNIST or EMNIST.",
                formatter_class=_HelpFormatter, record_given=record_given)
    p.add_argument("--dataset", default="mnist", choices=names, help="the training set; emnist means emnist-letters")
    p.add_argument("--model", default=DEFAULTS["model"], choices=models.MODELS, help="the GAN")
    p.add_argument("--width", type=_width, **_flag_default("width", "channels of the conv models"))
    p.add_argument("--g-batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="old name of --g-norm batch (--no-g-batchnorm: --g-norm none; default: unset, "
                        "--g-norm decides)")
    p.add_argument("--g-norm", choices=("none", "batch", "instance"), **_flag_default(
        "g_norm", "normalisation after G's transposed convs (cgan-conv): BatchNorm2d, InstanceNorm2d (affine) "
        "or none"))
    p.add_argument("--d-norm", choices=("none", "spectral"), **_flag_default(
        "d_norm", "spectral normalisation on every conv and linear layer of D's image path (cgan-conv)"))
    p.add_argument("--d-label", choices=models.D_LABELS, **_flag_default(
        "d_label", "how D reads the label (cgan-conv): concat (a learned 28x28 label map beside the image), "
        "projection (Miyato & Koyama 2018: logit = Linear(h) + <E[y], h> on D's last features h; no label map) "
        "or both"))
    p.add_argument("--g-film", action=argparse.BooleanOptionalAction, **_flag_default(
        "g_film", "FiLM in G (cgan-conv): after each upsampling block's norm, a per-image, per-channel scale and "
        "shift computed from [z, one-hot label] (conditional norms), so z can set a style per image and the label "
        "reaches every block", lambda v: "on" if v else "off"))
    p.add_argument("--d-stem", type=_stem, metavar="C", **_flag_default(
        "d_stem", "channels C of a stride-1 3x3 convolution at full resolution (28x28) in front of D's first "
        "stride-2 convolution (cgan-conv; with --progressive in the 28x28 stem only; 0: none). Measured: --d-stem "
        "16 cut G's detached specks from 5.1%% to 2.2%% of images"))
    p.add_argument("--minibatch-std", action=argparse.BooleanOptionalAction, **_flag_default(
        "minibatch_std", "ProGAN's minibatch standard deviation channel before D's last layer (cgan-conv)",
        lambda v: "on" if v else "off"))
    p.add_argument("--label-groups", action=argparse.BooleanOptionalAction, **_flag_default(
        "label_groups", "with --minibatch-std: every minibatch-stddev group holds one label (batches dealt in "
        "groups of 4 images of a class, G drawing the batch's labels), so D compares the spread within a class",
        lambda v: "on" if v else "off"))
    p.add_argument("--progressive", action="store_true", default=DEFAULTS["progressive"],
                   help="grow G and D from 14x14 to 28x28 (cgan-conv; default: off): 14x14 until "
                        "--grow-at, then the 28x28 head fades in over --fade")
    p.add_argument("--grow-at", type=cli.open_unit, default=DEFAULTS["grow_at"], metavar="F",
                   help="fraction of the run (as the LR schedule counts it) at which the 28x28 head "
                        "starts fading in (with --progressive)")
    p.add_argument("--fade", type=cli.open_unit, default=DEFAULTS["fade"], metavar="F",
                   help="fraction of the run over which the 28x28 head's weight alpha rises linearly "
                        "from 0 to 1 (with --progressive; --grow-at + --fade <= 1)")
    p.add_argument("--epochs", type=cli.positive_int, default=None,
                   help="epochs to train (default per model: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    p.add_argument("--batch-size", type=cli.positive_int, **_flag_default("batch_size", "images per step"))
    p.add_argument("--batch-size-final", type=cli.positive_int, default=None, metavar="N",
                   help="rise linearly from --batch-size to N images per step over the planned steps "
                        "(default: constant --batch-size); --epochs then counts images, not steps")
    p.add_argument("--lr", type=cli.positive_float, **_flag_default("lr", "Adam learning rate of G (and D)", _g))
    p.add_argument("--lr-d", type=cli.positive_float, default=None,
                   help="D's learning rate " + _per_model_help("lr_d", lambda v: "--lr" if v is None else _g(v)))
    p.add_argument("--beta1", type=cli.unit_float, **_flag_default("beta1", "Adam's beta1", _g))
    p.add_argument("--beta2", type=cli.unit_float, default=DEFAULTS["beta2"], help="Adam's beta2")
    p.add_argument("--latent-dim", type=_latent, default=DEFAULTS["latent_dim"], help="size of G's noise vector")
    p.add_argument("--seed", type=cli.nonneg_int, default=DEFAULTS["seed"],
                   help="seeds the weights, the data order and the noise")
    p.add_argument("--label-smoothing", type=cli.unit_float,
                   **_flag_default("label_smoothing", "one-sided: real targets become 1 - s", _g))
    p.add_argument("--mismatch", type=cli.nonneg_float, **_flag_default(
        "mismatch", "weight of the D term that scores real images with wrong labels as fake", _g))
    p.add_argument("--r1", type=cli.nonneg_float, metavar="GAMMA", **_flag_default(
        "r1", "weight gamma of the R1 penalty gamma/2 * |grad_x D(x)|^2 on real images (0: off; with "
        "--progressive 0 unless given)", _g))
    p.add_argument("--r1-every", type=cli.positive_int, default=DEFAULTS["r1_every"], metavar="K",
                   help="take the R1 penalty every K D steps, weighted by K (lazy regularisation)")
    p.add_argument("--mode-seeking", type=cli.nonneg_float, default=DEFAULTS["mode_seeking"],
                   help="weight of MSGAN's mode-seeking term in G's loss (against one image per label)")
    p.add_argument("--ema-decay", type=cli.unit_float, **_flag_default(
        "ema_decay", "keep an exponential moving average of G's weights for sampling (0: off)", _g))
    p.add_argument("--lr-decay-start", type=cli.unit_interval, **_flag_default(
        "lr_decay_start", "fraction of the run (steps, or --max-minutes) after which both learning "
        "rates fall linearly to 0 at its end (1: constant)", _g))
    p.add_argument("--out", default=None, help="run folder (default: runs/<dataset>-<model>-<time>)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="continue a run from its last checkpoint (default: start a new run; "
                        "without a value: the --out folder)")
    p.add_argument("--sample-every", type=cli.positive_int, default=None, metavar="STEPS",
                   help="also write a sample grid every N steps (default: only one per epoch)")
    p.add_argument("--checkpoint-every", type=cli.positive_int, default=500, metavar="STEPS",
                   help="write checkpoints/last.npz every N steps (and at every epoch end)")
    p.add_argument("--log-every", type=cli.positive_int, default=50, metavar="STEPS",
                   help="append to metrics.jsonl, and off a terminal print a line, every N steps")
    p.add_argument("--eval-every", type=cli.positive_int, default=None, metavar="EPOCHS",
                   help="run cganraw.evaluate's metrics every N epochs (default: never; needs a classifier)")
    p.add_argument("--eval-every-steps", type=cli.positive_int, default=None, metavar="STEPS",
                   help="run them every N steps as well (default: never), for runs too short for whole epochs")
    p.add_argument("--max-steps", type=cli.positive_int, default=None,
                   help="stop after this many steps in all (default: no limit)")
    p.add_argument("--max-minutes", type=cli.positive_float, default=None,
                   help="stop after this many minutes of training in all (default: no limit)")
    p.add_argument("--backend", choices=backend.BACKENDS, default=None,
                   help="default: $CGANRAW_BACKEND, else cuda when a GPU is usable, else numpy")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                   help="let GEMMs round their inputs to TF32 on tensor cores (cuBLAS on cuda, gemm v4 on "
                        "emu; numpy is unaffected): faster on a GPU, results change at the 1e-3 level")
    p.add_argument("--threads", type=cli.nonneg_int, default=0,
                   help="CPU threads for BLAS; 0 picks the fastest BLAS and Numba counts by timing the run's "
                        "own training step (a GEMM on the emu backend; recorded in config.json)")
    p.add_argument("--numba-threads", type=cli.nonneg_int, default=0,
                   help="CPU threads for the Numba kernels; 0: as many as a given --threads where OpenBLAS's "
                        "workers sleep after their GEMMs ($OPENBLAS_THREAD_TIMEOUT <= 16; cganraw sets 4 when "
                        "imported before NumPy), else one (spinning, they stall the parallel regions run right "
                        "after a GEMM); measured with --threads 0")
    p.add_argument("--data-dir", default=None,
                   help="folder with the IDX files (default: $CGANRAW_DATA_DIR, then the user cache)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="fetch missing data from the official sources into the user cache")
    cli.add_common_flags(p)
    return p


def flag_name(key):
    return "--" + key.replace("_", "-")


def _shown(v):
    return "unset" if v is None else str(v)


# ------------------------------------------------------------------ settings -------

def _resume_target(args):
    target = args.resume or args.out
    if not target:
        raise UsageError("--resume needs a run folder or checkpoint (or --out)")
    ckpt = checkpoint.load(target)   # a run folder or a .npz
    path = Path(ckpt["path"])
    saved = ckpt["meta"].get("config") if isinstance(ckpt["meta"], dict) else None
    missing = [k for k in REQUIRED_KEYS if k not in saved] if isinstance(saved, dict) else ["everything"]
    if missing or not isinstance(ckpt["meta"].get("step"), int) or "batches" not in ckpt["meta"]:
        raise TrainingError(f"{path}: the saved config lacks {', '.join(missing) or 'the step or data order'}: "
                            "not a checkpoint this trainer can resume")
    return ckpt, (path.parent.parent if path.parent.name == "checkpoints" else path.parent)


def resume_settings(args):
    """(checkpoint, run folder, config, allowed changes) of the run --resume names, checked:
    readable, resumable, healthy, and no conflicting flag."""
    ckpt, out = _resume_target(args)
    cfg, changes = resumed_config(ckpt["meta"]["config"], args, out)
    try:
        health.check_checkpoint(ckpt)
    except health.HealthError as e:
        raise TrainingError(f"cannot resume: {e}; resume from an earlier checkpoint") from None
    return ckpt, out, cfg, changes


def resumed_config(saved, args, run_dir):
    """The saved config with the allowed overrides applied, and the overrides {key: (was,
    asked)}. Any other explicitly given setting that differs is a UsageError listing them."""
    given = getattr(args, "given", frozenset())
    saved = upgrade_config(saved)
    asked = {k: getattr(args, k) for k in CONFIG_KEYS if k in given}
    if "g_batchnorm" in asked:          # the old flag asks for a G norm: compare it as one
        asked["g_norm"] = args.g_norm
    if "dataset" in asked:
        asked["dataset"] = data.resolve_name(asked["dataset"])
    conflicts = [f"{flag_name(k)}: was {_shown(saved.get(k))}, asked {_shown(v)}"
                 for k, v in asked.items() if k not in RESUMABLE_OVERRIDES and v != saved.get(k)]
    if args.resume and "out" in given and Path(args.out).resolve() != Path(run_dir).resolve():
        conflicts.append(f"--out: was {run_dir}, asked {args.out}")
    if conflicts:
        raise UsageError(f"--resume {run_dir} conflicts with the saved run: {'; '.join(conflicts)} "
                         "(drop these flags to resume as saved, or start a new run in another --out)")
    changes = {k: (saved.get(k), v) for k, v in asked.items() if v != saved.get(k)}
    return {**saved, **{k: new for k, (_, new) in changes.items()}}, changes


def upgrade_config(saved):
    """A saved config with the settings added since it was written at what they meant then."""
    g_norm = saved.get("g_norm") or ("batch" if saved.get("g_batchnorm") else "none")
    return {**UPGRADE_DEFAULTS, **saved, "g_norm": g_norm, "g_batchnorm": g_norm == "batch"}


def new_config(args):
    cfg = {k: getattr(args, k) for k in CONFIG_KEYS}
    cfg["epochs"] = cfg["epochs"] or DEFAULT_EPOCHS[cfg["model"]]
    cfg["dataset"] = data.resolve_name(cfg["dataset"])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg, Path(args.out or f"runs/{cfg['dataset']}-{cfg['model']}-{stamp}")


def config_doc(cfg, run, out, changes):
    """config.json: the settings, where and how the run is made, and every resume that
    changed an allowed setting."""
    history = []
    try:
        history = json.loads((out / "config.json").read_text()).get("resumes", [])
    except (OSError, ValueError, AttributeError):
        pass
    if changes:
        history = [*history, {"step": run.step, "changed": {k: {"was": a, "now": b} for k, (a, b) in changes.items()}}]
    ds = run.train_set
    return {**cfg, "version": cganraw.__version__, "backend": backend.current(), "tf32": tf32_enabled(),
            "num_classes": ds.num_classes,
            "class_names": list(ds.class_names), "out": str(out), "resumes": history}

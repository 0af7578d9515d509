"""Draw characters with a trained generator.

    python -m cganraw.sample --checkpoint RUN/checkpoints/last.npz --all-labels --out grid.png
    python -m cganraw.sample --checkpoint RUN --chars HELLO --n-per-label 4 --out hello.npz
    python -m cganraw.sample --checkpoint RUN --interpolate --steps 10 --out walk.gif
    python -m cganraw.sample --checkpoint RUN --label-sweep --n-per-label 6 --out hands.png

`.png` writes a labelled grid (one row per requested label); `.npz` writes `images`
(N, 28, 28) uint8, white strokes on black as in MNIST, and `labels` (N,) int64, the
class indices of the training dataset.

Errors end the command with one line on stderr: exit 2 for a wrong command line, 1 for
a problem found while running (a missing, corrupt or diverged checkpoint: cganraw.load
refuses one that fails cganraw.health's check; a label the model does not have; an
output that cannot be written).
"""
from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from cganraw import backend, cli, export, fileio, interpolate, models
from cganraw.images import to_uint8

logger = logging.getLogger("cganraw.sample")   # not __name__: that is __main__ under -m

SUFFIXES = (".png", ".npz")
WALK_SUFFIXES = (".png", ".npz", ".gif")     # --interpolate, --label-sweep
DEFAULT_N_PER_LABEL = 8


class SampleError(cli.CLIError, ValueError):
    """A request this model cannot fulfil (a label out of range, an unknown character)."""


def labels_arg(text):
    """argparse type of --labels: comma-separated class indices >= 0, at least one."""
    parts = [t.strip() for t in text.split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError("expected comma-separated class indices such as 0,3,7, got an empty list")
    try:
        labels = [int(t) for t in parts if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class indices such as 0,3,7, got {text!r}") from None
    negative = [v for v in labels if v < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"class indices are >= 0, got {negative}")
    return labels


def chars_arg(text):
    """argparse type of --chars: at least one character."""
    if not text:
        raise argparse.ArgumentTypeError("expected at least one character, such as HELLO")
    return text


def check_labels(labels, num_classes):
    """The --labels indices, each checked against a model of num_classes classes."""
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise SampleError(f"--labels {bad} out of range: this model has classes 0..{num_classes - 1}")
    return list(labels)


def labels_for_chars(chars, class_names):
    """Map each character to its class, case-insensitively where the dataset has only
    one case of a letter (EMNIST letters: 'a' and 'A' are the same class)."""
    from cganraw.render import char_classes  # the one home of the folding rule

    if not chars:
        raise SampleError("--chars is empty: give at least one character")
    classes = char_classes(class_names)
    out = []
    for ch in chars:
        if ch not in classes:
            raise SampleError(f"character {ch!r} is not in this model's alphabet: {''.join(class_names)}")
        out.append(classes[ch])
    return out


def generate(G, labels, n_per_label, seed=0, batch=256):
    """(images float (N, 1, 28, 28), labels (N,)) with N = len(labels) * n_per_label,
    grouped by label in the order given (models.generate draws them)."""
    lab = np.repeat(np.asarray(labels, dtype=np.int64), n_per_label) if labels is not None else None
    return models.generate(G, lab, n=n_per_label, seed=seed, batch=batch), lab


def build_parser():
    p = cli.ArgumentParser(prog="python -m cganraw.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint .npz, a run directory or an exported generator file (cganraw.export; "
                        "the shipped cganraw/pretrained/digits.npz is one)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--labels", type=labels_arg, help="comma-separated class indices, e.g. 0,3,7")
    which.add_argument("--all-labels", action="store_true", help="every class (the default)")
    which.add_argument("--chars", type=chars_arg, help="characters to draw, e.g. HELLO")
    p.add_argument("--n-per-label", type=cli.positive_int, default=DEFAULT_N_PER_LABEL,
                   help="images per requested label (the columns of the grid); with --label-sweep, "
                        "noise vectors (the rows)")
    walk = p.add_mutually_exclusive_group()
    walk.add_argument("--interpolate", action="store_true",
                      help="per label, a spherical interpolation between two noise vectors in --steps steps")
    walk.add_argument("--label-sweep", action="store_true",
                      help="each noise vector draws every label: does z carry one hand across characters?")
    p.add_argument("--steps", type=cli.positive_int, default=8,
                   help="steps of --interpolate, both ends included")
    p.add_argument("--seed", type=cli.nonneg_int, default=0, help="seed of the noise vectors")
    p.add_argument("--no-ema", action="store_true",
                   help="draw with the last raw weights instead of their moving average")
    p.add_argument("--backend", choices=backend.BACKENDS, default=None,
                   help=f"array backend (default: ${backend.ENV_VAR}, else cuda when a GPU is usable)")
    p.add_argument("--out", required=True,
                   help="output .png (grid), .npz (arrays) or, with --interpolate/--label-sweep, .gif (animated)")
    cli.add_common_flags(p)
    return p


def _labels_for(G, meta, args):
    """The requested class indices (None for an unconditional model)."""
    if not G.conditional:
        if args.labels is not None or args.chars is not None:
            model = meta.get("model") or meta.get("config", {}).get("model")
            raise SampleError(f"{model} is unconditional: drop --labels/--chars")
        return None
    if args.labels is not None:
        return check_labels(args.labels, G.num_classes)
    if args.chars is not None:
        return labels_for_chars(args.chars, meta.get("class_names") or [])
    return list(range(G.num_classes))


def _sample(args):
    if args.backend:
        try:
            backend.use(args.backend)
        except RuntimeError as e:
            raise cli.CLIError(str(e)) from None
    G, meta = export.load_any(args.checkpoint, ema=not args.no_ema)   # refuses a diverged one
    labels = _labels_for(G, meta, args)
    if args.interpolate or args.label_sweep:
        return _walk(G, meta, labels, args)
    out = cli.check_output_file(args.out, "--out", suffixes=SUFFIXES)
    images, lab = generate(G, labels, args.n_per_label, args.seed)
    u8 = to_uint8(images)
    if out.suffix.lower() == ".npz":
        lab = lab if lab is not None else np.full(len(u8), -1)
        fileio.atomic_write(out, lambda f: np.savez(f, images=u8, labels=lab.astype(np.int64)))
    else:
        from cganraw.plots import save_grid
        names = meta.get("class_names") or []
        rows = [names[i] if i < len(names) else str(i) for i in labels] if labels is not None else None
        save_grid(out, u8, row_labels=rows, cols=args.n_per_label if rows else None,
                  title=f"{meta.get('model') or meta.get('config', {}).get('model')} on {meta.get('dataset')}, "
                        f"step {meta.get('step')}")
    logger.info("wrote %s (%d images)", out, len(u8))
    return 0


def _walk(G, meta, labels, args):
    """--interpolate or --label-sweep (cganraw.interpolate) into --out."""
    if labels is None:
        raise SampleError(f"{meta.get('model')} is unconditional: --interpolate and --label-sweep need labels")
    out = cli.check_output_file(args.out, "--out", suffixes=WALK_SUFFIXES)
    names = meta.get("class_names") or []
    chars = [names[i] if i < len(names) else str(i) for i in labels]
    model = meta.get("model") or meta.get("config", {}).get("model")
    title = f"{model} on {meta.get('dataset')}, step {meta.get('step')}"
    if args.interpolate:
        images, z = interpolate.interpolation(G, labels, args.steps, args.seed)
        kind, title = "interpolation", f"{title}: slerp in {args.steps} steps"
    else:
        images, z = interpolate.label_sweep(G, labels, args.n_per_label, args.seed)
        kind, title = "label_sweep", f"{title}: one z per row"
    interpolate.write(out, images, z, labels, chars, chars, kind, title)
    logger.info("wrote %s (%d x %d images)", out, images.shape[0], images.shape[1])
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    walking = args.interpolate or args.label_sweep
    if not args.out.lower().endswith(WALK_SUFFIXES if walking else SUFFIXES):
        parser.error(f"--out must end in .png or .npz{', or .gif with --interpolate or --label-sweep'}, "
                     f"got {args.out!r}")
    if args.interpolate and args.steps < 2:
        parser.error(f"--steps must be at least 2 for --interpolate, got {args.steps}")
    cli.setup_logging(args)
    return cli.run(_sample, args)


if __name__ == "__main__":
    sys.exit(main())

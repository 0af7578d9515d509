"""Draw characters with a trained generator.

    python -m cganraw.sample --checkpoint RUN/checkpoints/last.npz --all-labels --out grid.png
    python -m cganraw.sample --checkpoint RUN --chars HELLO --n-per-label 4 --out hello.npz

`.png` writes a labelled grid (one row per requested label); `.npz` writes `images`
(N, 28, 28) uint8, white strokes on black as in MNIST, and `labels` (N,) int64, the
class indices of the training dataset.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cganraw import backend, checkpoint, load, models
from cganraw.plots import save_grid, to_uint8_images


class SampleError(ValueError):
    pass


def parse_labels(text, num_classes):
    try:
        labels = [int(t) for t in text.split(",") if t.strip() != ""]
    except ValueError:
        raise SampleError(f"--labels takes comma-separated class indices, got {text!r}") from None
    if not labels:
        raise SampleError("--labels is empty")
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise SampleError(f"--labels {bad} out of range: this model has classes 0..{num_classes - 1}")
    return labels


def labels_for_chars(chars, class_names):
    """Map each character to its class, case-insensitively where the dataset has only
    one case of a letter (EMNIST letters: 'a' and 'A' are the same class)."""
    exact = {name: i for i, name in enumerate(class_names)}
    folded = {}
    for i, name in enumerate(class_names):
        folded.setdefault(name.upper(), i)
    out = []
    for ch in chars:
        if ch in exact:
            out.append(exact[ch])
        elif ch.upper() in folded:
            out.append(folded[ch.upper()])
        else:
            raise SampleError(f"character {ch!r} is not in this model's alphabet: {''.join(class_names)}")
    return out


def generate(G, labels, n_per_label, seed=0, batch=256):
    """(images float (N, 1, 28, 28), labels (N,)) with N = len(labels) * n_per_label,
    grouped by label in the order given."""
    lab = np.repeat(np.asarray(labels, dtype=np.int64), n_per_label) if labels is not None else None
    return models.generate(G, lab, n=n_per_label, seed=seed, batch=batch), lab


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cganraw.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint .npz or a run directory")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--labels", help="comma-separated class indices, e.g. 0,3,7")
    which.add_argument("--all-labels", action="store_true", help="every class (the default)")
    which.add_argument("--chars", help="characters to draw, e.g. HELLO")
    p.add_argument("--n-per-label", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true",
                   help="draw with the last raw weights instead of their moving average")
    p.add_argument("--backend", choices=backend.BACKENDS, default=None)
    p.add_argument("--out", required=True, help="output .png (grid) or .npz (arrays)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        print(f"error: --out must end in .png or .npz, got {out.name}", file=sys.stderr)
        return 2
    if args.n_per_label <= 0:
        print(f"error: --n-per-label must be positive, got {args.n_per_label}", file=sys.stderr)
        return 2
    try:
        if args.backend:
            backend.use(args.backend)
        G, meta = load.load_generator(args.checkpoint, ema=not args.no_ema)
        names = meta.get("class_names") or []
        if G.conditional:
            if args.labels:
                labels = parse_labels(args.labels, G.num_classes)
            elif args.chars:
                labels = labels_for_chars(args.chars, names)
            else:
                labels = list(range(G.num_classes))
        else:
            if args.labels or args.chars:
                raise SampleError(f"{meta.get('model')} is unconditional: drop --labels/--chars")
            labels = None
        images, lab = generate(G, labels, args.n_per_label, args.seed)
        u8 = to_uint8_images(images)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".npz":
            checkpoint.atomic_write_bytes(out, lambda f: np.savez(
                f, images=u8, labels=(lab if lab is not None else np.full(len(u8), -1)).astype(np.int64)))
        else:
            rows = [names[i] if i < len(names) else str(i) for i in labels] if labels is not None else None
            save_grid(out, u8, row_labels=rows, cols=args.n_per_label if rows else None,
                      title=f"{meta.get('model')} on {meta.get('dataset')}, step {meta.get('step')}")
    except (SampleError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(u8)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pictures a run writes: the labelled sample grid and the loss curves (matplotlib, Agg)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cganraw.images import to_uint8


def _pyplot():
    import matplotlib  # noqa: PLC0415  (lazy: the package must import without a display)
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def to_uint8_images(images):
    """(N, 1, 28, 28) floats in [-1, 1] -> (N, 28, 28) uint8, white strokes on black."""
    return to_uint8(images)


def mosaic(images_u8, rows, cols, pad=2):
    """(rows*cols, 28, 28) uint8 -> one (rows*(28+pad)+pad, cols*(28+pad)+pad) image."""
    h, w = images_u8.shape[1:]
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 40, np.uint8)
    for idx in range(min(len(images_u8), rows * cols)):
        r, c = divmod(idx, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images_u8[idx]
    return out


def save_grid(path, images_u8, row_labels=None, cols=None, title=None):
    """A grid with one row per label (row_labels) or a square-ish grid, as PNG.
    Each row of a conditional grid is labelled with its character, so a model that
    draws the wrong character, or the same one for every label, shows at a glance."""
    plt = _pyplot()
    n = len(images_u8)
    if row_labels is not None:
        rows = len(row_labels)
        cols = cols or max(n // rows, 1)
    else:
        cols = cols or int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
    img = mosaic(images_u8, rows, cols)
    scale = 0.32
    fig = plt.figure(figsize=(max(cols * scale + 0.8, 2.5), rows * scale + (0.5 if title else 0.2)), dpi=100)
    ax = fig.add_axes([0.6 / (cols * scale + 0.8), 0.02, 1 - 0.7 / (cols * scale + 0.8), 0.96 if not title else 0.9])
    ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    if row_labels is not None:
        ax.set_yticks([2 + 30 * r + 14 for r in range(rows)])
        ax.set_yticklabels([str(s) for s in row_labels], fontsize=9)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_losses(metrics_jsonl, path):
    """D and G losses and the mean D outputs against the step, from metrics.jsonl."""
    rows = []
    with open(metrics_jsonl) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                if "d_loss" in rec:
                    rows.append(rec)
    if not rows:
        return None
    plt = _pyplot()
    step = np.array([r["step"] for r in rows])
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key, label in (("d_loss", "D loss"), ("g_loss", "G loss")):
        a1.plot(step, [r[key] for r in rows], label=label, lw=1)
    a1.set_ylabel("BCE")
    a1.legend()
    a1.grid(alpha=0.3)
    for key, label in (("d_real", "mean D(x)"), ("d_fake", "mean D(G(z))")):
        a2.plot(step, [r[key] for r in rows], label=label, lw=1)
    evals = [r for r in rows if r.get("label_accuracy") is not None]
    if evals:
        a2.plot([r["step"] for r in evals], [r["label_accuracy"] for r in evals], "o-", label="label accuracy")
    a2.set_xlabel("step")
    a2.set_ylim(0, 1)
    a2.legend()
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)

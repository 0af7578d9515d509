"""Every picture the package draws: the labelled sample grid, the loss curves, the
confusion matrix and the per-class accuracy bars.

All of them are set up by `new_figure` (a matplotlib Figure on the Agg canvas: headless,
no pyplot, no process-wide backend switch) and written by `save_figure` (a PNG rendered
in memory, then written atomically, so a full disk never leaves a torn image).
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence

import numpy as np

from cganraw import _checks, fileio
from cganraw.images import to_uint8

__all__ = ["new_figure", "save_figure", "mosaic", "save_grid", "plot_losses", "plot_confusion_matrix",
           "plot_per_class_accuracy"]

# The trainer's name for cganraw.images.to_uint8 (the one image conversion).
to_uint8_images = to_uint8


def new_figure(width, height, dpi=100):
    """A matplotlib Figure of width x height inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path) -> str:
    """Render `fig` as PNG and write it to `path` atomically (parents created); returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fileio.atomic_write(path, buf.getvalue())
    return str(path)


# --------------------------------------------------------------------- sample grids ---

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
    n = len(images_u8)
    if row_labels is not None:
        rows = len(row_labels)
        cols = cols or max(n // rows, 1)
    else:
        cols = cols or int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
    img = mosaic(images_u8, rows, cols)
    scale = 0.32
    title_h = 0.3 * (title.count("\n") + 1) + 0.1 if title else 0.1     # inches above the grid
    height = rows * scale + 0.1 + title_h
    fig = new_figure(max(cols * scale + 0.8, 2.5), height)
    ax = fig.add_axes([0.6 / (cols * scale + 0.8), 0.05 / height, 1 - 0.7 / (cols * scale + 0.8),
                       rows * scale / height])
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
    return save_figure(fig, path)


# --------------------------------------------------------------------- loss curves ---

def plot_losses(metrics_jsonl, path):
    """D and G losses and the mean D outputs against the step, from metrics.jsonl; None (no
    figure) when it holds no losses yet, or does not exist (a run stopped before its first
    logged step)."""
    rows = []
    if not os.path.exists(metrics_jsonl):
        return None
    with open(metrics_jsonl) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                if "d_loss" in rec:
                    rows.append(rec)
    if not rows:
        return None
    step = np.array([r["step"] for r in rows])
    fig = new_figure(8, 6)
    a1, a2 = fig.subplots(2, 1, sharex=True)
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
    return save_figure(fig, path)


# ------------------------------------------------------- confusion and per-class ---

def plot_confusion_matrix(cm, class_names: Sequence[str] | None, path,
                          normalize: bool = True, title: str | None = None) -> str:
    """Write a confusion-matrix heat map to ``path`` (PNG); returns the path.

    Rows are the conditioning label, columns the classifier's prediction.
    With ``normalize`` the colours show row fractions (rows with no samples
    stay 0); cells are annotated with raw counts when K <= 20.
    """
    fn = "plot_confusion_matrix"
    m = _checks.host(cm)
    _checks.numeric(fn, "cm", m)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"{fn}: cm must be a square (K, K) array, got shape {m.shape}")
    k = m.shape[0]
    names = _checks.class_names(fn, class_names, k)
    counts = m.astype(np.float64)
    shown = counts
    if normalize:
        rows = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)

    side = max(4.0, min(16.0, 0.35 * k + 2.5))
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="fraction of row" if normalize else "count")
    fontsize = 8 if k <= 30 else 6
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, fontsize=fontsize, rotation=90 if k > 10 else 0)
    ax.set_yticklabels(names, fontsize=fontsize)
    ax.set_xlabel("predicted class (classifier argmax)")
    ax.set_ylabel("conditioning label")
    ax.set_title(title or "Confusion matrix")
    if k <= 20:
        hi = float(shown.max()) if shown.size else 0.0
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{int(round(counts[i, j]))}", ha="center", va="center",
                            fontsize=7, color="white" if shown[i, j] > 0.5 * hi else "black")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_per_class_accuracy(acc, class_names: Sequence[str] | None, path,
                            title: str | None = None) -> str:
    """Bar chart of per-class accuracy (``nan`` = class absent, marked "n/a"); returns the path."""
    fn = "plot_per_class_accuracy"
    a = _checks.host(acc)
    _checks.numeric(fn, "acc", a)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{fn}: acc must be a 1-D array of shape (K,), got shape {a.shape}")
    k = a.shape[0]
    names = _checks.class_names(fn, class_names, k)
    absent = np.isnan(a)

    fig = new_figure(max(5.0, min(20.0, 0.3 * k + 2.0)), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(k), np.where(absent, 0.0, a), color="tab:blue")
    for i in np.flatnonzero(absent):
        ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="gray")
    if (~absent).any():
        mean = float(a[~absent].mean())
        ax.axhline(mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.legend(loc="lower right")
    ax.set_xticks(range(k))
    ax.set_xticklabels(names, fontsize=8 if k <= 30 else 6, rotation=90 if k > 10 else 0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel("conditioning label")
    ax.set_ylabel("accuracy (classifier argmax == label)")
    ax.set_title(title or "Per-class label accuracy")
    fig.tight_layout()
    return save_figure(fig, path)

"""Walks through a generator's noise space, for `python -m cganraw.sample --interpolate`
and `--label-sweep`:

    interpolation  per label, a spherical interpolation (slerp) between two noise vectors
                   in N steps: rows are labels, columns the steps. The same two vectors
                   serve every label, so a column compares one point of the walk across
                   characters.
    label sweep    one noise vector per row, every asked label drawn with it: whether z
                   carries one hand (slant, width, stroke) across characters.

Images are drawn through models.generate. Pictures: a labelled .png grid, an animated .gif
(an interpolation plays its steps, a label sweep its labels), or .npz arrays.
"""
from __future__ import annotations

import io

import numpy as np

from cganraw import fileio, models
from cganraw.images import to_uint8


def slerp(z0, z1, t):
    """Spherical interpolation between vectors z0, z1 (D,) at fractions t (T,) -> (T, D):
    sin((1-t) w)/sin(w) z0 + sin(t w)/sin(w) z1, with w the angle between them; the great
    circle keeps every point at a Gaussian vector's typical norm, where a straight line
    passes through the low-norm middle that G never saw. Nearly parallel vectors (w ~ 0)
    fall back to the straight line, its limit."""
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    t = np.asarray(t, np.float64)[:, None]
    cos = float(np.dot(z0, z1) / max(np.linalg.norm(z0) * np.linalg.norm(z1), 1e-300))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return ((1 - t) * z0 + t * z1).astype(np.float32)
    return ((np.sin((1 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)).astype(np.float32)


def interpolation(G, labels, steps, seed=0):
    """Images (len(labels), steps, 1, 28, 28) and z (steps, latent_dim): for each label, G
    along slerp between two N(0, 1) vectors drawn from `seed`, both ends included."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    ends = np.random.default_rng(seed).standard_normal((2, G.latent_dim), dtype=np.float32)
    z = slerp(ends[0], ends[1], np.linspace(0.0, 1.0, steps))
    lab = np.repeat(np.asarray(labels, np.int64), steps)
    imgs = models.generate(G, lab, z=np.tile(z, (len(labels), 1)))
    return imgs.reshape(len(labels), steps, *imgs.shape[1:]), z


def label_sweep(G, labels, rows, seed=0):
    """Images (rows, len(labels), 1, 28, 28) and z (rows, latent_dim): row r draws every
    label with one noise vector z[r], drawn from `seed`."""
    if rows < 1:
        raise ValueError(f"a label sweep needs at least 1 noise vector, got {rows}")
    z = np.random.default_rng(seed).standard_normal((rows, G.latent_dim), dtype=np.float32)
    k = len(labels)
    imgs = models.generate(G, np.tile(np.asarray(labels, np.int64), rows), z=np.repeat(z, k, axis=0))
    return imgs.reshape(rows, k, *imgs.shape[1:]), z


def _frame(tiles_u8, scale):
    """(n, 28, 28) uint8 -> one row of tiles, 2 px apart, each pixel `scale` x `scale`."""
    from cganraw.plots import mosaic
    row = mosaic(tiles_u8, 1, len(tiles_u8))
    return np.kron(row, np.ones((scale, scale), np.uint8))


def write_gif(path, frames_u8, duration_ms=120, scale=3):
    """An animated, looping GIF, written atomically. frames_u8: (F, n, 28, 28) uint8, each
    frame a row of n tiles."""
    from PIL import Image
    pictures = [Image.fromarray(_frame(f, scale), mode="L") for f in frames_u8]
    buf = io.BytesIO()
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    return fileio.atomic_write(path, buf.getvalue())


def write(path, images, z, labels, row_names, col_names, kind, title):
    """Write `images` (R, C, 1, 28, 28) to `path` by its suffix: .png a grid with a row per
    row name; .gif the columns as frames (interpolation) or the rows' labels as frames
    (sweep); .npz images (R, C, 28, 28) uint8, labels, z."""
    u8 = to_uint8(images.reshape(-1, *images.shape[2:])).reshape(*images.shape[:2], *images.shape[-2:])
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return fileio.atomic_write(path, lambda f: np.savez(f, images=u8, labels=np.asarray(labels, np.int64), z=z,
                                                            kind=np.array(kind)))
    if suffix == ".gif":
        # a frame per column: interpolation, every label at step s; sweep, label j for every z
        return write_gif(path, u8.transpose(1, 0, 2, 3))
    from cganraw.plots import save_grid
    if kind == "interpolation":
        rows = list(row_names)
    else:
        rows = [f"z{r}" for r in range(u8.shape[0])]
        title = f"{title}\ncolumns: {''.join(col_names)}"
    return save_grid(path, u8.reshape(-1, *u8.shape[2:]), row_labels=rows, cols=u8.shape[1], title=title)

"""Small generator runs for the writing tests: real checkpoints of untrained models with a
dataset's class names, made in a few milliseconds."""
from __future__ import annotations

import json
import string
from pathlib import Path

from cganraw import checkpoint, models

LETTERS = list(string.ascii_uppercase)                       # EMNIST letters: cases merged
BALANCED = list("0123456789" + string.ascii_uppercase + "abdefghnqrt")


def make_run(folder, class_names, dataset="emnist-letters", model="cgan-conv", width=8, seed=0, step=7,
             ema=True):
    """A run directory (config.json, checkpoints/last.npz) of an untrained `model`."""
    folder = Path(folder)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    cfg = {"dataset": dataset, "model": model, "width": width, "latent_dim": 16, "g_batchnorm": True,
           "epochs": 2, "batch_size": 64, "lr": 1e-4, "seed": seed, "ema_decay": 0.9995 if ema else 0.0}
    G, D = models.build(model, len(class_names), latent_dim=16, width=width, seed=seed, batchnorm=True)
    G_ema = None
    if ema:
        G_ema, _ = models.build(model, len(class_names), latent_dim=16, width=width, seed=seed + 1, batchnorm=True)
    meta = {"version": "test", "config": cfg, "dataset": dataset, "model": model, "num_classes": len(class_names),
            "class_names": list(class_names), "latent_dim": 16, "step": step, "epoch": 1}
    checkpoint.save(folder / "checkpoints" / "last.npz", G, D, meta=meta, G_ema=G_ema)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder

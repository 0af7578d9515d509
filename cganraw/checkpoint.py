"""Checkpoints: one .npz holding a run's whole state, written atomically.

Layout of the arrays inside (NumPy only, no pickles):
    G.<param or buffer name>        generator state dict (PyTorch names)
    G_ema.<name>                    the generator's exponential moving average, when kept
    D.<name>                        discriminator state dict
    opt_g.<key>, opt_d.<key>        Adam state (t, m.i, v.i)
    rng.<name>                      bit-generator states, as JSON strings
    meta                            JSON string: step, epoch, config, class names, version

Writing goes to a temporary file in the same directory, is fsynced, then renamed
over the target, so a run killed at any moment leaves either the old checkpoint or
the new one, never a torn file.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from cganraw import fileio


class CheckpointError(ValueError):
    pass


def _prefixed(prefix, state):
    return {f"{prefix}.{k}": np.asarray(v) for k, v in state.items()}


def _unprefixed(arrays, prefix):
    n = len(prefix) + 1
    return {k[n:]: arrays[k] for k in arrays if k.startswith(prefix + ".")}


def rng_state_json(gen: np.random.Generator) -> str:
    return json.dumps(gen.bit_generator.state)


def restore_rng(gen: np.random.Generator, state_json: str):
    gen.bit_generator.state = json.loads(str(state_json))


def atomic_write_bytes(path, write_fn):
    """Call write_fn(fileobj) on a temp file beside `path`, fsync, rename over `path`."""
    return fileio.atomic_write(path, write_fn)


def save(path, G, D, opt_g=None, opt_d=None, rngs=None, meta=None, G_ema=None):
    """Write a checkpoint atomically. rngs: name -> numpy Generator."""
    arrays = {}
    arrays.update(_prefixed("G", G.state_dict()))
    if G_ema is not None:
        arrays.update(_prefixed("G_ema", G_ema.state_dict()))
    arrays.update(_prefixed("D", D.state_dict()))
    if opt_g is not None:
        arrays.update(_prefixed("opt_g", opt_g.state_dict()))
    if opt_d is not None:
        arrays.update(_prefixed("opt_d", opt_d.state_dict()))
    for name, gen in (rngs or {}).items():
        arrays[f"rng.{name}"] = np.asarray(rng_state_json(gen))
    arrays["meta"] = np.asarray(json.dumps(meta or {}))
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def load(path):
    """Read a checkpoint into a dict with keys G, D, opt_g, opt_d, rng, meta.
    A missing, truncated or foreign file raises CheckpointError naming it."""
    path = Path(path)
    if path.is_dir():
        for cand in (path / "checkpoints" / "last.npz", path / "last.npz"):
            if cand.exists():
                path = cand
                break
        else:
            raise CheckpointError(f"{path}: no checkpoints/last.npz in this run directory")
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not a cganraw checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt metadata ({e})") from None
    return {
        "path": str(path),
        "G": _unprefixed(arrays, "G"),
        "D": _unprefixed(arrays, "D"),
        "opt_g": _unprefixed(arrays, "opt_g"),
        "opt_d": _unprefixed(arrays, "opt_d"),
        "G_ema": _unprefixed(arrays, "G_ema"),
        "rng": {k: str(v) for k, v in _unprefixed(arrays, "rng").items()},
        "meta": meta,
    }


def read_meta(path):
    """The metadata (step, epoch, config, ...) of a checkpoint file, reading nothing else;
    CheckpointError when it is missing or unreadable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None

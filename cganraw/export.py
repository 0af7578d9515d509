"""Export a run's generator as one small file for `cganraw.write` and `cganraw.serve`.

    python -m cganraw.export RUN --out digits.npz
    python -m cganraw.export RUN/checkpoints/epoch_002.npz --out digits.npz --metrics RUN/metrics.json

The file is a compressed .npz holding only G's weights (`G.<name>`, PyTorch names; the
moving average where the run kept one) and `meta`, a JSON string:

    format, format_version      "cganraw-generator", 1
    dataset, class_names        the training set and its characters (class k draws class_names[k])
    characters                  every character the model writes (case folding included)
    model, config               model name and the settings that rebuild G (width, latent_dim, ...)
    training_command            how the run was started
    metrics                     the headline of `python -m cganraw.evaluate` for this checkpoint
    step, epoch, ema, version   where the weights come from

The metrics come from the run's metrics.json (written by `python -m cganraw.evaluate
--checkpoint RUN`) or --metrics; they must be for the exported step.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import shlex
import sys
import zipfile
from pathlib import Path

import numpy as np

import cganraw
from cganraw import checkpoint, cli, fileio, health, load, models

log = logging.getLogger("cganraw.export")   # not __name__: that is __main__ under python -m

FORMAT = "cganraw-generator"
FORMAT_VERSION = 1
# The evaluate results worth carrying in the file (the full report stays in the run).
METRIC_KEYS = ("label_accuracy", "inception_score", "inception_score_std", "fid", "bcis", "wcis", "cas",
               "per_class_accuracy", "class_names", "n_per_class", "num_samples", "seed", "step")
# Config keys that rebuild G (the rest describe training or D); the last three are
# cgan-conv options that a run's config holds once the trainer offers them.
G_CONFIG_KEYS = ("model", "width", "latent_dim", "g_batchnorm", "g_norm", "progressive", "g_film")


class ExportError(ValueError):
    pass


# ------------------------------------------------------------------ reading ---------

def _read_meta(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                return None
            return json.loads(str(z["meta"]))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ExportError(f"{path}: not a readable model file ({e})") from None


def is_exported(path) -> bool:
    """True when `path` is a file written by this module (rather than a training checkpoint)."""
    meta = _read_meta(path)
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def load_generator(path):
    """(G in eval mode, meta) from an exported file; meta gains `path` and `source`.
    A missing, truncated or foreign file raises ExportError naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ExportError(f"{path}: not a readable model file ({e})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: no readable metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path}: not an exported cganraw generator")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"{path}: format version {meta['format_version']} is newer than this cganraw reads "
                          f"({FORMAT_VERSION}): upgrade cganraw")
    cfg = meta.get("config") or {}
    try:
        options = {k: cfg[k] for k in ("g_norm", "progressive", "g_film") if cfg.get(k) is not None}
        G, _ = models.build(cfg["model"], meta.get("num_classes"), latent_dim=cfg["latent_dim"],
                            width=cfg["width"], seed=0, batchnorm=cfg.get("g_batchnorm", False), **options)
        G.load_state_dict({k[2:]: v for k, v in arrays.items() if k.startswith("G.")})
    except (KeyError, ValueError, TypeError) as e:
        raise ExportError(f"{path}: weights do not fit the configured model: {e}") from None
    G.eval()
    return G, dict(meta, path=str(path), source=str(path))


def load_any(path, ema=True):
    """(G in eval mode, meta) from an exported generator file, a training checkpoint or a run
    directory: what `sample`, `evaluate`, `write` and `serve` accept. An exported file holds
    one set of weights (meta["ema"] says which), so ema=False on a file of the moving
    average raises ExportError pointing at the run's checkpoint."""
    path = Path(path)
    try:
        exported = path.is_file() and is_exported(path)
    except ExportError:         # unreadable: the checkpoint reader names what is wrong with it
        exported = False
    if not exported:
        return load.load_generator(path, ema=ema)
    G, meta = load_generator(path)
    if not ema and meta.get("ema"):
        raise ExportError(f"{path}: an exported file holds only the moving average of G; "
                          "the raw weights are in the run's checkpoint")
    return G, meta


# ------------------------------------------------------------------ writing ---------

def training_command(cfg) -> str:
    """The train command line of a run: its recorded command, else one rebuilt from its
    config with every setting that differs from the defaults."""
    for key in ("command", "argv"):
        if cfg.get(key):
            return cfg[key] if isinstance(cfg[key], str) else shlex.join(cfg[key])
    from cganraw import settings, train

    cfg = settings.upgrade_config(cfg)      # g_norm for --g-batchnorm, and what older runs meant
    parser = train.build_parser()
    words = ["python", "-m", "cganraw.train"]
    for action in parser._actions:
        dest = action.dest
        if dest not in cfg or not action.option_strings or dest in ("out", "resume", "backend", "g_batchnorm"):
            continue
        value, default = cfg[dest], action.default
        if dest == "epochs":
            default = train.DEFAULT_EPOCHS.get(cfg.get("model"))
        elif dest in settings.PER_MODEL:
            default = settings.model_default(cfg.get("model"), dest)
        if value is None or value == default:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(action.option_strings[0] if value else action.option_strings[1])
        else:
            words += [action.option_strings[0], str(value)]
    return shlex.join(words)


def headline_metrics(res) -> dict:
    """The METRIC_KEYS of an evaluate result, and which classifier scored them (not where
    it lay on the machine that ran it)."""
    out = {k: res[k] for k in METRIC_KEYS if k in res}
    if isinstance(res.get("classifier"), dict):
        out["classifier"] = {k: v for k, v in res["classifier"].items() if k != "path"}
    return out


def find_metrics(run_dir, explicit=None):
    """(metrics dict, path) from --metrics or RUN/metrics.json, or (None, None)."""
    path = Path(explicit) if explicit else Path(run_dir) / "metrics.json"
    if not path.exists():
        if explicit:
            raise ExportError(f"{path}: metrics file not found")
        return None, None
    try:
        return json.loads(path.read_text()), path
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: not a readable metrics.json ({e})") from None


def export(source, out, metrics_path=None, command=None, ema=True, require_metrics=False) -> dict:
    """Write G's weights and metadata from checkpoint/run `source` to `out` (.npz); returns meta."""
    ckpt = checkpoint.load(source)
    G, meta = load.load_generator(ckpt["path"], ema=ema)
    health.check(G.state_dict().items(), ckpt["path"], bound=health.PARAM_BOUND)
    if not G.conditional:
        raise ExportError(f"{ckpt['path']}: {meta.get('model')} is unconditional: it cannot write characters")
    cfg = dict(meta.get("config") or {})
    ckpt_path = Path(ckpt["path"]).resolve()
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    res, res_path = find_metrics(run_dir, metrics_path)
    if res is None:
        if require_metrics:
            raise ExportError(f"{run_dir}/metrics.json not found: run `python -m cganraw.evaluate --checkpoint "
                              f"{ckpt['path']}` first, or pass --metrics")
        log.warning("no metrics.json in %s: exporting without evaluation metrics "
                    "(run python -m cganraw.evaluate --checkpoint %s first)", run_dir, ckpt["path"])
    elif res.get("step") is not None and res["step"] != meta.get("step"):
        raise ExportError(f"{res_path} scores step {res['step']} but {ckpt['path']} is at step {meta.get('step')}: "
                          f"evaluate this checkpoint again")
    from cganraw.render import char_classes

    names = list(meta.get("class_names") or [])
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": meta.get("dataset"),
           "class_names": names, "characters": "".join(char_classes(names)),
           "num_classes": G.num_classes, "model": cfg.get("model", meta.get("model")),
           "config": {k: cfg[k] for k in G_CONFIG_KEYS if k in cfg},
           "training_config": cfg, "training_command": command or training_command(cfg),
           "metrics": headline_metrics(res) if res else None,
           "step": meta.get("step"), "epoch": meta.get("epoch"), "ema": meta.get("ema"),
           "version": cganraw.__version__}
    arrays = {f"G.{k}": np.asarray(v) for k, v in G.state_dict().items()}
    arrays["meta"] = np.asarray(json.dumps(doc))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    fileio.atomic_write(out, buf.getvalue())
    return doc


def build_parser():
    p = cli.ArgumentParser(prog="python -m cganraw.export",
                                description="Write a run's generator (G only, EMA weights) with its metadata.")
    p.add_argument("run", metavar="RUN", help="a run directory or a checkpoint .npz")
    p.add_argument("--out", required=True, help="output file (.npz)")
    p.add_argument("--metrics", help="metrics.json of `python -m cganraw.evaluate` (default: RUN/metrics.json)")
    p.add_argument("--training-command", help="the command that trained the run (default: rebuilt from its config)")
    p.add_argument("--no-ema", action="store_true", help="export the last raw weights instead of their moving average")
    p.add_argument("--require-metrics", action="store_true", help="fail when no metrics.json is found")
    return cli.add_common_flags(p)


def _main(args):
    cli.setup_logging(args)
    out = cli.check_output_file(args.out, "--out", suffixes=(".npz",))
    doc = export(args.run, out, args.metrics, args.training_command, ema=not args.no_ema,
                 require_metrics=args.require_metrics)
    m = doc["metrics"] or {}
    score = f", label accuracy {m['label_accuracy']:.4f}" if m.get("label_accuracy") is not None else ""
    log.info("wrote %s (%s on %s, step %s, %d bytes, characters %s%s)", out, doc["model"], doc["dataset"],
             doc["step"], out.stat().st_size, doc["characters"], score)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return cli.run(_main, args, expected=(checkpoint.CheckpointError, health.HealthError))


if __name__ == "__main__":
    sys.exit(main())

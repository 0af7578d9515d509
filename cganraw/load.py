"""Networks rebuilt from a checkpoint file: the generator that sample and evaluate draw
from, or both networks. Sits above cganraw.checkpoint (the file format) and
cganraw.models (the networks), so that neither needs the other."""
from __future__ import annotations

from cganraw import checkpoint, health, models
from cganraw.checkpoint import CheckpointError


def model_options(cfg):
    """models.build's architecture options from a run's config. A config written before
    g_norm, d_norm, minibatch_std, progressive, d_label, g_film and d_stem existed means the original
    model (its g_batchnorm flag standing for g_norm)."""
    if cfg["model"] != "cgan-conv":
        return {}
    g_norm = cfg.get("g_norm") or ("batch" if cfg.get("g_batchnorm", False) else "none")
    return dict(g_norm=g_norm, d_norm=cfg.get("d_norm") or "none", minibatch_std=bool(cfg.get("minibatch_std")),
                progressive=bool(cfg.get("progressive")), d_label=cfg.get("d_label") or "concat",
                g_film=bool(cfg.get("g_film")), d_stem=cfg.get("d_stem") or 0)


def build_from_config(cfg, num_classes, seed):
    """(G, D) of the architecture a run's config describes, initialised from `seed`."""
    return models.build(cfg["model"], num_classes, latent_dim=cfg["latent_dim"], width=cfg["width"], seed=seed,
                        **model_options(cfg))


def build_models(ckpt):
    """(G, D) rebuilt from a loaded checkpoint's config, with its weights (a progressive
    pair at the growth phase and alpha it was saved at: they are buffers)."""
    cfg = ckpt["meta"].get("config", {})
    try:
        G, D = build_from_config(cfg, ckpt["meta"].get("num_classes"), seed=0)
    except KeyError as e:
        raise CheckpointError(f"{ckpt['path']}: config lacks {e}") from None
    try:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt['path']}: weights do not fit the configured model: {e}") from None
    return G, D


def check_health(ckpt):
    """CheckpointError naming the first non-finite or exploded array of a loaded checkpoint
    (a run that diverged before the trainer checked its state could have written one)."""
    try:
        health.check_checkpoint(ckpt)
    except health.HealthError as e:
        raise CheckpointError(f"{e}: the run that wrote it had diverged; use an earlier checkpoint") from None


def load_generator(path, ema=True):
    """(G in eval mode, meta) from a checkpoint file or run directory. meta has keys
    dataset, model, num_classes, class_names, latent_dim, step, epoch, config, ema, path.
    With ema (the default) the generator's moving average is used where it was kept:
    it draws better than the last raw weights, which still swing with every step.
    A checkpoint that fails cganraw.health's check is refused with CheckpointError."""
    ckpt = checkpoint.load(path)
    check_health(ckpt)
    G, _ = build_models(ckpt)
    use_ema = bool(ema and ckpt["G_ema"])
    if use_ema:
        try:
            G.load_state_dict(ckpt["G_ema"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{ckpt['path']}: G_ema does not fit the configured model: {e}") from None
    G.eval()
    meta = dict(ckpt["meta"])
    meta.setdefault("latent_dim", G.latent_dim)
    meta["path"] = ckpt["path"]
    meta["ema"] = use_ema
    return G, meta

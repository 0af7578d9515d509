"""Model-level cases:

    model_pass  forward and backward of the conv cGAN's G and D at widths 64 and 128
    train_step  one full training step (cganraw.step.train_step: D on real, D on fake,
                then G through the updated D, Adam on both) for each model, conv models
                at width 128, in images/s

Peer: on the NumPy backend, where PyTorch is installed, the same architecture in PyTorch
(cganraw.interop.torch_models: same layers, widths and batch; Adam(betas=(0.5, 0.999)),
BCEWithLogits; the same order: fake generated once, D on fake.detach(), then G through
the updated D with D's parameters frozen as ours are) runs interleaved with ours, round
by round, with torch.set_num_threads equal to our BLAS/Numba thread count. The record
holds both medians and the ratio cganraw/PyTorch of time per step (< 1: ours is faster).
"""
from __future__ import annotations

import numpy as np

from cganraw import models, optim
from cganraw.bench.cases import Prepared, Spec
from cganraw.bench.harness import TRAIN_ROUNDS, session_threads
from cganraw.bench.shapes import model_width
from cganraw.losses import bce_with_logits
from cganraw.step import train_step

NUM_CLASSES = 10
LATENT = 100


def _torch():
    try:
        import torch
    except Exception:  # missing, or a broken install: the case runs without its peer
        return None
    return torch


def fake_batch(batch, conditional, seed=0):
    """Images uniform in [-1, 1] and labels: the data of a training step, without a dataset."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch) if conditional else None
    return x, y


# the trainer's settings a step depends on, each the model's default unless given
TRAINER_SETTINGS = ("lr", "lr_d", "beta1", "beta2", "latent_dim", "label_smoothing", "mismatch", "mode_seeking",
                    "ema_decay", "g_batchnorm", "g_norm", "d_norm", "minibatch_std", "g_film", "d_label", "d_stem",
                    "r1", "r1_every")


def trainer_step(model="cgan-conv", width=None, batch_size=None, num_classes=NUM_CLASSES, seed=0, **overrides):
    """The step `python -m cganraw.train --model MODEL` runs, on the active backend: both
    Adams, the moving average of G, the loss flag, R1 on its steps, on fixed fake data.
    Settings left None (width, batch_size, each of TRAINER_SETTINGS in overrides) are the
    trainer's defaults for `model` (cganraw.settings.model_default). Returns (one_step,
    cfg): one_step(step, logged) runs training step number `step` (a multiple of r1_every
    runs the penalty; logged: check the loss flag and fetch the stats, as a log step does)."""
    from cganraw import health, settings
    from cganraw.ops.philox import Key
    from cganraw.step import ema_decay_at, update_ema, upload_batch

    cfg = {k: overrides[k] if overrides.get(k) is not None else settings.model_default(model, k)
           for k in TRAINER_SETTINGS}
    if overrides.get("g_norm") is None and overrides.get("g_batchnorm") is not None:
        cfg["g_norm"] = "batch" if cfg["g_batchnorm"] else "none"      # the old flag alone
    if model == "cgan-conv":
        cfg["g_batchnorm"] = cfg["g_norm"] == "batch"
    width = int(width or settings.model_default(model, "width"))
    batch_size = int(batch_size or settings.model_default(model, "batch_size"))
    cfg.update(model=model, width=width, batch_size=batch_size, num_classes=num_classes)
    arch = dict(batchnorm=cfg["g_batchnorm"], **({"g_norm": cfg["g_norm"], "d_norm": cfg["d_norm"],
                                                  "minibatch_std": cfg["minibatch_std"], "g_film": cfg["g_film"],
                                                  "d_label": cfg["d_label"], "d_stem": cfg["d_stem"]}
                                                 if model == "cgan-conv" else {}))
    G, D = models.build(model, num_classes, latent_dim=cfg["latent_dim"], width=width, seed=seed, **arch)
    betas = (cfg["beta1"], cfg["beta2"])
    opt_g = optim.Adam(G.parameters(), lr=cfg["lr"], betas=betas)
    opt_d = optim.Adam(D.parameters(), lr=cfg["lr_d"] or cfg["lr"], betas=betas)
    G_ema = None
    if cfg["ema_decay"] > 0:
        G_ema = models.build(model, num_classes, latent_dim=cfg["latent_dim"], width=width, seed=seed, **arch)[0]
        G_ema.load_state_dict(G.state_dict())
        G_ema.eval()
    flag = health.LossFlag()
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch_size, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, num_classes, batch_size) if G.conditional else None

    def one_step(step, logged):
        x, y = upload_batch(images, labels, G.num_classes)
        stats = train_step(G, D, opt_g, opt_d, x, y, Key(seed, step), cfg["label_smoothing"], cfg["mismatch"],
                           cfg["mode_seeking"], flag=flag, r1=cfg["r1"], r1_every=cfg["r1_every"])
        if G_ema is not None:
            update_ema(G_ema, G, ema_decay_at(step + 1, cfg["ema_decay"]))
        if logged:
            flag.check()
            stats.fetch()
        return stats
    return one_step, cfg


def our_step(name, batch, width, xp, x_np, y_np, seed=0):
    """A closure running one of our training steps on fixed data; returns its stats."""
    G, D = models.build(name, NUM_CLASSES, latent_dim=LATENT, width=width, seed=seed)
    og, od = optim.Adam(G.parameters()), optim.Adam(D.parameters())
    x = xp.asarray(x_np)
    y = None if y_np is None else xp.asarray(y_np)
    rng = np.random.default_rng(seed)
    return lambda: train_step(G, D, og, od, x, y, rng)


def torch_step(torch, name, batch, width, x_np, y_np, seed=0, *, modules=None, draw=None):
    """A closure running one PyTorch training step in our order; returns (d_loss, g_loss).
    modules: the (G, D) torch modules to train (default: fresh torch_models with torch's
    initialisation); draw: a function of the step number (0, 1, ...) giving that step's noise
    z (batch, LATENT) and fake labels (batch,) or None as tensors, instead of torch's own
    draws (a test hands in ours, to compare the two steps' losses)."""
    from cganraw.interop import torch_models
    torch.manual_seed(seed)
    G, D = modules if modules is not None else torch_models(name, NUM_CLASSES, latent_dim=LATENT, width=width)
    G.train()
    D.train()
    og = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = torch.nn.BCEWithLogitsLoss()
    x = torch.from_numpy(x_np)
    y = None if y_np is None else torch.from_numpy(np.asarray(y_np, dtype=np.int64))
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
    gen = torch.Generator().manual_seed(seed)
    count = [0]

    def step():
        if draw is None:
            z = torch.randn(batch, LATENT, generator=gen)
            fl = torch.randint(0, NUM_CLASSES, (batch,), generator=gen) if y is not None else None
        else:
            z, fl = draw(count[0])
        count[0] += 1
        od.zero_grad()
        loss_real = bce(D(x, y), ones)
        loss_real.backward()
        fake = G(z, fl)
        loss_fake = bce(D(fake.detach(), fl), zeros)
        loss_fake.backward()
        od.step()
        og.zero_grad()
        D.requires_grad_(False)
        loss_g = bce(D(fake, fl), ones)
        loss_g.backward()
        D.requires_grad_(True)
        og.step()
        return float(loss_real.detach() + loss_fake.detach()), float(loss_g.detach())
    return step


def _finite_losses(stats):
    assert np.isfinite(stats["d_loss"]) and np.isfinite(stats["g_loss"]), f"non-finite losses {stats}"


def _train(model):
    def prepare(xp, batch, impl, mode):
        width = model_width(mode)   # 128; narrower only in the smoke run
        x_np, y_np = fake_batch(batch, model.startswith("cgan"))
        shape = f"N={batch}" + (f" width={width}" if model in ("cgan-conv", "dcgan") else "")
        prep = Prepared(our_step(model, batch, width, xp, x_np, y_np), f"train_step {model}", shape, items=batch,
                        check=_finite_losses, rounds=TRAIN_ROUNDS[mode])
        torch = _torch() if impl == "numpy" else None
        if impl == "numpy" and torch is None:
            prep.extra["peer"] = "torch not installed: no peer comparison"
        elif torch is not None:
            if mode != "smoke":   # the untimed check inside the test suite leaves torch's threads alone
                torch.set_num_threads(session_threads())
            step = torch_step(torch, model, batch, width, x_np, y_np)

            def peer():
                losses = step()
                assert all(np.isfinite(losses)), f"PyTorch's step gave non-finite losses {losses}"
            prep.peer = peer
            prep.extra.update({"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()})
        return prep
    return prepare


def _model_pass(width):
    def prepare(xp, batch, impl, mode):
        G, D = models.build("cgan-conv", NUM_CLASSES, width=width, seed=0)
        rng = np.random.default_rng(0)
        z = xp.asarray(rng.standard_normal((batch, LATENT), dtype=np.float32))
        labels = xp.asarray(rng.integers(0, NUM_CLASSES, batch))

        def fwd_bwd():
            x = G(z, labels)
            _, dlogits = bce_with_logits(D(x, labels), 1.0)
            return G.backward(D.backward(dlogits))

        def check(dz):
            assert dz.shape == (batch, LATENT) and dz.dtype == np.float32 and bool(xp.isfinite(dz).all())
        return Prepared(fwd_bwd, "G+D fwd+bwd cgan-conv", f"N={batch} width={width}", items=batch, check=check,
                        rounds=5)
    return prepare


def specs() -> list[Spec]:
    out = [Spec("model_pass", "train", f"model_pass-cgan-conv-w{w}", _model_pass(w), impls=("numpy",))
           for w in (64, 128)]
    out += [Spec("train_step", "train", f"train_step-{m}", _train(m)) for m in models.MODELS]
    return out

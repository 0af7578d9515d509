"""One training step of a (conditional) GAN, and the state that evolves with the steps:
the generator's moving average and the learning-rate schedule. Pure functions of their
arguments: the trainer (cganraw.train) owns the loop, the files and the clock."""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.losses import bce_with_logits
from cganraw.losses import mode_seeking as mode_seeking_loss


def train_step(G, D, opt_g, opt_d, real_images, real_labels, rng, label_smoothing=0.0, mismatch=0.0,
               mode_seeking=0.0):
    """One D step then one G step, in the standard order:
    D on real, D on fake (detached: G gets no gradient), then G with the
    non-saturating loss -log D(G(z)) through the updated D. All BCE-with-logits.

    mismatch > 0 adds, between the two D terms, real images paired with a wrong label
    as fakes, weighted by `mismatch` (the matching-aware discriminator of Reed et al.
    2016): D must then read the label from the first step, instead of only once G's
    images look real, which is what makes a cGAN draw the character it is asked for.

    mode_seeking > 0 adds to G's loss the mode-seeking term of MSGAN, weighted by
    `mode_seeking`: the fakes come in pairs (i, M + i) with one label and two noise
    vectors, and G is pushed to make each pair differ, which keeps it from collapsing
    to a single image per label.

    real_images (N, 1, 28, 28) float in [-1, 1]; real_labels (N,) int or None;
    rng: numpy Generator for z and the fake labels. Returns floats: d_loss,
    d_loss_real, d_loss_fake, d_loss_mismatch, g_loss (the adversarial part),
    g_loss_mode_seeking, d_real, d_fake (mean sigmoid outputs).
    """
    xp = backend.array_module(real_images)
    n = real_images.shape[0]
    # drawn in float32 always (the same noise at any precision), then in the images' dtype
    z = xp.asarray(rng.standard_normal((n, G.latent_dim), dtype=np.float32).astype(real_images.dtype, copy=False))
    pairs = n // 2 if mode_seeking > 0 else 0       # rows i and pairs + i share a label
    fake_labels = None
    if G.conditional:
        drawn = rng.integers(0, G.num_classes, n - pairs)
        fake_labels = xp.asarray(np.concatenate([drawn[:pairs], drawn]))
    real_target = 1.0 - label_smoothing  # one-sided: only the real targets are smoothed

    # --- D step ---------------------------------------------------------------------
    opt_d.zero_grad()
    logits_real = D(real_images, real_labels)
    loss_real, dlogits = bce_with_logits(logits_real, real_target)
    D.backward(dlogits)
    loss_mismatch = 0.0
    if mismatch > 0 and G.conditional:
        # every label moved by 1..K-1 places: a wrong label for every image
        wrong = (real_labels + xp.asarray(rng.integers(1, G.num_classes, n))) % G.num_classes
        loss_mismatch, dlogits = bce_with_logits(D(real_images, wrong), 0.0)
        D.backward(dlogits * dlogits.dtype.type(mismatch))
    fake = G(z, fake_labels)            # G keeps its cache for its own step below
    logits_fake = D(fake, fake_labels)
    loss_fake, dlogits = bce_with_logits(logits_fake, 0.0)
    D.backward(dlogits)                 # the input gradient is dropped: fake is detached
    opt_d.step()

    # --- G step: D frozen, so its weight gradients are not even computed -------------
    opt_g.zero_grad()
    D.requires_grad_(False)
    try:
        logits_gen = D(fake, fake_labels)
        loss_g, dlogits = bce_with_logits(logits_gen, 1.0)
        dfake = D.backward(dlogits)
    finally:
        D.requires_grad_(True)
    loss_ms = 0.0
    if pairs:
        loss_ms, dms = mode_seeking_loss(fake[:2 * pairs], z[:2 * pairs])
        dfake[:2 * pairs] += dms * dms.dtype.type(mode_seeking)
    G.backward(dfake)
    opt_g.step()

    sig = lambda a: float(backend.asnumpy(1.0 / (1.0 + np.exp(-np.clip(backend.asnumpy(a), -60, 60)))).mean())  # noqa: E731
    return {"d_loss": loss_real + loss_fake + mismatch * loss_mismatch, "d_loss_real": loss_real,
            "d_loss_fake": loss_fake, "d_loss_mismatch": loss_mismatch,
            "g_loss": loss_g, "g_loss_mode_seeking": loss_ms,
            "d_real": sig(logits_real), "d_fake": sig(logits_fake)}


def ema_decay_at(step, decay):
    """The moving average's decay after `step` finished steps: min(decay, (1 + step) /
    (10 + step)), ramped up from 0.1 so that the average forgets G's random start."""
    return min(float(decay), (1 + step) / (10 + step))


def update_ema(G_ema, G, decay):
    """G_ema <- decay * G_ema + (1 - decay) * G for every parameter; buffers (BatchNorm's
    running statistics) are copied from G."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.data -= p_ema.data.dtype.type(1 - decay) * (p_ema.data - p.data)
    for (_, b_ema), (_, b) in zip(G_ema.named_buffers(), G.named_buffers()):
        b_ema[...] = b


def lr_scale(frac, decay_start):
    """The learning-rate factor at fraction `frac` of the run: 1 until `decay_start`, then
    linearly down to 0 at the end (late GAN training at a full rate keeps swinging and
    grows artefacts). decay_start >= 1 keeps the rates constant."""
    if frac <= decay_start or decay_start >= 1.0:
        return 1.0
    return max(0.0, (1.0 - frac) / (1.0 - decay_start))

"""One training step of a (conditional) GAN, and the state that evolves with the steps:
the generator's moving average and the learning-rate schedule. Pure functions of their
arguments: the trainer (cganraw.train) owns the loop, the files and the clock.

A step never waits for the device. Its random numbers (noise, labels, dropout masks) are
Philox streams named by the run's seed and the step (cganraw.ops.philox), drawn where the
data lives; its losses stay on the device, gathered into one vector (StepStats) with a
health flag (cganraw.health.LossFlag) that the trainer reads every --log-every steps; the
batch's labels are checked on the host before their upload (upload_batch).
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Mapping

import numpy as np

from cganraw import backend, health, models, nn, optim
from cganraw.losses import bce_with_logits, bce_with_logits_segments
from cganraw.losses import mode_seeking as mode_seeking_loss
from cganraw.nn.dropout import set_step as set_dropout_step
from cganraw.ops import _launch
from cganraw.ops.ema import ema_update
from cganraw.ops.philox import (
    FAKE_LABELS,
    NOISE,
    WRONG_LABELS,
    Key,
    philox_integers,
    philox_normal,
    philox_shift_labels,
    philox_step_draws,
)
from cganraw.ops.r1 import r1_perturb, r1_scalars
from cganraw.ops.stats import STAT_NAMES, bounded_mask, step_stats

BOUNDED = bounded_mask(health.BOUNDED_LOSSES)

# Layers that treat every sample alone: a D built only of these gives, on a batch of real,
# wrong-label and fake samples together, exactly the per-sample values and summed gradients
# of three separate passes, in one forward and one backward. (BatchNorm, minibatch
# statistics or any layer not listed here keeps the three passes.)
PER_SAMPLE_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, nn.LabelProjection, nn.LeakyReLU,
                     nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Flatten, nn.Reshape, nn.Concat, nn.MaxPool2d,
                     nn.AvgPool2d, nn.Sequential, models.ConvCGANDiscriminator, models.MLPDiscriminator,
                     models.ProgressiveConvCGANDiscriminator)     # its stems' fade mixes each sample alone


def per_sample(module):
    """True when every part of `module` is one of PER_SAMPLE_LAYERS (exactly those types), with
    its own forward and backward (spectral norm's hooks, or a test's spy, replace them)."""
    return all(type(m) in PER_SAMPLE_LAYERS and "forward" not in m.__dict__ and "backward" not in m.__dict__
               for _, m in module.named_modules())


def batchable(module):
    """True when D's real, wrong-label and fake terms may run as one batch [real | wrong | fake]
    with the same values and summed gradients as three passes (up to the order of float sums):
    every part is one of PER_SAMPLE_LAYERS or a MinibatchStdDev, and nothing but spectral
    norm wraps a layer's forward/backward.

    - MinibatchStdDev runs segmented (nn.minibatch_std.segmented): each term is grouped on its
      own, as in its own pass, whatever the group size and batch size, so its statistics and
      gradients are exactly those of three passes.
    - Spectral norm is per weight, not per sample. In one batch its power iteration runs once
      per D step for D's terms (one training forward), where three passes ran it once per
      term: the three terms then share one sigma, from u and v after one step of the
      iteration (then one more for the G step's forward of D, as before). That is torch's
      semantics for a D that takes the three terms as one batch, as BigGAN's does."""
    return all((type(m) in PER_SAMPLE_LAYERS and "forward" not in m.__dict__ and "backward" not in m.__dict__)
               or (type(m) in PER_SAMPLE_LAYERS + (nn.MinibatchStdDev,) and nn.utils.only_spectral_norm_wraps(m))
               for _, m in module.named_modules())


class StepStats(Mapping):
    """A step's losses and mean D outputs (STAT_NAMES), as one vector on the device: indexing
    gives a 0-d device array (float() of one reads it back: a sync); `fetch()` reads all of
    them in one copy."""

    def __init__(self, vector, flag):
        self.vector, self.flag = vector, flag

    def __getitem__(self, name):
        i = STAT_NAMES.index(name)
        return self.vector[i:i + 1].reshape(())      # a 0-d view on every backend

    def __iter__(self):
        return iter(STAT_NAMES)

    def __len__(self):
        return len(STAT_NAMES)

    def fetch(self):
        """name -> float, read back in one copy (one sync on a GPU)."""
        return dict(zip(STAT_NAMES, (float(v) for v in backend.to_host(self.vector))))


def upload_batch(images, labels=None, num_classes=None):
    """A host batch on the active device: images (N, 1, 28, 28) float32 and labels (N,) as
    int32. The labels are checked to lie in [0, num_classes) here, on the host, once, and
    marked as checked, so no layer checks them again on the device (which would be a sync)."""
    images = backend.to_device(np.ascontiguousarray(images, dtype=np.float32))
    if labels is None:
        return images, None
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise TypeError(f"upload_batch: labels must be integers of shape (N,), got {labels.dtype} {labels.shape}")
    if num_classes is not None:
        _launch.check_labels_range(labels, int(num_classes), "upload_batch: labels")
    labels = backend.to_device(labels.astype(np.int32))
    if num_classes is not None:
        _launch.mark_labels_checked(labels, int(num_classes))
    return images, labels


def train_step(G, D, opt_g, opt_d, real_images, real_labels, rng, label_smoothing=0.0, mismatch=0.0,
               mode_seeking=0.0, *, flag=None, paired_labels=False, r1=0.0, r1_every=1):
    """One D step then one G step, in the standard order:
    D on real, D on fake (detached: G gets no gradient), then G with the
    non-saturating loss -log D(G(z)) through the updated D. All BCE-with-logits.

    mismatch > 0 adds, between the two D terms, real images paired with a wrong label
    as fakes, weighted by `mismatch` (the matching-aware discriminator of Reed et al.
    2016): D must then read the label from the first step, instead of only once G's
    images look real, which is what makes a cGAN draw the character it is asked for.

    When D allows it (batchable: per-sample layers, a MinibatchStdDev run segmented, spectral
    norm), its real, wrong-label and fake terms run as one batch: one forward and one
    backward instead of three, the same values and gradients up to the order of float sums
    (with spectral norm, one power-iteration step for the three terms: see batchable).

    mode_seeking > 0 adds to G's loss the mode-seeking term of MSGAN, weighted by
    `mode_seeking`: the fakes come in pairs (i, M + i) with one label and two noise
    vectors, and G is pushed to make each pair differ, which keeps it from collapsing
    to a single image per label.

    r1 > 0 adds to D's step the R1 penalty r1 / 2 * mean |grad_x D(x)|^2 on the real images
    (Mescheder et al. 2018: D kept flat on the data, in place of spectral norm's global bound),
    every `r1_every` steps (those whose number it divides) at weight r1 * r1_every, StyleGAN2's
    lazy regularisation; see r1_penalty. D must treat its samples alone (no BatchNorm).

    paired_labels: G draws the real batch's labels, row for row, instead of drawn ones: with
    label groups (BatchIterator(group_size=G)) every MinibatchStdDev group of fakes then holds
    one label too, and D compares the spread within a class of real and generated images.

    real_images (N, 1, 28, 28) float in [-1, 1] and real_labels (N,) int or None, on the
    device (upload_batch); rng: a cganraw.ops.philox.Key (the run's seed and the step, as the
    trainer passes), or a NumPy Generator to draw a fresh key from. z, the fake labels, the
    wrong labels and D's dropout masks are Philox streams of the key. flag: a
    health.LossFlag to record the first bad loss in (a fresh one by default).
    Returns StepStats: d_loss, d_loss_real, d_loss_fake, d_loss_mismatch, g_loss (the
    adversarial part), g_loss_mode_seeking, d_real, d_fake (mean sigmoid outputs), on the device.
    """
    key = rng if isinstance(rng, Key) else Key.from_generator(rng)
    set_dropout_step(D, key.step)
    set_dropout_step(G, key.step)
    n = real_images.shape[0]
    pairs = n // 2 if mode_seeking > 0 else 0       # rows i and pairs + i share a label
    with_mismatch = mismatch > 0 and G.conditional
    batched = batchable(D)
    fake_labels = labels = None
    if G.conditional and batched and backend.uses_kernels():
        # z and D's batch of labels [real | wrong | fake] in one launch: the same values as
        # the draws below, the fake labels a view of the batch's tail (no copies)
        parts = 3 if with_mismatch else 2
        z, labels = philox_step_draws(real_labels, n * G.latent_dim, G.num_classes, key, parts, fold=pairs)
        z = z.reshape(n, G.latent_dim)
        fake_labels = _launch.mark_labels_checked(labels[(parts - 1) * n:], G.num_classes)   # a view: its own mark
        if paired_labels:       # the real labels over the drawn ones (one copy, with the option only)
            _launch.copy_into(fake_labels, real_labels)
    else:
        z = philox_normal((n, G.latent_dim), key.stream(NOISE))
        if G.conditional:
            fake_labels = real_labels if paired_labels else \
                philox_integers(n, 0, G.num_classes, key.stream(FAKE_LABELS), fold=pairs)
    # drawn in float32 always (the same noise at any precision), then in the images' dtype
    if z.dtype != real_images.dtype:
        z = z.astype(real_images.dtype)
    real_target = 1.0 - label_smoothing  # one-sided: only the real targets are smoothed

    # --- D step ---------------------------------------------------------------------
    opt_d.zero_grad()
    if batched:
        loss_real, loss_mismatch, loss_fake, logits_real, logits_fake, fake = _d_step_one_batch(
            G, D, z, real_images, real_labels, fake_labels, key, real_target, mismatch if with_mismatch else 0.0,
            labels)
    else:
        logits_real = D(real_images, real_labels)
        loss_real, dlogits = bce_with_logits(logits_real, real_target)
        D.backward(dlogits, need_dx=False)      # the images need no gradient
        loss_mismatch = None
        if with_mismatch:
            # every label moved by 1..K-1 places: a wrong label for every image
            wrong = philox_shift_labels(real_labels, G.num_classes, key.stream(WRONG_LABELS))
            loss_mismatch, dlogits = bce_with_logits(D(real_images, wrong), 0.0, weight=mismatch)
            D.backward(dlogits, need_dx=False)
        fake = G(z, fake_labels)            # G keeps its cache for its own step below
        logits_fake = D(fake, fake_labels)
        loss_fake, dlogits = bce_with_logits(logits_fake, 0.0)
        D.backward(dlogits, need_dx=False)  # no input gradient: fake is detached
    if r1 > 0 and key.step % r1_every == 0:
        r1_penalty(D, real_images, real_labels, r1 * r1_every)
    opt_d.step()

    # --- G step: D frozen, so its weight gradients are not even computed -------------
    opt_g.zero_grad()
    with frozen(D):
        logits_gen = D(fake, fake_labels)
        loss_g, dlogits = bce_with_logits(logits_gen, 1.0)
        dfake = D.backward(dlogits)
    loss_ms = None
    if pairs:
        loss_ms, dms = mode_seeking_loss(fake[:2 * pairs], z[:2 * pairs])
        _launch.add_into(dfake[:2 * pairs], dms * dms.dtype.type(mode_seeking))
    G.backward(dfake, need_dz=False)            # z is no parameter: its gradient is not computed
    opt_g.step()

    flag = flag if flag is not None else health.LossFlag()
    vector = step_stats(loss_real, loss_fake, loss_mismatch, loss_g, loss_ms, mismatch, logits_real, logits_fake,
                        flag.array, key.step + 1, health.LOSS_BOUND, BOUNDED)
    return StepStats(vector, flag)


def _d_step_one_batch(G, D, z, real_images, real_labels, fake_labels, key, real_target, mismatch, labels=None):
    """D's real, wrong-label (mismatch > 0) and fake terms as one batch [real | wrong | fake]:
    one forward, one backward. Returns the three losses (None for an absent mismatch term),
    the real and fake logits and G's images (G keeps its cache for its own step). labels: the
    batch's label array already drawn (philox_step_draws; fake_labels a view of its tail), or
    None to make one here."""
    n = real_images.shape[0]
    parts = 3 if mismatch > 0 else 2
    images = _launch.empty((parts * n,) + tuple(real_images.shape[1:]), real_images.dtype)
    # the real images in the real and the wrong-label rows: one broadcasting copy
    _launch.copy_into(images[:(parts - 1) * n].reshape((parts - 1, n) + tuple(real_images.shape[1:])), real_images)
    if G.conditional and labels is None:
        k = G.num_classes
        labels = _launch.empty((parts * n,), np.int32)
        _launch.copy_into(labels[:n], real_labels)
        if mismatch > 0:
            # every label moved by 1..K-1 places: a wrong label for every image
            philox_shift_labels(real_labels, k, key.stream(WRONG_LABELS), out=labels[n:2 * n])
        _launch.copy_into(labels[(parts - 1) * n:], fake_labels)
        if _launch.labels_checked(real_labels, k):      # the drawn ones are in range by construction
            _launch.mark_labels_checked(labels, k)
    fake = G(z, fake_labels)
    _launch.copy_into(images[(parts - 1) * n:], fake)
    with nn.minibatch_std.segmented(D, parts):      # each term grouped on its own
        logits = D(images, labels)
    # the three terms' losses and gradients at once (one launch on a GPU): (target, weight)
    # per segment of [real | wrong | fake]
    terms = [(real_target, 1.0)]
    if mismatch > 0:
        terms.append((0.0, mismatch))
    terms.append((0.0, 1.0))                # the fakes
    losses, dlogits = bce_with_logits_segments(logits, terms)
    loss_mismatch = losses[1] if mismatch > 0 else None
    D.backward(dlogits, need_dx=False)  # no input gradient: fake is detached
    seg = lambda a, i: a[i * n:(i + 1) * n]  # noqa: E731  (contiguous rows of one term)
    return losses[0], loss_mismatch, losses[-1], seg(logits, 0), seg(logits, parts - 1), fake


# the rms pixel change of r1_penalty's difference quotient, per dtype: small enough for its
# O(step^2) error, large enough that rounding the two logit sums' difference stays ~1e-4
R1_STEP = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-6}


@contextlib.contextmanager
def frozen(module):
    """module.requires_grad_(False) inside the block: its backward then computes the input
    gradient only (no weight gradients computed or accumulated); True again after it."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


def r1_penalty(D, real_images, real_labels, gamma):
    """R1 (Mescheder et al. 2018): adds into D's parameter gradients that of
    P = gamma / 2 * mean_i |g_i|^2, g = grad_x S(x), S the sum of D's logits on the real
    images x (N, 1, H, W) and labels, D in evaluation mode (dropout off: D's dropout feeds a
    linear layer, so that is the expected logit; spectral norm without a power-iteration step).

    grad_theta P = gamma / N * J^T g, J = d g / d theta, is the theta-gradient of the
    directional derivative gamma / N * dS(x + e g)/de at e = 0; a central difference in e
    gives it from two first-order backwards, no double backward:
        grad_theta P ~= gamma / (2 e N) * (grad_theta S(x + e g) - grad_theta S(x - e g)),
    e chosen so that e * g moves the pixels by `step` (rms): the error is O(e^2). P, e, the
    perturbed batch [x + e g | x - e g] and its dlogits [c | -c], c = gamma / (2 e N), come
    from the op cganraw.ops.r1 (two launches on a GPU, the scalars never read back).
    Returns P (0-d, on the device)."""
    if not batchable(D):
        raise ValueError("r1_penalty: D must treat its samples alone (no BatchNorm): its two perturbed "
                         "batches run as one")
    step = R1_STEP[np.dtype(real_images.dtype)]
    was_training = D.training
    D.eval()
    try:
        with frozen(D):
            logits = D(real_images, real_labels)
            g = D.backward(_launch.full(logits.shape, 1, logits.dtype))    # (N, 1, H, W); no weight gradients
        # P, e and c = gamma / (2 e N) on the device; [x + e g | x - e g] and dlogits [c | -c]
        penalty, scalars = r1_scalars(g, gamma, step)
        images, dlogits = r1_perturb(real_images, g, scalars)
        labels = None
        if real_labels is not None:
            labels = _launch.concatenate([real_labels, real_labels])
            k = getattr(D, "num_classes", None)
            if k is not None and _launch.labels_checked(real_labels, k):     # no range check again (a sync)
                _launch.mark_labels_checked(labels, k)
        with nn.minibatch_std.segmented(D, 2):
            D(images, labels)
        D.backward(dlogits, need_dx=False)     # the weight gradients only
    finally:
        D.train(was_training)
    return penalty


def ema_decay_at(step, decay):
    """The moving average's decay after `step` finished steps: min(decay, (1 + step) /
    (10 + step)), ramped up from 0.1 so that the average forgets G's random start."""
    return min(float(decay), (1 + step) / (10 + step))


class _FlatBuffers:
    """A module's floating buffers as views into one flat array (the BatchNorm running
    statistics), so the moving average copies them in one launch. A module with none
    (instance norm keeps no running statistics) packs to `empty`: nothing to copy."""

    def __init__(self, module):
        self.entries = [(mod, name) for _, mod in module.named_modules() for name, b in mod._buffers.items()
                        if b.dtype.kind == "f" and b.ndim > 0]
        arrays = [mod._buffers[name] for mod, name in self.entries]
        self.data = None
        self.empty = not arrays
        if arrays and len({a.dtype for a in arrays}) == 1 and len({id(backend.array_module(a)) for a in arrays}) == 1:
            total = sum(a.size for a in arrays)
            self.data = _launch.zeros((total,), arrays[0].dtype)
            off = 0
            for (mod, name), a in zip(self.entries, arrays):
                view = self.data[off:off + a.size].reshape(a.shape)
                _launch.copy_into(view, a)
                mod.register_buffer(name, view)
                off += a.size
        self.views = [mod._buffers[name] for mod, name in self.entries]

    def intact(self):
        return (self.empty or self.data is not None) and all(
            mod._buffers[name] is v for (mod, name), v in zip(self.entries, self.views))


_ema_packs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ema_pack(G_ema, G):
    """(G_ema's FlatParams, G's and G_ema's _FlatBuffers) when G's parameters are packed
    (its Adam did it) and both models have the same layout, else None. Made once per G_ema."""
    g_flat = optim.flat_of(G.parameters())
    if g_flat is None:
        return None
    pack = _ema_packs.get(G_ema)
    if pack is not None and pack[0].intact(G_ema.parameters()) and pack[0].layout == g_flat.layout \
            and pack[1].intact() and pack[2].intact():
        return pack
    params = G_ema.parameters()
    if not optim.packable(params) or [tuple(p.shape) for p in params] != [tuple(p.shape) for p in G.parameters()]:
        return None
    pack = (optim.flatten(params, grads=False), _FlatBuffers(G), _FlatBuffers(G_ema))
    if pack[0].layout != g_flat.layout or not pack[1].intact() or not pack[2].intact() \
            or pack[1].empty != pack[2].empty \
            or (not pack[1].empty and pack[1].data.shape != pack[2].data.shape):
        return None
    _ema_packs[G_ema] = pack
    return pack


def update_ema(G_ema, G, decay):
    """G_ema <- decay * G_ema + (1 - decay) * G for every parameter; buffers (BatchNorm's
    running statistics) are copied from G. When G's parameters are packed (by its Adam) this
    is one ema_update launch over all of them and one copy of the buffers."""
    pack = _ema_pack(G_ema, G)
    if pack is not None:
        # the buffers (BatchNorm's running statistics) copied in the same launch
        ema_update(pack[0].data, optim.flat_of(G.parameters()).data, decay,
                   copy=None if pack[1].empty else (pack[2].data, pack[1].data))
        packed = {id(v) for v in pack[2].views}
    else:
        for p_ema, p in zip(G_ema.parameters(), G.parameters()):
            ema_update(p_ema.data, p.data, decay)
        packed = set()
    for (_, b_ema), (_, b) in zip(G_ema.named_buffers(), G.named_buffers()):
        if id(b_ema) in packed:
            continue
        if b.dtype.kind == "f":
            _launch.copy_into(b_ema, b)
        else:
            b_ema[...] = b          # a host counter (num_batches_tracked)


def lr_scale(frac, decay_start):
    """The learning-rate factor at fraction `frac` of the run: 1 until `decay_start`, then
    linearly down to 0 at the end (late GAN training at a full rate keeps swinging and
    grows artefacts). decay_start >= 1 keeps the rates constant."""
    if frac <= decay_start or decay_start >= 1.0:
        return 1.0
    return max(0.0, (1.0 - frac) / (1.0 - decay_start))

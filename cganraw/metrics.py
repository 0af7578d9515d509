"""Metrics that judge a conditional GAN from a classifier's outputs.

Plain NumPy/SciPy on host arrays (device arrays are copied through backend.asnumpy);
scalar results are Python ``float``, computed in float64. The argument checks live in
cganraw._checks, the confusion and per-class plots in cganraw.plots.

Notation: ``probs`` is an ``(N, K)`` table of classifier probabilities p(y|x) for N
generated images and K classes (rows non-negative, summing to 1 within ``1e-3``; they
are renormalised exactly in float64); ``labels`` are the ``N`` integer conditioning
labels in ``0..K-1`` the images were generated for.

Scores
------
* :func:`inception_score` / :func:`inception_score_splits` -- IS,
  ``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016).
* :func:`bcis` / :func:`wcis` -- Between-class and Within-class conditional
  Inception Scores (Benny, Galanti, Benaim, Wolf, "Evaluation metrics for
  conditional image generation", IJCV 2021). With ``p_c(y)`` the mean of
  p(y|x) over the images generated for class c and ``p(y)`` the mean over all
  images::

      BCIS = exp( mean_c KL(p_c || p) )
      WCIS = exp( mean_c mean_{x in c} KL(p(y|x) || p_c) )

  The mean over c runs over the classes present in ``labels``, each weighted
  equally. When every present class has the same number of samples,
  ``IS = BCIS * WCIS`` exactly; with unbalanced classes it holds only
  approximately. A perfect conditional generator gives ``BCIS = K`` and
  ``WCIS = 1``; a generator that ignores its label gives ``BCIS = 1``.
* :func:`label_accuracy`, :func:`per_class_accuracy`, :func:`confusion_matrix`.
* :func:`fid` with building blocks :func:`gaussian_stats` and
  :func:`frechet_distance`.
* :func:`style_features` / :func:`style_spread` -- how widely the images of each class
  vary in ink (stroke weight times length), slant and width, as a ratio of the spreads
  (interquartile ranges) of generated and real images of that class: 1 is real handwriting's,
  0 one shape per class. Read from the pixels, not the classifier.
* :func:`speckle` -- the fraction of images with a detached speck of ink (MNIST's test set: 1.3%).
* :func:`summarize` -- everything at once, as a JSON-friendly dict (what
  ``cganraw.evaluate`` reports).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from cganraw import _checks

__all__ = [
    "inception_score",
    "inception_score_splits",
    "bcis",
    "wcis",
    "label_accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "gaussian_stats",
    "frechet_distance",
    "fid",
    "style_features",
    "style_spread",
    "speckle",
    "summarize",
]

STYLE_FEATURES = ("ink", "slant", "width")
SPECK_INK, SPECK_PIXELS = 0.35, 4     # a speck: at most 4 connected pixels above 0.35 of full ink


# ---------------------------------------------------------------------------
# KL helpers
# ---------------------------------------------------------------------------
def _kl_rows(p: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
    """KL(p_i || q_i) for every row (q broadcasts), with 0 log 0 = 0.

    ``q`` is floored at ``eps`` inside the log; in every use here ``q`` is a
    mixture that contains ``p``, so ``q > 0`` wherever ``p > 0`` and the
    floor only guards against underflow.
    """
    pos = p > 0
    logp = np.log(np.where(pos, p, 1.0))
    logq = np.log(np.maximum(q, eps))
    return np.where(pos, p * (logp - logq), 0.0).sum(axis=-1)


def _is_of(p: np.ndarray, eps: float) -> float:
    marginal = p.mean(axis=0)
    return float(np.exp(_kl_rows(p, marginal, eps).mean()))


def _class_means(p: np.ndarray, y: np.ndarray):
    """Present classes, their counts, and p_c(y) (one row per present class)."""
    k = p.shape[1]
    counts = np.bincount(y, minlength=k)
    sums = np.zeros((k, k), dtype=np.float64)
    np.add.at(sums, y, p)
    present = np.flatnonzero(counts)
    return present, counts, sums[present] / counts[present, None]


# ---------------------------------------------------------------------------
# Inception scores
# ---------------------------------------------------------------------------
def inception_score_splits(probs, splits: int = 10, eps: float = 1e-12) -> tuple[float, float]:
    """Inception Score over ``splits`` contiguous chunks: ``(mean, std)``.

    As in the original implementation, the rows are cut into ``splits``
    contiguous, (nearly) equal chunks (``np.array_split``); each chunk gets its
    own marginal p(y) and score ``exp(mean KL(p(y|x) || p(y)))``; the result
    is the mean and population standard deviation (ddof=0) of those scores.
    """
    fn = "inception_score_splits"
    p = _checks.probs(fn, probs)
    eps = _checks.eps(fn, eps)
    if isinstance(splits, (bool, np.bool_)) or not isinstance(splits, (int, np.integer)):
        raise TypeError(f"{fn}: splits must be an int, got {type(splits).__name__}")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(
            f"{fn}: splits must be in 1..N={p.shape[0]} for probs of shape {p.shape}, got {splits}")
    scores = np.array([_is_of(chunk, eps) for chunk in np.array_split(p, int(splits))])
    return float(scores.mean()), float(scores.std())


def inception_score(probs, splits: int = 1, eps: float = 1e-12) -> float:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` of an (N, K) table.

    With ``splits > 1`` returns the mean of the per-split scores (see
    :func:`inception_score_splits`, which also returns the std). Ranges from
    1 (every row identical) to K (confident, class-balanced predictions).
    """
    fn = "inception_score"
    if splits == 1 and not isinstance(splits, (bool, np.bool_)):
        return _is_of(_checks.probs(fn, probs), _checks.eps(fn, eps))
    try:
        return inception_score_splits(probs, splits=splits, eps=eps)[0]
    except (TypeError, ValueError) as e:  # re-label with this function's name
        raise type(e)(str(e).replace("inception_score_splits:", f"{fn}:", 1)) from None


def bcis(probs, labels, eps: float = 1e-12) -> float:
    """Between-class conditional Inception Score (Benny et al., IJCV 2021).

    ``exp(mean_c KL(p_c(y) || p(y)))`` where ``p_c`` is the mean of p(y|x)
    over the images generated for class ``c``, ``p`` the mean over all
    images, and ``c`` runs over the classes present in ``labels`` (equal
    weights). 1 when the output ignores the label; K for a perfect,
    class-balanced conditional generator.
    """
    fn = "bcis"
    p, y = _checks.probs_labels(fn, probs, labels)
    eps = _checks.eps(fn, eps)
    _, _, pc = _class_means(p, y)
    return float(np.exp(_kl_rows(pc, p.mean(axis=0), eps).mean()))


def wcis(probs, labels, eps: float = 1e-12) -> float:
    """Within-class conditional Inception Score (Benny et al., IJCV 2021).

    ``exp(mean_c mean_{x in c} KL(p(y|x) || p_c(y)))``: the diversity, as the
    classifier sees it, of the images generated for one class (1 when every
    image of a class gets the same prediction). Classes weighted equally.
    """
    fn = "wcis"
    p, y = _checks.probs_labels(fn, probs, labels)
    eps = _checks.eps(fn, eps)
    present, counts, pc = _class_means(p, y)
    row_of = np.full(p.shape[1], -1, dtype=np.int64)
    row_of[present] = np.arange(present.size)
    kl = _kl_rows(p, pc[row_of[y]], eps)                       # (N,)
    per_class = np.bincount(y, weights=kl, minlength=p.shape[1])[present] / counts[present]
    return float(np.exp(per_class.mean()))


# ---------------------------------------------------------------------------
# accuracies
# ---------------------------------------------------------------------------
def label_accuracy(probs, labels) -> float:
    """Fraction of images whose argmax class equals the conditioning label."""
    p, y = _checks.probs_labels("label_accuracy", probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def per_class_accuracy(probs, labels, num_classes: int | None = None) -> np.ndarray:
    """Accuracy per conditioning class, shape ``(num_classes,)``, float64.

    ``num_classes`` defaults to K (the number of probability columns).
    Classes with no images get ``nan``.
    """
    fn = "per_class_accuracy"
    p = _checks.probs(fn, probs)
    k = p.shape[1] if num_classes is None else _checks.num_classes(fn, num_classes)
    y = _checks.int_vector(fn, "labels", labels, p.shape[0], k)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    counts = np.bincount(y, minlength=k)
    hits = np.bincount(y, weights=correct, minlength=k)
    out = np.full(k, np.nan)
    has = counts > 0
    out[has] = hits[has] / counts[has]
    return out


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts: row = true/conditioning label, column = prediction."""
    fn = "confusion_matrix"
    k = _checks.num_classes(fn, num_classes)
    y = _checks.int_vector(fn, "labels", labels, None, k)
    pred = _checks.int_vector(fn, "predictions", predictions, y.shape[0], k)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


# ---------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------
def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and sample covariance ``(F, F)`` (ddof=1) of an (N, F) feature set."""
    f = _checks.features("gaussian_stats", "features", features)
    mu = f.mean(axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))
    return mu, sigma


def _sqrtm_trace(a: np.ndarray) -> tuple[float | None, float]:
    """Trace of sqrtm(a) and the largest relative |imag| on its diagonal (None if not finite)."""
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(a)
    if isinstance(covmean, tuple):  # very old SciPy with disp=False semantics
        covmean = covmean[0]
    covmean = np.asarray(covmean)
    if not np.isfinite(covmean).all():
        return None, math.inf
    diag = np.diagonal(covmean)
    if np.iscomplexobj(diag):
        scale = max(1.0, float(np.abs(diag.real).max()))
        rel_imag = float(np.abs(diag.imag).max()) / scale
    else:
        rel_imag = 0.0
    return float(np.sum(diag.real)), rel_imag


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2))`` in
    float64, with the care of the reference pytorch-fid code: if
    ``scipy.linalg.sqrtm`` of the product is not finite (or has a
    non-negligible imaginary part), it is recomputed with ``eps * I`` added to
    both covariances; a negligible imaginary part is dropped, a large one
    (max |imag| on the diagonal > 1e-3 relative to the diagonal) raises
    ValueError; a tiny negative result from rounding is clamped to 0.
    """
    fn = "frechet_distance"
    m1, s1, m2, s2 = (_checks.finite(fn, name, a) for name, a in
                      (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)))
    m1, m2 = np.atleast_1d(m1), np.atleast_1d(m2)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    if m1.ndim != 1:
        raise ValueError(f"{fn}: mu1 must have shape (F,), got shape {m1.shape}")
    f = m1.shape[0]
    if m2.shape != (f,):
        raise ValueError(f"{fn}: mu2 must have shape ({f},) like mu1, got shape {m2.shape}")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (f, f):
            raise ValueError(
                f"{fn}: {name} must have shape ({f}, {f}) to match mu1 of shape ({f},), "
                f"got shape {s.shape}")
    eps = _checks.eps(fn, eps)

    diff = m1 - m2
    tr_covmean, rel_imag = _sqrtm_trace(s1 @ s2)
    if tr_covmean is None or rel_imag > 1e-3:
        # near-singular product: regularise both covariances and retry
        offset = np.eye(f) * (eps if eps > 0 else 1e-6)
        tr_covmean, rel_imag = _sqrtm_trace((s1 + offset) @ (s2 + offset))
        if tr_covmean is None:
            raise ValueError(f"{fn}: sqrtm(sigma1 @ sigma2) is not finite even with eps*I added")
    if rel_imag > 1e-3:
        raise ValueError(
            f"{fn}: sqrtm(sigma1 @ sigma2) has a large imaginary component "
            f"(max |imag| on the diagonal = {rel_imag:.3g} relative); "
            "are the covariances symmetric positive semi-definite?")
    tr1, tr2 = float(np.trace(s1)), float(np.trace(s2))
    d2 = float(diff @ diff)
    value = d2 + tr1 + tr2 - 2.0 * tr_covmean
    if value < 0.0:
        scale = d2 + tr1 + tr2
        if value < -1e-6 * max(scale, 1.0):
            warnings.warn(
                f"{fn}: result {value:.6g} is negative beyond rounding "
                f"(scale {scale:.6g}); clamped to 0", RuntimeWarning, stacklevel=2)
        value = 0.0
    return float(value)


def fid(features_a, features_b, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two (N, F) feature sets.

    The sets may have different N but must share F. See :func:`frechet_distance`.
    """
    fn = "fid"
    a = _checks.features(fn, "features_a", features_a)
    b = _checks.features(fn, "features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{fn}: features_a and features_b must have the same feature size F, "
            f"got shapes {a.shape} and {b.shape}")
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    return frechet_distance(mu_a, s_a, mu_b, s_b, eps=eps)


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
def summarize(probs, labels=None, features_fake=None, features_real=None, splits: int = 1,
              split_seed=None) -> dict:
    """All metrics at once, JSON-friendly: what ``cganraw.evaluate`` reports.

    Keys: ``num_samples``, ``num_classes``, ``inception_score`` (over all N rows),
    ``inception_score_std`` (population std of the per-chunk scores over ``splits``
    contiguous chunks, see :func:`inception_score_splits`; 0.0 for one split), ``fid``
    (``None`` unless both feature sets are given). With ``labels`` (a conditional
    model) also ``bcis``, ``wcis``, ``label_accuracy``, ``per_class_accuracy`` (list of
    float, ``None`` for absent classes) and ``confusion_matrix`` (K lists of K ints,
    rows the label, columns the argmax). ``split_seed``: shuffle the rows with
    ``np.random.default_rng(split_seed)`` before cutting the chunks, so that class-major
    rows do not give each chunk one class.
    """
    fn = "summarize"
    p = _checks.probs(fn, probs)
    n, k = p.shape
    if (features_fake is None) != (features_real is None):
        raise ValueError(f"{fn}: pass both features_fake and features_real, or neither")
    splits = _checks.integer(fn, "splits", splits, 1, n)
    rows = p if split_seed is None else p[np.random.default_rng(split_seed).permutation(n)]
    res = {
        "num_samples": int(n),
        "num_classes": int(k),
        "inception_score": inception_score(p),
        "inception_score_std": inception_score_splits(rows, splits=splits)[1] if splits > 1 else 0.0,
        "fid": None if features_fake is None else fid(features_fake, features_real),
    }
    if labels is not None:
        y = _checks.int_vector(fn, "labels", labels, n, k)
        pca = per_class_accuracy(p, y)
        res.update({
            "bcis": bcis(p, y),
            "wcis": wcis(p, y),
            "label_accuracy": label_accuracy(p, y),
            "per_class_accuracy": [None if math.isnan(v) else float(v) for v in pca],
            "confusion_matrix": confusion_matrix(y, p.argmax(axis=1), k).tolist(),
        })
    return res


# ---------------------------------------------------------------------------
# Style spread: variety within a class, from the pixels
# ---------------------------------------------------------------------------

def _unit_images(fn: str, images) -> np.ndarray:
    """uint8 (N, H, W) in 0..255, or float (N, 1, H, W) / (N, H, W) in [-1, 1] ->
    float64 (N, H, W) in [0, 1] (ink 1, paper 0)."""
    a = _checks.host(images)
    _checks.numeric(fn, "images", a)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[0] < 1:
        raise ValueError(f"{fn}: images must be shaped (N, H, W) or (N, 1, H, W), got {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{fn}: images contain NaN or infinite values")
    return np.clip((a + 1.0) / 2.0, 0.0, 1.0)


def style_features(images) -> np.ndarray:
    """(N, 3) float64, per image: ink, the summed intensity in [0, 1] (stroke weight times
    length); slant, the shear sxy / syy of the ink's second moments (0 upright, > 0 leaning
    right); width, sqrt(sxx) in pixels. A blank image gets ink 0, slant 0, width 0."""
    a = _unit_images("style_features", images)                  # (N, H, W)
    h, w = a.shape[1:]
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    xx -= (w - 1) / 2.0
    yy = (h - 1) / 2.0 - yy                                    # y up, so a right lean is a positive shear
    mass = a.sum(axis=(1, 2))
    m = np.maximum(mass, 1e-12)
    cx = np.einsum("nhw,hw->n", a, xx) / m
    cy = np.einsum("nhw,hw->n", a, yy) / m
    sxx = np.einsum("nhw,hw->n", a, xx * xx) / m - cx * cx
    syy = np.einsum("nhw,hw->n", a, yy * yy) / m - cy * cy
    sxy = np.einsum("nhw,hw->n", a, xx * yy) / m - cx * cy
    slant = np.where(syy > 1e-9, sxy / np.maximum(syy, 1e-9), 0.0)
    return np.stack([mass, slant, np.sqrt(np.maximum(sxx, 0.0))], axis=1)


def _iqr(f: np.ndarray) -> np.ndarray:
    """The interquartile range of each column of (n, F): a spread that a few odd images
    (a 1 drawn flat, a blot) do not dominate, as they do a standard deviation."""
    q75, q25 = np.percentile(f, [75, 25], axis=0)
    return q75 - q25


def style_spread(images, labels, real_images, real_labels, num_classes: int | None = None) -> dict:
    """Variety within each class against real handwriting's: for each class present in
    both sets with at least two images each, the interquartile range of a feature over the
    generated images / the same over the real ones, for the ink, slant and width of
    :func:`style_features`. Returns {"ink", "slant",
    "width": the mean ratio over those classes (1 = as varied as the real images, 0 = one
    shape per class), "per_class": K rows of the three ratios (None for a class left out)}."""
    fn = "style_spread"
    gen = style_features(images)
    real = style_features(real_images)
    k = int(num_classes) if num_classes is not None else int(max(np.max(_checks.host(labels)),
                                                                 np.max(_checks.host(real_labels)))) + 1
    y = _checks.int_vector(fn, "labels", labels, gen.shape[0], k)
    ry = _checks.int_vector(fn, "real_labels", real_labels, real.shape[0], k)
    rows = []
    for c in range(k):
        g, r = gen[y == c], real[ry == c]
        if len(g) < 2 or len(r) < 2:
            rows.append(None)
            continue
        rs = _iqr(r)
        rows.append([float(v) for v in np.where(rs > 0, _iqr(g) / np.where(rs > 0, rs, 1.0), np.nan)])
    kept = np.array([row for row in rows if row is not None], dtype=np.float64).reshape(-1, len(STYLE_FEATURES))
    if kept.shape[0] == 0:
        raise ValueError(f"{fn}: no class has two or more images in both sets")
    means = np.nanmean(kept, axis=0) if np.isfinite(kept).any() else np.full(len(STYLE_FEATURES), np.nan)
    res = {name: float(v) for name, v in zip(STYLE_FEATURES, means)}
    res["per_class"] = rows
    return res


def speckle(images, threshold: float = SPECK_INK, max_pixels: int = SPECK_PIXELS) -> float:
    """The fraction of images with a speck: a blob of at most `max_pixels` 8-connected pixels
    brighter than `threshold` (ink in [0, 1]) beside a larger stroke, the stray dots and
    smudges a generator leaves that a pen rarely does. MNIST's test set: 1.3% (its first,
    cleaner half 0.1%)."""
    from scipy import ndimage
    a = _unit_images("speckle", images) > threshold             # (N, H, W)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True                                         # 8-connected within an image only
    blobs, count = ndimage.label(a, structure=structure)
    if count == 0:
        return 0.0
    sizes = np.bincount(blobs.ravel(), minlength=count + 1)[1:]                     # (count,)
    where = np.nonzero(blobs)
    owner = np.empty(count, np.int64)
    owner[blobs[where] - 1] = where[0]                                               # the image of each blob
    per_image = np.bincount(owner, minlength=a.shape[0])                            # blobs per image
    small = np.bincount(owner, weights=sizes <= max_pixels, minlength=a.shape[0])   # small blobs per image
    has_speck = (small > 0) & (per_image > 1) & (per_image > small)
    return float(has_speck.mean())

"""Metrics that judge a conditional GAN from a classifier's outputs.

Everything here is plain NumPy/SciPy and works on host arrays. CuPy arrays (or
anything else with a ``.get()`` that returns a NumPy array, e.g. a device
array) are copied to the host first, so callers may pass backend arrays
directly. All scalar results are Python ``float``; computation is float64.

Notation: ``probs`` is an ``(N, K)`` table of classifier probabilities
p(y|x) for N generated images and K classes (rows non-negative, summing to 1
within ``1e-3``; they are renormalised exactly in float64); ``labels`` are the
``N`` integer conditioning labels in ``0..K-1`` the images were generated for.

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
* :func:`plot_confusion_matrix`, :func:`plot_per_class_accuracy` (PNG via Agg).
* :func:`summarize` -- everything at once, as a JSON-friendly dict.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Sequence

import numpy as np

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
    "plot_confusion_matrix",
    "plot_per_class_accuracy",
    "summarize",
]

_ROW_SUM_ATOL = 1e-3
_NEG_ATOL = 1e-6


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------
def _host(a):
    """Return ``a`` as a NumPy array, copying device (CuPy) arrays to the host."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    if get is not None and (hasattr(a, "__cuda_array_interface__") or hasattr(a, "device")):
        a = get()
    return np.asarray(a)


def _check_numeric(fn: str, name: str, a: np.ndarray) -> None:
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{fn}: {name} must be a numeric array, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise TypeError(f"{fn}: {name} must be real, got dtype {a.dtype}")


def _check_probs(fn: str, probs) -> np.ndarray:
    """Validate an (N, K) probability table; return it as float64 with rows summing to 1."""
    p = _host(probs)
    _check_numeric(fn, "probs", p)
    if p.ndim != 2:
        raise ValueError(
            f"{fn}: probs must be a 2-D array of shape (N, K), got shape {p.shape}")
    n, k = p.shape
    if n < 1 or k < 1:
        raise ValueError(
            f"{fn}: probs must have shape (N, K) with N >= 1 and K >= 1, got shape {p.shape}")
    p = p.astype(np.float64, copy=True)
    if not np.isfinite(p).all():
        raise ValueError(f"{fn}: probs contains NaN or infinite values")
    if p.min() < -_NEG_ATOL:
        raise ValueError(
            f"{fn}: probs must be non-negative, got minimum {p.min():.3g}")
    np.clip(p, 0.0, None, out=p)
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > _ROW_SUM_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{fn}: each row of probs (shape (N, K) = {p.shape}) must sum to 1 "
            f"(within {_ROW_SUM_ATOL}); row {i} sums to {sums[i]:.6g} "
            f"({int(bad.sum())} bad rows) -- pass softmax probabilities, not logits")
    p /= sums[:, None]
    return p


def _check_int_vector(fn: str, name: str, a, n: int | None, num_classes: int) -> np.ndarray:
    v = _host(a)
    if v.dtype == np.bool_ or not np.issubdtype(v.dtype, np.integer):
        if v.dtype != object and np.issubdtype(v.dtype, np.number) and v.size == 0:
            v = v.astype(np.int64)
        else:
            raise TypeError(f"{fn}: {name} must be an integer array, got dtype {v.dtype}")
    if v.ndim != 1:
        raise ValueError(f"{fn}: {name} must be a 1-D array of shape (N,), got shape {v.shape}")
    if n is not None and v.shape[0] != n:
        raise ValueError(
            f"{fn}: {name} must have shape ({n},) to match probs with N={n} rows, "
            f"got shape {v.shape}")
    v = v.astype(np.int64, copy=False)
    if v.size and (v.min() < 0 or v.max() >= num_classes):
        raise ValueError(
            f"{fn}: {name} must lie in 0..{num_classes - 1}, "
            f"got values in {int(v.min())}..{int(v.max())}")
    return v


def _check_probs_labels(fn: str, probs, labels):
    p = _check_probs(fn, probs)
    y = _check_int_vector(fn, "labels", labels, p.shape[0], p.shape[1])
    return p, y


def _check_num_classes(fn: str, num_classes) -> int:
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"{fn}: num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"{fn}: num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


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


def _check_eps(fn: str, eps) -> float:
    eps = float(eps)
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"{fn}: eps must be a finite number >= 0, got {eps}")
    return eps


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
    p = _check_probs(fn, probs)
    eps = _check_eps(fn, eps)
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
        return _is_of(_check_probs(fn, probs), _check_eps(fn, eps))
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
    p, y = _check_probs_labels(fn, probs, labels)
    eps = _check_eps(fn, eps)
    _, _, pc = _class_means(p, y)
    return float(np.exp(_kl_rows(pc, p.mean(axis=0), eps).mean()))


def wcis(probs, labels, eps: float = 1e-12) -> float:
    """Within-class conditional Inception Score (Benny et al., IJCV 2021).

    ``exp(mean_c mean_{x in c} KL(p(y|x) || p_c(y)))``: the diversity, as the
    classifier sees it, of the images generated for one class (1 when every
    image of a class gets the same prediction). Classes weighted equally.
    """
    fn = "wcis"
    p, y = _check_probs_labels(fn, probs, labels)
    eps = _check_eps(fn, eps)
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
    p, y = _check_probs_labels("label_accuracy", probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def per_class_accuracy(probs, labels, num_classes: int | None = None) -> np.ndarray:
    """Accuracy per conditioning class, shape ``(num_classes,)``, float64.

    ``num_classes`` defaults to K (the number of probability columns).
    Classes with no images get ``nan``.
    """
    fn = "per_class_accuracy"
    p = _check_probs(fn, probs)
    k = p.shape[1] if num_classes is None else _check_num_classes(fn, num_classes)
    y = _check_int_vector(fn, "labels", labels, p.shape[0], k)
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
    k = _check_num_classes(fn, num_classes)
    y = _check_int_vector(fn, "labels", labels, None, k)
    pred = _check_int_vector(fn, "predictions", predictions, y.shape[0], k)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


# ---------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------
def _check_features(fn: str, name: str, features) -> np.ndarray:
    f = _host(features)
    _check_numeric(fn, name, f)
    if f.ndim != 2:
        raise ValueError(f"{fn}: {name} must be a 2-D array of shape (N, F), got shape {f.shape}")
    if f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(
            f"{fn}: {name} must have shape (N, F) with N >= 2 samples and F >= 1, "
            f"got shape {f.shape}")
    f = f.astype(np.float64, copy=False)
    if not np.isfinite(f).all():
        raise ValueError(f"{fn}: {name} contains NaN or infinite values")
    return f


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and sample covariance ``(F, F)`` (ddof=1) of an (N, F) feature set."""
    f = _check_features("gaussian_stats", "features", features)
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
    arrs = []
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        a = _host(a)
        _check_numeric(fn, name, a)
        a = np.asarray(a, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"{fn}: {name} contains NaN or infinite values")
        arrs.append(a)
    m1, s1, m2, s2 = arrs
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
    eps = _check_eps(fn, eps)

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
    a = _check_features(fn, "features_a", features_a)
    b = _check_features(fn, "features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{fn}: features_a and features_b must have the same feature size F, "
            f"got shapes {a.shape} and {b.shape}")
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    return frechet_distance(mu_a, s_a, mu_b, s_b, eps=eps)


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def _class_names(fn: str, class_names, k: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(k)]
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"{fn}: class_names must have {k} entries, got {len(names)}")
    return names


def _new_figure(figsize):
    # Render with the Agg canvas directly: writes PNGs headless without
    # touching pyplot or the process-wide backend.
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # don't switch a live pyplot session
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_confusion_matrix(cm, class_names: Sequence[str] | None, path,
                          normalize: bool = True, title: str | None = None) -> str:
    """Write a confusion-matrix heat map to ``path`` (PNG); returns the path.

    Rows are the conditioning label, columns the classifier's prediction.
    With ``normalize`` the colours show row fractions (rows with no samples
    stay 0); cells are annotated with raw counts when K <= 20.
    """
    fn = "plot_confusion_matrix"
    m = _host(cm)
    _check_numeric(fn, "cm", m)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"{fn}: cm must be a square (K, K) array, got shape {m.shape}")
    k = m.shape[0]
    names = _class_names(fn, class_names, k)
    counts = m.astype(np.float64)
    shown = counts
    if normalize:
        rows = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)

    side = max(4.0, min(16.0, 0.35 * k + 2.5))
    fig = _new_figure((side + 1.0, side))
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
    return _save(fig, path)


def plot_per_class_accuracy(acc, class_names: Sequence[str] | None, path,
                            title: str | None = None) -> str:
    """Bar chart of per-class accuracy (``nan`` = class absent, marked "n/a"); returns the path."""
    fn = "plot_per_class_accuracy"
    a = _host(acc)
    _check_numeric(fn, "acc", a)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{fn}: acc must be a 1-D array of shape (K,), got shape {a.shape}")
    k = a.shape[0]
    names = _class_names(fn, class_names, k)
    absent = np.isnan(a)

    fig = _new_figure((max(5.0, min(20.0, 0.3 * k + 2.0)), 4.0))
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
    return _save(fig, path)


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
def summarize(probs, labels, features_fake=None, features_real=None, splits: int = 1) -> dict:
    """All metrics at once, JSON-friendly.

    Keys: ``num_samples``, ``num_classes``, ``inception_score``
    (+ ``inception_score_std`` over ``splits``), ``bcis``, ``wcis``,
    ``label_accuracy``, ``per_class_accuracy`` (list of float, ``None`` for
    absent classes), ``fid`` (``None`` unless both feature sets are given).
    """
    fn = "summarize"
    p, y = _check_probs_labels(fn, probs, labels)
    if (features_fake is None) != (features_real is None):
        raise ValueError(f"{fn}: pass both features_fake and features_real, or neither")
    is_mean, is_std = inception_score_splits(p, splits=splits)
    pca = per_class_accuracy(p, y)
    return {
        "num_samples": int(p.shape[0]),
        "num_classes": int(p.shape[1]),
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "bcis": bcis(p, y),
        "wcis": wcis(p, y),
        "label_accuracy": label_accuracy(p, y),
        "per_class_accuracy": [None if math.isnan(v) else float(v) for v in pca],
        "fid": None if features_fake is None else fid(features_fake, features_real),
    }

"""Tests for cganraw.metrics against plain loop-based computations."""
import math

import numpy as np
import pytest
from scipy.linalg import hadamard

from cganraw import metrics as M


# ---------------------------------------------------------------------------
# direct, loop-based references (deliberately naive; no code from the module)
# ---------------------------------------------------------------------------
def ref_kl(p, q):
    total = 0.0
    for pj, qj in zip(p, q):
        if pj > 0:
            total += pj * math.log(pj / qj)
    return total


def ref_mean_rows(rows):
    k = len(rows[0])
    out = [0.0] * k
    for r in rows:
        for j in range(k):
            out[j] += r[j] / len(rows)
    return out


def ref_is(probs):
    rows = [list(map(float, r)) for r in probs]
    marg = ref_mean_rows(rows)
    s = 0.0
    for r in rows:
        s += ref_kl(r, marg)
    return math.exp(s / len(rows))


def ref_by_class(probs, labels):
    groups = {}
    for r, c in zip(probs, labels):
        groups.setdefault(int(c), []).append(list(map(float, r)))
    return groups


def ref_bcis(probs, labels):
    marg = ref_mean_rows([list(map(float, r)) for r in probs])
    groups = ref_by_class(probs, labels)
    s = 0.0
    for rows in groups.values():
        s += ref_kl(ref_mean_rows(rows), marg)
    return math.exp(s / len(groups))


def ref_wcis(probs, labels):
    groups = ref_by_class(probs, labels)
    s = 0.0
    for rows in groups.values():
        pc = ref_mean_rows(rows)
        inner = 0.0
        for r in rows:
            inner += ref_kl(r, pc)
        s += inner / len(rows)
    return math.exp(s / len(groups))


def ref_argmax(row):
    best = 0
    for j in range(len(row)):
        if row[j] > row[best]:
            best = j
    return best


def random_probs(rng, n, k, sharp=2.0):
    logits = rng.normal(size=(n, k)) * sharp
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_hot(idx, k, conf=1.0):
    out = np.full((len(idx), k), (1.0 - conf) / (k - 1) if k > 1 else 0.0)
    out[np.arange(len(idx)), idx] = conf
    return out


# ---------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------
HAND = np.array([[0.7, 0.2, 0.1],
                 [0.1, 0.8, 0.1],
                 [0.3, 0.3, 0.4],
                 [1.0, 0.0, 0.0],
                 [0.25, 0.25, 0.5]])
HAND_LABELS = np.array([0, 1, 2, 0, 2])


def test_is_matches_loop_reference(rng):
    assert M.inception_score(HAND) == pytest.approx(ref_is(HAND), rel=1e-12)
    p = random_probs(rng, 37, 6)
    assert M.inception_score(p) == pytest.approx(ref_is(p), rel=1e-12)
    assert isinstance(M.inception_score(p), float)


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_is_one_hot_uniform_classes_equals_k(k):
    p = one_hot(np.repeat(np.arange(k), 3), k)
    assert M.inception_score(p) == pytest.approx(k, rel=1e-12)


def test_is_identical_rows_is_one(rng):
    row = random_probs(rng, 1, 7)
    p = np.repeat(row, 20, axis=0)
    assert M.inception_score(p) == pytest.approx(1.0, abs=1e-12)


def test_is_splits(rng):
    p = random_probs(rng, 10, 4)
    chunks = [p[0:4], p[4:7], p[7:10]]  # np.array_split(10, 3) sizes 4, 3, 3
    scores = [ref_is(c) for c in chunks]
    mean = sum(scores) / 3
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / 3)
    assert M.inception_score(p, splits=3) == pytest.approx(mean, rel=1e-12)
    m, s = M.inception_score_splits(p, splits=3)
    assert (m, s) == (pytest.approx(mean, rel=1e-12), pytest.approx(std, rel=1e-10))
    assert M.inception_score_splits(p, splits=1) == (pytest.approx(ref_is(p)), 0.0)


def test_is_accepts_float32_softmax_and_lists(rng):
    p = random_probs(rng, 50, 10).astype(np.float32)
    assert M.inception_score(p) == pytest.approx(ref_is(p.astype(np.float64)), rel=1e-5)
    assert M.inception_score(HAND.tolist()) == pytest.approx(ref_is(HAND))


# ---------------------------------------------------------------------------
# BCIS / WCIS
# ---------------------------------------------------------------------------
def test_bcis_wcis_match_loop_reference(rng):
    assert M.bcis(HAND, HAND_LABELS) == pytest.approx(ref_bcis(HAND, HAND_LABELS), rel=1e-12)
    assert M.wcis(HAND, HAND_LABELS) == pytest.approx(ref_wcis(HAND, HAND_LABELS), rel=1e-12)
    # unbalanced, with a class absent (class 4 of 5)
    p = random_probs(rng, 23, 5)
    y = rng.choice([0, 1, 2, 3], size=23, p=[0.5, 0.2, 0.2, 0.1])
    assert M.bcis(p, y) == pytest.approx(ref_bcis(p, y), rel=1e-12)
    assert M.wcis(p, y) == pytest.approx(ref_wcis(p, y), rel=1e-12)


def test_bcis_wcis_hand_computed_two_class_tables():
    # classes perfectly consistent inside, class 1 undecided
    p = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    y = np.array([0, 0, 1, 1])
    # p_0 = [1, 0], p_1 = [.5, .5], p = [.75, .25]
    # KL(p_0||p) = log(4/3); KL(p_1||p) = .5 log(2/3) + .5 log 2 = .5 log(4/3)
    assert M.bcis(p, y) == pytest.approx((4 / 3) ** 0.75, rel=1e-12)
    assert M.wcis(p, y) == pytest.approx(1.0, abs=1e-12)
    assert M.inception_score(p) == pytest.approx((4 / 3) ** 0.75, rel=1e-12)

    # class 0 split between both outputs, class 1 consistent
    p = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # p_0 = [.5, .5], p_1 = [1, 0]: same BCIS as above;
    # within class 0 each row has KL log 2 from p_0, class 1 has 0 -> WCIS = exp(log2 / 2)
    assert M.bcis(p, y) == pytest.approx((4 / 3) ** 0.75, rel=1e-12)
    assert M.wcis(p, y) == pytest.approx(math.sqrt(2.0), rel=1e-12)
    # IS: three rows KL log(4/3), one row KL log 4
    assert M.inception_score(p) == pytest.approx(
        math.exp((3 * math.log(4 / 3) + math.log(4)) / 4), rel=1e-12)


@pytest.mark.parametrize("k", [2, 3, 10, 26])
def test_perfect_conditional_generator(k):
    y = np.repeat(np.arange(k), 4)
    p = one_hot(y, k)
    assert M.bcis(p, y) == pytest.approx(k, rel=1e-12)
    assert M.wcis(p, y) == pytest.approx(1.0, abs=1e-12)
    assert M.label_accuracy(p, y) == 1.0
    # nearly perfect: confident but not one-hot -> close to the limits
    q = one_hot(y, k, conf=0.999)
    assert M.bcis(q, y) == pytest.approx(k, rel=0.02)
    assert M.wcis(q, y) == pytest.approx(1.0, abs=1e-12)


def test_generator_ignoring_label_has_bcis_one(rng):
    k, per = 4, 6
    block = random_probs(rng, per, k)
    p = np.concatenate([block] * k)  # every class gets the same outputs
    y = np.repeat(np.arange(k), per)
    assert M.bcis(p, y) == pytest.approx(1.0, abs=1e-12)
    assert M.wcis(p, y) == pytest.approx(M.inception_score(p), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_is_equals_bcis_times_wcis_when_balanced(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    per = int(rng.integers(1, 6))
    n_classes_used = int(rng.integers(1, k + 1))
    used = rng.choice(k, size=n_classes_used, replace=False)
    y = rng.permutation(np.repeat(used, per))
    p = random_probs(rng, len(y), k, sharp=float(rng.uniform(0.1, 4)))
    assert M.inception_score(p) == pytest.approx(M.bcis(p, y) * M.wcis(p, y), rel=1e-10)


def test_identity_fails_when_unbalanced():
    # documented: the decomposition is exact only for balanced classes
    p = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 0, 0, 1])
    assert M.inception_score(p) != pytest.approx(M.bcis(p, y) * M.wcis(p, y), rel=1e-3)


# ---------------------------------------------------------------------------
# accuracies and confusion matrix
# ---------------------------------------------------------------------------
def test_label_accuracy_hand():
    # argmax rows: 0, 1, 2, 0, 2 vs labels 0, 1, 2, 0, 2 -> 1.0
    assert M.label_accuracy(HAND, HAND_LABELS) == 1.0
    assert M.label_accuracy(HAND, [1, 1, 2, 2, 0]) == pytest.approx(2 / 5)


def test_accuracy_matches_loop_reference(rng):
    p = random_probs(rng, 40, 6)
    y = rng.integers(0, 6, size=40)
    hits = sum(1 for r, c in zip(p, y) if ref_argmax(r) == c)
    assert M.label_accuracy(p, y) == pytest.approx(hits / 40)
    pca = M.per_class_accuracy(p, y)
    for c in range(6):
        idx = [i for i in range(40) if y[i] == c]
        if idx:
            assert pca[c] == pytest.approx(sum(ref_argmax(p[i]) == c for i in idx) / len(idx))
        else:
            assert math.isnan(pca[c])


def test_per_class_accuracy_absent_class_and_never_predicted():
    # K = 4; class 3 never conditioned on (absent); class 2 never predicted
    p = one_hot(np.array([0, 0, 1, 0, 1, 1]), 4, conf=0.9)
    y = np.array([0, 0, 1, 2, 2, 1])
    acc = M.per_class_accuracy(p, y)
    assert acc.shape == (4,) and acc.dtype == np.float64
    assert acc[0] == 1.0 and acc[1] == 1.0 and acc[2] == 0.0
    assert math.isnan(acc[3])
    acc6 = M.per_class_accuracy(p, y, num_classes=6)
    assert acc6.shape == (6,) and np.isnan(acc6[3:]).all()

    cm = M.confusion_matrix(y, p.argmax(axis=1), 4)
    expected = np.array([[2, 0, 0, 0],
                         [0, 2, 0, 0],
                         [1, 1, 0, 0],
                         [0, 0, 0, 0]])
    assert cm.dtype == np.int64 and cm.shape == (4, 4)
    np.testing.assert_array_equal(cm, expected)
    assert cm[:, 2].sum() == 0  # never predicted
    assert cm[3].sum() == 0     # absent class


def test_confusion_matrix_matches_loop(rng):
    y = rng.integers(0, 5, size=60)
    pred = rng.integers(0, 5, size=60)
    ref = np.zeros((5, 5), dtype=np.int64)
    for t, q in zip(y, pred):
        ref[t, q] += 1
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, 5), ref)
    assert M.confusion_matrix([], [], 3).sum() == 0
    # diagonal sum / N == label accuracy
    p = random_probs(rng, 60, 5)
    cm = M.confusion_matrix(y, p.argmax(1), 5)
    assert np.trace(cm) / 60 == pytest.approx(M.label_accuracy(p, y))


# ---------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------
def orthogonal_samples(mean, std):
    """Samples whose sample mean / covariance (ddof=1) are exactly mean / diag(std**2)."""
    f = len(mean)
    n = 1
    while n - 1 < f:
        n *= 2
    h = hadamard(n).astype(np.float64)[:, 1:f + 1]  # centred, mutually orthogonal columns
    # column variance (ddof=1) of +-1 entries is n / (n - 1)
    return np.asarray(mean) + h * (np.asarray(std) * math.sqrt((n - 1) / n))


def test_gaussian_stats(rng):
    x = rng.normal(size=(30, 4))
    mu, sigma = M.gaussian_stats(x)
    ref_mu = [sum(x[i, j] for i in range(30)) / 30 for j in range(4)]
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-12)
    for a in range(4):
        for b in range(4):
            c = sum((x[i, a] - ref_mu[a]) * (x[i, b] - ref_mu[b]) for i in range(30)) / 29
            assert sigma[a, b] == pytest.approx(c, rel=1e-10)
    mu1, s1 = M.gaussian_stats(rng.normal(size=(5, 1)))
    assert mu1.shape == (1,) and s1.shape == (1, 1)


def test_fid_identical_sets_is_zero(rng):
    x = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
    assert M.fid(x, x) == pytest.approx(0.0, abs=1e-6)
    assert M.fid(x, x.copy()) >= 0.0


def test_fid_diagonal_closed_form():
    mu1, sd1 = np.array([0.0, 1.0, -2.0, 3.0, 0.5]), np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    mu2, sd2 = np.array([1.0, 1.0, 0.0, 2.0, -0.5]), np.array([2.0, 1.0, 0.5, 1.0, 0.1])
    a, b = sd1 ** 2, sd2 ** 2
    closed = 0.0
    for i in range(5):
        closed += (mu1[i] - mu2[i]) ** 2 + (math.sqrt(a[i]) - math.sqrt(b[i])) ** 2
    # exact stats
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)
    # sample sets whose fitted Gaussians are exactly those
    xa, xb = orthogonal_samples(mu1, sd1), orthogonal_samples(mu2, sd2)
    assert M.fid(xa, xb) == pytest.approx(closed, rel=1e-9)


def test_frechet_commuting_covariances_and_eig_reference(rng):
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    la, lb = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    s1, s2 = q @ np.diag(la) @ q.T, q @ np.diag(lb) @ q.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    closed = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(la) - np.sqrt(lb)) ** 2))
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-8)
    # general covariances: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2))
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) * 2 + 1
    _, sa = M.gaussian_stats(a)
    mb, sb = M.gaussian_stats(b)
    w, v = np.linalg.eigh(sa)
    r = (v * np.sqrt(w)) @ v.T
    tr = np.sqrt(np.linalg.eigvalsh(r @ sb @ r)).sum()
    ref = float(np.sum((a.mean(0) - mb) ** 2) + np.trace(sa) + np.trace(sb) - 2 * tr)
    assert M.fid(a, b) == pytest.approx(ref, rel=1e-8)


def test_fid_symmetric(rng):
    a = rng.normal(size=(60, 5))
    b = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 5)) + 0.3
    assert M.fid(a, b) == pytest.approx(M.fid(b, a), rel=1e-8)
    assert M.fid(a, b) > 0


def test_fid_mean_shift_adds_squared_norm(rng):
    a = rng.normal(size=(100, 4))
    b = rng.normal(size=(70, 4)) * 1.5
    d = np.array([1.0, -2.0, 0.5, 3.0])
    assert M.fid(a, a + d) == pytest.approx(float(d @ d), rel=1e-8)
    dmu = a.mean(0) - b.mean(0)
    expected = M.fid(a, b) + float(d @ d) - 2 * float(dmu @ d)
    assert M.fid(a, b + d) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("n,f", [(5, 16), (10, 64), (3, 32)])
def test_fid_rank_deficient_is_finite_and_real(rng, n, f):
    a = rng.normal(size=(n, f))
    b = rng.normal(size=(n, f)) + 0.5
    value = M.fid(a, b)
    assert isinstance(value, float) and math.isfinite(value) and value >= 0.0
    # agrees with the symmetric eigen-decomposition route
    _, sa = M.gaussian_stats(a)
    _, sb = M.gaussian_stats(b)
    w, v = np.linalg.eigh(sa)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r @ sb @ r), 0, None)).sum()
    ref = float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa) + np.trace(sb) - 2 * tr)
    assert value == pytest.approx(ref, rel=1e-3, abs=1e-3)


def test_fid_singular_identical_and_zero_covariance():
    x = np.zeros((4, 3))
    x[:, 0] = [1, 2, 3, 4]  # covariance of rank 1
    assert M.fid(x, x) == pytest.approx(0.0, abs=1e-4)
    c = np.ones((5, 3))  # zero covariance
    assert M.fid(c, c + 2) == pytest.approx(12.0, abs=1e-4)


def test_frechet_distance_rejects_non_psd_product():
    s1 = np.array([[1.0, 0.0], [0.0, -1.0]])  # not a covariance: sqrtm has large imag
    with pytest.raises(ValueError, match="frechet_distance: .*imaginary"):
        M.frechet_distance(np.zeros(2), s1, np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad,exc,msg", [
    (np.ones(3) / 3, ValueError, r"inception_score: .*2-D.*\(N, K\).*\(3,\)"),
    (np.zeros((0, 3)), ValueError, r"inception_score: .*N >= 1"),
    (np.array([[0.5, 0.6], [0.5, 0.5]]), ValueError, r"inception_score: .*sum to 1.*row 0"),
    (np.array([[1.5, -0.5]]), ValueError, r"inception_score: .*non-negative"),
    (np.array([[np.nan, 1.0]]), ValueError, r"inception_score: .*NaN"),
    (np.array([["a", "b"]]), TypeError, r"inception_score: .*numeric"),
    (np.array([[1 + 0j, 0j]]), TypeError, r"inception_score: .*real"),
])
def test_probs_validation(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        M.inception_score(bad)


def test_splits_validation(rng):
    p = random_probs(rng, 4, 3)
    with pytest.raises(ValueError, match=r"inception_score: splits must be in 1..N=4"):
        M.inception_score(p, splits=5)
    with pytest.raises(ValueError, match=r"inception_score_splits: splits"):
        M.inception_score_splits(p, splits=0)
    with pytest.raises(TypeError, match=r"inception_score_splits: splits must be an int"):
        M.inception_score_splits(p, splits=2.0)


@pytest.mark.parametrize("fn", [M.bcis, M.wcis, M.label_accuracy, M.per_class_accuracy])
def test_labels_validation(fn):
    p = one_hot(np.array([0, 1, 2]), 3, conf=0.8)
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"{name}: labels must have shape \(3,\).*got shape \(2,\)"):
        fn(p, [0, 1])
    with pytest.raises(ValueError, match=rf"{name}: labels must lie in 0..2"):
        fn(p, [0, 1, 3])
    with pytest.raises(ValueError, match=rf"{name}: labels must lie in 0..2"):
        fn(p, [-1, 1, 2])
    with pytest.raises(TypeError, match=rf"{name}: labels must be an integer array"):
        fn(p, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=rf"{name}: labels must be a 1-D"):
        fn(p, [[0, 1, 2]])
    with pytest.raises(ValueError, match=rf"{name}: probs must be a 2-D"):
        fn(p[0], [0])


def test_confusion_and_per_class_validation():
    with pytest.raises(ValueError, match=r"confusion_matrix: predictions must have shape \(3,\)"):
        M.confusion_matrix([0, 1, 2], [0, 1], 3)
    with pytest.raises(ValueError, match=r"confusion_matrix: predictions must lie in 0..1"):
        M.confusion_matrix([0, 1], [0, 2], 2)
    with pytest.raises(TypeError, match=r"confusion_matrix: num_classes must be an int"):
        M.confusion_matrix([0], [0], 2.0)
    with pytest.raises(ValueError, match=r"confusion_matrix: num_classes must be >= 1"):
        M.confusion_matrix([0], [0], 0)
    p = one_hot(np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"per_class_accuracy: labels must lie in 0..0"):
        M.per_class_accuracy(p, [0, 1], num_classes=1)


def test_feature_validation(rng):
    a = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match=r"fid: .*same feature size F.*\(10, 4\) and \(10, 3\)"):
        M.fid(a, a[:, :3])
    with pytest.raises(ValueError, match=r"fid: features_b must be a 2-D array of shape \(N, F\)"):
        M.fid(a, a[0])
    with pytest.raises(ValueError, match=r"fid: features_a must have shape \(N, F\) with N >= 2"):
        M.fid(a[:1], a)
    with pytest.raises(ValueError, match=r"gaussian_stats: features contains NaN"):
        M.gaussian_stats(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match=r"frechet_distance: sigma2 must have shape \(4, 4\)"):
        M.frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), np.eye(3))
    with pytest.raises(ValueError, match=r"frechet_distance: mu2 must have shape \(4,\)"):
        M.frechet_distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(4))


def test_device_arrays_are_copied_to_host_through_the_backend(monkeypatch):
    from cganraw import backend

    class FakeDeviceArray:  # stands in for cupy.ndarray: only backend.asnumpy may read it
        def __init__(self, a):
            self._a = np.asarray(a)

        def __array__(self, *a, **kw):
            raise AssertionError("a device array was read without backend.asnumpy")

    fake_cupy = type("FakeCupy", (), {"ndarray": FakeDeviceArray, "asnumpy": staticmethod(lambda a: a._a)})
    monkeypatch.setattr(backend, "_cupy", fake_cupy)
    p = FakeDeviceArray(HAND)
    y = FakeDeviceArray(HAND_LABELS)
    assert M.inception_score(p) == pytest.approx(ref_is(HAND))
    assert M.bcis(p, y) == pytest.approx(ref_bcis(HAND, HAND_LABELS))
    x = np.random.default_rng(0).normal(size=(20, 3))
    assert M.fid(FakeDeviceArray(x), x) == pytest.approx(0.0, abs=1e-6)
    assert M.summarize(p, y)["label_accuracy"] == M.label_accuracy(HAND, HAND_LABELS)


# ---------------------------------------------------------------------------
# summary (the confusion and per-class plots are tested in test_plots.py)
# ---------------------------------------------------------------------------
def test_summarize(rng):
    k = 4
    y = np.array([0, 0, 1, 1, 2, 2])  # class 3 absent
    p = random_probs(rng, 6, k)
    s = M.summarize(p, y)
    assert s["num_samples"] == 6 and s["num_classes"] == k
    assert s["inception_score"] == pytest.approx(ref_is(p))
    assert s["inception_score_std"] == 0.0
    assert s["bcis"] == pytest.approx(ref_bcis(p, y))
    assert s["wcis"] == pytest.approx(ref_wcis(p, y))
    assert s["label_accuracy"] == pytest.approx(M.label_accuracy(p, y))
    assert len(s["per_class_accuracy"]) == k and s["per_class_accuracy"][3] is None
    cm = s["confusion_matrix"]
    assert cm == M.confusion_matrix(y, p.argmax(axis=1), k).tolist() and sum(map(sum, cm)) == 6
    assert s["fid"] is None
    for key in ("inception_score", "inception_score_std", "bcis", "wcis", "label_accuracy"):
        assert type(s[key]) is float
    fa, fr = rng.normal(size=(30, 3)), rng.normal(size=(40, 3))
    s2 = M.summarize(p, y, features_fake=fa, features_real=fr, splits=2)
    assert s2["fid"] == pytest.approx(M.fid(fa, fr))
    # IS over all rows; its std over contiguous chunks, of the shuffled rows with split_seed
    assert s2["inception_score"] == s["inception_score"]
    assert s2["inception_score_std"] == pytest.approx(M.inception_score_splits(p, splits=2)[1])
    s3 = M.summarize(p, y, splits=3, split_seed=7)
    perm = np.random.default_rng(7).permutation(6)
    assert s3["inception_score_std"] == pytest.approx(M.inception_score_splits(p[perm], splits=3)[1])
    import json
    json.dumps(s2)
    with pytest.raises(ValueError, match="summarize: pass both"):
        M.summarize(p, y, features_fake=fa)
    with pytest.raises(ValueError, match="summarize: splits must be in 1..6"):
        M.summarize(p, y, splits=7)
    with pytest.raises(ValueError, match=r"summarize: labels must have shape \(6,\)"):
        M.summarize(p, y[:5])


def test_summarize_without_labels_is_unconditional(rng):
    p = random_probs(rng, 8, 3)
    s = M.summarize(p)
    assert set(s) == {"num_samples", "num_classes", "inception_score", "inception_score_std", "fid"}
    assert s["inception_score"] == pytest.approx(ref_is(p))


# ---------------------------------------------------------------------------
# style spread: variety within a class, read from the pixels
# ---------------------------------------------------------------------------
def _canvas(points, size=28):
    img = np.zeros((size, size), np.float64)
    for r, c in points:
        img[r, c] = 1.0
    return img


def test_style_features_of_drawn_strokes():
    dot = _canvas([(14, 14)])
    bar = _canvas([(14, c) for c in range(10, 15)])                 # 5 px wide: var of 0..4 is 2
    lean_right = _canvas([(20 - i, 10 + i) for i in range(8)])      # rising to the right
    lean_left = _canvas([(20 - i, 17 - i) for i in range(8)])
    f = M.style_features(np.stack([dot, bar, lean_right, lean_left, np.zeros((28, 28))]) * 2 - 1)
    assert f.shape == (5, 3)
    np.testing.assert_allclose(f[0], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(f[1], [5.0, 0.0, math.sqrt(2.0)], atol=1e-12)
    assert f[2, 1] == pytest.approx(1.0) and f[3, 1] == pytest.approx(-1.0)   # a 45-degree shear each way
    np.testing.assert_allclose(f[4], [0.0, 0.0, 0.0])                        # blank: no NaN
    # uint8 (N, H, W) and float (N, 1, H, W) in [-1, 1] read alike
    u8 = (np.stack([bar, lean_right]) * 255).astype(np.uint8)
    np.testing.assert_allclose(M.style_features(u8), M.style_features((np.stack([bar, lean_right]) * 2 - 1)[:, None]))


def _strokes(rng, n_per_class, classes=3):
    """Random bars of random length, thickness and lean, class c at its own place."""
    imgs, labels = [], []
    for c in range(classes):
        for _ in range(n_per_class):
            img = np.zeros((28, 28))
            length, thick, lean = rng.integers(6, 16), rng.integers(1, 4), rng.uniform(-0.6, 0.6)
            for i in range(length):
                r = 6 + c + i
                col = int(round(14 + lean * (length / 2 - i)))
                img[r, col:col + thick] = rng.uniform(0.5, 1.0)
            imgs.append(img)
            labels.append(c)
    return np.stack(imgs) * 2 - 1, np.array(labels)


def test_style_spread_is_one_for_the_same_hand_and_zero_for_one_shape(rng):
    x, y = _strokes(rng, 200)
    xr, yr = _strokes(rng, 200)
    same = M.style_spread(x, y, x, y, 3)
    for name in M.STYLE_FEATURES:
        assert same[name] == pytest.approx(1.0)
    other = M.style_spread(x, y, xr, yr, 3)                     # another draw of the same hand
    for name in M.STYLE_FEATURES:
        assert 0.8 < other[name] < 1.25, (name, other)
    one_shape = np.repeat(x[[0, 200, 400]], 200, axis=0)          # each class one image, repeated
    collapsed = M.style_spread(one_shape, y, xr, yr, 3)
    for name in M.STYLE_FEATURES:
        assert collapsed[name] == pytest.approx(0.0, abs=1e-9)


def test_style_spread_measures_half_the_ink_variety(rng):
    """Each image pulled halfway to its class's mean image: ink is linear in the pixels, so
    its spread is exactly half; the shape spreads shrink too."""
    x, y = _strokes(rng, 150)
    unit = (x + 1) / 2
    pulled = unit.copy()
    for c in range(3):
        mean = unit[y == c].mean(axis=0)
        pulled[y == c] = mean + 0.5 * (unit[y == c] - mean)
    res = M.style_spread(pulled * 2 - 1, y, x, y, 3)
    assert res["ink"] == pytest.approx(0.5, abs=1e-9)
    assert res["slant"] < 0.9 and res["width"] < 0.9
    assert len(res["per_class"]) == 3 and all(len(row) == 3 for row in res["per_class"])


def test_style_spread_leaves_out_classes_it_cannot_judge(rng):
    x, y = _strokes(rng, 20)
    y_fake = y.copy()
    y_fake[y == 2] = 1                                            # no class 2 among the generated
    res = M.style_spread(x, y_fake, x, y, 4)                      # class 3 in neither set
    assert res["per_class"][2] is None and res["per_class"][3] is None
    assert res["per_class"][0] == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("images, labels, error", [
    (np.full((4, 28, 28), np.nan), np.zeros(4, int), "NaN"),
    (np.zeros((4, 2, 28, 28)), np.zeros(4, int), "shaped"),
    (np.zeros((4, 28, 28)), np.zeros(3, int), "labels"),
    (np.zeros((4, 28, 28)), np.array([0, 1, 2, 3]), "no class"),
])
def test_style_spread_bad_input(images, labels, error):
    real = np.zeros((4, 28, 28))
    with pytest.raises(ValueError, match=error):
        M.style_spread(images, labels, real, np.zeros(4, int), 4)


def test_speckle_counts_stray_dots_beside_a_stroke_only():
    stroke = [(r, 14) for r in range(6, 22)]
    clean = _canvas(stroke)
    dotted = _canvas(stroke + [(5, 20)])                         # a one-pixel speck beside it
    smudge = _canvas(stroke + [(24, 6), (24, 7), (25, 6), (25, 7)])   # 4 px: still a speck
    broken = _canvas(stroke + [(10, c) for c in range(17, 24)])   # a second stroke of 7 px: no speck
    lone = _canvas([(5, 20)])                                      # a dot and nothing else: no stroke
    diagonal = _canvas(stroke + [(22, 15)])                        # touches the stroke's end diagonally
    faint = _canvas(stroke)
    faint[3, 3] = 0.3                                              # below the threshold
    images = np.stack([clean, dotted, smudge, broken, lone, diagonal, faint])
    per_image = [M.speckle(im[None] * 2 - 1) for im in images]
    assert per_image == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert M.speckle(images * 2 - 1) == pytest.approx(2 / 7)
    assert M.speckle((images * 255).astype(np.uint8)) == pytest.approx(2 / 7)   # uint8 reads alike
    # blobs never join across images: the dot of one image beside the stroke of the next
    pair = np.stack([lone, clean])
    assert M.speckle(pair * 2 - 1) == 0.0
    assert M.speckle(np.zeros((3, 28, 28), np.uint8)) == 0.0


def test_speckle_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        M.speckle(np.full((2, 1, 28, 28), np.nan))
    with pytest.raises(ValueError, match="shaped"):
        M.speckle(np.zeros((28, 28)))

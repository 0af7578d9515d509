"""Philox4x32-10 (kernels/philox.cuh, philox.cu, dropout.cu v3) against Random123's published
known-answer vectors and against its NumPy twin (cganraw.ops.philox), through the emulator:
the numpy and emu backends draw the same words, labels, masks and (to an ulp) normals."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import _cpu, _launch
from cganraw.ops import dropout as DR
from cganraw.ops import philox as P

SIZES = (0, 1, 3, 4, 5, 13, 1000, 4097)
STREAMS = [P.Stream(0, 0), P.Stream(12345, 7, 3, 1), P.Stream(2 ** 64 - 1, 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1)]


@pytest.mark.parametrize("counter,key,want", P.KNOWN_ANSWERS)
def test_known_answers_numpy(counter, key, want):
    got = P.philox4x32_numpy(np.array(counter, np.uint32).reshape(4, 1), key)[:, 0]
    assert [int(v) for v in got] == list(want)
    # the stream layout: block = counter[0], (stream, step, call) = counter[1:], seed = key
    stream = P.Stream(key[0] | key[1] << 32, *counter[1:])
    assert [int(v) for v in P._stream_words_reference(stream, 4, block0=counter[0])] == list(want)
    assert [int(v) for v in P.stream_words_numpy(stream, 4, block0=counter[0])] == list(want)


@pytest.mark.parametrize("counter,key,want", P.KNOWN_ANSWERS)
def test_known_answers_kernel(counter, key, want):
    stream = P.Stream(key[0] | key[1] << 32, *counter[1:])
    got = backend.asnumpy(P.philox_bits_cuda(4, stream, block0=counter[0]))
    assert [int(v) for v in got] == list(want)


@pytest.mark.skipif(not _cpu.enabled(), reason="Numba is off")
@pytest.mark.parametrize("n", SIZES)
def test_numba_twin_equals_reference(n):
    for s in STREAMS:
        np.testing.assert_array_equal(P.stream_words_numpy(s, n), P._stream_words_reference(s, n))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("stream", STREAMS, ids=["zero", "mid", "max"])
def test_kernels_equal_numpy(n, stream):
    np.testing.assert_array_equal(backend.asnumpy(P.philox_bits_cuda(n, stream)), P.philox_bits_numpy(n, stream))
    z_k, z_n = backend.asnumpy(P.philox_normal_cuda((n,), stream)), P.philox_normal_numpy((n,), stream)
    np.testing.assert_array_max_ulp(z_k, z_n, maxulp=1)     # double maths rounded once: libm may differ by an ulp
    fold = n // 2
    i_k = backend.asnumpy(P.philox_integers_cuda(n, 3, 13, stream, fold=fold))
    i_n = P.philox_integers_numpy(n, 3, 13, stream, fold=fold)
    np.testing.assert_array_equal(i_k, i_n)
    assert i_k.dtype == np.int32 and (n == 0 or (i_k.min() >= 3 and i_k.max() < 13))
    np.testing.assert_array_equal(i_k[fold:2 * fold], i_k[:fold])      # the mode-seeking pairs share labels
    labels = (np.arange(n) % 10).astype(np.int32)
    s_k = backend.asnumpy(P.philox_shift_labels_cuda(labels, 10, stream))
    np.testing.assert_array_equal(s_k, P.philox_shift_labels_numpy(labels, 10, stream))
    assert (s_k != labels).all() and (n == 0 or (s_k.min() >= 0 and s_k.max() < 10))


def test_distributions():
    s = P.Stream(99, 1, 2, 3)
    z = P.philox_normal_numpy((200_000,), s)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01 and np.isfinite(z).all()
    counts = np.bincount(P.philox_integers_numpy(100_000, 0, 10, s), minlength=10)
    assert counts.min() > 9_500 and counts.max() < 10_500
    shift = (P.philox_shift_labels_numpy(np.zeros(90_000, np.int32), 10, s))
    assert set(np.unique(shift)) == set(range(1, 10))
    keep = P.keep_mask_numpy((1000, 100), 0.3, s)
    assert abs(keep.mean() - 0.7) < 0.01


def test_streams_differ_in_every_coordinate():
    base = P.Stream(5, 6, 7, 8)
    words = P.philox_bits_numpy(64, base)
    for other in (P.Stream(6, 6, 7, 8), P.Stream(5, 7, 7, 8), P.Stream(5, 6, 8, 8), P.Stream(5, 6, 7, 9),
                  P.Stream(5 + 2 ** 32, 6, 7, 8)):
        assert (P.philox_bits_numpy(64, other) != words).mean() > 0.99


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 6272), (7, 3, 5, 5)])
@pytest.mark.parametrize("p", [0.0, 0.4, 0.999])
def test_dropout_v3_mask_equals_reference(shape, p, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    s = P.Stream(31, P.DROPOUT + 2, 17, 1)
    y, cache = DR.dropout_forward_cuda(x, s, p)
    y_r, cache_r = DR.dropout_forward_numpy(x, s, p)
    np.testing.assert_array_equal(backend.asnumpy(y), y_r)
    np.testing.assert_array_equal(backend.asnumpy(DR.dropout_backward_cuda(dy, cache)), DR.dropout_backward_numpy(dy, cache_r))
    keep = P.keep_mask_numpy(shape, p, s)
    np.testing.assert_array_equal(y_r != 0, keep & (x != 0))


def test_dropout_layer_draws_one_mask_on_every_backend(rng):
    x = (rng.standard_normal((8, 300)) + 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    out = {}
    for name in ("numpy", "emu"):
        backend.use(name)
        layer = nn.Dropout(0.4, seed=2024, layer_id=1)
        layer.set_step(41)
        y1, d1 = layer(backend.asarray(x)), None
        d1 = layer.backward(backend.asarray(dy))
        y2 = layer(backend.asarray(x))             # the second call of the step: another mask
        layer.set_step(41)
        y3 = layer(backend.asarray(x))             # a resumed step 41 draws its first mask again
        out[name] = [backend.asnumpy(a) for a in (y1, d1, y2, y3)]
    backend.use("emu")
    for a, b in zip(out["numpy"], out["emu"]):
        np.testing.assert_array_equal(a, b)
    y1, d1, y2, y3 = out["numpy"]
    np.testing.assert_array_equal(y1, y3)
    assert ((y1 == 0) != (y2 == 0)).mean() > 0.3
    np.testing.assert_array_equal(d1 == 0, y1 == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed must lie"):
        P.Stream(-1, 0)
    with pytest.raises(ValueError, match="step must lie"):
        P.Stream(0, 0, 2 ** 32)
    with pytest.raises(ValueError, match="high > low"):
        P.philox_integers(3, 5, 5, P.Stream(0, 0))
    with pytest.raises(ValueError, match="k >= 2"):
        P.philox_shift_labels(np.zeros(3, np.int32), 1, P.Stream(0, 0))
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        P.philox_shift_labels_cuda(np.array([0, 10], np.int32), 10, P.Stream(0, 0))
    with pytest.raises(TypeError, match="int32"):
        P.philox_integers_cuda(3, 0, 5, P.Stream(0, 0), out=np.zeros(3, np.int64))


def test_drawn_labels_skip_the_range_check():
    labels = P.philox_integers(16, 0, 10, P.Stream(1, P.FAKE_LABELS))
    assert _launch.labels_checked(labels, 10) and _launch.labels_checked(labels, 26)
    assert not _launch.labels_checked(labels, 9)
    assert not _launch.labels_checked(P.philox_integers(16, 1, 10, P.Stream(1, 2)), 10)


@pytest.mark.parametrize("n, n_z, parts, fold", [(0, 0, 2, 0), (1, 3, 3, 0), (5, 13, 3, 2), (7, 4, 2, 3),
                                                 (13, 1001, 3, 6), (4097, 5, 2, 0)])
@pytest.mark.parametrize("key", [P.Key(0, 0), P.Key(2 ** 64 - 1, 2 ** 32 - 1), P.Key(12345, 77)],
                         ids=["zero", "max", "mid"])
def test_step_draws_equal_the_separate_draws(n, n_z, parts, fold, key, rng):
    # one launch, the values of philox_normal, philox_shift_labels, philox_integers and a copy
    real = rng.integers(0, 7, n).astype(np.int32)
    z_n, lab_n = P.philox_step_draws_numpy(real, n_z, 7, key, parts, fold)
    np.testing.assert_array_equal(z_n, P.philox_normal_numpy((n_z,), key.stream(P.NOISE)))
    want = [real] + ([P.philox_shift_labels_numpy(real, 7, key.stream(P.WRONG_LABELS))] if parts == 3 else [])
    want.append(P.philox_integers_numpy(n, 0, 7, key.stream(P.FAKE_LABELS), fold))
    np.testing.assert_array_equal(lab_n, np.concatenate(want))
    assert lab_n.dtype == np.int32 and z_n.dtype == np.float32
    z_k, lab_k = P.philox_step_draws_cuda(real, n_z, 7, key, parts, fold)
    np.testing.assert_array_equal(backend.asnumpy(lab_k), lab_n)
    # the separate normal kernel's bits (the NumPy twin is within an ulp: libm)
    np.testing.assert_array_equal(backend.asnumpy(z_k), backend.asnumpy(P.philox_normal_cuda((n_z,), key.stream(P.NOISE))))
    np.testing.assert_array_max_ulp(backend.asnumpy(z_k), z_n, maxulp=1)


def test_step_draws_arguments():
    key = P.Key(1, 2)
    with pytest.raises(ValueError, match="parts must be 2"):
        P.philox_step_draws(np.zeros(3, np.int32), 4, 10, key, 4)
    with pytest.raises(ValueError, match="k >= 2"):
        P.philox_step_draws(np.zeros(3, np.int32), 4, 1, key, 2)
    for fn in (P.philox_step_draws_numpy, P.philox_step_draws_cuda):
        with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
            fn(np.array([0, 10], np.int32), 4, 10, key, 3)
    z, labels = P.philox_step_draws(np.array([1, 2], np.int32), 3, 10, key, 3)
    assert _launch.labels_checked(labels, 10) and z.shape == (3,) and labels.shape == (6,)
    prev = backend.current()
    backend.use("numpy")
    try:        # the numpy backend draws the same labels
        z_n, labels_n = P.philox_step_draws(np.array([1, 2], np.int32), 3, 10, key, 3)
    finally:
        backend.use(prev)
    assert _launch.labels_checked(labels_n, 10)
    np.testing.assert_array_equal(labels_n, backend.asnumpy(labels))

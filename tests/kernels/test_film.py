"""kernels/film.cu (FiLM: y = x (1 + gamma) + beta) against cganraw.ops.film's NumPy
reference, through the emulator: the grid-strided forward and both backward versions (a
block per plane, a warp per plane) on awkward shapes (one value, a batch of 1, odd C, 1x1
and empty planes, 7x7, 28x28, an empty batch), gamma and beta read as the halves of one
(N, 2C) array or as contiguous arrays, written into a given (N, 2C) array; and nn.FiLM and
G with g_film on emu against the numpy backend (a forward and backward, and a train step)."""
import numpy as np
import pytest

from cganraw import backend, models, nn, train
from cganraw.ops import film as F
from cganraw.optim import Adam
from tests.kernels.conftest import assert_close

# (N, C, H, W): one value; H*W = 1 with odd C; 7x7 with a batch of 1; G's 14x14 and 28x28
# planes; a plane past one block of v1 (33 x 33 = 1089 > 256 threads); an empty plane; no batch
CASES = [(1, 1, 1, 1), (5, 7, 1, 1), (1, 3, 7, 7), (3, 5, 14, 14), (2, 3, 28, 28), (1, 2, 33, 33),
         (2, 3, 0, 4), (0, 3, 2, 2)]


def _ids(cases):
    return ["x".join(map(str, c)) for c in cases]


def _case(rng, shape, halves):
    n, c = shape[:2]
    x = rng.standard_normal(shape).astype(np.float32)
    if halves:          # as nn.FiLM passes them: views of the projection's (N, 2C) output
        gb = rng.standard_normal((n, 2 * c)).astype(np.float32)
        gamma, beta = gb[:, :c], gb[:, c:]
    else:
        gamma, beta = (rng.standard_normal((n, c)).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, gamma, beta, dy


@pytest.mark.parametrize("halves", [True, False], ids=["halves", "contiguous"])
@pytest.mark.parametrize("shape", CASES, ids=_ids(CASES))
def test_kernels_match_the_reference(shape, halves, order, rng):
    x, gamma, beta, dy = _case(rng, shape, halves)
    y, cache = F.film_forward_cuda(x, gamma, beta)
    y_r, cache_r = F.film_forward_numpy(x, gamma, beta)
    # one multiply and one add per element, in the reference's order: its float32 bits
    np.testing.assert_array_equal(backend.asnumpy(y), y_r)
    dx_r, _, _ = F.film_backward_numpy(dy, cache_r)
    _, dg_r, db_r = F.film_backward_numpy(dy.astype(np.float64), (x.astype(np.float64), gamma.astype(np.float64)))
    hw = shape[2] * shape[3]
    for v in F.BACKWARD_VERSIONS:
        dx, dg, db = F.film_backward_cuda(dy, cache, version=v)
        np.testing.assert_array_equal(backend.asnumpy(dx), dx_r)
        assert dg.shape == db.shape == shape[:2]
        assert_close(dg, dg_r, 1e-6 * max(hw, 1), 1e-5, f"dgamma v{v}")
        assert_close(db, db_r, 1e-6 * max(hw, 1), 1e-5, f"dbeta v{v}")


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 4, 1, 1)], ids=_ids([(3, 5, 7, 7), (2, 4, 1, 1)]))
def test_backward_into_out_without_dx_and_deterministic(shape, rng):
    x, gamma, beta, dy = _case(rng, shape, True)
    n, c = shape[:2]
    _, cache = F.film_forward_cuda(x, gamma, beta)
    for v in F.BACKWARD_VERSIONS:
        dx, dg, db = F.film_backward_cuda(dy, cache, version=v)
        out = np.full((n, 2 * c), np.nan, np.float32)
        none, dg2, db2 = F.film_backward_cuda(dy, cache, need_dx=False, out=out, version=v)
        assert none is None
        # the same launch twice: the same bits (no atomics), written into out's halves
        np.testing.assert_array_equal(out, np.concatenate([backend.asnumpy(dg), backend.asnumpy(db)], axis=1))
        np.testing.assert_array_equal(backend.asnumpy(dg2), backend.asnumpy(dg))
        np.testing.assert_array_equal(backend.asnumpy(db2), backend.asnumpy(db))


def test_arguments(rng):
    x, gamma, beta, dy = _case(rng, (2, 3, 4, 4), True)
    with pytest.raises(ValueError, match=r"expected x \(N, C, H, W\), gamma and beta \(N, C\)"):
        F.film_forward_cuda(x, gamma[:, :2], beta)
    with pytest.raises(TypeError, match="float32"):
        F.film_forward_cuda(x.astype(np.float64), gamma, beta)
    with pytest.raises(TypeError, match="float32"):
        F.film_forward_cuda(x, gamma.astype(np.float64), beta)
    _, cache = F.film_forward_cuda(x, gamma, beta)
    with pytest.raises(ValueError, match="dy has shape"):
        F.film_backward_cuda(dy[:1], cache)
    with pytest.raises(ValueError, match="version"):
        F.film_backward_cuda(dy, cache, version=3)
    with pytest.raises(ValueError, match=r"out must be a contiguous array of shape \(2, 6\)"):
        F.film_backward_cuda(dy, cache, out=np.zeros((2, 5), np.float32))


def _layer_pass(bk, seed=3):
    backend.use(bk)
    rng = np.random.default_rng(seed)
    layer = nn.FiLM(6, 5, rng=rng)
    for p in layer.parameters():
        p.data[...] = backend.asarray(rng.normal(0, 0.5, p.shape).astype(np.float32))
    x = backend.asarray(rng.standard_normal((3, 5, 7, 7)).astype(np.float32))
    cond = backend.asarray(rng.standard_normal((3, 6)).astype(np.float32))
    y = layer(x, cond)
    dx = layer.backward(backend.asarray(rng.standard_normal(y.shape).astype(np.float32)))
    out = {"y": y, "dx": dx, "dcond": layer.pop_dcond(), "W": layer.proj.weight.grad, "b": layer.proj.bias.grad}
    return {k: np.asarray(backend.asnumpy(v)) for k, v in out.items()}


def test_layer_emu_equals_numpy(launches):
    ref = _layer_pass("numpy")
    launches.clear()
    got = _layer_pass("emu")
    assert {"film_forward_v1", "film_backward_v1"} <= set(launches)
    for k in ("y", "dx", "dcond", "W", "b"):     # gamma, beta come from the backends' own GEMMs
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)


FILM_OPTIONS = [dict(g_norm="instance", d_norm="spectral", minibatch_std=True),
                dict(g_norm="batch", d_label="projection"),
                dict(g_norm="none"),
                dict(progressive=True, g_norm="instance", growth=(28, 0.4))]


def _opt_ids(options):
    return ["-".join(f"{k}={v}" for k, v in o.items()) for o in options]


def _build(opts, bk):
    backend.use(bk)
    opts = dict(opts)
    growth = opts.pop("growth", None)
    G, D = models.build("cgan-conv", 10, width=6, seed=3, g_film=True, **opts)
    if growth:
        G.set_growth(*growth), D.set_growth(*growth)
    # FiLM starts as the identity: move it off, so its every gradient and d(cond) count
    rng = np.random.default_rng(1)
    for f in G.films:
        for p in f.parameters():
            p.data[...] = backend.asarray(rng.normal(0, 0.1, p.shape).astype(np.float32))
    return G, D


def _forward_backward(opts, bk):
    G, D = _build(opts, bk)
    rng = np.random.default_rng(7)
    z = backend.asarray(rng.standard_normal((5, 100), dtype=np.float32))
    labels = backend.asarray(rng.integers(0, 10, 5))
    x = G(z, labels)
    y = D(x, labels)
    dz = G.backward(D.backward(backend.asarray(rng.standard_normal(y.shape).astype(np.float32))))
    out = {"x": x, "dz": dz} | {f"G.{k}.grad": p.grad for k, p in G.named_parameters()}
    return {k: np.asarray(backend.asnumpy(v)) for k, v in out.items()}


@pytest.mark.parametrize("opts", FILM_OPTIONS, ids=_opt_ids(FILM_OPTIONS))
def test_film_generator_emu_equals_numpy(opts, launches):
    ref = _forward_backward(opts, "numpy")
    launches.clear()
    got = _forward_backward(opts, "emu")
    assert {"film_forward_v1", "film_backward_v1"} <= set(launches)
    assert list(got) == list(ref)
    scale = max(np.abs(g).max() for k, g in ref.items() if k.endswith(".grad"))
    for k, r in ref.items():
        atol = 1e-5 * (scale if k.endswith(".grad") else max(1.0, float(np.abs(r).max())))
        np.testing.assert_allclose(got[k], r, rtol=1e-3, atol=atol, err_msg=k)


def _one_step(opts, bk):
    G, D = _build(opts, bk)
    opt_g, opt_d = Adam(G.parameters(), lr=2e-4), Adam(D.parameters(), lr=2e-4)
    rng = np.random.default_rng(11)
    x = backend.asarray(rng.uniform(-1, 1, (4, 1, 28, 28)).astype(np.float32))
    labels = backend.asarray(rng.integers(0, 10, 4))
    stats = train.train_step(G, D, opt_g, opt_d, x, labels, np.random.default_rng(5), mismatch=1.0)
    return stats, {k: v for k, v in G.state_dict().items() if ".proj." in k}


@pytest.mark.parametrize("opts", [FILM_OPTIONS[0], FILM_OPTIONS[3]], ids=_opt_ids([FILM_OPTIONS[0], FILM_OPTIONS[3]]))
def test_film_train_step_emu_equals_numpy(opts):
    ref_stats, ref = _one_step(opts, "numpy")
    stats, got = _one_step(opts, "emu")
    for k in ("d_loss", "g_loss"):
        assert stats[k] == pytest.approx(ref_stats[k], rel=1e-4, abs=1e-5)
    assert len(ref) == 4
    for k, r in ref.items():
        # Adam's first step moves each weight by about lr: the two backends land within a
        # fraction of it (a rounding-level gradient may take the other sign: a few such)
        close = np.abs(got[k] - r) <= 2e-4 * 1e-2 + 1e-5 * np.abs(r)
        assert close.mean() > 0.98, k

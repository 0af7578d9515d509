"""The workspace cache of the NumPy backend (cganraw.ops._workspace): memory is reused only
once nothing refers to it, the cache stays within its bound, and a training step gives the
same bits with the cache as without it."""
import numpy as np
import pytest

from cganraw.ops import _workspace as ws


@pytest.fixture
def cache(monkeypatch):
    """A fresh cache that takes every size (MIN_BYTES 0), restored after the test."""
    monkeypatch.setattr(ws, "MIN_BYTES", 0)
    monkeypatch.setattr(ws, "_slabs", type(ws._slabs)())
    monkeypatch.setattr(ws, "_by_size", {})
    old = ws.set_limit_mb(64)
    yield ws
    ws.set_limit_mb(old)


def _address(a):
    return a.__array_interface__["data"][0]


def test_memory_is_reused_once_free_and_never_while_in_use(cache):
    a = cache.empty((64, 32), np.float32)
    assert a.shape == (64, 32) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    where = _address(a)
    b = cache.empty((32, 64), np.float32)            # same size, but `a` is alive: other memory
    assert not np.shares_memory(a, b)
    view = a[3:, ::2].T                               # a view keeps the memory in use
    del a
    c = cache.empty((2048,), np.float32)
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)
    del view, c
    d = cache.empty((8, 256), np.float32)             # both free now: the older block comes back
    assert _address(d) == where
    assert cache.stats() == {"slabs": 3, "in_use": 2, "bytes": 3 * 8192, "free_bytes": 8192}


def test_sizes_dtypes_and_zeros(cache):
    z = cache.zeros((5, 7), np.float64)
    assert z.dtype == np.float64 and (z == 0).all()
    z[...] = 3.0
    del z
    again = cache.zeros((7, 5), np.float64)          # reused, and cleared
    assert (again == 0).all()
    u = cache.empty(12, np.uint32)
    assert u.shape == (12,) and u.dtype == np.uint32
    like = cache.empty_like(np.ones((2, 3), np.int16))
    assert like.shape == (2, 3) and like.dtype == np.int16


def test_free_blocks_stay_within_the_bound_and_zero_turns_the_cache_off(cache):
    held = [cache.empty((1 << 18,), np.float32) for _ in range(3)]      # 1 MB each, in use
    for size in range(1, 6):
        cache.empty((size << 18,), np.float32)                         # freed at once
    cache.set_limit_mb(4)
    s = cache.stats()
    assert s["in_use"] == 3 and s["free_bytes"] <= 4 << 20
    cache.set_limit_mb(0)
    assert cache.stats()["free_bytes"] == 0
    plain = cache.empty((1 << 18,), np.float32)
    assert plain.base is None and cache.stats()["slabs"] == 3            # numpy.empty, not cached
    cache.clear()
    assert cache.stats()["slabs"] == 3                                   # the ones in use stay
    del held
    cache.clear()
    assert cache.stats()["slabs"] == 0


def test_copies_and_joins_equal_numpys(cache, rng):
    a = rng.normal(size=(3, 4, 5)).astype(np.float32)
    t = a.transpose(2, 0, 1)
    got = cache.ascontiguousarray(t)
    assert got.flags.c_contiguous and not np.shares_memory(got, a)
    np.testing.assert_array_equal(got, np.ascontiguousarray(t))
    assert cache.ascontiguousarray(a) is a
    b = rng.normal(size=(3, 2, 5)).astype(np.float32)
    for axis in (1, -2):
        np.testing.assert_array_equal(cache.concatenate([a, b], axis), np.concatenate([a, b], axis))
    mixed = cache.concatenate([a, b.astype(np.float64)], 1)          # numpy's own promotion
    assert mixed.dtype == np.float64
    with pytest.raises(np.exceptions.AxisError):
        cache.concatenate([a, b], 3)
    with pytest.raises(ValueError):
        cache.concatenate([a, b], 0)


def _two_steps(width, batch):
    from cganraw import models, optim
    from cganraw.bench import harness, train_cases
    from cganraw.step import train_step
    with harness.backend_ctx("numpy") as xp:
        x, y = train_cases.fake_batch(batch, True, 0)
        G, D = models.build("cgan-conv", train_cases.NUM_CLASSES, latent_dim=train_cases.LATENT, width=width, seed=0)
        og, od = optim.Adam(G.parameters()), optim.Adam(D.parameters())
        rng = np.random.default_rng(0)
        stats = [train_step(G, D, og, od, xp.asarray(x), xp.asarray(y), rng).fetch() for _ in range(2)]
        return stats, [p.data.copy() for p in G.parameters() + D.parameters()]


def test_a_training_step_gives_the_same_bits_with_and_without_the_cache(cache):
    # every large array of the step (here: every array) from the cache, reused across the
    # two steps, against plain numpy.empty: any block handed out while still in use would
    # change the numbers
    with_cache = _two_steps(width=8, batch=6)
    assert cache.stats()["slabs"] > 10
    cache.set_limit_mb(0)
    without = _two_steps(width=8, batch=6)
    assert with_cache[0] == without[0]
    for a, b in zip(with_cache[1], without[1]):
        np.testing.assert_array_equal(a, b)

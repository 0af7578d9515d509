"""The training step without host syncs, on the numpy backend (the kernels' side is in
tests/kernels and tests/test_cupy_standin.py): flat Adam and the one-launch moving average
give the per-parameter results, D's batched terms give the three-pass gradients, the loss
flag names the first bad step, labels are checked once on the host, and checkpoints from
before the biases in front of BatchNorms were dropped still load."""
import numpy as np
import pytest

from cganraw import health, models, nn, optim, step
from cganraw.ops import _launch
from cganraw.ops import adam as AD
from cganraw.ops import stats as ST
from cganraw.ops.philox import Key


def _module(seed=0):
    return nn.Sequential(nn.Linear(5, 7, rng=seed), nn.LeakyReLU(0.2), nn.Linear(7, 3, rng=seed + 1),
                         nn.BatchNorm1d(3, rng=seed))


def test_flat_adam_equals_the_per_parameter_update(rng):
    a, b = _module(), _module()
    opt = optim.Adam(a.parameters(), lr=1e-2)
    assert opt.flat is not None and optim.flat_of(a.parameters()) is opt.flat
    # the parameters now view one buffer; their values are untouched
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    ms = [np.zeros_like(p.data) for p in b.parameters()]
    vs = [np.zeros_like(p.data) for p in b.parameters()]
    for t in range(1, 4):
        opt.zero_grad()
        assert not opt.flat.grad.any()
        for pa, pb in zip(a.parameters(), b.parameters()):
            g = rng.standard_normal(pa.shape).astype(np.float32)
            pa.accumulate(g)
            pb.grad[...] = g
        opt.step()
        for i, pb in enumerate(b.parameters()):
            AD.adam_update_numpy(pb.data, pb.grad, ms[i], vs[i], 1e-2, 0.5, 0.999, 1e-8, t)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    np.testing.assert_array_equal(opt.m[0], ms[0])
    # the state round-trips through the views
    state = opt.state_dict()
    opt2 = optim.Adam(b.parameters(), lr=1e-2)
    opt2.load_state_dict(state)
    np.testing.assert_array_equal(opt2.v[2], opt.v[2])


def test_adam_falls_back_when_a_parameter_is_replaced(rng):
    a = _module()
    opt = optim.Adam(a.parameters(), lr=1e-2)
    a.to(np.float64)                               # replaces every array: the packing is gone
    assert not opt.flat.intact()
    for p in a.parameters():
        p.grad[...] = 1.0
    before = [p.data.copy() for p in a.parameters()]
    opt.zero_grad()
    assert all(not p.grad.any() for p in a.parameters())
    for p in a.parameters():
        p.grad[...] = 1.0
    opt.step()
    assert all((p.data != b).any() for p, b in zip(a.parameters(), before) if p.requires_grad)


def test_frozen_parameters_stay_put_in_a_packed_optimiser():
    a = _module()
    opt = optim.Adam(a.parameters(), lr=1e-1, weight_decay=0.1)
    frozen = a[0].weight
    frozen.requires_grad = False
    before = frozen.data.copy()
    for p in a.parameters():
        p.grad[...] = 1.0
    opt.step()
    np.testing.assert_array_equal(frozen.data, before)


def test_one_launch_ema_equals_the_per_parameter_average():
    G = models.build("cgan-conv", 4, width=4, seed=1, batchnorm=True)[0]
    avg, ref = (models.build("cgan-conv", 4, width=4, seed=2, batchnorm=True)[0] for _ in range(2))
    opt = optim.Adam(G.parameters())                # packs G, as the trainer's optimiser does
    G(np.zeros((3, 100), np.float32), np.array([0, 1, 2]))       # moves BatchNorm's statistics
    for _ in range(2):
        step.update_ema(avg, G, 0.9)
        for p_ref, p in zip(ref.parameters(), G.parameters()):
            p_ref.data -= np.float32(1 - 0.9) * (p_ref.data - p.data)
    assert step._ema_pack(avg, G) is not None and opt.flat.intact()
    for (k, a), (_, r) in zip(avg.state_dict().items(), ref.state_dict().items()):
        if "running" in k or "num_batches" in k:
            np.testing.assert_array_equal(a, G.state_dict()[k], err_msg=k)
        else:
            np.testing.assert_array_equal(a, r, err_msg=k)


@pytest.mark.parametrize("g_norm", ["instance", "none"])
def test_one_launch_ema_without_buffers(g_norm):
    # instance norm keeps no running statistics: G has no floating buffer, and the average
    # still packs (one launch a step), instead of re-packing and averaging per parameter
    G = models.build("cgan-conv", 4, width=4, seed=1, g_norm=g_norm)[0]
    avg, ref = (models.build("cgan-conv", 4, width=4, seed=2, g_norm=g_norm)[0] for _ in range(2))
    opt = optim.Adam(G.parameters())            # packs G; kept alive, as the trainer keeps it
    for _ in range(2):
        step.update_ema(avg, G, 0.9)
        for p_ref, p in zip(ref.parameters(), G.parameters()):
            p_ref.data -= np.float32(1 - 0.9) * (p_ref.data - p.data)
    pack = step._ema_pack(avg, G)
    assert pack is not None and pack[1].empty and pack is step._ema_pack(avg, G) and opt.flat.intact()
    for (k, a), (_, r) in zip(avg.state_dict().items(), ref.state_dict().items()):
        np.testing.assert_array_equal(a, r, err_msg=k)


def _grads_after_d_step(batched, monkeypatch, d_label="concat"):
    G, D = models.build("cgan-conv", 5, width=4, seed=3, batchnorm=True, d_label=d_label)
    for m in models.dropout_layers(D):
        m.p = 0.0                                   # the masks differ between the layouts
    captured = {}
    opt_g, opt_d = optim.Adam(G.parameters()), optim.Adam(D.parameters())
    opt_d.step = lambda: captured.update({k: p.grad.copy() for k, p in D.named_parameters()})
    monkeypatch.setattr(step, "batchable", lambda module: batched)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (4, 1, 28, 28)).astype(np.float32), np.array([0, 4, 2, 2])
    stats = step.train_step(G, D, opt_g, opt_d, x, y, Key(3, 7), 0.1, 0.7, 0.0)
    return captured, stats.fetch()


@pytest.mark.parametrize("d_label", ["concat", "projection", "both"])
def test_batched_d_terms_equal_three_passes(d_label, monkeypatch):
    assert step.per_sample(models.build("cgan-conv", 5, width=4, d_label=d_label)[1])
    assert not step.per_sample(models.build("dcgan", None, width=4)[1])          # BatchNorm in D
    three, s3 = _grads_after_d_step(False, monkeypatch, d_label)
    one, s1 = _grads_after_d_step(True, monkeypatch, d_label)
    for k in three:   # the same sums, in another order: float32 rounding apart
        scale = np.abs(three[k]).max()
        np.testing.assert_allclose(one[k], three[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)
    for k in s3:
        assert s1[k] == pytest.approx(s3[k], rel=1e-6, abs=1e-7), k


def _default_d_step(batched, n, monkeypatch, d_label="concat"):
    """D's gradients, losses and power-iteration vectors after the D step of the trainer's
    default D (spectral norm, minibatch stddev), its terms batched or in three passes."""
    G, D = models.build("cgan-conv", 5, width=4, seed=3, batchnorm=True, d_norm="spectral", minibatch_std=True,
                        d_label=d_label)
    for m in models.dropout_layers(D):
        m.p = 0.0                                   # the masks differ between the layouts
    assert step.batchable(D) and not step.per_sample(D)
    monkeypatch.setattr(step, "batchable", lambda module: batched)
    if not batched:
        # three passes step the power iteration once per term; one batch steps it once for
        # the three (step.batchable): the first training forward of each layer only, here
        ran = set()
        compute = nn.utils.SpectralNorm.compute

        def once(fn, module, power_iteration):
            first = (id(fn), id(module)) not in ran
            ran.add((id(fn), id(module)))
            return compute(fn, module, power_iteration and first)
        monkeypatch.setattr(nn.utils.SpectralNorm, "compute", once)
    captured = {}
    opt_g, opt_d = optim.Adam(G.parameters()), optim.Adam(D.parameters())

    def capture():
        captured.update({k: p.grad.copy() for k, p in D.named_parameters()})
        captured.update({k: np.array(b) for k, b in D.named_buffers() if k.endswith(("_u", "_v"))})
    opt_d.step = capture
    rng = np.random.default_rng(n)
    x, y = rng.uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32), rng.integers(0, 5, n)
    stats = step.train_step(G, D, opt_g, opt_d, x, y, Key(3, 7), 0.1, 2.0, 0.0).fetch()
    return captured, {k: v for k, v in stats.items() if k.startswith("d_")}


@pytest.mark.parametrize("n, d_label", [(8, "concat"), (5, "concat"), (2, "concat"), (5, "projection")])
def test_default_d_batches_its_terms_as_three_passes(n, d_label, monkeypatch):
    # 5: the group size (4) does not divide a term
    one, s1 = _default_d_step(True, n, monkeypatch, d_label)
    monkeypatch.undo()
    three, s3 = _default_d_step(False, n, monkeypatch, d_label)
    assert set(one) == set(three) and any(k.endswith("weight_u") for k in one)
    for k in three:   # the same sums, in another order: float32 rounding apart
        scale = np.abs(three[k]).max()
        np.testing.assert_allclose(one[k], three[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)
    for k in s3:
        assert s1[k] == pytest.approx(s3[k], rel=1e-5, abs=1e-7), k


def test_loss_flag_names_the_first_bad_step():
    flag = health.LossFlag()
    flag.check()
    bounded = ST.bounded_mask(health.BOUNDED_LOSSES)
    ok = np.float32(0.5)
    logits = np.zeros((3, 1), np.float32)
    ST.step_stats(ok, ok, None, ok, None, 1.0, logits, logits, flag.array, 7, health.LOSS_BOUND, bounded)
    flag.check()
    ST.step_stats(ok, np.float32(2e4), None, ok, None, 1.0, logits, logits, flag.array, 8, health.LOSS_BOUND, bounded)
    ST.step_stats(ok, np.float32(np.nan), None, ok, None, 1.0, logits, logits, flag.array, 9, health.LOSS_BOUND,
                  bounded)
    with pytest.raises(health.HealthError, match=r"^at step 8: d_loss is 2e\+04, past the bound 1e\+04$"):
        flag.check()
    flag2 = health.LossFlag()
    ST.step_stats(ok, ok, None, np.float32(np.inf), None, 1.0, logits, logits, flag2.array, 3, health.LOSS_BOUND,
                  bounded)
    with pytest.raises(health.HealthError, match=r"^at step 3: g_loss is inf$"):
        flag2.check()


def test_step_stats_are_read_in_one_copy():
    G, D = models.build("cgan-conv", 5, width=4, seed=3)
    x, y = step.upload_batch(np.zeros((2, 1, 28, 28), np.float32), np.array([1, 3]), 5)
    stats = step.train_step(G, D, optim.Adam(G.parameters()), optim.Adam(D.parameters()), x, y, Key(1, 0),
                            mismatch=1.0)
    assert list(stats) == list(ST.STAT_NAMES) and stats["d_loss"].shape == ()
    values = stats.fetch()
    assert values["d_loss"] == pytest.approx(values["d_loss_real"] + values["d_loss_fake"] + values["d_loss_mismatch"],
                                             rel=1e-6)
    assert 0 < values["d_real"] < 1 and values["g_loss_mode_seeking"] == 0.0


def test_labels_are_checked_once_on_the_host():
    with pytest.raises(ValueError, match=r"upload_batch: labels must lie in \[0, 5\), got values from 0 to 5"):
        step.upload_batch(np.zeros((2, 1, 28, 28)), np.array([0, 5]), 5)
    with pytest.raises(TypeError, match="integers of shape"):
        step.upload_batch(np.zeros((2, 1, 28, 28)), np.array([0.5, 1.0]), 5)
    x, y = step.upload_batch(np.zeros((2, 1, 28, 28)), np.array([0, 4]), 5)
    assert y.dtype == np.int32 and x.dtype == np.float32 and _launch.labels_checked(y, 5)
    # a layer given those labels skips its range check; given others, it still checks
    emb = nn.Embedding(5, 3, rng=0)
    emb(y)
    with pytest.raises(ValueError, match=r"Embedding: labels must lie in \[0, 5\)"):
        emb(np.array([0, 5]))


def test_old_checkpoints_with_biases_before_batchnorm_load(rng):
    G = models.build("cgan-conv", 4, width=4, seed=5, batchnorm=True)[0]
    assert G.net[0].bias is None and ("net.0", "net.1") in models.biases_folded_into_norms(G)
    G(rng.standard_normal((6, 100)).astype(np.float32), np.array([0, 1, 2, 3, 0, 1]))
    state = G.state_dict()
    # the same generator as an older version saved it: a bias b, the running mean holding it
    old = {}
    for k, v in state.items():
        old[k] = v
        if k == "net.0.weight":
            old["net.0.bias"] = np.linspace(-1, 1, 4).astype(np.float32)
        if k == "net.1.running_mean":
            old[k] = v + np.linspace(-1, 1, 4).astype(np.float32)
    G2 = models.build("cgan-conv", 4, width=4, seed=9, batchnorm=True)[0].load_state_dict(old)
    z, labels = rng.standard_normal((5, 100)).astype(np.float32), np.array([3, 2, 1, 0, 3])
    np.testing.assert_allclose(models.generate(G2, labels, z=z), models.generate(G, labels, z=z), atol=1e-5)
    # and its optimiser state: the bias's moments are dropped, the others renumbered
    names = [n for n, _ in G.named_parameters()]
    old_names = [k for k in old if k in names or k == "net.0.bias"]
    opt_state = {"t": np.int64(3), **{f"{m}.{i}": np.full(np.shape(old[n]), i, np.float32)
                                      for i, n in enumerate(old_names) for m in ("m", "v")}}
    new = models.upgrade_optimizer_state(G, old, opt_state)
    for j, n in enumerate(names):
        assert new[f"m.{j}"].flat[0] == old_names.index(n)
    optim.Adam(G.parameters()).load_state_dict(new)

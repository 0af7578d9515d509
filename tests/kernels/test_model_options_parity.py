"""cgan-conv with the issue-12 options (and d_label, d_stem) on the emu backend (every op through kernels/*.cu,
including the new instancenorm, spectral_norm, minibatch_std, avgpool and upsample
kernels) against the numpy backend: a forward and backward of G and D in training mode,
and one full training step."""
import numpy as np
import pytest

from cganraw import backend, models, train
from cganraw.optim import Adam

K = 10
LR = 2e-4
OPTIONS = [
    dict(g_norm="instance", d_norm="spectral", minibatch_std=True),
    dict(progressive=True, g_norm="instance", d_norm="spectral", minibatch_std=True, growth=(28, 0.4)),
    dict(progressive=True, g_norm="batch", growth=(14, 1.0)),
    dict(d_label="projection", d_norm="spectral", minibatch_std=True),
    dict(d_label="both", g_norm="instance"),
    dict(progressive=True, d_label="projection", d_norm="spectral", growth=(28, 0.4)),
    dict(d_stem=4, d_label="projection", d_norm="spectral", minibatch_std=True, g_norm="instance"),
    dict(progressive=True, d_stem=3, growth=(28, 0.4)),
]


def _ids(options):
    return ["-".join(f"{k}={v}" for k, v in o.items()) for o in options]


def _build(opts):
    opts = dict(opts)
    growth = opts.pop("growth", None)
    G, D = models.build("cgan-conv", K, width=6, seed=3, **opts)
    if growth:
        G.set_growth(*growth), D.set_growth(*growth)
    return G, D


def forward_backward(opts, bk):
    backend.use(bk)
    G, D = _build(opts)
    rng = np.random.default_rng(7)
    z = backend.asarray(rng.standard_normal((5, 100), dtype=np.float32))
    labels = backend.asarray(rng.integers(0, K, 5))
    x = G(z, labels)
    y = D(x, labels)
    dy = backend.asarray(rng.standard_normal(y.shape).astype(np.float32))
    dz = G.backward(D.backward(dy))
    out = {"x": x, "y": y, "dz": dz}
    for tag, mod in (("G", G), ("D", D)):
        out.update({f"{tag}.{k}.grad": p.grad.copy() for k, p in mod.named_parameters()})
        out.update({f"{tag}.{k}": np.asarray(backend.asnumpy(v)).copy() for k, v in mod.named_buffers()})
    return {k: np.asarray(backend.asnumpy(v)) for k, v in out.items()}


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids(OPTIONS))
def test_forward_backward_emu_equals_numpy(opts, launches):
    ref = forward_backward(opts, "numpy")
    launches.clear()
    got = forward_backward(opts, "emu")
    names = set(launches)
    if opts.get("g_norm") == "instance":
        # with its LeakyReLU, one launch each way (nn.fused on the kernel backends)
        assert "instancenorm_leaky_relu_forward_v2" in names and "instancenorm_leaky_relu_backward_v2" in names
    if opts.get("d_norm") == "spectral":
        assert {"spectral_norm_power_v1", "spectral_norm_forward_v3", "spectral_norm_backward_v3"} <= names
    if opts.get("minibatch_std"):
        assert {"minibatch_std_forward_stat_v2", "minibatch_std_backward_v2"} <= names
    if opts.get("d_label", "concat") != "concat":
        assert {"label_projection_forward_v1", "label_projection_backward_v1"} <= names
    if opts.get("progressive"):
        assert {"upsample_nearest2d_forward_v2", "upsample_nearest2d_backward_v2"} <= names
        if opts["growth"][0] == 28:
            assert {"avgpool2d_forward_v2", "avgpool2d_backward_v2"} <= names
    assert list(got) == list(ref)
    scale = {m: max(np.abs(g).max() for k, g in ref.items() if k.startswith(m) and k.endswith(".grad")) for m in "GD"}
    for k, r in ref.items():
        if r.dtype.kind != "f":
            np.testing.assert_array_equal(got[k], r, err_msg=k)
        elif k.endswith(".grad"):
            np.testing.assert_allclose(got[k], r, rtol=1e-3, atol=1e-5 * scale[k[0]], err_msg=k)
        else:
            np.testing.assert_allclose(got[k], r, rtol=1e-3, atol=1e-5 * max(1.0, float(np.abs(r).max())), err_msg=k)


def one_step(opts, bk):
    backend.use(bk)
    G, D = _build(opts)
    opt_g, opt_d = Adam(G.parameters(), lr=LR), Adam(D.parameters(), lr=LR)
    grads = {}
    for tag, opt, mod in (("G", opt_g, G), ("D", opt_d, D)):
        step = opt.step

        def capture(tag=tag, mod=mod, step=step):
            grads.update({f"{tag}.{k}": backend.asnumpy(p.grad).copy() for k, p in mod.named_parameters()})
            step()
        opt.step = capture
    rng = np.random.default_rng(11)
    x = backend.asarray(rng.uniform(-1, 1, (4, 1, 28, 28)).astype(np.float32))
    labels = backend.asarray(rng.integers(0, K, 4))
    stats = train.train_step(G, D, opt_g, opt_d, x, labels, np.random.default_rng(5), mismatch=1.0)
    state = {f"G.{k}": v for k, v in G.state_dict().items()} | {f"D.{k}": v for k, v in D.state_dict().items()}
    return stats, grads, state


STEP_OPTIONS = [OPTIONS[1], OPTIONS[3], OPTIONS[5], OPTIONS[6]]


@pytest.mark.parametrize("opts", STEP_OPTIONS, ids=_ids(STEP_OPTIONS))
def test_train_step_with_every_option_emu_equals_numpy(opts):
    ref_stats, ref_grads, ref = one_step(opts, "numpy")
    stats, grads, got = one_step(opts, "emu")
    for k in ("d_loss", "g_loss"):
        assert stats[k] == pytest.approx(ref_stats[k], rel=1e-4, abs=1e-5)
    # a bias in front of an InstanceNorm has a true gradient of zero: both backends give
    # rounding noise there, so tolerances scale with the model's largest gradient
    scale = {m: max(np.abs(g).max() for k, g in ref_grads.items() if k.startswith(m)) for m in "GD"}
    for k, g in ref_grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-3, atol=1e-5 * scale[k[0]], err_msg=k)
    for k, r in ref.items():
        if r.dtype.kind != "f":
            np.testing.assert_array_equal(got[k], r, err_msg=k)
            continue
        g = ref_grads.get(k)
        if g is None:       # buffers: spectral norm's u, v, the growth state
            np.testing.assert_allclose(got[k], r, rtol=1e-4, atol=1e-6, err_msg=k)
            continue
        # Adam's first step is lr * g / (|g| + eps): where |g| is at rounding level its
        # sign may differ between the backends, so only clear gradients are compared
        clear = np.abs(g) > 1e-3 * scale[k[0]]
        np.testing.assert_allclose(got[k][clear], r[clear], rtol=1e-5, atol=LR * 1e-2, err_msg=k)

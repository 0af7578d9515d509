"""One full training step (D step and G step, with Adam) on the emu backend, every op
through kernels/*.cu, gives the parameters the numpy backend gives."""
import numpy as np
import pytest

from cganraw import backend, models, train
from cganraw.optim import Adam

LR = 2e-4


# the trainer's default D for cgan-conv (settings.MODEL_DEFAULTS): its terms run as one batch
DEFAULT_D = {"d_norm": "spectral", "minibatch_std": True}
# with the R1 penalty (its passes in evaluation mode: dropout off, spectral norm without iterating)
R1_D = {"d_norm": "none", "minibatch_std": True, "r1": 1.0}
R1_SN_D = {**DEFAULT_D, "d_label": "projection", "r1": 1.0}


def one_step(name, bk, batchnorm=False, d_opts=None, r1=0.0):
    backend.use(bk)
    norm = {"g_norm": batchnorm} if isinstance(batchnorm, str) else {"batchnorm": batchnorm}
    G, D = models.build(name, 10, width=8, seed=3, **norm, **(d_opts or {}))
    opt_g, opt_d = Adam(G.parameters(), lr=LR), Adam(D.parameters(), lr=LR)
    grads = {}
    for tag, opt, mod in (("G", opt_g, G), ("D", opt_d, D)):
        step = opt.step

        def capture(tag=tag, mod=mod, step=step):
            grads.update({f"{tag}.{k}": backend.asnumpy(p.grad).copy() for k, p in mod.named_parameters()})
            step()
        opt.step = capture
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (5 if d_opts else 3, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 5 if d_opts else 3)
    stats = train.train_step(G, D, opt_g, opt_d, x, labels, np.random.default_rng(5), mismatch=1.0,
                             r1=r1)
    params = {f"G.{k}": v for k, v in G.state_dict().items()}
    params.update({f"D.{k}": v for k, v in D.state_dict().items()})
    return stats, grads, params


@pytest.mark.parametrize("name,batchnorm,d_opts", [("cgan-conv", False, None), ("cgan-conv", True, None),
                                                   ("cgan-conv", True, DEFAULT_D), ("cgan-conv", "instance", DEFAULT_D),
                                                   ("cgan-mlp", False, None), ("cgan-conv", "instance", R1_D),
                                                   ("cgan-conv", "instance", R1_SN_D)],
                         ids=["cgan-conv", "cgan-conv-bn", "cgan-conv-default-d", "cgan-conv-in-default-d",
                              "cgan-mlp", "cgan-conv-r1", "cgan-conv-r1-spectral"])
def test_train_step_emu_equals_numpy(name, batchnorm, d_opts, launches):
    r1 = 1.0 if d_opts and "r1" in d_opts else 0.0
    d_opts = {k: v for k, v in (d_opts or {}).items() if k != "r1"} or None
    ref_stats, ref_grads, ref_params = one_step(name, "numpy", batchnorm, d_opts, r1)
    launches.clear()
    stats, grads, params = one_step(name, "emu", batchnorm, d_opts, r1)
    assert {"gemm_v3", "adam_update_v2"} <= set(launches), launches
    # the fused layer + LeakyReLU pairs run their kernels: D's Conv2d pairs the ones that also
    # turn the GEMMs' layout, the other pairs (the MLPs' Linear, G's ConvT without a norm) v1
    if name == "cgan-conv":
        assert {"bias_leaky_relu_forward_v2", "bias_leaky_relu_backward_v4"} <= set(launches)
    if not batchnorm:
        assert {"bias_leaky_relu_forward_v1", "bias_leaky_relu_backward_v3"} <= set(launches)
    if name == "cgan-conv":
        # D's convolutions: im2col_v2 and col2im_v3; G's ConvT(k4, s2, p1): phase-split GEMMs
        assert "im2col_v2" in launches and "col2im_v3" in launches
    if batchnorm is True:
        # (training: the running statistics updated in the normalising pass, forward_v2)
        assert {"batchnorm_leaky_relu_forward_v2", "batchnorm_leaky_relu_backward_v2"} <= set(launches)
        assert "batchnorm_running_update_v1" not in launches
    if batchnorm == "instance":
        # G's InstanceNorm2d + LeakyReLU pairs: one launch each way
        assert {"instancenorm_leaky_relu_forward_v2", "instancenorm_leaky_relu_backward_v2"} <= set(launches)
    if name == "cgan-conv" and (d_opts or {}).get("d_label") != "projection":
        # the label paths of G and D: the fused table GEMM + concatenation, each way
        assert {"label_map_concat_forward_v3", "label_map_concat_backward_v1",
                "label_map_concat_backward_v2"} <= set(launches)
    if d_opts:
        # one batch of real, wrong-label and fake terms (5 each: the group of 4 does not divide)
        assert "minibatch_std_forward_stat_v3" in launches
        assert ("spectral_norm_power_v1" in launches) == (d_opts.get("d_norm") == "spectral")
    for k in ("d_loss", "g_loss"):
        assert stats[k] == pytest.approx(ref_stats[k], rel=1e-4, abs=1e-5)
    # tolerances scale with the model's largest gradient: a bias in front of a BatchNorm
    # has a true gradient of zero, and both backends give rounding noise there
    scale = {m: max(np.abs(g).max() for k, g in ref_grads.items() if k.startswith(m)) for m in "GD"}
    for k, g_ref in ref_grads.items():
        np.testing.assert_allclose(grads[k], g_ref, rtol=1e-3, atol=1e-5 * scale[k[0]], err_msg=k)
    for k, p_ref in ref_params.items():
        p = params[k]
        if p.dtype.kind != "f":
            np.testing.assert_array_equal(p, p_ref, err_msg=k)
            continue
        # Adam's first step is lr * g / (|g| + eps): where |g| is at rounding level the
        # sign may differ between BLAS and the kernels, so those move by at most 2 lr
        g = ref_grads.get(k)
        if g is None:
            np.testing.assert_allclose(p, p_ref, rtol=1e-4, atol=1e-6, err_msg=k)
            continue
        clear = np.abs(g) > 1e-3 * scale[k[0]]
        np.testing.assert_allclose(p[clear], p_ref[clear], rtol=1e-5, atol=LR * 1e-2, err_msg=k)
        assert np.all(np.abs(p - p_ref) <= 2 * LR + 1e-6), k

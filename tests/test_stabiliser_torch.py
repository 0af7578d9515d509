"""The stabiliser layers against PyTorch (CPU): forward values, input and parameter
gradients, running statistics, and spectral norm's u/v updates over several training
steps. MinibatchStdDev, which torch lacks, is compared with ProGAN's formula written in
torch and differentiated by autograd."""
import numpy as np
import pytest

from cganraw import nn

torch = pytest.importorskip("torch")

RTOL, ATOL = 2e-5, 2e-6


def t(a, grad=False):
    x = torch.from_numpy(np.ascontiguousarray(a))
    return x.requires_grad_() if grad else x


def close(ours, theirs, what, rtol=RTOL, atol=ATOL):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=rtol, atol=atol, err_msg=what)


def run_both(ours, theirs, x, rng, what):
    """Forward and backward of both with the same input and output gradient."""
    xt = t(x, grad=True)
    y = ours(x)
    yt = theirs(xt)
    close(y, yt, f"{what}: forward")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = ours.backward(dy)
    yt.backward(t(dy))
    close(dx, xt.grad, f"{what}: input gradient")
    return y, dx


@pytest.mark.parametrize("shape,k,s", [((3, 5, 7, 7), 2, None), ((2, 3, 28, 28), 2, 2), ((1, 2, 9, 7), 3, 2),
                                       ((2, 1, 7, 6), 3, 1)])
def test_avgpool2d(shape, k, s, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    run_both(nn.AvgPool2d(k, s), torch.nn.AvgPool2d(k, s), x, rng, f"AvgPool2d {shape} k={k} s={s}")


@pytest.mark.parametrize("shape,s", [((3, 5, 7, 7), 2), ((2, 1, 14, 14), 2), ((1, 2, 3, 5), 3)])
def test_upsample(shape, s, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    run_both(nn.Upsample(scale_factor=s), torch.nn.Upsample(scale_factor=s, mode="nearest"), x, rng,
             f"Upsample {shape} x{s}")


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_instancenorm2d_every_flag(affine, track, momentum, rng):
    c = 5
    ours = nn.InstanceNorm2d(c, momentum=momentum, affine=affine, track_running_stats=track, rng=rng)
    theirs = torch.nn.InstanceNorm2d(c, momentum=momentum, affine=affine, track_running_stats=track)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict({k: t(v) for k, v in ours.state_dict().items()})
    what = f"InstanceNorm2d(affine={affine}, track={track}, momentum={momentum})"
    for step in range(3):          # training: the running statistics move
        x = (rng.standard_normal((3, c, 7, 7)) * rng.uniform(0.5, 3, (1, c, 1, 1)) + 1).astype(np.float32)
        ours.zero_grad(), theirs.zero_grad()
        run_both(ours, theirs, x, rng, f"{what} step {step}")
        if affine:
            close(ours.weight.grad, theirs.weight.grad, f"{what} dweight", atol=1e-5)
            close(ours.bias.grad, theirs.bias.grad, f"{what} dbias", atol=1e-5)
        for k, v in ours.state_dict().items():
            close(v, theirs.state_dict()[k], f"{what} {k} after step {step}")
    ours.eval(), theirs.eval()
    x = rng.standard_normal((2, c, 4, 3)).astype(np.float32)
    ours.zero_grad(), theirs.zero_grad()
    run_both(ours, theirs, x, rng, f"{what} eval")
    if affine:
        close(ours.weight.grad, theirs.weight.grad, f"{what} eval dweight", atol=1e-5)


def progan_minibatch_std(x, group, eps=1e-8):
    """ProGAN's layer as in its reference code (reshape(G, M, ...)), in torch."""
    n, c, h, w = x.shape
    y = x.reshape(group, -1, c, h, w)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + eps).sqrt()
    y = y.mean(dim=[1, 2, 3])
    return torch.cat([x, y.reshape(-1, 1, 1, 1).repeat(group, 1, h, w)], dim=1)


@pytest.mark.parametrize("n,group,effective", [(8, 4, 4), (12, 4, 4), (6, 4, 3), (7, 4, 1), (10, 4, 2), (3, 4, 3)])
def test_minibatch_std_against_progan_formula(n, group, effective, rng):
    x = rng.standard_normal((n, 3, 7, 7)).astype(np.float32)
    run_both(nn.MinibatchStdDev(group), lambda a: progan_minibatch_std(a, effective), x, rng,
             f"MinibatchStdDev N={n} group {group}")


SN_PAIRS = {
    "linear": (lambda: nn.Linear(6, 4), lambda: torch.nn.Linear(6, 4), lambda rng: rng.standard_normal((5, 6))),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, 2, 1), lambda: torch.nn.Conv2d(3, 4, 3, 2, 1),
               lambda rng: rng.standard_normal((3, 3, 7, 7))),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(3, 5, 4, 2, 1), lambda: torch.nn.ConvTranspose2d(3, 5, 4, 2, 1),
                         lambda rng: rng.standard_normal((3, 3, 7, 7))),
    "embedding": (lambda: nn.Embedding(7, 3), lambda: torch.nn.Embedding(7, 3),
                  lambda rng: rng.integers(0, 7, 9)),
}


@pytest.mark.parametrize("n_iter", [1, 3])
@pytest.mark.parametrize("kind", SN_PAIRS)
def test_spectral_norm_training_steps(kind, n_iter, rng):
    make, make_t, inputs = SN_PAIRS[kind]
    ours = nn.utils.spectral_norm(make(), n_power_iterations=n_iter, rng=rng)
    for p in ours.parameters():         # away from DCGAN's tiny start, so sigma is O(1)
        p.data[...] = rng.standard_normal(p.shape).astype(np.float32) * 0.5
    theirs = torch.nn.utils.spectral_norm(make_t(), n_power_iterations=n_iter)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict({k: t(v) for k, v in ours.state_dict().items()})
    what = f"spectral_norm({kind}, n_power_iterations={n_iter})"
    for step in range(4):
        x = inputs(rng)
        x = x.astype(np.float32) if x.dtype.kind == "f" else x
        ours.zero_grad(), theirs.zero_grad()
        if x.dtype.kind == "f":
            run_both(ours, theirs, x, rng, f"{what} step {step}")
        else:
            y, yt = ours(x), theirs(t(x))
            close(y, yt, f"{what} step {step}: forward")
            dy = rng.standard_normal(y.shape).astype(np.float32)
            ours.backward(dy)
            yt.backward(t(dy))
        for k in ("weight_u", "weight_v"):
            close(getattr(ours, k), getattr(theirs, k), f"{what} {k} after step {step}")
        close(ours.weight.data, theirs.weight, f"{what} normalised weight", atol=1e-6)
        close(ours.weight_orig.grad, theirs.weight_orig.grad, f"{what} weight_orig grad step {step}", atol=1e-5)
        # a plain SGD step on both, so the next power iteration sees a new weight
        for name, p in ours.named_parameters():
            p.data -= np.float32(0.05) * p.grad
        with torch.no_grad():
            for p in theirs.parameters():
                p -= 0.05 * p.grad
        for k, v in ours.state_dict().items():
            close(v, theirs.state_dict()[k], f"{what} {k} after the update {step}")
    # eval: no power iteration in either
    ours.eval(), theirs.eval()
    x = inputs(rng)
    x = x.astype(np.float32) if x.dtype.kind == "f" else x
    close(ours(x), theirs(t(x)), f"{what} eval forward")
    close(ours.weight_u, theirs.weight_u, f"{what} eval keeps u")
    ours.drop_caches()
    nn.utils.remove_spectral_norm(ours)
    torch.nn.utils.remove_spectral_norm(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    close(ours.weight.data, theirs.weight, f"{what} after remove")


def test_spectral_norm_default_dims_match_torch(rng):
    for kind, (make, make_t, _) in SN_PAIRS.items():
        ours = nn.utils.spectral_norm(make(), rng=rng)
        theirs = torch.nn.utils.spectral_norm(make_t())
        assert ours.weight_u.shape == tuple(theirs.weight_u.shape), kind
        assert ours.weight_v.shape == tuple(theirs.weight_v.shape), kind

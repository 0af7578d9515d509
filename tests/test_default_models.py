"""The generator and discriminator exactly as `python -m cganraw.train` builds them, by
default (G's norm layers included) and with --model cgan-mlp, gradient-checked in
float64 in training mode, as they train: the trainer runs its own path from its parser
and DEFAULTS up to its models.build call (tests.proof.trainer_build_call), only the
width is made tiny, and the models are rebuilt from that very call. When a default
changes, these tests follow it. (Their emu-vs-numpy twin is tests/kernels/test_default_models_emu.py.)
"""
import numpy as np
import pytest

from cganraw import models, nn, train
from tests.proof import check_gradient, dropout_states, set_dropout_states, trainer_build_call
from tests.synthetic import write_emnist

# the default; cgan-conv with spectral norm in D (its default before R1); the MLP cGAN
VARIANTS = {"default": [], "spectral": ["--d-norm", "spectral"], "cgan-mlp": ["--model", "cgan-mlp"]}
N = 3


def trainer_models(variant, tmp_path, monkeypatch):
    """(G, D) rebuilt from the call the trainer makes, on a 10-class dataset as MNIST."""
    data = tmp_path / "data"
    write_emnist(data, "digits", np.random.default_rng(0), n=(70, 10))   # more than a default batch
    argv = ["--dataset", "emnist-digits", "--data-dir", data, "--out", tmp_path / "run", "--width", 4,
            "--quiet", "--no-download", *VARIANTS[variant]]
    args, kwargs = trainer_build_call(argv, monkeypatch)
    G, D = models.build(*args, **kwargs)
    return G, D, args, kwargs


def has(module, kind):
    return any(isinstance(m, kind) for _, m in module.named_modules())


def test_the_default_generator_is_the_trainers_default(tmp_path, monkeypatch):
    G, D, args, _ = trainer_models("default", tmp_path, monkeypatch)
    assert args[0] == train.DEFAULTS["model"] and G.num_classes == 10
    if train.DEFAULTS["model"] == "cgan-conv":
        norm = train.model_default("cgan-conv", "g_norm")
        assert has(G, nn.BatchNorm2d) == (norm == "batch") and has(G, nn.InstanceNorm2d) == (norm == "instance")
        assert G.width == 4 and D.width == 4


def _randomise_biases(module, rng):
    # biases start at 0, and a LeakyReLU fed an exact zero sits on its kink
    for k, p in module.named_parameters():
        if k.endswith("bias"):
            p.data[...] = rng.normal(0, 0.05, p.shape)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_generator_gradients(variant, tmp_path, monkeypatch):
    G, _, _, _ = trainer_models(variant, tmp_path, monkeypatch)
    G.to(np.float64).train()
    rng = np.random.default_rng(1)
    _randomise_biases(G, rng)
    z = rng.standard_normal((N, G.latent_dim))
    labels = rng.integers(0, G.num_classes, N) if G.conditional else None
    gy = rng.standard_normal((N, 1, 28, 28))
    G.zero_grad()
    G(z, labels)
    dz = G.backward(gy)
    grads = {k: p.grad.copy() for k, p in G.named_parameters()}
    arrays = {k: p.data for k, p in G.named_parameters()}
    arrays["z"], grads["z"] = z, dz
    check_gradient(lambda: float((G(z, labels) * gy).sum()), arrays, grads, f"{variant} G")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_discriminator_gradients(variant, tmp_path, monkeypatch):
    _, D, _, _ = trainer_models(variant, tmp_path, monkeypatch)
    D.to(np.float64).train()
    rng = np.random.default_rng(2)
    _randomise_biases(D, rng)
    x = rng.uniform(-1, 1, (N, 1, 28, 28))
    labels = rng.integers(0, D.num_classes, N) if D.conditional else None
    gy = rng.standard_normal((N, 1))
    masks = dropout_states(D)
    assert masks, "the trainer's D has dropout: its masks are replayed below"
    D.zero_grad()
    D(x, labels)
    dx = D.backward(gy)
    grads = {k: p.grad.copy() for k, p in D.named_parameters()}
    arrays = {k: p.data for k, p in D.named_parameters()}
    arrays["x"], grads["x"] = x, dx
    # spectral norm: the analytic pass ran its power iteration, then held u, v fixed (as
    # torch does); the finite differences use those u, v, without iterating again
    for _, m in D.named_modules():
        if nn.utils.is_spectrally_normalised(m):
            m.eval()

    def loss():
        set_dropout_states([D], masks)      # the mask the analytic pass used
        return float((D(x, labels) * gy).sum())
    check_gradient(loss, arrays, grads, f"{variant} D")

"""The generator and discriminator exactly as `python -m cganraw.train` builds them (by
default, BatchNorm in G included, and with --model cgan-mlp), forward and backward with
every op through kernels/*.cu on the emu backend, against the numpy backend. The models
come from the trainer's own models.build call (tests.proof.trainer_build_call) at a tiny
width; tests/test_default_models.py gradient-checks the same models."""
import numpy as np
import pytest

from cganraw import backend, models
from tests.test_default_models import VARIANTS, trainer_models

from .conftest import assert_close

N = 3


def forward_backward(bk, args, kwargs):
    """G and D built afresh on backend `bk` (same seed: same weights, same dropout
    masks), one training-mode forward and backward each."""
    backend.use(bk)
    G, D = models.build(*args, **kwargs)
    rng = np.random.default_rng(5)
    xp = backend.get_xp()
    z = rng.standard_normal((N, G.latent_dim)).astype(np.float32)
    labels = rng.integers(0, G.num_classes, N) if G.conditional else None
    x = rng.uniform(-1, 1, (N, 1, 28, 28)).astype(np.float32)
    gy_img = rng.standard_normal((N, 1, 28, 28)).astype(np.float32)
    gy_logit = rng.standard_normal((N, 1)).astype(np.float32)
    lab = None if labels is None else xp.asarray(labels)
    out = {"G(z)": G(xp.asarray(z), lab)}
    out["dz"] = G.backward(xp.asarray(gy_img))
    out["D(x)"] = D(xp.asarray(x), lab)
    out["dx"] = D.backward(xp.asarray(gy_logit))
    out.update({f"G.{k}.grad": p.grad for k, p in G.named_parameters()})
    out.update({f"D.{k}.grad": p.grad for k, p in D.named_parameters()})
    out.update({f"G.{k}": b for k, b in G.named_buffers()})      # BatchNorm's running statistics
    return {k: np.array(backend.asnumpy(v), dtype=np.float64) for k, v in out.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_trainer_models_on_emu_equal_numpy(variant, tmp_path, monkeypatch, launches):
    _, _, args, kwargs = trainer_models(variant, tmp_path, monkeypatch)
    ref = forward_backward("numpy", args, kwargs)
    launches.clear()
    got = forward_backward("emu", args, kwargs)
    # the emu pass really ran the kernels of every op family these models use
    norm = "instancenorm" if kwargs.get("g_norm") == "instance" else "batchnorm"     # G's, as the trainer builds it
    families = ["gemm", "bias", norm, "leaky_relu", "tanh", "dropout"]
    # (the conv models' label path: embedding.cu's fused label_map_concat kernels)
    families += ["im2col", "col2im", "label_map_concat"] if variant == "default" else ["relu"]
    missing = [f for f in families if not any(f in name for name in launches)]
    assert not missing, (missing, sorted(set(launches)))
    assert got.keys() == ref.keys()
    # absolute tolerances scale with the largest value of the array, or for a parameter
    # gradient of its model's largest: a bias in front of a BatchNorm has a true gradient
    # of zero, and both backends give rounding noise there
    def group(k):
        return k[0] if k.endswith(".grad") else k
    scale = {}
    for k, r in ref.items():
        scale[group(k)] = max(scale.get(group(k), 1e-3), float(np.abs(r).max()))
    for k, r in ref.items():
        assert_close(got[k], r, atol=2e-5 * scale[group(k)], rtol=1e-3, what=f"{variant} {k}")

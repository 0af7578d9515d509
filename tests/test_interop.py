"""cganraw.interop: ours -> torch -> ours is bit-identical, forwards agree, safetensors
round trips, and importing cganraw never imports torch."""
import json
import subprocess
import sys

import numpy as np
import pytest

from cganraw import interop, models
from cganraw import nn as cnn

CONV_OPTIONS = {
    "cgan-conv-bn": {"g_norm": "batch"},
    "cgan-conv-in-sn-mbstd": {"g_norm": "instance", "d_norm": "spectral", "minibatch_std": True},
    "cgan-conv-prog14": {"progressive": True, "growth": (14, 1.0)},
    "cgan-conv-prog-fade": {"progressive": True, "g_norm": "batch", "d_norm": "spectral", "growth": (28, 0.3)},
    "cgan-conv-prog28": {"progressive": True, "minibatch_std": True, "growth": (28, 1.0)},
    "cgan-conv-stem-sn-proj": {"d_stem": 5, "d_norm": "spectral", "d_label": "projection", "minibatch_std": True},
    "cgan-conv-prog-stem-fade": {"progressive": True, "d_stem": 4, "growth": (28, 0.3)},
}
VARIANTS = [pytest.param(name, {}, id=name) for name in models.MODELS] + [
    pytest.param("cgan-conv", opts, id=key) for key, opts in CONV_OPTIONS.items()]


def _build(name, options, seed=3):
    options = dict(options)
    growth = options.pop("growth", None)
    G, D = models.build(name, 10, width=8, seed=seed, **options)
    if growth:
        G.set_growth(*growth), D.set_growth(*growth)
    return G, D


def _scramble(module, rng):
    """Every parameter and buffer random (running stats too), so no value is an init default;
    small enough that float32 activations stay of unit scale."""
    for _, p in module.named_parameters():
        p.data[...] = (0.3 * rng.standard_normal(p.shape)).astype(p.dtype)
    state = module.state_dict()
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, v.shape).astype(v.dtype)
        elif k.endswith("running_mean"):
            state[k] = rng.standard_normal(v.shape).astype(v.dtype)
        elif k.endswith("num_batches_tracked"):
            state[k] = np.asarray(7, dtype=v.dtype)
    module.load_state_dict(state)
    return module


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert np.array_equal(sa[k], sb[k]), k


def _inputs(G, rng, n=5):
    labels = rng.integers(0, 10, n) if G.conditional else None
    return rng.standard_normal((n, G.latent_dim), dtype=np.float32), labels


def test_importing_cganraw_never_imports_torch():
    code = ("import sys, cganraw, cganraw.interop, cganraw.models, cganraw.bench, cganraw.bench.cases; "
            "bad = [m for m in ('torch', 'safetensors') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("name,options", VARIANTS)
def test_round_trip_through_torch_is_bit_identical_and_forwards_agree(name, options, rng):
    torch = pytest.importorskip("torch")
    G, D = (_scramble(m, rng).eval() for m in _build(name, options))
    tG, tD = interop.to_torch(G), interop.to_torch(D)
    assert not tG.training and not tD.training
    for ours, theirs in ((G, tG), (D, tD)):
        assert list(ours.state_dict()) == list(theirs.state_dict())
        back = interop.from_torch(theirs)                 # rebuilt from the port's configuration
        assert type(back) is type(ours) and not back.training
        _assert_same_state(ours, back)
        into = interop.from_torch(theirs, _build(name, options, seed=9)[0 if ours is G else 1])
        _assert_same_state(ours, into)
    # the forwards agree to float64 rounding: the same function, not just close in float32
    G.to(np.float64), D.to(np.float64)
    tG.double(), tD.double()
    z, labels = _inputs(G, rng)
    z = z.astype(np.float64)
    tl = None if labels is None else torch.from_numpy(labels)
    with torch.no_grad():
        x_t = tG(torch.from_numpy(z), tl)
        y_t = tD(x_t, tl)
    x = G(z, labels)
    np.testing.assert_allclose(x, x_t.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(D(x, labels), y_t.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", models.MODELS)
def test_torch_models_have_our_state_dict_names_and_shapes(name):
    pytest.importorskip("torch")
    G, D = _build(name, {})
    tG, tD = interop.torch_models(name, 10, width=8)
    for ours, theirs in ((G, tG), (D, tD)):
        theirs_sd = theirs.state_dict()
        assert list(ours.state_dict()) == list(theirs_sd)
        assert [tuple(v.shape) for v in ours.state_dict().values()] == [tuple(v.shape) for v in theirs_sd.values()]
        # torch's own initialisation loads into ours, and comes back unchanged
        back = interop.from_torch(theirs, ours)
        for k, v in theirs_sd.items():
            assert np.array_equal(back.state_dict()[k], v.numpy()), k


def test_train_mode_and_frozen_parameters_carry_over(rng):
    pytest.importorskip("torch")
    G, _ = _build("cgan-conv", {"g_norm": "batch"})
    G.label_emb.requires_grad_(False)
    tG = interop.to_torch(G)
    assert tG.training
    assert not tG.label_emb.weight.requires_grad and tG.fc.weight.requires_grad


def _layer_stack(seed):
    rng = np.random.default_rng(seed)
    return cnn.Sequential(
        cnn.Conv2d(3, 4, 3, stride=2, padding=1, rng=rng), cnn.BatchNorm2d(4, rng=rng), cnn.ReLU(),
        cnn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, bias=False, rng=rng),
        cnn.LeakyReLU(0.1), cnn.MaxPool2d(2), cnn.Tanh(), cnn.Flatten(), cnn.Linear(2 * 5 * 5, 6, rng=rng),
        cnn.Dropout(0.5), cnn.Sigmoid(), cnn.Reshape(2, 3), cnn.Flatten(), cnn.BatchNorm1d(6, rng=rng))


def _image_stack(seed):
    rng = np.random.default_rng(seed)
    return cnn.Sequential(
        cnn.Conv2d(2, 3, 3, padding=1, rng=rng), cnn.InstanceNorm2d(3, affine=True, rng=rng),
        cnn.Upsample(scale_factor=3), cnn.AvgPool2d(2), cnn.MinibatchStdDev(4),
        cnn.InstanceNorm2d(4, track_running_stats=True))


def test_model_config_names_d_stem_only_when_on():
    _, D0 = models.build("cgan-conv", 10, width=8)
    _, D = models.build("cgan-conv", 10, width=8, d_stem=6, progressive=True)
    assert "d_stem" not in interop.model_config(D0)          # the configs of before stay as they were
    cfg = interop.model_config(D)
    assert cfg["d_stem"] == 6 and cfg["progressive"]
    D2 = interop.build_from_config(cfg)
    assert D2.stem == 6 and list(D2.state_dict()) == list(D.state_dict())


def test_layers_and_sequential_convert(rng):
    torch = pytest.importorskip("torch")
    seq = _scramble(_layer_stack(0), rng).eval()
    t = interop.to_torch(seq)
    assert isinstance(t, torch.nn.Sequential) and list(t.state_dict()) == list(seq.state_dict())
    x = rng.standard_normal((3, 3, 9, 9), dtype=np.float32)     # odd sizes: 9 -> 5 -> 10 -> 5
    with torch.no_grad():
        want = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(seq(x), want, rtol=1e-5, atol=1e-5)
    _assert_same_state(seq, interop.from_torch(t, _layer_stack(1)))
    img = _scramble(_image_stack(0), rng)                        # training mode: instance statistics
    t = interop.to_torch(img)
    x = rng.standard_normal((6, 2, 5, 5), dtype=np.float32)      # 5 -> 15 -> 7; groups of 3 (6 = 2 x 3)
    with torch.no_grad():
        want = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(img(x), want, rtol=1e-4, atol=1e-5)
    _assert_same_state(img, interop.from_torch(t, _image_stack(1)))
    emb = cnn.Embedding(7, 3, rng=rng)
    idx = np.array([0, 6, 3, 3])
    np.testing.assert_array_equal(emb(idx), interop.to_torch(emb)(torch.from_numpy(idx)).detach().numpy())


def test_conversion_errors(rng):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="no PyTorch equivalent for Concat"):
        interop.to_torch(cnn.Concat())
    with pytest.raises(TypeError, match="pass the cganraw module"):
        interop.from_torch(torch.nn.Linear(2, 3))
    ours = cnn.Linear(2, 3, rng=rng)
    before = ours.state_dict()
    with pytest.raises(ValueError, match="shape"):
        interop.from_torch(torch.nn.Linear(2, 4), ours)
    with pytest.raises(KeyError, match="missing keys"):
        interop.from_torch(torch.nn.Linear(2, 3, bias=False), ours)
    for k, v in ours.state_dict().items():
        assert np.array_equal(v, before[k]), "a failed load changed the module"
    with pytest.raises(ValueError, match="unknown model"):
        interop.torch_models("vae", 10)


# ------------------------------------------------------------------ safetensors ------

@pytest.mark.parametrize("name,options", VARIANTS)
def test_safetensors_round_trip_rebuilds_both_models(name, options, rng, tmp_path):
    pytest.importorskip("safetensors")
    G, D = (_scramble(m, rng) for m in _build(name, options))
    path = interop.save_safetensors(tmp_path / "m.safetensors", G, D, metadata={"dataset": "mnist"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]   # no temp file left
    G2, D2, meta = interop.load_safetensors(path)
    _assert_same_state(G, G2)
    _assert_same_state(D, D2)
    assert meta["format"] == "cganraw" and meta["dataset"] == "mnist"
    assert json.loads(meta["G"]) == interop.model_config(G) and json.loads(meta["D"])["role"] == "D"
    z, labels = _inputs(G, rng)
    G.eval(), G2.eval()
    np.testing.assert_array_equal(G(z, labels), G2(z, labels))


def test_safetensors_generator_only_and_into_given_modules(rng, tmp_path):
    pytest.importorskip("safetensors")
    G, D = (_scramble(m, rng) for m in _build("cgan-mlp", {}))
    interop.save_safetensors(tmp_path / "g.safetensors", G)
    G2, D2, _ = interop.load_safetensors(tmp_path / "g.safetensors", G=_build("cgan-mlp", {}, seed=8)[0])
    assert D2 is None
    _assert_same_state(G, G2)
    with pytest.raises(ValueError, match="holds no D"):
        interop.load_safetensors(tmp_path / "g.safetensors", D=D)
    other_G, _ = _build("cgan-conv", {})
    with pytest.raises(KeyError, match="missing keys"):
        interop.load_safetensors(tmp_path / "g.safetensors", G=other_G)


def test_safetensors_loads_in_torch(rng, tmp_path):
    pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    G, D = (_scramble(m, rng).eval() for m in _build("dcgan", {}))
    interop.save_safetensors(tmp_path / "m.safetensors", G, D)
    tensors = st_torch.load_file(str(tmp_path / "m.safetensors"))
    tG, _ = interop.torch_models("dcgan", None, width=8)
    tG.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")}, strict=True)
    _assert_same_state(G, interop.from_torch(tG.eval()))


def test_safetensors_bad_input(rng, tmp_path):
    pytest.importorskip("safetensors")
    G, _ = _build("gan-mlp", {})
    with pytest.raises(ValueError, match="reserved"):
        interop.save_safetensors(tmp_path / "a.safetensors", G, metadata={"format": "x"})
    with pytest.raises(TypeError, match="strings"):
        interop.save_safetensors(tmp_path / "a.safetensors", G, metadata={"epochs": 3})
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError):
        interop.load_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError):
        interop.load_safetensors(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        interop.load_safetensors(bad)
    good = interop.save_safetensors(tmp_path / "g.safetensors", G)
    good.write_bytes(good.read_bytes()[:-10])     # truncated
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        interop.load_safetensors(good)

"""The trainer's architecture flags and schedules (issue 12): --g-norm/--d-norm/
--minibatch-std/--progressive/--grow-at/--fade/--batch-size-final, through the real
command line, Run and loop, on tiny synthetic data; train_step's gradients at a mid-fade alpha."""
import json

import numpy as np
import pytest

from cganraw import checkpoint, load, models, settings, train
from cganraw.data import BatchIterator
from cganraw.losses import bce_with_logits
from cganraw.ops import philox
from cganraw.run import batch_size_at, growth_at, planned_steps
from cganraw.step import train_step
from tests.runs import assert_same_state, resave_with_config, run_cli

TINY = ["--width", "3", "--log-every", "1", "--quiet", "--no-download"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"d_loss"' in line]


# ------------------------------------------------------------------ the formulas ------

@pytest.mark.parametrize("frac,expected", [(0.0, (14, 1.0)), (0.29, (14, 1.0)), (0.3, (28, 0.0)),
                                           (0.4, (28, 0.25)), (0.5, (28, 0.5)), (0.7, (28, 1.0)),
                                           (1.0, (28, 1.0))])
def test_growth_follows_the_documented_formula(frac, expected):
    phase, alpha = growth_at(frac, 0.3, 0.4)
    assert phase == expected[0] and alpha == pytest.approx(expected[1], abs=1e-12)


def test_rising_batch_sizes_follow_the_documented_formula():
    # 2 epochs of 48 images from 4 to 12: floor(2 * 2 * 48 / 16) = 12 steps,
    # size_k = 4 + round(8 k / 11), halves up
    assert planned_steps(2, 48, 4, 12) == 12 and planned_steps(2, 48, 8) == 12
    sizes = [batch_size_at(k, 12, 4, 12) for k in range(13)]
    assert sizes == [4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11, 12, 12]
    assert sum(sizes[:12]) <= 2 * 48
    assert [batch_size_at(k, 12, 8) for k in range(3)] == [8, 8, 8]
    assert batch_size_at(5, 1, 4, 12) == 4


def test_variable_batches_cover_each_image_at_most_once_per_epoch_and_resume_exactly():
    images = np.arange(40 * 28 * 28, dtype=np.int64).reshape(40, 28, 28).astype(np.uint8)
    labels = np.arange(40)
    sizes = [3, 5, 7, 9, 11, 13, 15, 17, 19]
    it = BatchIterator(images, labels, 3, np.random.default_rng(1), variable_size=True)
    drawn, states = [], []
    for k, b in enumerate(sizes):
        states.append(it.state_dict())
        drawn.append(it.next_batch(b, sizes[k + 1] if k + 1 < len(sizes) else b)[1])
    assert [len(y) for y in drawn] == sizes
    # epoch 1 holds 3+5+7+9+11 = 35 (13 more would pass 40): then a fresh permutation
    first = np.concatenate(drawn[:5])
    assert len(np.unique(first)) == 35 and states[5]["epoch"] == 1 and states[5]["position"] == 0
    assert len(np.unique(np.concatenate(drawn[5:7]))) == 28
    for k in (3, 6):       # mid-epoch and at an epoch start
        again = BatchIterator(images, labels, 3, np.random.default_rng(99), variable_size=True)
        again.load_state_dict(json.loads(json.dumps(states[k])))
        for j in range(k, len(sizes)):
            np.testing.assert_array_equal(again.next_batch(sizes[j], sizes[j + 1] if j + 1 < len(sizes)
                                                           else sizes[j])[1], drawn[j])
    fixed = BatchIterator(images, labels, 3, np.random.default_rng(1))
    with pytest.raises(ValueError, match="variable_size"):
        fixed.load_state_dict(states[3])
    with pytest.raises(ValueError, match="variable_size=True"):
        fixed.next_batch(5)


# ------------------------------------------------------------------ through the loop --

def test_growth_and_batch_size_through_the_real_loop(letters_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--epochs", 2,
                   "--batch-size", 4, "--batch-size-final", 12, "--progressive", "--grow-at", 0.25,
                   "--fade", 0.5, *TINY) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    # step s trains with the size and growth of step index s - 1, at fraction (s - 1) / 12
    assert [r["batch_size"] for r in rows] == [4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11, 12]
    expected = [(14, 1.0)] * 3 + [(28, min(1.0, (k / 12 - 0.25) / 0.5)) for k in range(3, 12)]
    assert [r["growth_phase"] for r in rows] == [p for p, _ in expected]
    np.testing.assert_allclose([r["growth_alpha"] for r in rows], [a for _, a in expected], atol=1e-6)
    assert rows[6]["growth_alpha"] == pytest.approx(0.5)
    ck = checkpoint.load(out / "checkpoints" / "last.npz")
    for part in ("G", "D", "G_ema"):
        assert int(ck[part]["growth_phase"]) == 28 and float(ck[part]["growth_alpha"]) == 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["progressive"], cfg["grow_at"], cfg["fade"], cfg["batch_size_final"]) == (True, 0.25, 0.5, 12)
    G, _ = load.load_generator(out)
    assert G.progressive and G.growth == (28, 1.0)


def test_a_run_stopped_mid_fade_resumes_bit_exactly(letters_dir, tmp_path):
    common = ["--dataset", "emnist", "--data-dir", letters_dir, "--seed", 3, "--epochs", 2, "--batch-size", 4,
              "--batch-size-final", 12, "--progressive", "--grow-at", 0.25, "--fade", 0.5, "--d-norm", "spectral",
              "--minibatch-std", "--g-norm", "instance", *TINY]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(*common, "--out", straight) == 0
    assert run_cli(*common, "--out", split, "--max-steps", 6) == 0
    mid = checkpoint.load(split / "checkpoints" / "last.npz")
    assert mid["meta"]["step"] == 6
    assert int(mid["G"]["growth_phase"]) == 28 and 0 < float(mid["G"]["growth_alpha"]) < 1   # mid-fade
    assert run_cli("--resume", split, "--max-steps", 12, "--quiet", "--data-dir", letters_dir, "--no-download") == 0
    a, b = (checkpoint.load(d / "checkpoints" / "last.npz") for d in (straight, split))
    assert b["meta"]["step"] == 12 and a["meta"]["batches"] == b["meta"]["batches"]
    assert_same_state(a, b)
    assert a["rng"] == b["rng"]


def test_resuming_with_architecture_flags_names_them(letters_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 2,
                   "--batch-size", 8, "--progressive", "--d-norm", "none", "--g-norm", "batch", *TINY) == 0
    capsys.readouterr()
    code = run_cli("--resume", out, "--d-norm", "spectral", "--g-norm", "instance", "--grow-at", 0.3,
                   "--batch-size-final", 16, "--quiet", "--data-dir", letters_dir, "--no-download")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    for needle in ("--d-norm: was none, asked spectral", "--g-norm: was batch, asked instance",
                   "--grow-at: was 0.5, asked 0.3", "--batch-size-final: was unset, asked 16"):
        assert needle in err
    # the same values as saved are no conflict
    assert run_cli("--resume", out, "--progressive", "--g-norm", "batch", "--max-steps", 3, "--quiet",
                   "--data-dir", letters_dir, "--no-download") == 0


def test_a_config_from_before_the_options_resumes_as_the_original_model(letters_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 2,
                   "--batch-size", 8, "--no-g-batchnorm", "--d-norm", "none", "--no-minibatch-std",
                   "--d-label", "concat", "--no-g-film", "--d-stem", 0, *TINY) == 0
    path = out / "checkpoints" / "last.npz"
    ck = checkpoint.load(path)
    old = {k: v for k, v in ck["meta"]["config"].items()
           if k not in ("g_norm", "d_norm", "minibatch_std", "progressive", "grow_at", "fade", "batch_size_final",
                        "d_label", "g_film", "d_stem")}
    resave_with_config(path, old)
    assert settings.upgrade_config(old)["g_norm"] == "none" and settings.upgrade_config(old)["d_label"] == "concat"
    assert load.model_options(old)["d_label"] == "concat" and load.model_options(old)["g_film"] is False
    assert settings.upgrade_config(old)["d_stem"] == 0 and load.model_options(old)["d_stem"] == 0
    G2, _ = load.load_generator(out)
    assert not any("norm" in n for n, _ in G2.named_parameters()) and not G2.progressive
    assert run_cli("--resume", out, "--max-steps", 3, "--g-norm", "none", "--quiet", "--data-dir", letters_dir,
                   "--no-download") == 0
    assert checkpoint.load(path)["meta"]["config"]["g_norm"] == "none"
    assert checkpoint.load(path)["meta"]["config"]["d_label"] == "concat"


def test_default_flags_build_todays_model(letters_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 1,
                   "--batch-size", 8, *TINY) == 0
    cfg = json.loads((out / "config.json").read_text())
    want = {k: train.model_default("cgan-conv", k)
            for k in ("g_norm", "d_norm", "minibatch_std", "d_label", "g_film", "d_stem")}
    assert want["d_label"] == "projection" and want["g_film"] is True and want["d_stem"] == 16
    assert (cfg["g_norm"], cfg["g_batchnorm"], cfg["d_norm"], cfg["minibatch_std"], cfg["progressive"],
            cfg["batch_size_final"], cfg["d_label"], cfg["g_film"], cfg["d_stem"]) == (
        want["g_norm"], want["g_norm"] == "batch", want["d_norm"], want["minibatch_std"], False, None,
        want["d_label"], want["g_film"], want["d_stem"])
    G, D = load.build_from_config(cfg, 26, seed=0)
    G0, D0 = models.build("cgan-conv", 26, width=3, seed=0, **want)
    for ours, theirs in ((G, G0), (D, D0)):
        assert type(ours) is type(theirs)
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_g_batchnorm_alias_and_g_norm(letters_dir, tmp_path):
    for flags, expected in ((["--no-g-batchnorm"], "none"), (["--g-norm", "instance"], "instance"),
                            (["--g-batchnorm", "--g-norm", "batch"], "batch")):
        args = settings.build_parser().parse_args(flags)
        assert args.g_norm == expected and args.g_batchnorm == (expected == "batch")


@pytest.mark.parametrize("argv,needle", [
    (["--progressive", "--grow-at", "0"], "--grow-at: "),
    (["--progressive", "--grow-at", "1"], "--grow-at: "),
    (["--progressive", "--fade", "1.5"], "--fade: "),
    (["--progressive", "--grow-at", "0.8", "--fade", "0.3"], "fades past the run's end"),
    (["--grow-at", "0.3"], "need --progressive"),
    (["--batch-size", "64", "--batch-size-final", "32"], "is below --batch-size"),
    (["--g-norm", "instance", "--g-batchnorm"], "contradicts --g-norm instance"),
    (["--no-g-batchnorm", "--g-norm", "batch"], "contradicts --g-norm batch"),
    (["--model", "cgan-mlp", "--minibatch-std", "--d-norm", "spectral"], "--d-norm, --minibatch-std: options of"),
    (["--d-norm", "weight"], "invalid choice"),
])
def test_bad_growth_flags_are_argparse_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_batch_size_final_larger_than_the_data_is_a_clear_error(letters_dir, tmp_path, capsys):
    code = run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", tmp_path / "r", "--batch-size", 8,
                   "--batch-size-final", 100, *TINY)
    err = capsys.readouterr().err
    assert code == 1 and "--batch-size-final 100 exceeds the 48 training images" in err
    assert not (tmp_path / "r" / "checkpoints" / "last.npz").exists()


# ------------------------------------------------------------------ gradients --------

class _Recorder:
    """An optimiser that records the gradients it is asked to apply and moves nothing."""

    def __init__(self, params):
        self.params, self.grads = list(params), None

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def step(self):
        self.grads = [p.grad.copy() for p in self.params]


@pytest.mark.parametrize("g_norm", ["instance", "batch"])
def test_train_step_gradients_at_mid_fade_match_finite_differences(g_norm):
    """float64: D's gradient is that of its loss (real, mismatch, fake), G's that of the
    non-saturating loss through D, at alpha 0.4 of the fade, checked along a random
    direction for every parameter tensor and element-wise on a few entries."""
    K, n, mismatch = 4, 5, 0.7
    G, D = models.build("cgan-conv", K, width=3, seed=2, g_norm=g_norm, minibatch_std=True, progressive=True)
    for m in (G, D):
        m.to(np.float64)
        m.set_growth(28, 0.4)
    for layer in models.dropout_layers(D):
        layer.p = 0.0                      # the loss must be a function of the weights alone
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (n, 1, 28, 28))
    y = rng.integers(0, K, n)
    opt_g, opt_d = _Recorder(G.parameters()), _Recorder(D.parameters())
    key = philox.Key(11, 0)
    train_step(G, D, opt_g, opt_d, x, y, key, label_smoothing=0.1, mismatch=mismatch)
    # the draws train_step makes: Philox streams of its key, by their NumPy twins
    z = philox.philox_normal_numpy((n, G.latent_dim), key.stream(philox.NOISE)).astype(np.float64)
    fake_labels = philox.philox_integers_numpy(n, 0, K, key.stream(philox.FAKE_LABELS))
    wrong = philox.philox_shift_labels_numpy(y, K, key.stream(philox.WRONG_LABELS))

    def d_loss():      # G's fake is its training-mode forward, as in train_step
        fake = G(z, fake_labels)
        loss = bce_with_logits(D(x, y), 0.9)[0] + mismatch * bce_with_logits(D(x, wrong), 0.0)[0]
        loss += bce_with_logits(D(fake, fake_labels), 0.0)[0]
        G.drop_caches(), D.drop_caches()
        return loss

    def g_loss():
        loss = bce_with_logits(D(G(z, fake_labels), fake_labels), 1.0)[0]
        G.drop_caches(), D.drop_caches()
        return loss

    def numeric(p, where, step):
        """Central difference of loss() along `step` added at p.data[where], at the first of
        a few step sizes that agrees with the analytic value (a ReLU-type kink lying within
        one step of an input spoils a single size; a wrong gradient fails them all)."""
        base = p.data.copy()
        found = []
        for eps in (1e-6, 1e-7, 1e-8):
            p.data[where] = base[where] + eps * step
            up = loss()
            p.data[where] = base[where] - eps * step
            down = loss()
            p.data[...] = base
            found.append((up - down) / (2 * eps))
        return found

    check = np.random.default_rng(3)
    for mod, grads, loss in ((D, opt_d.grads, d_loss), (G, opt_g.grads, g_loss)):
        for (name, p), g in zip(mod.named_parameters(), grads):
            direction = check.standard_normal(p.shape)
            analytic = float((g * direction).sum())
            found = numeric(p, ..., direction)
            assert any(v == pytest.approx(analytic, rel=2e-5, abs=1e-9) for v in found), (name, analytic, found)
            i = tuple(int(check.integers(0, s)) for s in p.shape)
            found = numeric(p, i, 1.0)
            assert any(v == pytest.approx(float(g[i]), rel=1e-4, abs=1e-9) for v in found), (name, i, g[i], found)

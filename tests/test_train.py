"""The trainer and the sampler, end to end on tiny synthetic data (EMNIST's layout)."""
import json
import os

import numpy as np
import pytest

import cganraw.run as run_module
from cganraw import load, models, sample, train
from cganraw.losses import mode_seeking
from cganraw.optim import Adam
from tests.runs import assert_same_state, final_state, run_cli

TINY = ["--width", "4", "--batch-size", "8", "--log-every", "1", "--quiet", "--no-download"]


@pytest.mark.parametrize("name", models.MODELS)
def test_train_step_moves_every_model(name):
    rng = np.random.default_rng(0)
    G, D = models.build(name, 10, width=4, seed=0)
    opt_g, opt_d = Adam(G.parameters(), lr=1e-3), Adam(D.parameters(), lr=1e-3)
    x = rng.uniform(-1, 1, (6, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 6) if G.conditional else None
    before_g, before_d = G.state_dict(), D.state_dict()
    history = [train.train_step(G, D, opt_g, opt_d, x, labels, rng) for _ in range(4)]
    assert set(history[0]) >= {"d_loss", "g_loss", "d_real", "d_fake", "d_loss_real", "d_loss_fake"}
    assert all(np.isfinite(h["d_loss"]) and np.isfinite(h["g_loss"]) for h in history)
    assert history[0]["d_loss"] != history[-1]["d_loss"] and history[0]["g_loss"] != history[-1]["g_loss"]
    assert any(not np.array_equal(before_g[k], v) for k, v in G.state_dict().items())
    assert any(not np.array_equal(before_d[k], v) for k, v in D.state_dict().items())


def test_g_step_leaves_d_weights_and_d_step_leaves_g(monkeypatch):
    # the D step must not move G; the G step must not move D (D is frozen, not just ignored)
    rng = np.random.default_rng(0)
    G, D = models.build("cgan-conv", 10, width=4, seed=0)
    opt_g, opt_d = Adam(G.parameters()), Adam(D.parameters())
    snapshots = {}
    real_step_g, real_step_d = opt_g.step, opt_d.step
    params = lambda m: {k: p.data.copy() for k, p in m.named_parameters()}

    def step_d():
        snapshots["d_grads_at_d_step"] = [p.grad.copy() for p in D.parameters()]
        real_step_d()
        snapshots["g_after_d_step"] = params(G)
        snapshots["d_after_d_step"] = params(D)
    monkeypatch.setattr(opt_d, "step", step_d)
    monkeypatch.setattr(opt_g, "step", lambda: (
        snapshots.setdefault("d_grads", [p.grad.copy() for p in D.parameters()]), real_step_g()))
    g0, d0 = params(G), params(D)
    train.train_step(G, D, opt_g, opt_d, rng.uniform(-1, 1, (4, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 4), rng)
    assert all(np.array_equal(g0[k], v) for k, v in snapshots["g_after_d_step"].items())
    assert any(not np.array_equal(d0[k], v) for k, v in snapshots["d_after_d_step"].items())
    assert all(np.array_equal(snapshots["d_after_d_step"][k], v) for k, v in params(D).items())
    assert any(not np.array_equal(g0[k], v) for k, v in params(G).items())
    # the G step's backward through D added nothing to D's gradients: D was frozen
    assert any(np.abs(g).max() > 0 for g in snapshots["d_grads_at_d_step"])
    for at_d, at_g in zip(snapshots["d_grads_at_d_step"], snapshots["d_grads"]):
        np.testing.assert_array_equal(at_g, at_d)


@pytest.mark.parametrize("model", models.MODELS)
def test_every_model_runs_from_the_cli(model, letters_dir, tmp_path):
    out = tmp_path / model
    assert run_cli("--dataset", "emnist", "--model", model, "--data-dir", letters_dir, "--out", out,
                   "--max-steps", 3, *TINY) == 0
    assert (out / "checkpoints" / "last.npz").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"d_loss", "g_loss", "d_real", "d_fake", "images_per_s", "elapsed_s", "epoch"} <= set(rows[0])
    assert (out / "loss.png").stat().st_size > 0 and (out / "samples" / "final.png").exists()


def test_emnist_run_writes_everything_with_letter_rows(letters_dir, tmp_path, monkeypatch):
    seen = {}
    import cganraw.plots as plots
    real_save_grid = plots.save_grid

    def spy(path, images, row_labels=None, **kw):
        seen[os.path.basename(path)] = row_labels
        return real_save_grid(path, images, row_labels=row_labels, **kw)
    monkeypatch.setattr(plots, "save_grid", spy)
    out = tmp_path / "run"
    # 48 images / batch 8 = 6 steps per epoch: two epochs
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--epochs", 2, *TINY) == 0
    assert seen["epoch_001.png"] == [chr(65 + i) for i in range(26)]
    assert {"epoch_001.png", "epoch_002.png", "final.png"} <= set(os.listdir(out / "samples"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == "emnist-letters" and cfg["class_names"][0] == "A" and cfg["num_classes"] == 26
    for key in ("model", "width", "batch_size", "lr", "beta1", "beta2", "latent_dim", "seed", "version", "backend"):
        assert key in cfg
    ck = final_state(out)
    assert ck["meta"]["step"] == 12 and ck["meta"]["epoch"] == 2
    assert {"epoch_001.npz", "epoch_002.npz", "last.npz"} <= set(os.listdir(out / "checkpoints"))
    assert any(k.startswith("opt_g.m.") for k in ck["opt_g"]) or "m.0" in ck["opt_g"]
    assert ck["rng"] == {}      # no generator state: the step names every random number (Philox)
    # the moving average of G is kept, differs from G, and is what sampling loads
    assert ck["G_ema"].keys() == ck["G"].keys()
    assert any(not np.array_equal(ck["G_ema"][k], ck["G"][k]) for k in ck["G"])
    G, meta = load.load_generator(out)
    assert meta["ema"] and np.array_equal(G.state_dict()["fc.weight"], ck["G_ema"]["fc.weight"])
    G_raw, meta = load.load_generator(out, ema=False)
    assert not meta["ema"] and np.array_equal(G_raw.state_dict()["fc.weight"], ck["G"]["fc.weight"])


def test_resume_is_exact_on_numpy(letters_dir, tmp_path):
    common = ["--dataset", "emnist", "--data-dir", letters_dir, "--seed", 5, *TINY]
    straight, split = tmp_path / "straight", tmp_path / "split"
    # 10 steps cross the epoch boundary at 6, and the split point (5) sits mid-epoch
    assert run_cli(*common, "--out", straight, "--max-steps", 10) == 0
    assert run_cli(*common, "--out", split, "--max-steps", 5) == 0
    assert run_cli("--resume", split, "--max-steps", 10, "--quiet", "--data-dir", letters_dir, "--no-download") == 0
    a, b = final_state(straight), final_state(split)
    assert b["meta"]["step"] == 10
    assert_same_state(a, b)
    assert a["rng"] == b["rng"]


def test_existing_run_is_not_overwritten(letters_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 1, *TINY) == 0
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 1, *TINY) == 1


def test_nan_stops_with_last_good_checkpoint_intact(letters_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 2, *TINY) == 0
    good = (out / "checkpoints" / "last.npz").read_bytes()
    real = train.train_step
    calls = {"n": 0}

    def poisoned(G, *args, **kwargs):
        # the second step after the resume (step 4) runs with a NaN in G: its losses are NaN,
        # which the step records on the device and the trainer reads before the checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            G.fc.weight.data[0, 0] = float("nan")
        return real(G, *args, **kwargs)
    monkeypatch.setattr(run_module, "train_step", poisoned)   # what Run.train_step calls
    rc = train.main(["--resume", str(out), "--max-steps", "6", "--checkpoint-every", "1",
                     "--data-dir", str(letters_dir), "--no-download"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "training diverged at step 4: d_loss is nan" in err
    assert f"the last good one is {out / 'checkpoints' / 'last.npz'} (step 3)" in err
    # the step-3 checkpoint was written; nothing after the NaN touched it
    ck = final_state(out)
    assert ck["meta"]["step"] == 3 and np.all([np.isfinite(v).all() for v in ck["G"].values()])
    assert good != (out / "checkpoints" / "last.npz").read_bytes()


def test_unwritable_out_fails_before_training(letters_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc = run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", blocker / "run", "--max-steps", 1,
                 "--width", "4", "--batch-size", "8", "--no-download")
    assert rc == 1
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err


def test_full_disk_is_reported_before_training(letters_dir, tmp_path, monkeypatch, capsys):
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 1000, 1000))
    rc = run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", tmp_path / "run", "--max-steps", 1,
                 "--width", "4", "--batch-size", "8", "--no-download")
    assert rc == 1 and "not enough free disk" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--model", "vae"], "invalid choice: 'vae'"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["--batch-size", "0"], "expected a positive integer"),
    (["--lr", "-1"], "expected a positive number"),
    (["--beta1", "1.5"], "expected a number in [0, 1)"),
    (["--label-smoothing", "x"], "expected a number in [0, 1)"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_flags_get_argparse_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = run_cli("--dataset", "emnist-digits", "--data-dir", tmp_path / "empty", "--out", tmp_path / "r", *TINY[:-2],
                 "--no-download")
    err = capsys.readouterr().err
    assert rc == 1 and "emnist-digits" in err and "--data-dir" in err
    rc = run_cli("--dataset", "emnist-digits", "--data-dir", tmp_path / "nothing", "--out", tmp_path / "r", *TINY)
    assert rc == 1 and f"the data folder {tmp_path / 'nothing'} (data_dir / --data-dir) does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ sampling -------

@pytest.fixture
def letters_run(letters_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 2, *TINY) == 0
    return out


def test_sample_npz_and_png(letters_run, tmp_path):
    npz = tmp_path / "s.npz"
    assert sample.main(["--checkpoint", str(letters_run), "--chars", "HeLLo", "--n-per-label", "3", "--out", str(npz)]) == 0
    with np.load(npz) as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (15, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and list(labels[::3]) == [7, 4, 11, 11, 14]
    png = tmp_path / "g.png"
    assert sample.main(["--checkpoint", str(letters_run / "checkpoints" / "last.npz"), "--labels", "0,3,25",
                        "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sample.main(["--checkpoint", str(letters_run), "--all-labels", "--n-per-label", "1", "--out", str(png)]) == 0


def test_sample_no_ema_uses_raw_weights(letters_run, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    sample.main(["--checkpoint", str(letters_run), "--labels", "1", "--out", str(a)])
    sample.main(["--checkpoint", str(letters_run), "--labels", "1", "--no-ema", "--out", str(b)])
    assert not np.array_equal(np.load(a)["images"], np.load(b)["images"])


def test_sample_is_seeded(letters_run, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for p in (a, b):
        sample.main(["--checkpoint", str(letters_run), "--labels", "1,2", "--seed", "4", "--out", str(p)])
    np.testing.assert_array_equal(np.load(a)["images"], np.load(b)["images"])


@pytest.mark.parametrize("argv,needle", [
    (["--labels", "0,26"], "out of range"),
    (["--chars", "H!"], "not in this model's alphabet"),
])
def test_sample_bad_input(letters_run, tmp_path, argv, needle, capsys):
    # what the model cannot draw is found while running: exit 1 (tests/test_cli_errors_tools.py has more)
    assert sample.main(["--checkpoint", str(letters_run), *argv, "--out", str(tmp_path / "x.png")]) == 1
    assert needle in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:           # a malformed command line: a usage error, exit 2
        sample.main(["--checkpoint", str(letters_run), "--labels", "a,b", "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "comma-separated" in capsys.readouterr().err


def test_sample_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert sample.main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.png")]) == 1
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert sample.main(["--checkpoint", str(tmp_path / "none.npz"), "--out", str(tmp_path / "x.png")]) == 1


def test_mismatch_term_uses_wrong_labels_only(monkeypatch):
    rng = np.random.default_rng(0)
    G, D = models.build("cgan-conv", 5, width=4, seed=0)
    seen = []
    real_forward = D.forward

    def spy(x, labels):
        seen.append(np.array(labels))
        return real_forward(x, labels)
    monkeypatch.setattr(D, "forward", spy)
    real_labels = rng.integers(0, 5, 40)
    stats = train.train_step(G, D, Adam(G.parameters()), Adam(D.parameters()),
                             rng.uniform(-1, 1, (40, 1, 28, 28)).astype(np.float32), real_labels, rng, mismatch=0.5)
    # D sees: real, real with wrong labels, fake, fake again for the G step
    assert len(seen) == 4
    assert np.array_equal(seen[0], real_labels) and np.all(seen[1] != real_labels)
    assert np.all((seen[1] >= 0) & (seen[1] < 5))
    assert stats["d_loss"] == pytest.approx(stats["d_loss_real"] + stats["d_loss_fake"] + 0.5 * stats["d_loss_mismatch"])


@pytest.mark.parametrize("n", [9, 10])
def test_mode_seeking_pairs_share_labels_and_push_images_apart(n, monkeypatch):
    rng = np.random.default_rng(1)
    G, D = models.build("cgan-conv", 5, width=4, seed=0)
    seen = []
    real_forward = G.forward

    def spy(z, labels):
        seen.append((np.array(z), np.array(labels)))
        return real_forward(z, labels)
    monkeypatch.setattr(G, "forward", spy)
    x = rng.uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 5, n)
    stats = train.train_step(G, D, Adam(G.parameters()), Adam(D.parameters()), x, y, rng, mode_seeking=2.0)
    (z, labels), = seen
    m = n // 2
    assert np.array_equal(labels[:m], labels[m:2 * m]) and labels.shape == (n,)
    assert not np.allclose(z[:m], z[m:2 * m])
    assert stats["g_loss_mode_seeking"] > 0

    # the term alone moves G towards images that differ more within each pair
    G2, _ = models.build("cgan-conv", 5, width=4, seed=0)
    G2.train()
    zz = rng.standard_normal((8, G2.latent_dim)).astype(np.float32)
    lab = np.tile(np.arange(4), 2)                 # rows i and 4 + i share a label
    opt = Adam(G2.parameters(), lr=1e-3)
    before = mode_seeking(G2(zz, lab), zz)[0]
    for _ in range(5):
        opt.zero_grad()
        loss, dimg = mode_seeking(G2(zz, lab), zz)
        G2.backward(dimg)
        opt.step()
    assert mode_seeking(G2(zz, lab), zz)[0] < before


def test_eval_every_logs_label_accuracy(letters_dir, tmp_path, monkeypatch):
    from cganraw import classifier, data
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ds = data.load("emnist", data_dir=letters_dir)
    clf, _ = classifier.fit_classifier(ds.images, ds.labels, ds.class_names, dataset="emnist-letters",
                                       epochs=1, log=lambda *a: None)
    clf.save(classifier.default_path("emnist-letters"))
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--epochs", 1,
                   "--eval-every", 1, *TINY) == 0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "label_accuracy" in line]
    assert len(evals) == 1 and 0.0 <= evals[0]["label_accuracy"] <= 1.0 and evals[0]["epoch"] == 1


def test_eval_every_steps_evaluates_within_epochs_once_per_step(letters_dir, tmp_path, monkeypatch):
    from cganraw import classifier, data
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ds = data.load("emnist", data_dir=letters_dir)
    clf, _ = classifier.fit_classifier(ds.images, ds.labels, ds.class_names, dataset="emnist-letters",
                                       epochs=1, log=lambda *a: None, channels=(4, 4, 8), features=16)
    clf.save(classifier.default_path("emnist-letters"))
    out = tmp_path / "run"
    # 48 images, batch 8: 6 steps an epoch; step 6 is due for both and is evaluated once
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 9,
                   "--eval-every-steps", 3, "--eval-every", 1, *TINY) == 0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "label_accuracy" in line]
    assert [(e["step"], e["epoch"]) for e in evals] == [(3, 0.5), (6, 1), (9, 1.5)]
    assert all("fid" in e and 0.0 <= e["label_accuracy"] <= 1.0 for e in evals)
    assert json.loads((out / "config.json").read_text())["eval_every_steps"] == 3


def test_lr_schedule_is_constant_then_linear_to_zero():
    G, D = models.build("cgan-mlp", 10, seed=0)
    cfg = {**train.DEFAULTS, "model": "cgan-mlp", "lr": 1e-3, "lr_d": 4e-3, "lr_decay_start": 0.5, "max_minutes": None,
           "dataset": "mnist", "epochs": 1, "batch_size": 8}
    data_stub = type("DS", (), {"images": np.zeros((80, 28, 28), np.uint8), "labels": np.zeros(80, np.int64),
                                "class_names": list("0123456789"), "num_classes": 10})()
    run = train.Run(cfg, data_stub, G, D)
    for step, scale in [(0, 1.0), (40, 1.0), (60, 0.5), (70, 0.25), (80, 0.0)]:
        run.step = step
        run.set_lr(train.progress(run, 80, cfg))
        assert run.opt_g.lr == pytest.approx(1e-3 * scale) and run.opt_d.lr == pytest.approx(4e-3 * scale)
    # a time budget that ends the run sooner drives the schedule
    run.step, run.elapsed = 10, 45.0
    assert train.progress(run, 80, {**cfg, "max_minutes": 1.0}) == pytest.approx(0.75)
    cfg["lr_decay_start"] = 1.0
    run.set_lr(1.0)
    assert run.opt_g.lr == 1e-3

"""--g-film (FiLM in G) end to end through the trainer on tiny synthetic data: it trains on
numpy and emu (the FiLM projections leave their zero start, G_ema and the checkpoint rebuild
it, sample/evaluate's loader too), a resumed run equals a straight one bit for bit on numpy,
a resume may not change --g-film, and a config from before the flag loads as off."""
import json

import numpy as np
import pytest

from cganraw import checkpoint, export, load, models, settings, train
from tests.runs import assert_resume_conflict, assert_same_state, final_state, resave_with_config, run_cli

TINY = ["--width", "4", "--batch-size", "8", "--log-every", "1", "--quiet", "--no-download"]


PROJ_KEYS = ("net.2.proj.weight", "net.2.proj.bias", "net.6.proj.weight", "net.6.proj.bias")


@pytest.mark.parametrize("bk", ["numpy", "emu"])
def test_film_g_trains(bk, letters_dir, tmp_path, keep_backend):
    out = tmp_path / "run"
    steps = 3 if bk == "numpy" else 2
    # cgan-conv's defaults: instance norm in G, so the blocks are ConvT -> IN -> FiLM -> LeakyReLU
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", steps,
                   "--backend", bk, "--g-film", *TINY) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["g_film"] is True and cfg["backend"] == bk and cfg["g_norm"] == "instance"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in rows)
    ck = final_state(out)
    g = ck["G"]
    assert g["net.2.proj.weight"].shape == (8, 100 + 26)                  # (2 w, latent + K)
    for k in PROJ_KEYS:         # the projections left their zero start; the moving average follows
        assert np.abs(g[k]).max() > 0 and np.abs(ck["G_ema"][k]).max() > 0, k
    G, _ = load.build_models(ck)
    assert G.film and [type(m).__name__ for m in G.net][2] == "FiLM"
    Gs, meta = load.load_generator(out)                                 # what sample and evaluate draw from
    assert Gs.film and meta["ema"]
    images = models.generate(Gs, np.arange(4), seed=1)
    assert images.shape == (4, 1, 28, 28) and np.all(np.abs(images) <= 1)


def test_film_resume_is_exact_on_numpy(letters_dir, tmp_path):
    common = ["--dataset", "emnist", "--data-dir", letters_dir, "--seed", 5, "--g-film", *TINY]
    straight, split = tmp_path / "straight", tmp_path / "split"
    # 8 steps cross the epoch boundary at 6; the split point (4) sits mid-epoch
    assert run_cli(*common, "--out", straight, "--max-steps", 8) == 0
    assert run_cli(*common, "--out", split, "--max-steps", 4) == 0
    # resumed as saved (the same --g-film given again is no conflict)
    assert run_cli("--resume", split, "--max-steps", 8, "--g-film", "--quiet", "--data-dir", letters_dir,
                   "--no-download") == 0
    a, b = final_state(straight), final_state(split)
    assert b["meta"]["step"] == 8 and "net.2.proj.weight" in a["G"]
    assert_same_state(a, b)


@pytest.mark.parametrize("saved, asked", [(False, True), (True, False)], ids=["off-on", "on-off"])
def test_resume_with_another_g_film_is_a_conflict(saved, asked, letters_dir, tmp_path, capsys):
    flag = lambda on: "--g-film" if on else "--no-g-film"
    assert_resume_conflict("--g-film", saved, asked, [flag(saved)], [flag(asked)], letters_dir, tmp_path, capsys,
                           TINY)


def test_a_config_from_before_g_film_resumes_as_off(letters_dir, tmp_path):
    out = tmp_path / "run"
    # a run of the model before FiLM existed: today's default has FiLM on, so it is turned off
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 1, "--no-g-film",
                   *TINY) == 0
    path = out / "checkpoints" / "last.npz"
    ck = checkpoint.load(path)
    old = {k: v for k, v in ck["meta"]["config"].items() if k != "g_film"}
    assert settings.upgrade_config(old)["g_film"] is False and load.model_options(old)["g_film"] is False
    # the checkpoint rewritten with the old config, everything else as saved
    resave_with_config(path, old)
    G2, _ = load.load_generator(out)
    assert not G2.film and not any(".proj." in k for k in G2.state_dict())
    assert run_cli("--resume", out, "--max-steps", 2, "--no-g-film", "--quiet", "--data-dir", letters_dir,
                   "--no-download") == 0
    assert checkpoint.load(path)["meta"]["config"]["g_film"] is False


def test_flag_help_default_and_export(letters_dir, tmp_path):
    parser = train.build_parser()
    # on by default for cgan-conv only: the other models have no FiLM
    assert parser.parse_args([]).g_film is True and settings.model_default("cgan-conv", "g_film") is True
    assert parser.parse_args(["--model", "dcgan"]).g_film is False and settings.DEFAULTS["g_film"] is False
    assert parser.parse_args(["--no-g-film"]).g_film is False
    assert "(default: on for cgan-conv, off otherwise)" in " ".join(parser.format_help().split())
    assert "g_film" in settings.CONFIG_KEYS and "g_film" in export.G_CONFIG_KEYS
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 1, "--g-film",
                   *TINY) == 0
    exported = tmp_path / "g.npz"
    export.export(out, exported)
    G, meta = export.load_generator(exported)
    assert G.film and meta["config"]["g_film"] is True

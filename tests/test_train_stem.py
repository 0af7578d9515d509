"""--d-stem (a stride-1 conv at 28x28 in front of D's first stride-2 conv) end to end through
the trainer on tiny synthetic data: it trains on numpy and emu and is rebuilt from the
checkpoint, a resumed run equals a straight one bit for bit on numpy, a resume may not change
--d-stem, a config from before the flag loads as 0, and bad values are argparse errors."""
import json

import numpy as np
import pytest

from cganraw import checkpoint, load, settings, train
from cganraw.bench import census
from tests.runs import assert_resume_conflict, assert_same_state, final_state, resave_with_config, run_cli

TINY = ["--width", "4", "--batch-size", "8", "--log-every", "1", "--quiet", "--no-download"]


@pytest.mark.parametrize("bk", ["numpy", "emu"])
def test_stem_d_trains(bk, letters_dir, tmp_path, keep_backend):
    out = tmp_path / "run"
    # cgan-conv's defaults otherwise: the projection D (one input channel), minibatch std, R1 at step 0
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 2,
                   "--backend", bk, "--d-stem", 8, *TINY) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["d_stem"] == 8 and cfg["backend"] == bk and cfg["d_label"] == "projection"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in rows)
    ck = final_state(out)
    d = ck["D"]
    assert d["net.0.weight"].shape == (8, 1, 3, 3) and d["net.2.weight"].shape == (4, 8, 3, 3)
    # the stem trained: it left the same seed's fresh weights
    _, D0 = load.build_from_config(ck["meta"]["config"], 26, seed=cfg["seed"])
    assert not np.array_equal(D0.state_dict()["net.0.weight"], d["net.0.weight"])
    _, D = load.build_models(ck)            # the checkpoint rebuilds as its config says
    assert D.stem == 8


def test_stem_resume_is_exact_on_numpy(letters_dir, tmp_path):
    common = ["--dataset", "emnist", "--data-dir", letters_dir, "--seed", 5, "--d-stem", 8, *TINY]
    straight, split = tmp_path / "straight", tmp_path / "split"
    # 8 steps cross the epoch boundary at 6; the split point (4) sits mid-epoch, on an R1 step
    assert run_cli(*common, "--out", straight, "--max-steps", 8) == 0
    assert run_cli(*common, "--out", split, "--max-steps", 4) == 0
    # resumed as saved (the same --d-stem given again is no conflict)
    assert run_cli("--resume", split, "--max-steps", 8, "--d-stem", 8, "--quiet", "--data-dir", letters_dir,
                   "--no-download") == 0
    a, b = final_state(straight), final_state(split)
    assert b["meta"]["step"] == 8 and a["D"]["net.0.weight"].shape == (8, 1, 3, 3)
    assert_same_state(a, b)


@pytest.mark.parametrize("saved, asked", [(0, 8), (8, 16), (8, 0)])
def test_resume_with_another_d_stem_is_a_conflict(saved, asked, letters_dir, tmp_path, capsys):
    assert_resume_conflict("--d-stem", saved, asked, ["--d-stem", saved], ["--d-stem", asked], letters_dir, tmp_path,
                           capsys, TINY)


def test_a_config_from_before_d_stem_resumes_as_0(letters_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 1, "--d-stem", 0,
                   *TINY) == 0
    path = out / "checkpoints" / "last.npz"
    ck = checkpoint.load(path)
    old = {k: v for k, v in ck["meta"]["config"].items() if k != "d_stem"}
    assert settings.upgrade_config(old)["d_stem"] == 0 and load.model_options(old)["d_stem"] == 0
    resave_with_config(path, old)           # the checkpoint with the old config, all else as saved
    G, D = load.build_models(checkpoint.load(path))
    assert D.stem == 0 and D.state_dict()["net.0.weight"].shape == (4, 1, 3, 3)
    # resumed without the flag: the saved model (no stem), not today's default
    assert run_cli("--resume", out, "--max-steps", 2, "--quiet", "--data-dir", letters_dir, "--no-download") == 0
    assert checkpoint.load(path)["meta"]["config"]["d_stem"] == 0


@pytest.mark.parametrize("argv,needle", [
    (["--d-stem", "-1"], "argument --d-stem: expected an integer in 0..1024, got -1"),
    (["--d-stem", "x"], "argument --d-stem: expected an integer in 0..1024, got 'x'"),
    (["--d-stem", "2.5"], "argument --d-stem: expected an integer in 0..1024, got '2.5'"),
    (["--model", "cgan-mlp", "--d-stem", "8"], "--d-stem: options of --model cgan-conv only, not of cgan-mlp"),
])
def test_bad_d_stem_flags_are_argparse_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_flag_default_help_and_the_benches():
    parser = train.build_parser()
    # per model: 16 for cgan-conv, 0 otherwise
    assert parser.parse_args([]).d_stem == 16 and settings.DEFAULTS["d_stem"] == 0
    assert train.model_default("cgan-conv", "d_stem") == 16 and train.model_default("dcgan", "d_stem") == 0
    assert parser.parse_args(["--d-stem", "16"]).d_stem == 16
    assert parser.parse_args(["--model", "cgan-mlp", "--d-stem", "0"]).d_stem == 0      # off is every model's
    text = " ".join(parser.format_help().split())
    assert "--d-stem C" in text and "5.1% to 2.2%" in text and "(default: 16 for cgan-conv, 0 otherwise)" in text
    assert "d_stem" in settings.CONFIG_KEYS and settings.UPGRADE_DEFAULTS["d_stem"] == 0
    from cganraw.bench.train_cases import TRAINER_SETTINGS
    assert "d_stem" in TRAINER_SETTINGS
    assert census.build_parser().parse_args(["--d-stem", "8"]).d_stem == 8
    assert census.build_parser().parse_args([]).d_stem is None      # the trainer's default

"""--r1 and --r1-every (the R1 penalty, cganraw.step.r1_penalty) through the real command line,
Run and loop on tiny synthetic data: recorded, wired into D's step, resumed bit-exactly across
the lazy schedule, and refused where it cannot apply. Its gradient is proven in
tests/test_train_objective.py, its kernels' path in tests/kernels/test_train_step_parity.py."""
import json

import numpy as np
import pytest

from cganraw import checkpoint, train
from tests.runs import assert_same_state, run_cli

TINY = ["--width", "3", "--log-every", "1", "--quiet", "--no-download", "--batch-size", 4, "--d-norm", "none"]


def last(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.npz")


def test_r1_is_recorded_and_changes_only_d_steps_it_is_due(letters_dir, tmp_path):
    common = ["--dataset", "emnist", "--data-dir", letters_dir, "--seed", 2, "--max-steps", 1, *TINY]
    runs = {name: tmp_path / name for name in ("plain", "r1", "lazy")}
    assert run_cli(*common, "--out", runs["plain"]) == 0
    assert run_cli(*common, "--out", runs["r1"], "--r1", 6, "--r1-every", 1) == 0
    # step 0 is due for every K; at K=3 the penalty weighs 3 * 2 = 6: the same update
    assert run_cli(*common, "--out", runs["lazy"], "--r1", 2, "--r1-every", 3) == 0
    cfg = json.loads((runs["lazy"] / "config.json").read_text())
    assert (cfg["r1"], cfg["r1_every"]) == (2, 3)
    plain, r1, lazy = (last(runs[k]) for k in ("plain", "r1", "lazy"))
    assert any(not np.array_equal(plain["D"][k], r1["D"][k]) for k in plain["D"])
    for k in r1["D"]:
        np.testing.assert_array_equal(lazy["D"][k], r1["D"][k], err_msg=k)


def test_a_run_with_lazy_r1_resumes_bit_exactly(letters_dir, tmp_path):
    common = ["--dataset", "emnist", "--data-dir", letters_dir, "--seed", 3, "--epochs", 1, "--r1", 2,
              "--r1-every", 3, "--minibatch-std", *TINY]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(*common, "--out", straight) == 0
    assert run_cli(*common, "--out", split, "--max-steps", 4) == 0      # stopped between two R1 steps
    assert run_cli("--resume", split, "--max-steps", 12, "--quiet", "--data-dir", letters_dir, "--no-download") == 0
    a, b = last(straight), last(split)
    assert a["meta"]["step"] == b["meta"]["step"] == 12
    assert_same_state(a, b)


def test_r1_runs_through_the_growing_d_and_resumes_in_the_fade(letters_dir, tmp_path):
    # --progressive --r1: the penalty's batches pass both stems and the fade; a run stopped in
    # the fade (12 steps: grow at 4, fade over 6) resumes bit-exactly; off unless given
    common = ["--dataset", "emnist", "--data-dir", letters_dir, "--seed", 5, "--epochs", 1, "--progressive",
              "--grow-at", "0.34", "--fade", "0.5", "--g-norm", "instance", "--minibatch-std", *TINY]
    plain, straight, split = tmp_path / "plain", tmp_path / "straight", tmp_path / "split"
    assert run_cli(*common, "--out", plain) == 0
    assert json.loads((plain / "config.json").read_text())["r1"] == 0
    assert run_cli(*common, "--r1", 2, "--r1-every", 2, "--out", straight) == 0
    assert run_cli(*common, "--r1", 2, "--r1-every", 2, "--out", split, "--max-steps", 7) == 0
    mid = last(split)["D"]
    assert int(mid["growth_phase"]) == 28 and 0 < float(mid["growth_alpha"]) < 1      # stopped in the fade
    assert run_cli("--resume", split, "--max-steps", 12, "--quiet", "--data-dir", letters_dir, "--no-download") == 0
    a, b, p = last(straight), last(split), last(plain)
    assert a["meta"]["step"] == b["meta"]["step"] == 12
    assert_same_state(a, b)
    assert any(not np.array_equal(a["D"][k], p["D"][k]) for k in a["D"])


def test_resuming_with_another_r1_names_it(letters_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", 1, "--r1", 1,
                   *TINY) == 0
    capsys.readouterr()
    code = run_cli("--resume", out, "--r1", 2, "--r1-every", 8, "--quiet", "--data-dir", letters_dir,
                   "--no-download")
    err = capsys.readouterr().err
    assert code == 2 and "--r1: was 1.0, asked 2.0" in err and "--r1-every: was 4, asked 8" in err


@pytest.mark.parametrize("argv,needle", [
    (["--r1", "-1"], "argument --r1: expected a number >= 0"),
    (["--r1", "inf"], "argument --r1: "),
    (["--r1", "1", "--r1-every", "0"], "argument --r1-every: expected a positive integer"),
    (["--r1", "0", "--r1-every", "4"], "--r1-every needs --r1 > 0"),
    (["--model", "cgan-mlp", "--r1-every", "4"], "--r1-every needs --r1 > 0"),     # R1 is cgan-conv's default only
    (["--model", "dcgan", "--r1", "1"], "the dcgan's D has BatchNorm"),
    (["--progressive", "--r1-every", "4"], "--r1-every needs --r1 > 0"),    # off with --progressive unless given
])
def test_bad_r1_flags_are_argparse_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1

"""--d-label (the projection discriminator) end to end through the trainer on tiny synthetic
data: projection and both train on numpy and emu, a resumed projection run equals a
straight one bit for bit on numpy, and a resume may not change --d-label."""
import json

import numpy as np
import pytest

from cganraw import load
from tests.runs import assert_resume_conflict, assert_same_state, final_state, run_cli

TINY = ["--width", "4", "--batch-size", "8", "--log-every", "1", "--quiet", "--no-download"]


@pytest.mark.parametrize("bk", ["numpy", "emu"])
@pytest.mark.parametrize("mode, d_norm", [("projection", "none"), ("both", "spectral")])
def test_projection_d_trains(mode, d_norm, bk, letters_dir, tmp_path, keep_backend):
    out = tmp_path / "run"
    steps = 3 if bk == "numpy" else 2
    # cgan-conv's defaults (R1 every 4th D step, from step 0; minibatch std), and spectral
    # norm, which normalises the projection embedding too
    norm = [] if d_norm == "none" else ["--d-norm", d_norm]
    assert run_cli("--dataset", "emnist", "--data-dir", letters_dir, "--out", out, "--max-steps", steps,
                   "--backend", bk, "--d-label", mode, *norm, *TINY) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["d_label"] == mode and cfg["backend"] == bk and cfg["d_norm"] == d_norm and cfg["r1"] == 0.3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in rows)
    ck = final_state(out)
    d = ck["D"]
    weight = "weight" if d_norm == "none" else "weight_orig"
    assert d[f"label_proj.{weight}"].shape == (26, 5 * 49)             # (K, (w + 1) * 7 * 7)
    assert ("label_emb.weight" in d) == (mode == "both")
    assert d[f"net.0.{weight}"].shape[1] == (2 if mode == "both" else 1)
    # the embedding trained: it left its initial values (the same seed's fresh model)
    _, D0 = load.build_from_config(ck["meta"]["config"], 26, seed=cfg["seed"])
    assert not np.array_equal(D0.state_dict()[f"label_proj.{weight}"], d[f"label_proj.{weight}"])
    G, D = load.build_models(ck)            # the checkpoint rebuilds as its config says
    assert D.label_mode == mode


def test_projection_resume_is_exact_on_numpy(letters_dir, tmp_path):
    common = ["--dataset", "emnist", "--data-dir", letters_dir, "--seed", 5, "--d-label", "projection", *TINY]
    straight, split = tmp_path / "straight", tmp_path / "split"
    # 8 steps cross the epoch boundary at 6; the split point (4) sits mid-epoch, on a step
    # that runs the default's R1 penalty (every 4th)
    assert run_cli(*common, "--out", straight, "--max-steps", 8) == 0
    assert run_cli(*common, "--out", split, "--max-steps", 4) == 0
    # resumed as saved (the same --d-label given again is no conflict)
    assert run_cli("--resume", split, "--max-steps", 8, "--d-label", "projection", "--quiet", "--data-dir",
                   letters_dir, "--no-download") == 0
    a, b = final_state(straight), final_state(split)
    assert b["meta"]["step"] == 8 and "label_proj.weight" in a["D"] and a["meta"]["config"]["r1"] == 0.3
    assert_same_state(a, b)


@pytest.mark.parametrize("saved, asked", [("concat", "projection"), ("projection", "both")])
def test_resume_with_another_d_label_is_a_conflict(saved, asked, letters_dir, tmp_path, capsys):
    assert_resume_conflict("--d-label", saved, asked, ["--d-label", saved], ["--d-label", asked], letters_dir,
                           tmp_path, capsys, TINY)

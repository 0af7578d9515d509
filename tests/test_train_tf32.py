"""--tf32: the trainer switches TF32 GEMMs on for its process and records the choice."""
import json

import numpy as np
import pytest

from cganraw import train
from cganraw.ops.gemm import TF32_ENV, set_tf32, tf32_enabled
from tests.synthetic import write_emnist


@pytest.fixture
def restore():
    previous = set_tf32(None)
    yield
    set_tf32(previous)


@pytest.mark.parametrize("flag,want", [([], False), (["--tf32"], True), (["--no-tf32"], False)])
def test_tf32_flag_sets_the_gemm_switch_and_config(tmp_path, monkeypatch, restore, flag, want):
    monkeypatch.delenv(TF32_ENV, raising=False)
    data_dir = tmp_path / "data"
    write_emnist(data_dir, "letters", np.random.default_rng(0), n=(48, 16))
    out = tmp_path / "run"
    rc = train.main(["--dataset", "emnist", "--data-dir", str(data_dir), "--no-download", "--width", "4",
                     "--batch-size", "8", "--max-steps", "1", "--quiet", "--out", str(out), "--backend", "numpy", *flag])
    assert rc == 0
    assert tf32_enabled() is want
    assert json.loads((out / "config.json").read_text())["tf32"] is want

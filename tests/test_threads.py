"""cganraw.threads: BLAS and Numba thread counts, given or picked by timing the work (a training
step, or a GEMM), and the trainer's --threads flag recorded in config.json."""
import json

import pytest

from cganraw import threads, train
from tests.synthetic import write_emnist


@pytest.fixture
def restore_threads():
    before = threads.available_cpus()
    yield
    threads.set_threads(before)


def test_candidates_double_up_to_the_cpus():
    assert threads.candidates(1) == [1]
    assert threads.candidates(2) == [1, 2]
    assert threads.candidates(6) == [1, 2, 4, 6]
    assert threads.candidates(8) == [1, 2, 4, 8]


def test_the_environment_caps_the_measured_pick(monkeypatch):
    for var in threads.LIMIT_VARS:
        monkeypatch.delenv(var, raising=False)
    assert threads.environment_limit() is None and threads.usable_cpus() == threads.available_cpus()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")          # not a count: ignored
    monkeypatch.setenv("MKL_NUM_THREADS", "0")             # not positive: ignored
    assert threads.environment_limit() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.environment_limit() == 1 and threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "_picked", {})
    chosen, times = threads.pick()
    assert chosen == 1 and list(times) == [1]              # one thread asked for: nothing else is tried


def test_set_threads_reaches_blas_and_numba(restore_threads):
    import numpy as np
    np.ones((2, 2)) @ np.ones((2, 2))         # BLAS loaded
    got = threads.set_threads(1)
    assert got["blas"] == 1
    try:
        import numba
    except ImportError:
        assert got["numba"] is None
    else:
        assert got["numba"] == numba.get_num_threads() == 1


def test_apply_given_and_picked(restore_threads):
    rec = threads.apply(1)
    assert rec["requested"] == 1 and rec["blas"] == 1 and "probe_ms" not in rec
    rec = threads.apply(0)
    cands = threads.candidates()
    assert rec["requested"] == "auto"
    assert sorted(map(int, rec["probe_ms"])) == cands and all(t > 0 for t in rec["probe_ms"].values())
    best = min(rec["probe_ms"], key=rec["probe_ms"].get)
    assert rec["blas"] == int(best)
    assert threads.apply(0)["probe_ms"] == rec["probe_ms"]          # measured once per process


def test_trainer_records_threads_in_config(tmp_path, restore_threads):
    data = tmp_path / "data"
    write_emnist(data, "letters", __import__("numpy").random.default_rng(0), n=(16, 8))
    out = tmp_path / "run"
    assert train.main(["--dataset", "emnist", "--data-dir", str(data), "--out", str(out), "--max-steps", "2",
                       "--width", "4", "--batch-size", "8", "--quiet", "--no-download", "--threads", "1"]) == 0
    rec = json.loads((out / "config.json").read_text())["threads"]
    assert rec["requested"] == 1 and rec["blas"] == 1


def test_trainer_rejects_negative_threads(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--threads", "-1"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err


def test_resume_keeps_the_runs_thread_count(tmp_path, restore_threads):
    # some BLAS results depend on the thread count: a resume without --threads keeps the run's
    data = tmp_path / "data"
    write_emnist(data, "letters", __import__("numpy").random.default_rng(0), n=(16, 8))
    out = tmp_path / "run"
    common = ["--quiet", "--no-download", "--data-dir", str(data)]
    assert train.main(["--dataset", "emnist", "--out", str(out), "--max-steps", "1", "--width", "4",
                       "--batch-size", "8", "--threads", "1", *common]) == 0
    assert train.main(["--resume", str(out), "--max-steps", "2", *common]) == 0
    rec = json.loads((out / "config.json").read_text())["threads"]
    assert rec["requested"] == "auto" and rec["kept_from_run"] == 1 and rec["blas"] == 1
    assert train.main(["--resume", str(out), "--max-steps", "3", "--threads", "2", *common]) == 0
    rec = json.loads((out / "config.json").read_text())["threads"]
    assert rec["requested"] == 2 and "kept_from_run" not in rec


def test_pick_times_the_given_work_once_per_process(monkeypatch, restore_threads):
    # work that is slower on two threads than on one, as a small model's step can be
    state, made = {}, []
    monkeypatch.setattr(threads, "_picked", {})
    monkeypatch.setattr(threads, "set_threads", lambda n: state.update(n=n) or {"blas": n, "numba": n})

    def make_work():
        made.append(1)
        return lambda: __import__("time").sleep(0.002 if state["n"] == 1 else 0.02)

    chosen, times = threads.pick(2, make_work)
    assert chosen == 1 and times[2] > times[1] and made == [1]
    # remembered, whatever the later work: every run of a process gets one count
    assert threads.pick(2, make_work) == (chosen, times) and threads.pick(2) == (chosen, times) and made == [1]
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    rec = threads.apply(0, make_work)
    assert rec["probe"] == "training step" and rec["blas"] == 1 and made == [1]


def test_the_measured_pick_leaves_the_run_as_a_given_count_would(tmp_path, restore_threads, monkeypatch):
    # --threads 0 times steps of a throwaway copy: the run itself must not see them
    monkeypatch.setattr(threads, "_picked", {})             # not yet measured in this process
    import numpy as np

    from cganraw import checkpoint
    data = tmp_path / "data"
    write_emnist(data, "letters", np.random.default_rng(0), n=(16, 8))
    common = ["--dataset", "emnist", "--data-dir", str(data), "--max-steps", "3", "--width", "4", "--batch-size", "8",
              "--quiet", "--no-download", "--backend", "numpy"]
    assert train.main([*common, "--out", str(tmp_path / "auto")]) == 0
    rec = json.loads((tmp_path / "auto" / "config.json").read_text())["threads"]
    assert rec["requested"] == "auto" and rec["probe"] == "training step"
    assert sorted(map(int, rec["probe_ms"])) == threads.candidates()
    assert train.main([*common, "--out", str(tmp_path / "given"), "--threads", str(rec["blas"])]) == 0
    a, b = (checkpoint.load(tmp_path / d) for d in ("auto", "given"))
    for part in ("G", "G_ema", "D", "opt_g", "opt_d"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            np.testing.assert_array_equal(a[part][k], b[part][k], err_msg=f"{part}.{k}")

"""cganraw.threads: BLAS and Numba thread counts, given or picked by timing the work (a training
step, or a GEMM), and the trainer's --threads flag recorded in config.json."""
import json

import pytest

from cganraw import threads, train
from tests.runs import assert_same_state
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


def test_configurations_pair_each_blas_count_with_one_numba_thread_and_as_many():
    assert threads.configurations(1) == [(1, 1)]
    assert threads.configurations(2) == [(1, 1), (2, 1), (2, 2)]
    assert threads.configurations(6) == [(1, 1), (2, 1), (2, 2), (4, 1), (4, 4), (6, 1), (6, 6)]
    assert threads.pair_name((4, 1)) == "4/1"


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
    assert chosen == (1, 1) and list(times) == [(1, 1)]    # one thread asked for: nothing else is tried


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


def test_set_threads_gives_numba_one_thread_beside_spinning_blas_unless_asked(restore_threads, monkeypatch):
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba may run one thread only here")
    monkeypatch.delenv(threads.BLAS_TIMEOUT_VAR, raising=False)
    assert threads.set_threads(2)["numba"] == 1 == numba.get_num_threads()
    assert threads.set_threads(2, 2)["numba"] == 2 == numba.get_num_threads()
    assert threads.set_threads(1, 2)["numba"] == 2 and threads.set_threads(1)["numba"] == 1
    # OpenBLAS's workers asleep after their GEMMs: Numba as many as BLAS unless asked
    monkeypatch.setenv(threads.BLAS_TIMEOUT_VAR, "4")
    assert threads.set_threads(2)["numba"] == 2 == numba.get_num_threads()
    assert threads.set_threads(2, 1)["numba"] == 1 and threads.set_threads(1)["numba"] == 1
    from cganraw.bench import harness
    assert harness.set_threads(2)["numba"] == 2
    monkeypatch.setenv(threads.BLAS_TIMEOUT_VAR, "28")                 # OpenBLAS's own default: spinning
    assert harness.set_threads(2)["numba"] == 1


@pytest.mark.parametrize("value,sleeps", [(None, False), ("4", True), ("1", True), ("16", True), ("17", False),
                                          ("28", False), ("0", False), ("-3", False), ("soon", False)])
def test_blas_workers_sleep_reads_the_timeout(value, sleeps, monkeypatch):
    if value is None:
        monkeypatch.delenv(threads.BLAS_TIMEOUT_VAR, raising=False)
    else:
        monkeypatch.setenv(threads.BLAS_TIMEOUT_VAR, value)
    assert threads.blas_workers_sleep() is sleeps
    assert threads.default_numba_threads(2) == (2 if sleeps else 1)


@pytest.mark.parametrize("code,env,expected", [
    ("import cganraw", None, "4"),                                     # before NumPy: set
    ("import numpy, cganraw", None, "None"),                           # after: too late, left alone
    ("import cganraw", "20", "20"),                                    # the user's value kept
])
def test_importing_cganraw_first_lets_openblas_workers_sleep(code, env, expected):
    import os
    import subprocess
    import sys
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env is not None:
        environ["OPENBLAS_THREAD_TIMEOUT"] = env
    out = subprocess.run([sys.executable, "-c", f"{code}; import os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"],
                         capture_output=True, text=True, env=environ, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_numbas_pool_starts_with_passive_workers_and_leaves_the_environment_as_it_was():
    # libgomp reads OMP_WAIT_POLICY as Numba loads it; the variable is set only around that
    import os
    import subprocess
    import sys
    code = ("import os; from cganraw.ops import _cpu; from numba.np.ufunc import parallel; "
            "seen = {}; real = os.environ.__class__.__setitem__\n"
            "def spy(self, k, v):\n    seen[k] = v; real(self, k, v)\n"
            "os.environ.__class__.__setitem__ = spy\n"
            "nb = _cpu.start_threads(); assert nb is not None and parallel._is_initialized\n"
            "os.environ.__class__.__setitem__ = real\n"
            "print(seen.get('OMP_WAIT_POLICY'), os.environ.get('OMP_WAIT_POLICY'), _cpu.start_threads() is nb)")
    pytest.importorskip("numba")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "CGANRAW_NUMBA")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PASSIVE", "None", "True"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"                         # the user's choice stands
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "ACTIVE", "True"]


def test_apply_given_and_picked(restore_threads):
    rec = threads.apply(1)
    assert rec["requested"] == 1 and rec["blas"] == 1 and "probe_ms" not in rec
    rec = threads.apply(0)
    assert rec["requested"] == "auto"
    assert list(rec["probe_ms"]) == [threads.pair_name(p) for p in threads.configurations()]
    assert all(t > 0 for t in rec["probe_ms"].values())
    chosen = f"{rec['blas']}/{rec['numba'] or 1}"                  # (numba None: not installed)
    assert rec["probe_ms"][chosen] == min(rec["probe_ms"].values())   # a tie in the rounded times may go either way
    assert threads.apply(0)["probe_ms"] == rec["probe_ms"]          # measured once per process
    held = threads.apply(0, numba_threads=1)                        # Numba held: only BLAS counts are timed
    assert held["numba_requested"] == 1 and list(held["probe_ms"]) == [f"{b}/1" for b in threads.candidates()]


def test_trainer_records_threads_in_config(tmp_path, restore_threads):
    data = tmp_path / "data"
    write_emnist(data, "letters", __import__("numpy").random.default_rng(0), n=(16, 8))
    out = tmp_path / "run"
    assert train.main(["--dataset", "emnist", "--data-dir", str(data), "--out", str(out), "--max-steps", "2",
                       "--width", "4", "--batch-size", "8", "--quiet", "--no-download", "--threads", "1",
                       "--numba-threads", "2"]) == 0
    rec = json.loads((out / "config.json").read_text())["threads"]
    assert rec["requested"] == 1 and rec["blas"] == 1 and rec["numba_requested"] == 2


def test_trainer_rejects_negative_threads(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--threads", "-1"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        train.main(["--numba-threads", "two"])
    assert e.value.code == 2 and "--numba-threads" in capsys.readouterr().err


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
    monkeypatch.setattr(threads, "set_threads", lambda n, m=None: state.update(n=n, m=m) or {"blas": n, "numba": m})

    def make_work():
        made.append(1)
        return lambda: __import__("time").sleep(0.002 if state["n"] == 1 else 0.02)

    chosen, times = threads.pick(2, make_work)
    assert chosen == (1, 1) and times[(2, 1)] > times[(1, 1)] and times[(2, 2)] > times[(1, 1)] and made == [1]
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
    assert list(rec["probe_ms"]) == [threads.pair_name(p) for p in threads.configurations()]
    assert train.main([*common, "--out", str(tmp_path / "given"), "--threads", str(rec["blas"]),
                       "--numba-threads", str(rec["numba"] or 1)]) == 0
    a, b = (checkpoint.load(tmp_path / d) for d in ("auto", "given"))
    assert_same_state(a, b)

"""A training run cannot be corrupted: real processes killed, interrupted and run twice into
one folder; resume conflicts; divergence; leftovers of killed runs; progress on and off a
terminal. Tiny runs (conv cGAN at width 4, synthetic EMNIST letters)."""
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cganraw.run as run_module
from cganraw import checkpoint, health, load, rundir, train
from tests.runs import assert_same_state
from tests.synthetic import write_emnist

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "emnist", "--width", "4", "--batch-size", "8", "--no-download"]
ENV = {**os.environ, "CGANRAW_BACKEND": "numpy", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
ENV.pop("CGANRAW_DEBUG", None)


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """small: 48 images (an epoch is 6 steps); large: 400 (50 steps, no epoch end soon)."""
    root = tmp_path_factory.mktemp("data")
    write_emnist(root / "small", "letters", np.random.default_rng(0), n=(48, 16))
    write_emnist(root / "large", "letters", np.random.default_rng(1), n=(400, 16))
    return root / "small", root / "large"


def cmd(*argv):
    return [sys.executable, "-m", "cganraw.train", *map(str, argv)]


def run(*argv, **kw):
    return subprocess.run(cmd(*argv), env=ENV, capture_output=True, text=True, timeout=300, **kw)


def _default_sigint():
    # a run from a terminal: pytest may itself run as a background job of a non-interactive
    # shell, which starts it with SIGINT ignored, and a child inherits that (the trainer then,
    # rightly, leaves SIGINT ignored, as under nohup)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*argv):
    return subprocess.Popen(cmd(*argv), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def steps_logged(out):
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return rows


def wait_for(cond, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("timed out")


def long_run(data, out, *extra):
    # two threads, fixed: a count picked by timing could differ from the straight run's on a
    # busy machine, and a sum's order (so its last bit) depends on the count
    return start(*TINY, "--data-dir", data, "--out", out, "--max-steps", 100000, "--epochs", 10000,
                 "--log-every", 1, "--threads", 2, *extra)


def ckpt_step(out):
    return checkpoint.read_meta(Path(out) / "checkpoints" / "last.npz")["step"]


def same_state(a, b):
    assert_same_state(a, b)
    assert a["rng"] == b["rng"]


# ------------------------------------------------------------------ signals -------

@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_saves_and_says_where(sig, code, data_dirs, tmp_path):
    out = tmp_path / "run"
    proc = long_run(data_dirs[1], out, "--checkpoint-every", 100000)
    wait_for(lambda: len(steps_logged(out)) >= 2, proc)
    assert not (out / "checkpoints" / "last.npz").exists()     # nothing saved before the signal
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    step = ckpt_step(out)
    name = signal.Signals(sig).name
    assert f"stopped by {name} at step {step} " in err
    assert f"checkpoint saved to {out / 'checkpoints' / 'last.npz'}; resume with --resume {out}" in err
    assert steps_logged(out)[-1] == step                      # the step it finished is logged and saved
    assert "Traceback" not in err
    # the lock went with the process, and the run goes on from where it stopped
    r = run("--resume", out, "--max-steps", step + 2, "--quiet", "--data-dir", data_dirs[1])
    assert r.returncode == 0, r.stderr
    assert ckpt_step(out) == step + 2 and steps_logged(out) == list(range(1, step + 3))


@pytest.mark.parametrize("saved_before", [False, True])
def test_second_sigint_aborts_at_once_and_tells_the_truth(saved_before, data_dirs, tmp_path):
    out = tmp_path / "run"
    proc = long_run(data_dirs[1], out, "--checkpoint-every", 1 if saved_before else 100000)
    if saved_before:
        wait_for(lambda: (out / "checkpoints" / "last.npz").exists() and len(steps_logged(out)) >= 3, proc)
    else:
        wait_for(lambda: len(steps_logged(out)) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.03)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = out / "checkpoints" / "last.npz"
    if "aborted by SIGINT at once" in err:
        if saved_before:
            step = ckpt_step(out)     # what the message claims is what is on disk
            assert f"the last checkpoint, {last} (step {step}), is intact" in err
        else:
            assert "no checkpoint was written, so there is nothing to resume" in err and not last.exists()
            assert "intact" not in err
    else:
        # the first step ended between the two signals: then the checkpoint was saved first
        assert f"stopped by SIGINT at step {ckpt_step(out)} " in err


@pytest.mark.slow
def test_kill_9_then_resume_is_exact_and_cleans_up(data_dirs, tmp_path):
    """kill -9 at a random moment, with a half-written checkpoint and a torn metrics line
    left behind: the resume removes them, logs each step once and ends bit-identical to a
    run that was never killed."""
    data = data_dirs[0]
    out, straight = tmp_path / "killed", tmp_path / "straight"
    proc = long_run(data, out, "--checkpoint-every", 2)
    wait_for(lambda: (out / "checkpoints" / "last.npz").exists() and len(steps_logged(out)) >= 5, proc)
    proc.kill()
    proc.communicate()
    killed_at = ckpt_step(out)                  # never a torn file
    orphan = out / "checkpoints" / ".last.npz.k1ll3d.tmp"
    orphan.write_bytes(b"\0" * (1 << 20))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 99999, "d_lo')
    end = max(steps_logged(out)) + 3
    r = run("--resume", out, "--max-steps", end, "--data-dir", data)
    assert r.returncode == 0, r.stderr
    assert f"removed {orphan}" in r.stderr and not orphan.exists()
    assert f"resumed at step {killed_at}" in r.stderr
    assert steps_logged(out) == list(range(1, end + 1))        # no step twice, no torn line
    r = run(*TINY, "--data-dir", data, "--out", straight, "--max-steps", end, "--epochs", 10000, "--quiet",
            "--threads", 2)
    assert r.returncode == 0, r.stderr
    same_state(checkpoint.load(straight), checkpoint.load(out))


# ------------------------------------------------------------------ the lock -------

def test_second_run_into_a_busy_folder_is_refused_with_the_pid(data_dirs, tmp_path):
    out = tmp_path / "run"
    first = long_run(data_dirs[1], out, "--checkpoint-every", 2)
    try:
        wait_for(lambda: (out / "checkpoints" / "last.npz").exists(), first)
        for argv in (["--resume", out], [*TINY, "--out", out, "--resume"]):
            r = run(*argv, "--data-dir", data_dirs[1], "--max-steps", 100000)
            assert r.returncode == 1
            assert r.stderr.splitlines() == [f"error: {out} is in use by another training run (pid {first.pid}): "
                                              "wait for it to end, or choose another --out"]
        assert first.poll() is None                            # the first run goes on untouched
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    assert ckpt_step(out) == steps_logged(out)[-1]


def test_lock_of_a_killed_process_never_blocks(data_dirs, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cganraw.rundir import RunLock; "
                               f"RunLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    busy = run(*TINY, "--data-dir", data_dirs[0], "--out", out, "--max-steps", 1)
    assert busy.returncode == 1 and f"(pid {holder.pid})" in busy.stderr
    holder.kill()
    holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # the stale lock file stays
    r = run(*TINY, "--data-dir", data_dirs[0], "--out", out, "--max-steps", 2, "--quiet")
    assert r.returncode == 0, r.stderr
    assert ckpt_step(out) == 2


def test_lock_is_exclusive_within_a_process(tmp_path):
    with rundir.RunLock(tmp_path / "r") as lock:
        assert lock.holder() == str(os.getpid())
        with pytest.raises(train.CLIError, match=f"pid {os.getpid()}"):
            rundir.RunLock(tmp_path / "r").acquire()
        with pytest.raises(train.CLIError, match="in use"):
            rundir.RunLock(tmp_path / "r").check_free()
    rundir.RunLock(tmp_path / "r").check_free()
    with rundir.RunLock(tmp_path / "r"):
        pass


# ------------------------------------------------------------------ resume conflicts ---

@pytest.fixture
def small_run(data_dirs, tmp_path):
    out = tmp_path / "run"
    r = run(*TINY, "--data-dir", data_dirs[0], "--out", out, "--max-steps", 2, "--lr", "3e-4", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_resume_conflicts_list_each_flag(small_run, data_dirs):
    before = snapshot(small_run)
    # --lr 1e-4 is the default: it still conflicts with the saved 3e-4
    r = run("--resume", small_run, "--data-dir", data_dirs[0], "--width", 8, "--lr", "1e-4", "--model", "cgan-mlp",
            "--no-g-batchnorm", "--out", small_run.parent / "elsewhere", "--batch-size", 8)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m cganraw.train: error: --resume {small_run} conflicts")
    for item in ("--width: was 4, asked 8", "--lr: was 0.0003, asked 0.0001", "--model: was cgan-conv, asked cgan-mlp",
                 f"--g-norm: was {train.model_default('cgan-conv', 'g_norm')}, asked none",
                 f"--out: was {small_run}, asked {small_run.parent / 'elsewhere'}"):
        assert item in lines[0]
    assert "--batch-size" not in lines[0]          # given, but equal to the saved value
    assert snapshot(small_run) == before and not (small_run.parent / "elsewhere").exists()


def test_resume_may_change_the_allowed_flags_and_records_them(small_run, data_dirs):
    r = run("--resume", small_run, "--data-dir", data_dirs[0], "--max-steps", 4, "--log-every", 3,
            "--checkpoint-every", 500, "--dataset", "emnist-letters")
    assert r.returncode == 0, r.stderr
    assert "changed on resume: --log-every 50 -> 3, --max-steps 2 -> 4" in r.stderr
    cfg = json.loads((small_run / "config.json").read_text())
    assert cfg["max_steps"] == 4 and cfg["log_every"] == 3 and cfg["lr"] == 3e-4
    assert cfg["resumes"] == [{"step": 2, "changed": {"max_steps": {"was": 2, "now": 4},
                                                      "log_every": {"was": 50, "now": 3}}}]
    assert checkpoint.read_meta(small_run / "checkpoints" / "last.npz")["config"]["log_every"] == 3
    assert steps_logged(small_run) == [2, 3, 4]


# ------------------------------------------------------------------ divergence -------

def test_lr_1e6_stops_with_a_message_and_no_checkpoint(data_dirs, tmp_path):
    out = tmp_path / "run"
    # without D's stem the losses pass the bound before they turn NaN (with it, NaN at step 1: next test)
    r = run(*TINY, "--data-dir", data_dirs[0], "--out", out, "--lr", "1e6", "--lr-d", "1e6", "--max-steps", 20,
            "--d-stem", "0")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[-1].startswith("error: training diverged at step ") and "past the bound 1e+04" in lines[-1]
    assert "none was written" in lines[-1] and "Traceback" not in r.stderr and "Warning" not in r.stderr
    assert not (out / "checkpoints" / "last.npz").exists()
    r = run(*TINY, "--data-dir", data_dirs[0], "--out", out, "--lr", "1e6", "--lr-d", "1e6", "--max-steps", 20)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[-1].startswith("error: training diverged at step ") and " is nan" in lines[-1]
    assert "none was written" in lines[-1] and "Traceback" not in r.stderr and "Warning" not in r.stderr
    assert not (out / "checkpoints" / "last.npz").exists()


def test_exploded_state_is_never_saved(data_dirs, tmp_path, monkeypatch, capsys):
    """Losses that stay in bounds while a weight or an optimiser moment explodes: the check
    before each checkpoint names the tensor and leaves the last good checkpoint."""
    out = tmp_path / "run"
    base = [*TINY, "--data-dir", str(data_dirs[0]), "--out", str(out), "--quiet"]
    assert train.main([*base, "--max-steps", "2"]) == 0
    good = (out / "checkpoints" / "last.npz").read_bytes()
    real = train.train_step

    def exploding(G, D, opt_g, opt_d, *a, **kw):
        stats = real(G, D, opt_g, opt_d, *a, **kw)
        opt_d.v[1][0] = 1e25
        return stats
    monkeypatch.setattr(run_module, "train_step", exploding)   # what Run.train_step calls
    assert train.main(["--resume", str(out), "--max-steps", "5", "--checkpoint-every", "1", "--data-dir",
                       str(data_dirs[0]), "--no-download"]) == 1
    err = capsys.readouterr().err.splitlines()
    # D as the run built it (today's defaults), from the run's own config
    cfg = json.loads((out / "config.json").read_text())
    names = [n for n, _ in load.build_from_config(cfg, 26, seed=0)[1].named_parameters()]
    assert err[-1] == (f"error: training diverged in the state at step 3: opt_d.v.1 (of {names[1]}) has max |value| "
                       f"1e+25 exceeds the bound 1e+20; stopped without writing a checkpoint (the last good one is "
                       f"{out / 'checkpoints' / 'last.npz'} (step 2)). Try a lower --lr, or --label-smoothing 0.1")
    assert (out / "checkpoints" / "last.npz").read_bytes() == good


def test_unhealthy_checkpoint_is_refused_by_resume_and_sampling(small_run, data_dirs, tmp_path):
    ck = checkpoint.load(small_run)
    bad = tmp_path / "bad.npz"
    arrays = {}
    with np.load(ck["path"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["G.fc.weight"] = arrays["G.fc.weight"].copy()
    arrays["G.fc.weight"][0, 0] = np.nan
    np.savez(bad, **arrays)
    r = run("--resume", bad, "--data-dir", data_dirs[0])
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"error: cannot resume: {bad}: G.fc.weight has 1 non-finite value of "
        f"{arrays['G.fc.weight'].size}; resume from an earlier checkpoint"]
    from cganraw import load
    with pytest.raises(checkpoint.CheckpointError, match="G.fc.weight has 1 non-finite"):
        load.load_generator(bad)
    with pytest.raises(health.HealthError, match="opt_g.v.0 has max"):
        health.check_checkpoint({**ck, "opt_g": {**ck["opt_g"], "v.0": np.full(3, 1e21)}})


# ------------------------------------------------------------------ metrics, progress ---

def test_metrics_truncated_to_the_resumed_step(data_dirs, tmp_path):
    out = tmp_path / "run"
    base = [*TINY, "--data-dir", str(data_dirs[0]), "--quiet"]
    assert train.main([*base, "--out", str(out), "--max-steps", "4", "--log-every", "1"]) == 0
    # a run killed after logging steps 5..6 but before checkpointing them, mid-line
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "d_loss": 1}\n{"step": 6, "d_loss": 1}\n{"step": 7, "d_')
    (out / ".config.json.x.tmp").write_text("{")
    (out / "samples" / ".final.png.y.tmp").write_bytes(b"\x89PNG")
    assert train.main(["--resume", str(out), "--max-steps", "6", "--data-dir", str(data_dirs[0]), "--quiet"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all("d_loss_real" in r for r in rows)
    assert not list(out.rglob("*.tmp"))
    log = rundir.MetricsLog(out / "metrics.jsonl")
    assert log.truncate_to(6) == 0 and log.truncate_to(2) == 4
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_epoch_is_counted_the_same_everywhere(data_dirs, tmp_path):
    out = tmp_path / "run"
    r = run(*TINY, "--data-dir", data_dirs[0], "--out", out, "--epochs", 2, "--log-every", 4)
    assert r.returncode == 0, r.stderr
    rows = {json.loads(x)["step"]: json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()}
    assert rows == {4: pytest.approx(4 / 6), 6: 1.0, 8: pytest.approx(8 / 6), 12: 2.0}
    lines = r.stderr.splitlines()
    assert any(x.startswith("step 6/12 epoch 1.00/2 ") for x in lines)
    assert lines[-1].startswith("finished at step 12 (epoch 2.00/2)")
    assert checkpoint.read_meta(out / "checkpoints" / "epoch_001.npz")["epoch"] == 1


def test_progress_off_a_terminal_is_plain_lines_with_eta(data_dirs, tmp_path):
    r = run(*TINY, "--data-dir", data_dirs[0], "--out", tmp_path / "r", "--max-steps", 4, "--log-every", 2)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["2/4", "4/4"]
    assert all(" img/s ETA " in x and "\r" not in x for x in lines)


def test_progress_on_a_terminal_is_a_live_bar(data_dirs, tmp_path):
    main, sub = pty.openpty()            # a terminal that reports no size: the bar still shows
    proc = subprocess.Popen(cmd(*TINY, "--data-dir", data_dirs[0], "--out", tmp_path / "r", "--max-steps", 3),
                            env=ENV, stdin=sub, stdout=sub, stderr=sub)
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0
    text = out.decode(errors="replace")
    assert f"3/3 steps, epoch 0.50/{train.DEFAULT_EPOCHS['cgan-conv']} D " in text and " ETA " in text and "\r" in text
    assert "finished" not in text and "reached --max-steps 3 at step 3" in text


def test_help_gives_every_flag_help_and_default():
    parser = train.build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        shown = parser.formatter_class("prog")._get_help_string(action)
        assert "default" in shown or action.default is False, action.dest

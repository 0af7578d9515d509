"""cganraw.tune: the search space read from the trainer's flags, the one-line errors, and real
tiny studies (trainer subprocesses on synthetic IDX data, a tiny evaluation classifier)."""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from cganraw import classifier, data, train  # noqa: E402
from cganraw.tune import command, worker  # noqa: E402
from cganraw.tune import space as sp  # noqa: E402
from cganraw.tune import study as st  # noqa: E402
from tests.synthetic import write_emnist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASET = "emnist-digits"
# a tiny space: two searched flags, the rest fixed small
SPACE = {"lr": {"low": 1e-4, "high": 1e-3, "log": True}, "batch-size": {"choices": [4, 8]},
         "width": 4, "ema-decay": 0.0}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic EMNIST digits (40 training images: 5-10 steps an epoch) and a tiny
    classifier in a private cache, seen by every subprocess through $XDG_CACHE_HOME."""
    root = tmp_path_factory.mktemp("tune")
    data_dir = root / "data"
    write_emnist(data_dir, "digits", np.random.default_rng(0), n=(40, 20))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        ds = data.load(DATASET, data_dir=data_dir)
        clf, _ = classifier.fit_classifier(ds.images, ds.labels, ds.class_names, dataset=DATASET, epochs=1,
                                           log=None, channels=(4, 4, 8), features=16)
        clf.save(classifier.default_path(DATASET))
        space = root / "space.json"
        space.write_text(json.dumps(SPACE))
        yield {"root": root, "data": data_dir, "space": space}


def argv(env, study_dir, *extra):
    return ["--dataset", DATASET, "--data-dir", str(env["data"]), "--study-dir", str(study_dir),
            "--space", str(env["space"]), "--trial-minutes", "2", "--no-download", *map(str, extra)]


def load(study_dir, name=f"{DATASET}-cgan-conv"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def alive(pid):
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


# ------------------------------------------------------------------ the space ---------

def test_default_space_is_the_trainers_flags():
    options = sp.trainer_options()
    names = [p.name for p in sp.default_space("cgan-conv").params]
    assert {"lr", "lr_d", "beta1", "batch_size", "width", "label_smoothing", "mismatch", "ema_decay",
            "r1", "g_norm", "d_norm", "minibatch_std", "progressive", "g_film", "d_stem"} <= set(names)
    # the default R1 weight is one of the choices; the dcgan's BatchNorm D refuses R1
    assert train.model_default("cgan-conv", "r1") in {p.name: p for p in sp.default_space("cgan-conv").params}["r1"].choices
    assert "r1" not in [p.name for p in sp.default_space("dcgan").params]
    # the alias of --g-norm never joins beside it: the trainer refuses contradicting pairs
    assert "g_batchnorm" not in names
    assert set(names) <= set(options)
    # the label-embedding size joins only once the trainer has a flag for it
    assert ("label_embed_dim" in names) == ("label_embed_dim" in options)
    mlp = [p.name for p in sp.default_space("cgan-mlp").params]
    assert not {"width", "g_norm", "d_norm", "minibatch_std", "progressive", "g_film", "d_stem"} & set(mlp)  # the MLP lacks them


def test_stabiliser_switches_join_when_the_trainer_offers_them():
    params = {q.name: q for q in sp.default_space("cgan-conv", sp.trainer_options(train.build_parser())).params}
    assert params["d_norm"].choices == ("none", "spectral")
    assert params["g_norm"].choices == ("none", "batch", "instance")
    assert params["minibatch_std"].choices == (True, False) and params["progressive"].choices == (True, False)
    assert params["g_film"].choices == (True, False) and params["g_film"].argv(False) == ["--no-g-film"]
    assert params["d_stem"].choices == (0, 16) and params["d_stem"].argv(16) == ["--d-stem", "16"]
    # a trainer without --g-norm is searched through its old --g-batchnorm switch instead
    p = argparse.ArgumentParser()
    p.add_argument("--g-batchnorm", action=argparse.BooleanOptionalAction, default=True)
    assert [q.name for q in sp.default_space("cgan-conv", sp.trainer_options(p)).params] == ["g_batchnorm"]


def test_trial_flags_parse_back_to_the_same_values():
    space = sp.default_space("cgan-conv")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(5):
        values = space.suggest(study.ask())
        parsed = vars(train.build_parser().parse_args(space.argv(values)))
        assert {k: parsed[k] for k in values} == values


def test_yaml_and_json_give_the_same_space(tmp_path):
    (tmp_path / "s.yaml").write_text("lr: {low: 1.0e-4, high: 1.0e-3, log: true}\n"
                                     "batch-size: {choices: [4, 8]}\nwidth: 4\nema-decay: 0.0\n")
    (tmp_path / "s.json").write_text(json.dumps(SPACE))
    yaml_space = sp.load_space(tmp_path / "s.yaml", "cgan-conv")
    assert yaml_space.describe() == sp.load_space(tmp_path / "s.json", "cgan-conv").describe()
    assert [p.kind for p in yaml_space.params] == ["float", "choice", "fixed", "fixed"]


@pytest.mark.parametrize("name, text, needle", [
    ("bad.json", '{"lr": {"low": 1e-4,', "not valid JSON"),
    ("bad.yaml", "lr: [1, 2\n", "not valid YAML"),
    ("list.json", "[1, 2]", "expected a mapping"),
    ("unknown.json", '{"lr": 0.001, "dropout": {"low": 0, "high": 0.5}}', "unknown parameter 'dropout'"),
    ("reserved.json", '{"max-minutes": 3}', "set by cganraw.tune itself (use --trial-minutes)"),
    ("order.json", '{"lr": {"low": 1e-3, "high": 1e-4}}', "must be below high"),
    ("log.json", '{"beta1": {"low": 0, "high": 0.5, "log": true}}', "needs low > 0"),
    ("type.json", '{"beta1": 1.5}', "--beta1 1.5"),
    ("int.json", '{"width": {"low": 4.5, "high": 8}}', "--width"),
    ("switch.json", '{"g-batchnorm": "yes"}', "on/off switch"),
    ("key.json", '{"lr": {"min": 1e-4, "max": 1e-3}}', "unknown key"),
])
def test_bad_space_file_is_one_line(tmp_path, capsys, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    assert command.main(["--space", str(path), "--study-dir", str(tmp_path / "s")]) == 1
    line = one_error_line(capsys)
    assert needle in line and str(path) in line
    assert not (tmp_path / "s").exists()    # nothing written before the space is checked


def test_missing_space_file_is_one_line(tmp_path, capsys):
    assert command.main(["--space", str(tmp_path / "nope.yaml"), "--study-dir", str(tmp_path / "s")]) == 1
    assert "no such file" in one_error_line(capsys)


@pytest.mark.parametrize("url, needle", [
    ("sqlite:///{tmp}", "cannot open the study storage"),                 # a folder, not a database
    ("postgresql://tuner:s3cret@127.0.0.1:1/study", "cannot open the study storage"),
    ("not a url", "is not a database URL"),
])
def test_unreachable_storage_is_one_line(tmp_path, capsys, url, needle):
    assert command.main(["--storage", url.format(tmp=tmp_path), "--study-dir", str(tmp_path / "s")]) == 1
    line = one_error_line(capsys)
    assert needle in line and "s3cret" not in line


def test_a_study_refuses_other_settings(env, tmp_path):
    s = command.settings_from(command.build_parser().parse_args(argv(env, tmp_path)))
    st.open_study(s, create=True)
    s.space = sp.default_space("cgan-conv")
    with pytest.raises(st.CLIError, match="was made with other settings"):
        st.open_study(s, create=True)


def test_metrics_follower_reads_whole_lines_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    f = worker.MetricsFollower(path)
    assert f.read() == []
    path.write_text('{"step": 1}\n{"step": 2, "fid"')
    assert f.read() == [{"step": 1}]
    with open(path, "a") as out:
        out.write(': 3.5}\n')
    assert f.read() == [{"step": 2, "fid": 3.5}]


# ------------------------------------------------------------------ real studies -----

def test_two_workers_finish_four_distinct_trials(env, tmp_path, capsys):
    study_dir = tmp_path / "par"
    args = argv(env, study_dir, "--workers", 2, "--trials", 4, "--trial-steps", 6, "--eval-every-steps", 3,
                "--pruner", "none")
    assert command.main([*args, "--print-best-command"]) == 0
    study = load(study_dir)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2          # both workers ran trials
    assert len({t.user_attrs["seed"] for t in trials}) == 4
    # disk: every trial keeps its metrics and samples, only the best its checkpoints
    best = st.best_trials(trials, command.settings_from(command.build_parser().parse_args(argv(env, study_dir))))
    for t in trials:
        folder = study_dir / t.user_attrs["run_dir"]
        assert (folder / "metrics.jsonl").is_file() and list((folder / "samples").glob("*.png"))
        assert (folder / "checkpoints" / "last.npz").exists() == (t.number == best[0].number)
        # cores / workers BLAS threads each, given to the trainer (its own pick would oversubscribe)
        threads = json.loads((folder / "config.json").read_text())["threads"]
        assert threads["requested"] == max(1, (os.cpu_count() or 1) // 2) == threads["blas"]
    for name in ("summary.md", "history.png", "parallel_coordinate.png", "param_importances.png", "best_command.txt"):
        assert (study_dir / name).is_file(), name
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("| rank | trial | FID")
    words = shlex.split(out[-1])
    assert words[:3] == ["python", "-m", "cganraw.train"]
    parsed = train.build_parser().parse_args(words[3:])
    assert parsed.lr == best[0].params["lr"] and parsed.batch_size == best[0].params["batch_size"]
    assert parsed.width == 4 and parsed.max_minutes == 2.0
    # re-running a finished study runs nothing more
    assert command.main(args) == 0
    assert len(load(study_dir).get_trials()) == 4


def test_a_pruner_set_to_prune_stops_a_real_trial(env, tmp_path, monkeypatch):
    # FID is never below 0: this pruner prunes at the first report
    monkeypatch.setattr(st, "make_pruner", lambda s: optuna.pruners.ThresholdPruner(upper=0.0))
    study_dir = tmp_path / "prune"
    assert command.main(argv(env, study_dir, "--trials", 1, "--trial-steps", 400, "--eval-every-steps", 3)) == 0
    (t,) = load(study_dir).get_trials()
    assert t.state == TrialState.PRUNED
    first = min(t.intermediate_values)
    assert list(t.intermediate_values) == [first] and t.user_attrs["pruned_at_step"] == first
    folder = study_dir / t.user_attrs["run_dir"]
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) < 400                                         # the trainer was stopped
    assert not alive(t.user_attrs["trainer_pid"])
    assert not (folder / "checkpoints").exists() and list((folder / "samples").glob("*.png"))


def test_multi_objective_keeps_the_pareto_front(env, tmp_path):
    study_dir = tmp_path / "mo"
    assert command.main(argv(env, study_dir, "--multi-objective", "--sampler", "random", "--trials", 2,
                             "--trial-steps", 3)) == 0
    study = load(study_dir)
    assert len(study.directions) == 2
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE and not t.intermediate_values for t in trials)   # no pruning
    for t in trials:
        assert t.values == [t.user_attrs["fid"], 1 - t.user_attrs["label_accuracy"]]
    front = {t.number for t in st.pareto_front(trials)}
    for t in trials:
        assert (study_dir / t.user_attrs["run_dir"] / "checkpoints").exists() == (t.number in front)
    assert (study_dir / "pareto_front.png").is_file()


def test_a_killed_worker_does_not_wedge_the_study(env, tmp_path):
    study_dir = tmp_path / "kill"
    args = argv(env, study_dir, "--trials", 2, "--trial-minutes", 0.05, "--eval-every-steps", 3, "--heartbeat", 1,
                "--pruner", "none", "--quiet")
    proc = subprocess.Popen([sys.executable, "-m", "cganraw.tune", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = study_dir / "trial_0000" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "trial 0 never started training"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)                                   # mid-trial
    proc.wait()
    (t0,) = load(study_dir).get_trials()
    assert t0.state == TrialState.RUNNING
    deadline = time.monotonic() + 30
    while alive(t0.user_attrs["trainer_pid"]):                         # the trainer dies with its worker
        assert time.monotonic() < deadline, "the killed worker's trainer goes on"
        time.sleep(0.2)
    time.sleep(2.5)                                                    # past the grace period: stale
    assert command.main(args) == 0
    trials = load(study_dir).get_trials()
    assert trials[0].state == TrialState.FAIL and "error" not in trials[0].user_attrs
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[0].params and retried[0].user_attrs["seed"] == trials[0].user_attrs["seed"]
    assert sum(st.counts_toward_total(t) for t in trials) == 2
    assert not (study_dir / "trial_0000" / "checkpoints").exists()       # a failed trial keeps no checkpoint


def test_the_first_trial_is_the_trainers_defaults(env, tmp_path, capsys):
    # a space that holds the trainer's defaults for cgan-conv (lr, d-norm and mismatch: per model)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"low": 1e-4, "high": 1e-3, "log": True}, "d-norm": {"choices": ["none", "spectral"]},
                                 "mismatch": {"low": 0.0, "high": 2.0}, "batch-size": 8, "width": 4, "ema-decay": 0.0}))
    study_dir = tmp_path / "base"
    args = argv(env, study_dir, "--trials", 2, "--trial-steps", 3, "--pruner", "none", "--sampler", "random")
    args[args.index("--space") + 1] = str(space)
    assert command.main(args) == 0
    t0, t1 = load(study_dir).get_trials()
    assert t0.params == {k: train.model_default("cgan-conv", k) for k in ("lr", "d_norm", "mismatch")}
    assert t0.user_attrs["baseline"]
    assert "baseline" not in t1.user_attrs and t1.params != t0.params
    out = capsys.readouterr().out
    assert "0 (defaults)" in out and "The trainer's defaults (trial 0, the baseline): rank" in out


def test_no_baseline_when_the_space_excludes_a_default(env, tmp_path, caplog):
    # SPACE searches --batch-size in {4, 8}: the default cannot be a trial of it
    s = command.settings_from(command.build_parser().parse_args(argv(env, tmp_path)))
    study = st.open_study(s, create=True)
    with caplog.at_level("INFO", logger="cganraw.tune"):
        command.queue_baseline(study, s)
    batch = train.model_default("cgan-conv", "batch_size")
    assert not study.get_trials() and f"does not hold the trainer's default --batch-size {batch}" in caplog.text

"""cganraw.bench: the case list, the keyword filter, the in-process runner, the report
writer, the profiler, and `python -m cganraw.bench` end to end at tiny sizes."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cganraw import backend, settings
from cganraw.bench import cases as C
from cganraw.bench import harness, profile, report, runner
from cganraw.bench.__main__ import main as bench_main
from cganraw.ops import _cpu

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_cganraw_logging():
    """A command run in-process sets up the `cganraw` logger (a handler on this test's
    captured stderr, a level): put it back as it was, for the tests that follow."""
    logger = logging.getLogger("cganraw")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def _record(op, shape, backend, t, unit, thr, family="elementwise", **extra):
    return {"name": f"test_x[{backend}]", "fullname": f"bench/x.py::test_x[{backend}]", "param": backend,
            "group": f"{op} {shape}", "stats": {"median": t, "iqr": 0.0, "rounds": 3},
            "extra_info": {"op": op, "shape": shape, "backend": backend, "family": family, "time_s": t,
                           "throughput": thr, "unit": unit, **extra}}


def _bench(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "cganraw.bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ cases and filter ---

def test_case_ids_are_unique_and_every_suite_has_cases():
    for mode in harness.MODES:
        cases = C.all_cases(mode)
        ids = [c.id for c in cases]
        assert len(ids) == len(set(ids)), "duplicate case ids"
        assert {c.spec.suite for c in cases} == set(C.SUITES)
    smoke, full = C.all_cases("smoke"), C.all_cases("full")
    assert {c.batch for c in smoke} == {2, None} and {c.batch for c in full} == {64, 128, None}
    adam = [c for c in full if c.spec.family == "adam"]
    assert adam and all(c.batch is None and not c.id.endswith(("-b64", "-b128")) for c in adam)
    assert {c.impl for c in full if c.spec.suite == "gemm"} == {"numpy", "cuda:cublas", "cuda:v1", "cuda:v2",
                                                                "cuda:v3", "cuda:v4"}
    assert {c.backend for c in full} == {"numpy", "cuda"}


@pytest.mark.parametrize("expr,text,want", [
    ("bias", "ops bias_add_fwd-Nx1024-numpy-b2", True),
    ("BIAS and numpy", "ops bias_add_fwd-Nx1024-numpy-b2", True),
    ("bias and not numpy", "ops bias_add_fwd-Nx1024-numpy-b2", False),
    ("gemm or bias", "ops bias_add_fwd-Nx1024-numpy-b2", True),
    ("not (gemm or conv) and b2", "ops bias_add_fwd-Nx1024-numpy-b2", True),
    ("(gemm or conv) and b2", "ops bias_add_fwd-Nx1024-numpy-b2", False),
    ("not not bias", "x bias", True),
    ("", "anything", True),
    (None, "anything", True),
])
def test_filter_expressions(expr, text, want):
    assert C.matches(expr, text) is want


@pytest.mark.parametrize("expr", ["(bias", "bias)", "bias and", "and bias", "bias or or gemm", "()"])
def test_bad_filter_expressions_are_errors(expr):
    with pytest.raises(ValueError, match="--filter"):
        C.matches(expr, "bias")


# ------------------------------------------------------------------ runner ----------

def test_runner_times_cases_and_survives_a_broken_one():
    def broken(xp, batch, impl, mode):
        raise RuntimeError("this case is broken")

    def skipped(xp, batch, impl, mode):
        raise harness.SkipCase("not here")
    chosen = C.select(C.all_cases("smoke"), "bias_add_fwd-Nx1x28x28-numpy or bce_with_logits_bwd-numpy")
    assert len(chosen) == 2
    chosen += [C.Case(C.Spec("ops", "bias", "broken", broken), "numpy", 2),
               C.Case(C.Spec("ops", "bias", "skipped", skipped), "numpy", 2)]
    session = runner.run(chosen, "smoke", threads=harness.bench_threads())
    assert [r["name"] for r in session.records] == [c.id for c in chosen[:2]]
    assert session.failed == [("broken-numpy-b2", "RuntimeError: this case is broken")]
    assert session.skipped == [("skipped-numpy-b2", "not here")]
    for r in session.records:
        info = r["extra_info"]
        assert info["unit"] == "GB/s" and info["throughput"] > 0 and info["timer"] == "perf_counter"
        assert r["stats"]["rounds"] == harness.ROUNDS["smoke"] and r["stats"]["median"] > 0
    assert set(session.ctx["ceilings_start"]) == set(session.ctx["ceilings_end"]) == {"cpu"}
    rows = report.rows_from_records(session.records, session.ctx["ceilings"])
    assert {r["op"] for r in rows} == {"bias_add fwd", "bce_with_logits bwd"}


def test_a_wrong_result_fails_the_case():
    def wrong(xp, batch, impl, mode):
        def check(out):
            assert out == 2, "1 + 1 is not 3"
        return C.Prepared(lambda: 3, "add", "1+1", items=1, check=check)
    session = runner.run([C.Case(C.Spec("ops", "bias", "wrong", wrong), "numpy", 2)], "smoke",
                         threads=harness.bench_threads())
    [(case_id, message)] = session.failed
    assert case_id == "wrong-numpy-b2" and message.startswith("AssertionError: 1 + 1 is not 3")
    assert not session.records


def test_gpu_cases_skip_without_a_gpu():
    if backend.gpu_available():
        pytest.skip("a GPU is usable here")
    case = C.select(C.all_cases("smoke"), "bias_add_fwd-Nx1024-cuda")[0]
    with pytest.raises(harness.SkipCase, match="no usable GPU"):
        harness.run_case(harness.Timer(case.id), case, {"mode": "smoke", "ceilings": {}})


def test_timer_records_like_pytest_benchmark():
    t = harness.Timer("x")
    calls = []
    out = t.pedantic(lambda: calls.append(1) or len(calls), setup=lambda: calls.append(0), rounds=3,
                     warmup_rounds=1, iterations=1)
    assert out == 8 and len(t.round_times) == 3          # 4 setups + 4 calls
    rec = t.as_dict()
    assert rec["stats"]["rounds"] == 3 and rec["stats"]["median"] == pytest.approx(np.median(t.round_times))


# ------------------------------------------------------------------ report ----------

def test_write_report_table_ratios_and_chart(tmp_path):
    records = [
        _record("relu fwd", "64x256", "numpy", 2e-4, "GB/s", 0.66, pct_ceiling=5.0),
        _record("relu fwd", "64x256", "cuda", 1e-5, "GB/s", 13.1, pct_ceiling=1.0),
        _record("gemm G.fc fwd", "M=64 N=6272 K=100 NT", "numpy", 4e-3, "GFLOP/s", 20.0, family="gemm"),
        _record("train_step cgan-conv", "N=64 width=128", "numpy", 2.0, "images/s", 32.0, family="train",
                peer="torch", torch_time_s=2.5, torch_images_per_s=25.6, ratio_vs_torch=0.8,
                ratio_vs_torch_paired_median=0.79),
    ]
    ctx = {"mode": "quick", "threads": 2, "ceilings": {"cpu": {"GB/s": 10.0, "GFLOP/s": 50.0, "sgemm_n": 1536}}}
    paths = report.write_report(records, tmp_path, ctx=ctx)
    names = {p.name for p in paths}
    assert {"results.md", "results.json"} <= names
    md = (tmp_path / "results.md").read_text()
    assert "| relu fwd | 64x256 | cuda | 10.0 µs | 13.1 GB/s | 1.0% | 20.00 |" in md   # 2e-4 / 1e-5
    assert "**0.80x**" in md and "torch (peer)" in md
    assert "SGEMM 50.0 GFLOP/s" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["cpu"] and data["machine"]["versions"]["numpy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left"
    pytest.importorskip("matplotlib")
    assert (tmp_path / "throughput.png").stat().st_size > 1000


# ------------------------------------------------------------------ the CLI ---------

def test_cli_runs_with_a_relative_out_from_any_folder(tmp_path):
    """A relative --out lands under the current folder, which need not be a source checkout."""
    proc = _bench("--smoke", "--out", "rel/out", "--filter", "bias_add_fwd and numpy and 1x28x28", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "rel" / "out" / "results.md").read_text()
    assert "| bias_add fwd | 2x1x28x28 | numpy |" in md
    assert str(Path("rel/out/results.md")) in proc.stdout


@pytest.mark.parametrize("make_bad", [
    lambda tmp: tmp / "a-file" / "out",                 # a parent that is a file
    lambda tmp: tmp / "a-file",                         # the folder is a file
])
def test_cli_checks_out_before_any_benchmark(tmp_path, make_bad):
    (tmp_path / "a-file").write_text("x")
    proc = _bench("--quick", "--out", str(make_bad(tmp_path)), timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is a file" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "ceilings" not in proc.stderr


def test_cli_usage_errors(tmp_path):
    proc = _bench("--filter", "(bias", "--out", str(tmp_path))
    assert proc.returncode == 2 and "missing ')'" in proc.stderr
    proc = _bench("--threads", "0", "--out", str(tmp_path))
    assert proc.returncode == 2 and "positive integer" in proc.stderr
    proc = _bench("--filter", "no-such-benchmark", "--out", str(tmp_path))
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: no benchmark matched --filter 'no-such-benchmark' (--list shows the case ids)")


def test_cli_lists_cases(capsys):
    assert bench_main(["--list", "--smoke", "--filter", "gemm-G.fc_fwd"]) == 0
    assert capsys.readouterr().out.split() == [
        "gemm-G.fc_fwd-numpy-b2", "gemm-G.fc_fwd-cuda-cublas-b2", "gemm-G.fc_fwd-cuda-v1-b2",
        "gemm-G.fc_fwd-cuda-v2-b2", "gemm-G.fc_fwd-cuda-v3-b2",
        "gemm-G.fc_fwd-cuda-v4-b2"]


def test_cli_redraws_from_json(tmp_path, capsys):
    records = [_record("relu fwd", "64x256", "numpy", 2e-4, "GB/s", 0.66)]
    report.write_report(records, tmp_path / "a", ctx={"mode": "quick", "ceilings": {}})
    assert bench_main(["--from-json", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "b")]) == 0
    assert "relu fwd" in (tmp_path / "b" / "results.md").read_text()
    (tmp_path / "bad.json").write_text("{not json")
    assert bench_main(["--from-json", str(tmp_path / "bad.json"), "--out", str(tmp_path / "c")]) == 1
    assert "not JSON" in capsys.readouterr().err
    assert bench_main(["--from-json", str(tmp_path / "missing.json"), "--out", str(tmp_path / "c")]) == 1
    assert "missing.json" in capsys.readouterr().err


# ------------------------------------------------------------------ profile ---------

def test_profile_step_attributes_time_and_records_every_gemm_shape():
    matmul = np.matmul
    p = profile.profile_step("cgan-conv", batch=3, width=8, steps=1)
    assert np.matmul is matmul, "the matmul timer was not removed"
    shares = dict(p.categories)
    labels = ("matrix products (BLAS)", "im2col", "col2im")
    if _cpu.enabled():          # the host convolutions' layout turns, in a category of their own
        labels += ("conv layout turns (batch-minor)",)
    for label in labels:
        assert shares[label] > 0, label
    assert sum(shares.values()) <= 1.05 * p.step_s
    # G.fc forward: (N, latent) @ W.T, W (w*49, latent) -> M=N, N=w*49, K=latent, a transposed B
    assert any((m, n, k, layout) == (3, 8 * 49, 100, "NT") for m, n, k, layout, _, _ in p.gemms)
    assert p.gemm_flops > 0 and all(calls >= 1 for *_, calls, _ in p.gemms)
    assert "matrix products" in profile.format_profile(p, sgemm_gflops=10.0)


def test_profile_of_the_trainers_step_runs_its_default_layers():
    # --trainer: the default model's step (FiLM, instance norm, minibatch stddev, the projection
    # label, R1 on step 4 of 5, the moving average), at a tiny width and batch
    p = profile.profile_step("cgan-conv", batch=4, width=4, steps=3, trainer=True)
    shares = dict(p.categories)
    for label in ("instance norm and FiLM", "minibatch stddev", "label projection", "moving average"):
        assert shares.get(label, 0) > 0, label
    assert p.trainer and (p.batch, p.width) == (4, 4)
    assert profile.format_profile(p).startswith("cgan-conv (the trainer's step), batch 4, width 4: ")
    defaults = profile.profile_step("cgan-conv", batch=None, width=None, steps=1, trainer=True)
    assert (defaults.batch, defaults.width) == (settings.model_default("cgan-conv", "batch_size"),
                                                settings.model_default("cgan-conv", "width"))


def test_profile_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cganraw.bench.profile", "--model", "gan-mlp", "--batch", "4",
                           "--steps", "1", "--no-ceiling", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("gan-mlp, batch 4: ") and "\nmatrix products: " in proc.stdout


# ---------------------------------------------------------------- --vs-torch
def test_vs_torch_says_clearly_when_torch_is_missing(tmp_path, monkeypatch, capsys):
    from cganraw.bench import train_cases
    monkeypatch.setattr(train_cases, "_torch", lambda: None)
    assert bench_main(["--vs-torch", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "PyTorch is not installed" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "vs_torch.json").exists()


TINY_ROWS = (("cgan-conv", 4, 3), ("cgan-conv", 2, 2), ("cgan-mlp", None, 3), ("dcgan", 4, 2), ("gan-mlp", None, 2))


def _vs_torch_tiny(tmp_path, monkeypatch, *args):
    """--vs-torch at TINY_ROWS (checks the pipeline only), 2 rounds, 1 thread; the JSON written."""
    torch = pytest.importorskip("torch")
    from cganraw.bench import vs_torch
    threads = torch.get_num_threads()
    monkeypatch.setattr(vs_torch, "ROWS", TINY_ROWS)
    monkeypatch.setattr(vs_torch, "WARMUP", 1)
    monkeypatch.setattr(vs_torch, "SETTLE_S", 0.001)
    try:
        assert bench_main(["--vs-torch", "--rounds", "2", "--threads", "1", "--out", str(tmp_path), "--quiet",
                           *args]) == 0
    finally:
        torch.set_num_threads(threads)
        harness.set_threads(harness.bench_threads())
    return json.loads((tmp_path / "vs_torch.json").read_text())


def test_vs_torch_compares_interleaved_rounds(tmp_path, monkeypatch, capsys):
    data = _vs_torch_tiny(tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert "ours / PyTorch" in out and "ratio" in out
    assert [(r["model"], r["width"], r["batch"]) for r in data["results"]] == list(TINY_ROWS)
    lines = out.splitlines()
    for model, width, batch in TINY_ROWS:    # one line per row: model, width (- for the MLPs), batch, numbers
        assert sum(line.split()[:3] == [model, str(width or "-"), str(batch)] for line in lines) == 1
    for r in data["results"]:
        assert len(r["ours_s"]) == len(r["torch_s"]) == 2 and all(t > 0 for t in r["ours_s"] + r["torch_s"])
        assert r["ratio"] == pytest.approx(r["ours_median_s"] / r["torch_median_s"])
        assert len(r["ours_cpu_s"]) == len(r["torch_cpu_s"]) == 2 and all(t >= 0 for t in r["ours_cpu_s"] + r["torch_cpu_s"])
        assert r["cpu_ratio"] == pytest.approx(r["ours_cpu_median_s"] / r["torch_cpu_median_s"])
    assert data["rounds"] == 2 and data["threads"] == 1 and data["machine"]["cpu"]
    assert data["settle_s"] == 0.001 and data["numba_threads"] in (None, 1)     # None: no Numba
    assert data["numba_layer"] in (None, "tbb", "omp", "workqueue")
    assert data["models"] == ["cgan-conv", "cgan-mlp", "dcgan", "gan-mlp"]


def test_vs_torch_models_picks_rows(tmp_path, monkeypatch, capsys):
    data = _vs_torch_tiny(tmp_path, monkeypatch, "--models", "gan-mlp, dcgan,gan-mlp")
    assert [(r["model"], r["width"], r["batch"]) for r in data["results"]] == [("dcgan", 4, 2), ("gan-mlp", None, 2)]
    assert data["models"] == ["dcgan", "gan-mlp"]
    assert "cgan-conv" not in capsys.readouterr().out


def test_vs_torch_gives_numba_every_thread_on_tbb_only(monkeypatch):
    # on OpenMP, Numba's pool would share PyTorch's actively waiting libgomp (one thread then);
    # TBB's workers are its own, and Numba takes as many threads as BLAS, as in training
    torch = pytest.importorskip("torch")
    from cganraw.bench import vs_torch
    from cganraw.ops import _cpu
    if _cpu.start_threads() is None:
        pytest.skip("Numba is not installed")
    two = min(2, _cpu.numba().config.NUMBA_NUM_THREADS)
    threads = torch.get_num_threads()
    monkeypatch.setattr(vs_torch, "WARMUP", 1)
    try:
        for layer, expected in (("tbb", two), ("omp", 1), ("workqueue", 1)):
            monkeypatch.setattr(vs_torch, "numba_layer", lambda layer=layer: layer)
            data = vs_torch.run(1, 2, (("gan-mlp", None, 2),), settle_s=0.0)
            assert (data["numba_layer"], data["numba_threads"]) == (layer, expected)
        data = vs_torch.run(1, 2, (("gan-mlp", None, 2),), numba_threads=1, settle_s=0.0)    # told: as told
        assert data["numba_threads"] == 1
    finally:
        torch.set_num_threads(threads)
        harness.set_threads(harness.bench_threads())


@pytest.mark.parametrize("args,message", [
    (["--vs-torch", "--models", "dcgan,vae"], "unknown model(s) vae"),
    (["--vs-torch", "--models", ","], "give one or more model names"),
    (["--models", "dcgan"], "--models chooses the rows of --vs-torch"),
])
def test_vs_torch_models_errors(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_main([*args, "--out", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_vs_torch_rows_are_the_training_defaults_and_the_issue_shapes():
    from cganraw import models, settings
    from cganraw.bench import vs_torch
    assert {r[0] for r in vs_torch.ROWS} == set(models.MODELS)
    for model in ("cgan-mlp", "gan-mlp", "dcgan"):      # each at its training default
        width = settings.model_default(model, "width") if model == "dcgan" else None
        assert (model, width, settings.model_default(model, "batch_size")) in vs_torch.ROWS
    assert {("cgan-conv", 128, 128), ("cgan-conv", 64, 64), ("dcgan", 128, 128)} <= set(vs_torch.ROWS)
    assert vs_torch.select_rows(("dcgan",)) == (("dcgan", 64, 64), ("dcgan", 128, 128))
    with pytest.raises(ValueError, match="unknown model"):
        vs_torch.select_rows(("dcgan", "vae"))


@pytest.mark.parametrize("model,width", [("cgan-conv", 4), ("cgan-mlp", None), ("dcgan", 4), ("gan-mlp", None)])
def test_vs_torch_mirror_steps_as_ours_from_the_same_weights(model, width):
    """The PyTorch step that --vs-torch times, on copies of our weights with our noise and fake
    labels (dropout off: torch draws its own masks), gives our losses over three steps of the
    same batch: the same layers, loss, step order and Adam. The losses move between steps
    (Adam's updates) by far more than the two sides differ."""
    torch = pytest.importorskip("torch")
    from cganraw import interop, models, optim
    from cganraw import nn as cnn
    from cganraw.bench import train_cases
    from cganraw.ops.philox import FAKE_LABELS, NOISE, Key, philox_integers, philox_normal
    from cganraw.step import train_step
    batch, seed, k = 6, 3, train_cases.NUM_CLASSES
    conditional = model.startswith("cgan")
    x, y = train_cases.fake_batch(batch, conditional, seed)
    with harness.backend_ctx("numpy") as xp:
        G, D = models.build(model, k, latent_dim=train_cases.LATENT, width=width or 1, seed=seed)
        dropouts = [m for _, m in D.named_modules() if isinstance(m, cnn.Dropout)]
        assert bool(dropouts) == (model != "dcgan")
        for m in dropouts:
            m.p = 0.0
        tG, tD = interop.to_torch(G), interop.to_torch(D)          # copies, dropout p = 0 too
        assert all(m.p == 0.0 for m in tD.modules() if isinstance(m, torch.nn.Dropout))
        key = Key(seed, 0)              # one key for every step: the losses change only by the updates
        z = philox_normal((batch, train_cases.LATENT), key.stream(NOISE))
        fake_labels = philox_integers(batch, 0, k, key.stream(FAKE_LABELS)) if conditional else None

        def draw(step):
            return (torch.from_numpy(np.array(z)),
                    None if fake_labels is None else torch.from_numpy(np.asarray(fake_labels, np.int64)))
        peer = train_cases.torch_step(torch, model, batch, width or 1, x, y, modules=(tG, tD), draw=draw)
        og, od = optim.Adam(G.parameters()), optim.Adam(D.parameters())
        labels = None if y is None else xp.asarray(y)
        ours = [train_step(G, D, og, od, xp.asarray(x), labels, key).fetch() for _ in range(3)]
        theirs = [peer() for _ in range(3)]
    tol = 3e-6                          # a few float32 ulps at loss ~1.4
    for step, (o, (d_loss, g_loss)) in enumerate(zip(ours, theirs)):
        assert o["d_loss"] == pytest.approx(d_loss, rel=0, abs=tol), f"{model} step {step}: D loss"
        assert o["g_loss"] == pytest.approx(g_loss, rel=0, abs=tol), f"{model} step {step}: G loss"
    assert abs(ours[2]["d_loss"] - ours[0]["d_loss"]) > 30 * tol
    assert abs(ours[2]["g_loss"] - ours[0]["g_loss"]) > 30 * tol

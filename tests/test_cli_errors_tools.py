"""Bad input to the sample, evaluate and classifier commands, each run as a real subprocess:
exit 2 for a wrong command line, 1 for a problem found while running; exactly one line on
stderr, never a traceback, and no file created, changed or left behind anywhere in the
folder tree the command was pointed at.

Everything the commands read is made once per session in a tiny world: checkpoints of a
width-8 cgan-conv (healthy, NaN, exploded, truncated, ...), classifiers (healthy, truncated,
NaN, of the wrong size) and synthetic EMNIST-digits IDX files. A read-only folder is made
read-only for root too (the subprocess drops CAP_DAC_OVERRIDE); a full disk is a file size
limit (RLIMIT_FSIZE) on the subprocess.
"""
import ctypes
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cganraw import backend, checkpoint, models
from cganraw import classifier as C
from tests.synthetic import write_emnist

REPO = Path(__file__).resolve().parents[1]
DIGITS = [str(i) for i in range(10)]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
FULL_DISK = 512          # bytes a process may write into one file in the "full disk" cases


def _meta(model, num_classes):
    return {"config": {"model": model, "latent_dim": 100, "width": 8}, "num_classes": num_classes,
            "class_names": DIGITS if num_classes else None, "dataset": "emnist-digits", "step": 7, "epoch": 1}


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Paths of every input the cases use, all under one root (watched for changes), and a
    separate folder for the subprocesses' caches (matplotlib's font list, the classifier cache)."""
    root = tmp_path_factory.mktemp("world")
    home = tmp_path_factory.mktemp("home")
    rng = np.random.default_rng(0)
    p = {"root": root, "home": home}
    ck = root / "ckpt"
    G, D = models.build("cgan-conv", 10, width=8, seed=0)
    checkpoint.save(ck / "good.npz", G, D, meta=_meta("cgan-conv", 10), G_ema=G)
    bad, _ = models.build("cgan-conv", 10, width=8, seed=0)
    bad.parameters()[0].data[0] = np.nan
    checkpoint.save(ck / "nan.npz", G, D, meta=_meta("cgan-conv", 10), G_ema=bad)
    big, _ = models.build("cgan-conv", 10, width=8, seed=0)
    big.parameters()[0].data.flat[0] = 5e7          # finite, but past health.PARAM_BOUND
    checkpoint.save(ck / "exploded.npz", big, D, meta=_meta("cgan-conv", 10))
    U, DU = models.build("dcgan", None, width=8, seed=0)
    checkpoint.save(ck / "uncond.npz", U, DU, meta=_meta("dcgan", None))
    whole = (ck / "good.npz").read_bytes()
    (ck / "truncated.npz").write_bytes(whole[:len(whole) // 2])
    (ck / "garbage.npz").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    np.savez(ck / "foreign.npz", weights=np.zeros(3))
    (ck / "emptyrun").mkdir()

    cl = root / "clf"
    C.Classifier(10, DIGITS, dataset="emnist-digits", seed=1).save(cl / "good.npz")
    whole = (cl / "good.npz").read_bytes()
    (cl / "truncated.npz").write_bytes(whole[:len(whole) * 2 // 3])
    (cl / "garbage.npz").write_bytes(b"PK\x03\x04" + bytes(300))
    nan_clf = C.Classifier(10, DIGITS, dataset="emnist-digits", seed=1)
    nan_clf.head.weight.data[0, 0] = np.inf
    nan_clf.save(cl / "nan.npz")
    C.Classifier(5, dataset="emnist-digits").save(cl / "five.npz")

    write_emnist(root / "data", "digits", rng, n=(60, 50))
    (root / "nodata").mkdir()
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("an earlier result\n")
    (root / "afile").write_text("a file, not a folder\n")
    (root / "adir.png").mkdir()
    (root / "adir.npz").mkdir()
    (root / "clash" / "metrics.json").mkdir(parents=True)
    (root / "ro").mkdir()
    (root / "ro" / "old.png").write_bytes(b"not replaced")
    os.chmod(root / "ro", 0o555)
    (root / "cwd").mkdir()
    # matplotlib builds its font cache on first use, and says so on stderr when that takes
    # over 5 s (a loaded machine): build it now, not inside a case
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=_env(p), check=True,
                   capture_output=True, timeout=300)
    p.update({k: str(v) for k, v in {
        "good": ck / "good.npz", "nan": ck / "nan.npz", "exploded": ck / "exploded.npz",
        "uncond": ck / "uncond.npz", "trunc": ck / "truncated.npz", "garbage": ck / "garbage.npz",
        "foreign": ck / "foreign.npz", "emptyrun": ck / "emptyrun", "clf": cl / "good.npz",
        "clf_trunc": cl / "truncated.npz", "clf_garbage": cl / "garbage.npz", "clf_nan": cl / "nan.npz",
        "clf5": cl / "five.npz", "data": root / "data", "nodata": root / "nodata", "out": root / "out",
        "afile": root / "afile", "adir_png": root / "adir.png", "adir_npz": root / "adir.npz",
        "clash": root / "clash", "ro": root / "ro", "missing": root / "missing"}.items()})
    yield p
    os.chmod(root / "ro", 0o755)


def _drop_root_override():
    """As root, give up the right to ignore permission bits, so a 0o555 folder is read-only."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _preexec(fsize):
    def setup():
        _drop_root_override()
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG instead of death
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return setup


def _env(world):
    env = {k: v for k, v in os.environ.items() if k not in ("CGANRAW_DATA_DIR", "CGANRAW_DEBUG")}
    env.update(PYTHONPATH=str(REPO), CGANRAW_BACKEND="numpy", PYTHONDONTWRITEBYTECODE="1",
               XDG_CACHE_HOME=str(world["home"] / "cache"), MPLCONFIGDIR=str(world["home"] / "mpl"),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def snapshot(root):
    """Every folder and every file (size, mtime, content) under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        out[dirpath] = "folder"
        for name in filenames:
            f = Path(dirpath) / name
            st = f.stat()
            out[str(f)] = (st.st_size, st.st_mtime_ns, f.read_bytes())
    return out


@pytest.fixture(scope="session")
def read_only_works(world):
    """Whether the subprocess really cannot write into world['ro'] (else those cases skip)."""
    r = subprocess.run([sys.executable, "-c", f"open({world['ro'] + '/probe'!r}, 'w')"],
                       preexec_fn=_preexec(None), capture_output=True)
    return r.returncode != 0


# (id, module, argv, exit code, a word the error line must hold, options)
# argv entries are formatted with the world's paths; options: "ro" (needs a read-only
# folder), "fsize" (a full disk), "nogpu" (only where no GPU is usable).
SAMPLE = ["--checkpoint", "{good}"]
EVAL = ["--classifier", "{clf}", "--data-dir", "{data}", "--n-per-class", "2", "--no-cas"]
CTRAIN = ["train", "--dataset", "emnist-digits", "--data-dir", "{data}", "--max-train", "60",
          "--epochs", "1", "--batch-size", "32"]
OUT_PNG = ["--out", "{out}/x.png"]
CASES = [
    # --- sample: the command line (exit 2) ---
    ("sample-seed-negative", "sample", SAMPLE + ["--seed", "-1"] + OUT_PNG, 2, "--seed"),
    ("sample-n-per-label-zero", "sample", SAMPLE + ["--n-per-label", "0"] + OUT_PNG, 2, "positive"),
    ("sample-n-per-label-text", "sample", SAMPLE + ["--n-per-label", "many"] + OUT_PNG, 2, "'many'"),
    ("sample-labels-empty", "sample", SAMPLE + ["--labels", ""] + OUT_PNG, 2, "empty"),
    ("sample-labels-commas", "sample", SAMPLE + ["--labels", ",,"] + OUT_PNG, 2, "empty"),
    ("sample-labels-negative", "sample", SAMPLE + ["--labels", "-1"] + OUT_PNG, 2, ">= 0"),
    ("sample-labels-text", "sample", SAMPLE + ["--labels", "1,x"] + OUT_PNG, 2, "comma-separated"),
    ("sample-chars-empty", "sample", SAMPLE + ["--chars", ""] + OUT_PNG, 2, "at least one character"),
    ("sample-labels-and-chars", "sample", SAMPLE + ["--labels", "1", "--chars", "1"] + OUT_PNG, 2,
     "not allowed with"),
    ("sample-out-suffix", "sample", SAMPLE + ["--out", "{out}/x.jpg"], 2, ".png or .npz"),
    ("sample-no-out", "sample", SAMPLE, 2, "--out"),
    ("sample-unknown-flag", "sample", SAMPLE + ["--bogus"] + OUT_PNG, 2, "--bogus"),
    ("sample-backend-unknown", "sample", SAMPLE + ["--backend", "tpu"] + OUT_PNG, 2, "tpu"),
    # --- sample: found while running (exit 1) ---
    ("sample-label-out-of-range", "sample", SAMPLE + ["--labels", "3,10"] + OUT_PNG, 1, "out of range"),
    ("sample-char-not-in-alphabet", "sample", SAMPLE + ["--chars", "7H"] + OUT_PNG, 1, "alphabet"),
    ("sample-unconditional-labels", "sample", ["--checkpoint", "{uncond}", "--labels", "1"] + OUT_PNG, 1,
     "unconditional"),
    ("sample-checkpoint-missing", "sample", ["--checkpoint", "{missing}/last.npz"] + OUT_PNG, 1, "not found"),
    ("sample-checkpoint-truncated", "sample", ["--checkpoint", "{trunc}"] + OUT_PNG, 1, "not a readable"),
    ("sample-checkpoint-garbage", "sample", ["--checkpoint", "{garbage}"] + OUT_PNG, 1, "not a readable"),
    ("sample-checkpoint-foreign", "sample", ["--checkpoint", "{foreign}"] + OUT_PNG, 1, "not a cganraw"),
    ("sample-checkpoint-empty-run", "sample", ["--checkpoint", "{emptyrun}"] + OUT_PNG, 1, "no checkpoints"),
    ("sample-checkpoint-nan", "sample", ["--checkpoint", "{nan}"] + OUT_PNG, 1, "non-finite"),
    ("sample-checkpoint-exploded", "sample", ["--checkpoint", "{exploded}"] + OUT_PNG, 1, "exceeds the bound"),
    ("sample-out-is-folder", "sample", SAMPLE + ["--out", "{adir_png}"], 1, "is a folder"),
    ("sample-out-under-file", "sample", SAMPLE + ["--out", "{afile}/x.png"], 1, "is a file"),
    ("sample-out-read-only", "sample", SAMPLE + ["--out", "{ro}/x.png"], 1, "cannot write", "ro"),
    ("sample-out-read-only-replace", "sample", SAMPLE + ["--out", "{ro}/old.png"], 1, "cannot write", "ro"),
    ("sample-out-proc", "sample", SAMPLE + ["--out", "/proc/cganraw-x.png"], 1, "/proc"),
    ("sample-full-disk", "sample", SAMPLE + ["--n-per-label", "20", "--out", "{out}/big.npz"], 1,
     "too large", "fsize"),
    ("sample-backend-cuda-no-gpu", "sample", SAMPLE + ["--backend", "cuda"] + OUT_PNG, 1, "GPU", "nogpu"),
    # --- evaluate: the command line (exit 2) ---
    ("evaluate-n-per-class-zero", "evaluate", ["--checkpoint", "{good}", *EVAL, "--n-per-class", "0",
                                               "--out", "{out}"], 2, "positive"),
    ("evaluate-seed-negative", "evaluate", ["--checkpoint", "{good}", *EVAL, "--seed", "-1", "--out", "{out}"],
     2, "--seed"),
    ("evaluate-cas-epochs-zero", "evaluate", ["--checkpoint", "{good}", *EVAL, "--cas-epochs", "0",
                                              "--out", "{out}"], 2, "--cas-epochs"),
    ("evaluate-real-without-dataset", "evaluate", ["--real", *EVAL, "--out", "{out}"], 2, "--dataset"),
    ("evaluate-real-and-checkpoint", "evaluate", ["--real", "--checkpoint", "{good}", *EVAL, "--out", "{out}"],
     2, "not allowed with"),
    ("evaluate-nothing-to-score", "evaluate", EVAL, 2, "required"),
    ("evaluate-dataset-unknown", "evaluate", ["--checkpoint", "{good}", *EVAL, "--dataset", "cifar10",
                                              "--out", "{out}"], 2, "unknown dataset"),
    ("evaluate-data-dir-missing", "evaluate", ["--checkpoint", "{good}", "--classifier", "{clf}",
                                               "--data-dir", "{missing}", "--out", "{out}"], 2, "not a folder"),
    # --- evaluate: found while running (exit 1) ---
    ("evaluate-checkpoint-nan", "evaluate", ["--checkpoint", "{nan}", *EVAL, "--out", "{out}"], 1, "non-finite"),
    ("evaluate-checkpoint-exploded", "evaluate", ["--checkpoint", "{exploded}", *EVAL, "--out", "{out}"], 1,
     "exceeds the bound"),
    ("evaluate-checkpoint-truncated", "evaluate", ["--checkpoint", "{trunc}", *EVAL, "--out", "{out}"], 1,
     "not a readable"),
    ("evaluate-classifier-truncated", "evaluate", ["--checkpoint", "{good}", *EVAL, "--classifier", "{clf_trunc}",
                                                   "--out", "{out}"], 1, "truncated or corrupt"),
    ("evaluate-classifier-garbage", "evaluate", ["--checkpoint", "{good}", *EVAL, "--classifier", "{clf_garbage}",
                                                 "--out", "{out}"], 1, "train a new one"),
    ("evaluate-classifier-missing", "evaluate", ["--checkpoint", "{good}", *EVAL, "--classifier",
                                                 "{missing}/c.npz", "--out", "{out}"], 1, "not found"),
    ("evaluate-classifier-nan", "evaluate", ["--checkpoint", "{good}", *EVAL, "--classifier", "{clf_nan}",
                                             "--out", "{out}"], 1, "non-finite"),
    ("evaluate-classifier-wrong-size", "evaluate", ["--checkpoint", "{good}", *EVAL, "--classifier", "{clf5}",
                                                    "--out", "{out}"], 1, "classifies 5 classes"),
    ("evaluate-no-data", "evaluate", ["--checkpoint", "{good}", "--classifier", "{clf}", "--data-dir", "{nodata}",
                                      "--no-cas", "--out", "{out}"], 1, "emnist"),
    ("evaluate-real-too-few", "evaluate", ["--real", "--dataset", "emnist-digits", *EVAL, "--n-per-class", "500",
                                           "--out", "{out}"], 1, "fewer than --n-per-class"),
    ("evaluate-out-is-file", "evaluate", ["--checkpoint", "{good}", *EVAL, "--out", "{afile}"], 1, "is a file"),
    ("evaluate-out-under-file", "evaluate", ["--checkpoint", "{good}", *EVAL, "--out", "{afile}/res"], 1,
     "is a file"),
    ("evaluate-out-read-only", "evaluate", ["--checkpoint", "{good}", *EVAL, "--out", "{ro}"], 1, "cannot write",
     "ro"),
    ("evaluate-out-proc", "evaluate", ["--checkpoint", "{good}", *EVAL, "--out", "/proc/cganraw-eval"], 1,
     "/proc"),
    ("evaluate-output-name-is-folder", "evaluate", ["--checkpoint", "{good}", *EVAL, "--out", "{clash}"], 1,
     "metrics.json is a folder"),
    ("evaluate-full-disk", "evaluate", ["--checkpoint", "{good}", *EVAL, "--quiet", "--out", "{out}"], 1,
     "too large", "fsize"),
    # --- classifier: the command line (exit 2) ---
    ("classifier-no-command", "classifier", [], 2, "required"),
    ("classifier-dataset-unknown", "classifier", ["train", "--dataset", "cifar10"], 2, "invalid choice"),
    ("classifier-max-train-negative", "classifier", [*CTRAIN, "--max-train", "-5", "--out", "{out}/c.npz"], 2,
     "positive"),
    ("classifier-max-train-zero", "classifier", [*CTRAIN, "--max-train", "0", "--out", "{out}/c.npz"], 2,
     "positive"),
    ("classifier-augment-too-big", "classifier", [*CTRAIN, "--augment", "9", "--out", "{out}/c.npz"], 2, "0..4"),
    ("classifier-augment-negative", "classifier", [*CTRAIN, "--augment", "-1", "--out", "{out}/c.npz"], 2, "0..4"),
    ("classifier-epochs-zero", "classifier", [*CTRAIN, "--epochs", "0", "--out", "{out}/c.npz"], 2, "positive"),
    ("classifier-lr-nan", "classifier", [*CTRAIN, "--lr", "nan", "--out", "{out}/c.npz"], 2, "positive"),
    ("classifier-seed-negative", "classifier", [*CTRAIN, "--seed", "-1", "--out", "{out}/c.npz"], 2, ">= 0"),
    ("classifier-out-suffix", "classifier", [*CTRAIN, "--out", "{out}/c.txt"], 2, ".npz"),
    ("classifier-data-dir-missing", "classifier", ["test", "--dataset", "emnist-digits", "--classifier", "{clf}",
                                                   "--data-dir", "{missing}"], 2, "not a folder"),
    # --- classifier: found while running (exit 1) ---
    ("classifier-out-is-folder", "classifier", [*CTRAIN, "--out", "{adir_npz}"], 1, "is a folder"),
    ("classifier-out-under-file", "classifier", [*CTRAIN, "--out", "{afile}/c.npz"], 1, "is a file"),
    ("classifier-out-read-only", "classifier", [*CTRAIN, "--out", "{ro}/c.npz"], 1, "cannot write", "ro"),
    ("classifier-out-proc", "classifier", [*CTRAIN, "--out", "/proc/cganraw-c.npz"], 1, "/proc"),
    ("classifier-full-disk", "classifier", [*CTRAIN, "--quiet", "--out", "{out}/c.npz"], 1, "too large", "fsize"),
    ("classifier-train-no-data", "classifier", ["train", "--dataset", "emnist-digits", "--data-dir", "{nodata}",
                                                "--out", "{out}/c.npz"], 1, "emnist"),
    ("classifier-test-truncated", "classifier", ["test", "--dataset", "emnist-digits", "--data-dir", "{data}",
                                                 "--classifier", "{clf_trunc}"], 1, "truncated or corrupt"),
    ("classifier-test-garbage", "classifier", ["test", "--dataset", "emnist-digits", "--data-dir", "{data}",
                                               "--classifier", "{clf_garbage}"], 1, "train a new one"),
    ("classifier-test-folder", "classifier", ["test", "--dataset", "emnist-digits", "--data-dir", "{data}",
                                              "--classifier", "{out}"], 1, "is a folder"),
    ("classifier-test-wrong-size", "classifier", ["test", "--dataset", "emnist-digits", "--data-dir", "{data}",
                                                  "--classifier", "{clf5}"], 1, "classifies 5 classes"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case, world, read_only_works):
    _, module, argv, code, needle, *options = case
    if "ro" in options and not read_only_works:
        pytest.skip("cannot make a folder read-only for this user here")
    if "nogpu" in options and backend.gpu_available():
        pytest.skip("a GPU is usable here")
    args = [a.format(**world) for a in argv]
    before = snapshot(world["root"])
    r = subprocess.run([sys.executable, "-m", f"cganraw.{module}", *args], cwd=world["root"] / "cwd",
                       env=_env(world), preexec_fn=_preexec(FULL_DISK if "fsize" in options else None),
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.splitlines()
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    assert r.returncode == code, r.stderr
    assert lines[0].startswith("error: " if code == 1 else f"python -m cganraw.{module}"), lines[0]
    assert needle in lines[0], lines[0]
    assert snapshot(world["root"]) == before


def test_the_good_inputs_work(world, tmp_path):
    """The same world with nothing wrong: each command succeeds, so the cases above fail
    for the reason they name."""
    env = _env(world)
    run = lambda module, *argv: subprocess.run(
        [sys.executable, "-m", f"cganraw.{module}", *argv], env=env, capture_output=True, text=True, timeout=300)
    r = run("sample", "--checkpoint", world["good"], "--labels", "3,1", "--out", str(tmp_path / "s.npz"))
    assert r.returncode == 0 and "wrote" in r.stderr, r.stderr
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (16, 28, 28) and list(z["labels"][::8]) == [3, 1]
    r = run("sample", "--checkpoint", world["good"], "--no-ema", "--chars", "42", "--quiet",
            "--out", str(tmp_path / "s.png"))
    assert r.returncode == 0 and r.stderr == "" and (tmp_path / "s.png").stat().st_size > 0, r.stderr
    r = run("evaluate", "--checkpoint", world["good"], "--classifier", world["clf"], "--data-dir", world["data"],
            "--n-per-class", "2", "--no-cas", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0 and "label accuracy" in r.stdout, r.stderr
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == sorted(
        ["metrics.json", "confusion.png", "per_class_accuracy.png"])
    r = run("classifier", "train", "--dataset", "emnist-digits", "--data-dir", world["data"], "--max-train", "60",
            "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "c.npz"))
    assert r.returncode == 0 and "test accuracy" in r.stdout and "epoch 1/1" in r.stderr, r.stderr
    assert C.load(tmp_path / "c.npz").info["train_images"] == 60


@pytest.mark.parametrize("module,argv", [("sample", []), ("evaluate", []), ("classifier", ["train"]),
                                         ("classifier", ["test"])])
def test_help_gives_every_flag_its_help_and_default(module, argv):
    import importlib
    mod = importlib.import_module(f"cganraw.{module}")
    parser = mod.build_parser() if hasattr(mod, "build_parser") else mod._parser()
    if argv:
        parser = next(a for a in parser._actions if a.choices and argv[0] in a.choices).choices[argv[0]]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        assert action.help, f"{module} {action.option_strings} has no help"
        if action.default not in (None, False, "==SUPPRESS=="):
            assert f"(default: {action.default})" in text, f"{module} {action.option_strings}"

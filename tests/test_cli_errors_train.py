"""Bad input to `python -m cganraw.train`, one subprocess per case: exit 2 for usage errors,
1 for runtime ones, exactly one line on stderr, never a traceback, and nothing changed in
the run folders (a finished run beside the cases, and the fresh --out each case names)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cganraw import backend
from tests.synthetic import write_emnist

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "CGANRAW_BACKEND": "numpy", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
ENV.pop("CGANRAW_DEBUG", None)
TINY = ["--dataset", "emnist", "--width", "4", "--batch-size", "8", "--no-download", "--max-steps", "2"]
USAGE, RUNTIME = 2, 1


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """data/: synthetic EMNIST letters; run/: a finished run (lr 3e-4); files to trip over."""
    root = tmp_path_factory.mktemp("world")
    write_emnist(root / "data", "letters", np.random.default_rng(0), n=(48, 16))
    r = subprocess.run([sys.executable, "-m", "cganraw.train", *TINY, "--data-dir", str(root / "data"),
                        "--out", str(root / "run"), "--lr", "3e-4", "--quiet"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (root / "a-file").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "no-run").mkdir()
    (root / "truncated.npz").write_bytes((root / "run" / "checkpoints" / "last.npz").read_bytes()[:5000])
    np.savez(root / "foreign.npz", weights=np.zeros(3))
    with np.load(root / "run" / "checkpoints" / "last.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["D.fc.weight" if "D.fc.weight" in arrays else next(k for k in arrays if k.startswith("D."))][...] = np.inf
    np.savez(root / "diverged.npz", **arrays)
    meta = json.loads(str(arrays["meta"]))
    meta["config"].pop("width")
    np.savez(root / "no-width.npz", **{**arrays, "meta": np.asarray(json.dumps(meta))})
    return root


# (id, argv with {root} for the world folder, expected exit code, a piece of the message)
CASES = [
    # numbers out of range or not numbers (argparse: usage)
    ("model", ["--model", "vae"], USAGE, "invalid choice: 'vae'"),
    ("dataset", ["--dataset", "cifar"], USAGE, "invalid choice: 'cifar'"),
    ("width-0", ["--width", "0"], USAGE, "expected an integer in 1..1024, got 0"),
    ("width-huge", ["--width", "100000"], USAGE, "expected an integer in 1..1024"),
    ("width-text", ["--width", "wide"], USAGE, "expected an integer in 1..1024, got 'wide'"),
    ("batch-0", ["--batch-size", "0"], USAGE, "expected a positive integer, got 0"),
    ("batch-negative", ["--batch-size", "-3"], USAGE, "expected a positive integer"),
    ("lr-negative", ["--lr", "-1"], USAGE, "expected a positive number, got -1"),
    ("lr-zero", ["--lr", "0"], USAGE, "expected a positive number, got 0"),
    ("lr-nan", ["--lr", "nan"], USAGE, "expected a positive number, got nan"),
    ("lr-inf", ["--lr", "inf"], USAGE, "expected a positive number, got inf"),
    ("lr-d-0", ["--lr-d", "0"], USAGE, "--lr-d: expected a positive number"),
    ("beta1", ["--beta1", "1.5"], USAGE, "expected a number in [0, 1), got 1.5"),
    ("beta2-1", ["--beta2", "1"], USAGE, "expected a number in [0, 1), got 1"),
    ("latent-0", ["--latent-dim", "0"], USAGE, "expected an integer in 1..4096"),
    ("seed-negative", ["--seed", "-1"], USAGE, "--seed: expected an integer >= 0, got -1"),
    ("seed-float", ["--seed", "1.5"], USAGE, "--seed: expected an integer >= 0, got '1.5'"),
    ("smoothing-1", ["--label-smoothing", "1"], USAGE, "expected a number in [0, 1), got 1"),
    ("mismatch-negative", ["--mismatch", "-0.5"], USAGE, "expected a number >= 0"),
    ("mode-seeking-text", ["--mode-seeking", "x"], USAGE, "expected a number >= 0, got 'x'"),
    ("ema-1", ["--ema-decay", "1"], USAGE, "expected a number in [0, 1), got 1"),
    ("decay-start", ["--lr-decay-start", "1.5"], USAGE, "expected a number in [0, 1], got 1.5"),
    ("epochs-0", ["--epochs", "0"], USAGE, "--epochs: expected a positive integer"),
    ("epochs-exp", ["--epochs", "1e3"], USAGE, "--epochs: expected a positive integer, got '1e3'"),
    ("max-steps", ["--max-steps", "-5"], USAGE, "--max-steps: expected a positive integer, got -5"),
    ("max-minutes", ["--max-minutes", "0"], USAGE, "--max-minutes: expected a positive number"),
    ("log-every", ["--log-every", "0"], USAGE, "--log-every: expected a positive integer"),
    ("checkpoint-every", ["--checkpoint-every", "0"], USAGE, "--checkpoint-every: expected a positive integer"),
    ("sample-every", ["--sample-every", "-1"], USAGE, "--sample-every: expected a positive integer"),
    ("eval-every", ["--eval-every", "0"], USAGE, "--eval-every: expected a positive integer"),
    ("eval-every-steps", ["--eval-every-steps", "0"], USAGE, "--eval-every-steps: expected a positive integer"),
    ("backend", ["--backend", "tpu"], USAGE, "invalid choice: 'tpu'"),
    ("d-label", ["--d-label", "hinge"], USAGE, "invalid choice: 'hinge'"),
    ("d-label-mlp", ["--model", "cgan-mlp", "--d-label", "projection"], USAGE,
     "--d-label: options of --model cgan-conv only, not of cgan-mlp"),
    ("g-film-mlp", ["--model", "cgan-mlp", "--g-film"], USAGE,
     "--g-film: options of --model cgan-conv only, not of cgan-mlp"),
    ("unknown-flag", ["--learning-rate", "1"], USAGE, "unrecognized arguments: --learning-rate"),
    # resume: conflicts are usage errors, unreadable or unhealthy checkpoints runtime ones
    ("resume-width", ["--resume", "{root}/run", "--width", "8"], USAGE, "--width: was 4, asked 8"),
    ("resume-lr-default", ["--resume", "{root}/run", "--lr", "1e-4"], USAGE, "--lr: was 0.0003, asked 0.0001"),
    ("resume-two", ["--resume", "{root}/run", "--model", "cgan-mlp", "--seed", "3"], USAGE,
     "--model: was cgan-conv, asked cgan-mlp; --seed: was 0, asked 3"),
    ("resume-out", ["--resume", "{root}/run", "--out", "{root}/other"], USAGE, "--out: was {root}/run, asked {root}/other"),
    ("resume-nothing", ["--resume"], USAGE, "--resume needs a run folder or checkpoint (or --out)"),
    ("resume-missing", ["--resume", "{root}/nope.npz"], RUNTIME, "{root}/nope.npz: checkpoint not found"),
    ("resume-no-run", ["--resume", "{root}/no-run"], RUNTIME, "no checkpoints/last.npz in this run directory"),
    ("resume-truncated", ["--resume", "{root}/truncated.npz"], RUNTIME, "not a readable checkpoint"),
    ("resume-foreign", ["--resume", "{root}/foreign.npz"], RUNTIME, "not a cganraw checkpoint"),
    ("resume-diverged", ["--resume", "{root}/diverged.npz"], RUNTIME, "cannot resume: {root}/diverged.npz: D."),
    ("resume-no-width", ["--resume", "{root}/no-width.npz"], RUNTIME, "{root}/no-width.npz: the saved config lacks width"),
    # the run folder
    ("out-under-file", ["--out", "{root}/a-file/run"], RUNTIME, "{root}/a-file is a file, not a folder"),
    ("out-is-file", ["--out", "{root}/a-file"], RUNTIME, "{root}/a-file is a file, not a folder"),
    ("out-proc", ["--out", "/proc/cganraw-run"], RUNTIME, "cannot write the run folder /proc/cganraw-run"),
    ("out-holds-run", ["--out", "{root}/run"], RUNTIME, "{root}/run already holds a run: pass --resume"),
    # data and the machine
    ("data-dir-missing", ["--data-dir", "{root}/no-such-dir"], RUNTIME,
     "the data folder {root}/no-such-dir (data_dir / --data-dir) does not exist"),
    ("data-dir-empty", ["--data-dir", "{root}/empty"], RUNTIME, "emnist-letters"),
    ("batch-over-data", ["--batch-size", "1000"], RUNTIME, "--batch-size 1000 exceeds the 48 training images"),
    ("env-backend", ["--env", "CGANRAW_BACKEND=tpu"], RUNTIME, "CGANRAW_BACKEND='tpu' is not a backend"),
]
if not backend.gpu_available():
    CASES.append(("cuda-without-gpu", ["--backend", "cuda"], RUNTIME, "backend 'cuda' needs CuPy and a usable NVIDIA GPU"))


def snapshot(root):
    """Every file's mtime and hash, every folder's existence (a folder's own mtime moves
    when the output check probes it with a temporary file, which it removes)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            if p.is_file() else "folder" for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv,code,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, argv, code, needle):
    argv = [a.replace("{root}", str(world)) for a in argv]
    env = dict(ENV)
    if argv[:1] == ["--env"]:
        key, value = argv[1].split("=")
        env[key] = value
        argv = argv[2:]
    given = {a for a in argv if a.startswith("--")}
    base = [a for i, a in enumerate(TINY) if not (a in given or (i and TINY[i - 1] in given))]
    if "--data-dir" not in given:
        base += ["--data-dir", str(world / "data")]
    if "--out" not in given and "--resume" not in given:
        base += ["--out", str(world / "fresh")]
    before = snapshot(world)
    r = subprocess.run([sys.executable, "-m", "cganraw.train", *base, *argv], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert needle.replace("{root}", str(world)) in lines[0]
    assert lines[0].startswith("python -m cganraw.train: error: " if code == USAGE else "error: ")
    assert r.stdout == ""
    assert snapshot(world) == before          # no file written, no folder made, nothing touched


def test_there_are_enough_cases():
    assert len(CASES) >= 30

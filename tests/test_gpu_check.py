"""bench/gpu_check.sh, the one command for a GPU day, in its dry-run mode: it picks the CuPy
package from the driver nvidia-smi reports, shows every GPU stage, runs the CPU side (the
census on the emulator, a few training steps) into the output folder, and exits non-zero
when something fails."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import real_mnist_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _fake_smi(folder, cuda):
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncase \"$*\" in\n  *query-gpu*) echo 'NVIDIA H100 80GB HBM3, 580.65.06' ;;\n"
                   f"  *) echo '| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: {cuda}   |' ;;\n"
                   "esac\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return folder


def _run(tmp_path, *args, smi_cuda=None, data_dir=None):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not (Path(p) / "nvidia-smi").exists()]
    if smi_cuda is not None:
        path.insert(0, str(_fake_smi(tmp_path / f"bin-{smi_cuda}", smi_cuda)))
    env["PATH"] = os.pathsep.join(path)
    env.pop("OUT", None)
    cmd = ["bash", str(SCRIPT), "--dry-run", *args]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def mnist():
    path = real_mnist_dir()
    if path is None:
        pytest.skip("real MNIST not found (the dry run trains a few steps on it)")
    return path


def test_dry_run_runs_the_cpu_side_and_shows_the_gpu_stages(tmp_path, mnist):
    out = tmp_path / "out"
    r = _run(tmp_path, "--out", str(out), smi_cuda="13.0", data_dir=mnist)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (out / "summary.txt").read_text()
    assert "CuPy package cupy-cuda13x" in summary and "pip install cupy-cuda13x" in summary
    for name in ("kernels", "bench", "census", "train", "evaluate"):
        assert f"dry   {name}: " in summary, name
    assert "CGANRAW_KERNEL_TEST_BACKEND=cuda" in summary and "--backend cuda" in summary
    assert "ok    census-emu" in summary and "ok    train-numpy" in summary
    census_lines = [ln for ln in summary.splitlines() if ln.startswith("census: ")]
    assert len(census_lines) == 1 and "syncs=0" in census_lines[0] and census_lines[0].endswith("(gpu=h100)")
    assert (out / "census-emu.json").is_file() and (out / "train-numpy" / "checkpoints" / "last.npz").is_file()
    assert summary.rstrip().endswith(f"all stages passed (summary {out / 'summary.txt'})")


@pytest.mark.parametrize("cuda,package", [("12.4", "cupy-cuda12x"), ("13.1", "cupy-cuda13x")])
def test_package_follows_the_driver(tmp_path, cuda, package):
    # a data folder that does not exist makes the CPU training fail: the run must say so
    out = tmp_path / "out"
    r = _run(tmp_path, "--out", str(out), "--wheels", str(tmp_path / "wheels"), "--stages", "install,train-numpy",
             smi_cuda=cuda, data_dir=tmp_path / "no-such-data")
    summary = (out / "summary.txt").read_text()
    assert f"pip install {package} --no-index --find-links {tmp_path / 'wheels'}" in summary
    assert r.returncode == 1 and "FAIL  train-numpy" in summary and summary.rstrip().endswith(
        f"gpu_check: FAILED (summary {out / 'summary.txt'})")


def test_old_driver_and_no_driver(tmp_path):
    out = tmp_path / "old"
    r = _run(tmp_path, "--out", str(out), "--stages", "install", smi_cuda="11.8")
    assert r.returncode == 1 and "driver too old" in (out / "summary.txt").read_text()
    out = tmp_path / "none"
    r = _run(tmp_path, "--out", str(out), "--stages", "install")
    summary = (out / "summary.txt").read_text()
    assert "no NVIDIA driver answers" in summary and "pip install cupy-cuda12x" in summary
    assert r.returncode == 0          # a dry run needs no GPU


def test_bad_argument_is_a_usage_error(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "unknown argument --frobnicate" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--dry-run" in r.stdout and shutil.which("bash")

"""Packaging: the wheel carries every subpackage and the kernel sources (pyproject lists
them by hand, because kernels/ sits at the top level and ships as cganraw._kernels), every
command line has a console script, each dependency is named once, CI lints, and a
non-editable install in a fresh virtual environment runs the benchmarks."""
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cganraw.ops import _launch

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _setuptools_config():
    return _pyproject()["tool"]["setuptools"]


def _requirement_name(req):
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_every_subpackage_is_listed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cganraw").rglob("__init__.py")}
    listed = set(_setuptools_config()["packages"])
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == {"cganraw._kernels"}


def test_kernel_sources_ship_as_package_data():
    cfg = _setuptools_config()
    assert cfg["package-dir"]["cganraw._kernels"] == "kernels"
    patterns = cfg["package-data"]["cganraw._kernels"]
    sources = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.is_file())
    unshipped = [name for name in sources if not any(Path(name).match(pat) for pat in patterns)]
    assert sources and not unshipped, f"kernel files the wheel would leave out: {unshipped}"


def test_kernel_dir_prefers_the_source_tree(monkeypatch):
    monkeypatch.delenv("CGANRAW_KERNEL_DIR", raising=False)
    assert _launch.kernel_dir() == ROOT / "kernels"
    monkeypatch.setenv("CGANRAW_KERNEL_DIR", "/somewhere/else")
    assert _launch.kernel_dir() == Path("/somewhere/else")


def test_the_page_and_the_shipped_model_ship_as_package_data():
    patterns = _setuptools_config()["package-data"]["cganraw"]
    files = [p.relative_to(ROOT / "cganraw").as_posix()
             for folder in ("web", "pretrained") for p in (ROOT / "cganraw" / folder).iterdir() if p.is_file()]
    unshipped = [f for f in files if not any(Path(f).match(pat) for pat in patterns)]
    assert "web/index.html" in files and "pretrained/digits.npz" in files and not unshipped, unshipped


def test_every_command_line_has_a_console_script():
    scripts = _pyproject()["project"]["scripts"]
    targets = set(scripts.values())
    for path in sorted((ROOT / "cganraw").rglob("*.py")):
        if 'if __name__ == "__main__":' not in path.read_text():
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        names = {module, module.removesuffix(".__main__")}
        assert any(t.split(":")[0] in names for t in targets), f"{module} has no console script in pyproject.toml"
    for name, target in scripts.items():
        assert name.startswith("cganraw-"), name
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_each_dependency_is_named_once_and_gpu_can_compile_kernels():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    named = [_requirement_name(r) for r in project["dependencies"]]
    for extra, reqs in extras.items():
        for req in reqs:
            if _requirement_name(req) == "cganraw":   # an extra naming other extras
                wanted = re.search(r"\[(.*)\]", req).group(1).split(",")
                assert set(wanted) <= set(extras) - {extra}, f"{extra}: {req} names an unknown extra"
            else:
                named.append(_requirement_name(req))
    assert len(named) == len(set(named)), f"named more than once: {sorted({n for n in named if named.count(n) > 1})}"
    # a machine with only a driver compiles the kernels: CuPy with NVRTC from PyPI
    assert any(r.startswith("cupy-cuda12x[ctk]") for r in extras["gpu"]), extras["gpu"]


def test_python_versions_are_classifiers():
    project = _pyproject()["project"]
    minimum = tuple(map(int, re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"]).groups()))
    versions = sorted(tuple(map(int, c.rsplit(" ", 1)[1].split("."))) for c in project["classifiers"]
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions and versions[0] == minimum
    assert versions == [(3, m) for m in range(minimum[1], versions[-1][1] + 1)], "a gap in the listed versions"


def test_ci_lints_with_the_configured_ruff():
    lint = _pyproject()["tool"]["ruff"]["lint"]
    assert {"E", "F", "W", "I", "B", "UP"} <= set(lint["select"])
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    install = next(i for i, line in enumerate(run) if "pip install" in line)
    lint_step = next(i for i, line in enumerate(run) if "ruff check ." in line)
    tests = next(i for i, line in enumerate(run) if "pytest" in line and not line.lstrip().startswith("#"))
    assert install < lint_step < tests


@pytest.mark.slow
def test_a_wheel_install_in_a_fresh_venv_runs_the_benchmarks(tmp_path):
    """pip install . (not editable) into a new virtual environment, then the benchmarks and a
    console script from a folder that is not the source tree."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CGANRAW_KERNEL_DIR")}
    # the wheel is built offline with this interpreter's setuptools, from a copy of the tree
    # (no stale build/ folder can slip files in), then installed as a user would
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".benchmarks", "results"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600,
                           env=env, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("cganraw-*.whl")
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import cganraw, cganraw._kernels as k; print(cganraw.__file__); "
                            "print(k.__path__[0])"], capture_output=True, text=True, env=env, cwd=tmp_path)
    files = where.stdout.split()
    assert where.returncode == 0 and all(f.startswith(str(venv)) for f in files), where.stdout + where.stderr
    shipped = {p.name for p in Path(files[1]).iterdir()}
    missing = [p.name for p in (ROOT / "kernels").glob("*.cu*") if p.name not in shipped]
    assert not missing, f"kernel sources the wheel left out: {missing}"
    package = Path(files[0]).parent
    assert (package / "web" / "index.html").is_file() and (package / "pretrained" / "digits.npz").is_file()
    run = subprocess.run([str(py), "-m", "cganraw.bench", "--quick", "--smoke", "--out", "out",
                          "--filter", "bias_add_fwd and numpy and 1x28x28"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "| bias_add fwd | 2x1x28x28 | numpy |" in (tmp_path / "out" / "results.md").read_text()
    listed = subprocess.run([str(venv / "bin" / "cganraw-bench"), "--list", "--filter", "adam and numpy"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "adam-G.fc.weight-numpy" in listed.stdout.split(), listed.stderr


def test_emulator_headers_ship_as_package_data():
    # cuda_emu.h and the stand-in toolkit headers (include/mma.h) the emulator compiles with
    patterns = _setuptools_config()["package-data"]["cganraw.cuda_emu"]
    emu = ROOT / "cganraw" / "cuda_emu"
    headers = sorted(str(p.relative_to(emu)) for p in emu.rglob("*.h"))
    shipped = {str(p.relative_to(emu)) for pat in patterns for p in emu.glob(pat)}   # setuptools' globs
    unshipped = [h for h in headers if h not in shipped]
    assert "include/mma.h" in headers and not unshipped, f"emulator headers the wheel would leave out: {unshipped}"

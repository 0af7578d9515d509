"""The wheel carries every subpackage and the kernel sources (pyproject lists them by hand,
because kernels/ sits at the top level and ships as cganraw._kernels)."""
from pathlib import Path

import pytest

from cganraw.ops import _launch

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def _setuptools_config():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


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


def test_emulator_headers_ship_as_package_data():
    # cuda_emu.h and the stand-in toolkit headers (include/mma.h) the emulator compiles with
    patterns = _setuptools_config()["package-data"]["cganraw.cuda_emu"]
    emu = ROOT / "cganraw" / "cuda_emu"
    headers = sorted(str(p.relative_to(emu)) for p in emu.rglob("*.h"))
    shipped = {str(p.relative_to(emu)) for pat in patterns for p in emu.glob(pat)}   # setuptools' globs
    unshipped = [h for h in headers if h not in shipped]
    assert "include/mma.h" in headers and not unshipped, f"emulator headers the wheel would leave out: {unshipped}"

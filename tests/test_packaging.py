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


def test_the_page_and_the_shipped_model_ship_as_package_data():
    patterns = _setuptools_config()["package-data"]["cganraw"]
    files = [p.relative_to(ROOT / "cganraw").as_posix()
             for folder in ("web", "pretrained") for p in (ROOT / "cganraw" / folder).iterdir() if p.is_file()]
    unshipped = [f for f in files if not any(Path(f).match(pat) for pat in patterns)]
    assert "web/index.html" in files and "pretrained/digits.npz" in files and not unshipped, unshipped

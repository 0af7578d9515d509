"""cganraw.fileio: atomic writes leave the old file or the new one, with normal permissions."""
import os
import stat

import pytest

from cganraw import fileio


def test_atomic_write_bytes_and_callable(tmp_path):
    p = fileio.atomic_write(tmp_path / "sub" / "a.bin", b"abc")
    assert p.read_bytes() == b"abc"
    fileio.atomic_write(p, lambda f: f.write(b"xyz"))
    assert p.read_bytes() == b"xyz"
    assert not list(p.parent.glob(".*.tmp"))


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    p = fileio.atomic_write(tmp_path / "a.bin", b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError):
        fileio.atomic_write(p, boom)
    assert p.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_uses_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        p = fileio.atomic_write(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_remove_orphaned_temps(tmp_path):
    orphan = fileio.temp_path(tmp_path, "last.npz")
    keep = tmp_path / "last.npz"
    keep.write_bytes(b"k")
    assert fileio.remove_orphaned_temps(tmp_path, "last.npz") == [orphan]
    assert keep.exists() and not orphan.exists()

"""Files written so that a crash never leaves a torn one: temp file beside the target,
fsync, rename over it, fsync the folder. The one home of atomic writes (checkpoints,
IDX files, config.json, metrics, exported models)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(folder) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(folder, name: str) -> Path:
    """A new empty file `.<name>.<random>.tmp` in `folder`: the same file system as the
    target, so the final rename is atomic."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def place(tmp, final) -> None:
    """Atomically move the finished temp file `tmp` (same folder) to `final`, with the
    permissions a plain open() would have given it (mkstemp makes files 0600)."""
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def atomic_write(path, content) -> Path:
    """Write `content` (bytes, or a callable taking the open binary file) to `path`
    atomically. On any error the target is untouched and the temp file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path.parent, path.name)
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        place(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:
            e.filename = str(path)      # a failed write names no file by itself: name the target
        raise
    return path


def remove_orphaned_temps(folder, name: str = "*") -> list[Path]:
    """Delete temp files that atomic_write left behind when its process was killed
    (`.<name>.*.tmp` in `folder`). Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed

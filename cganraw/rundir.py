"""The folder of a training run: who may write it (an OS lock), whether it can hold the
run (checked before any long work), its metrics log, and what a killed run left behind.

    <run>/.lock               fcntl lock held while a trainer writes here; holds its pid
    <run>/config.json         every setting (cganraw.train writes it)
    <run>/metrics.jsonl       one JSON object per logged step (MetricsLog)
    <run>/checkpoints/        last.npz and epoch_NNN.npz
    <run>/samples/            sample grids
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

from cganraw import fileio
from cganraw.cli import CLIError, describe_error

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLock:
    """An exclusive flock on <run>/.lock. The OS releases it when the process ends, however
    it ends, so a lock left by a killed run never blocks; the file itself stays."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def holder(self) -> str:
        """The pid written by the process that holds (or last held) the lock."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def check_free(self) -> None:
        """CLIError when another process holds the lock now; creates and writes nothing
        (for the checks before any long work: the lock itself is taken later)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return
        except OSError:
            return          # unreadable: acquire() will say so
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._busy() from None
            raise
        finally:
            os.close(fd)    # closing releases a lock taken here

    def _busy(self) -> CLIError:
        return CLIError(f"{self.folder} is in use by another training run (pid {self.holder()}): "
                        "wait for it to end, or choose another --out")

    def acquire(self) -> RunLock:
        """Create the folder and take the lock, or raise CLIError naming the holder's pid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise self._busy() from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc):
        self.release()


def _nearest_existing(folder: Path) -> Path:
    for parent in [folder, *folder.parents]:
        if parent.exists():
            return parent
    return Path(".")


def check_writable(folder) -> Path:
    """CLIError unless `folder` (existing or still to be created) can take files: a file in
    its way, a read-only or full file system, no permission. Creates nothing: the probe
    goes into the nearest folder that exists and is removed."""
    folder = Path(folder)
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise CLIError(f"cannot write the run folder {folder}: {base} is a file, not a folder")
    try:
        probe = fileio.temp_path(base, "write-test")
        try:
            with open(probe, "wb") as f:
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise CLIError(f"cannot write the run folder {folder}: {describe_error(e)}") from None
    return folder


def check_free_space(folder, need_bytes: int) -> None:
    """CLIError when the file system of `folder` has less than `need_bytes` free."""
    free = shutil.disk_usage(_nearest_existing(Path(folder))).free
    if free < need_bytes:
        raise CLIError(f"not enough free disk for the run folder {folder}: {free / 1e6:.1f} MB free, "
                       f"the run needs about {need_bytes / 1e6:.1f} MB for its checkpoints and samples")


def remove_leftovers(folder) -> list[Path]:
    """Delete the temporary files that atomic writes of a killed run left in the run folder
    (call it while holding the lock: then no writer of this run is alive)."""
    folder = Path(folder)
    removed = []
    for sub in (folder, folder / "checkpoints", folder / "samples"):
        if sub.is_dir():
            sizes = {p: p.stat().st_size for p in sub.glob(".*.tmp")}
            for p in fileio.remove_orphaned_temps(sub):
                removed.append(p)
                log.info("removed %s (%.1f MB), left by a killed run", p, sizes.get(p, 0) / 1e6)
    return removed


def prune_epoch_checkpoints(ckpt_dir, keep: int) -> None:
    """Keep only the newest `keep` checkpoints/epoch_NNN.npz."""
    for f in sorted(Path(ckpt_dir).glob("epoch_*.npz"))[:-keep]:
        f.unlink(missing_ok=True)


def write_json(path, doc) -> None:
    fileio.atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())


class MetricsLog:
    """metrics.jsonl: one JSON object per line, each with its "step"; appended and flushed
    line by line, so a killed run loses at most the line being written."""

    def __init__(self, path):
        self.path = Path(path)
        self._f = None

    def truncate_to(self, step: int) -> int:
        """Drop the lines of steps after `step` (re-run after a resume: they would appear
        twice) and any torn last line. Returns how many lines went."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text(errors="replace").splitlines()
        keep = []
        for line in lines:
            try:
                rec_step = int(json.loads(line)["step"])
            except (ValueError, TypeError, KeyError):     # torn or foreign: not ours to keep
                continue
            if rec_step <= step:
                keep.append(line)
        dropped = len(lines) - len(keep)
        if dropped:
            fileio.atomic_write(self.path, "".join(k + "\n" for k in keep).encode())
            log.info("%s: dropped %d line%s after step %d", self.path, dropped, "s" * (dropped > 1), step)
        return dropped

    def write(self, rec: dict) -> None:
        if self._f is None:
            self._f = open(self.path, "a")
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

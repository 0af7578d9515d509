"""What every command line of the package shares: argparse number types that say what
they expected, and one way to end: a one-line error on stderr and an exit code, never a
traceback (unless --debug or CGANRAW_DEBUG=1 asks for it)."""
from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
import tempfile
import zipfile
from pathlib import Path


def number(convert, ok, what):
    """An argparse type: convert(s), then ok(v), else an error that says what was expected."""
    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not (math.isfinite(v) and ok(v)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s}")
        return v
    parse.__name__ = what
    return parse


positive_int = number(int, lambda v: v > 0, "a positive integer")
nonneg_int = number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = number(float, lambda v: v > 0, "a positive number")
nonneg_float = number(float, lambda v: v >= 0, "a number >= 0")
unit_float = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
unit_interval = number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
open_unit = number(float, lambda v: 0 < v < 1, "a number in (0, 1)")


# ------------------------------------------------------------------ ending a command ---

DEBUG_ENV = "CGANRAW_DEBUG"
EXIT_RUNTIME, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143


class CLIError(Exception):
    """A problem the user can fix, said in one line (what, which path, what to do)."""


def add_common_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--debug (tracebacks instead of one-line errors) and --quiet, on every command."""
    parser.add_argument("--debug", action="store_true", default=False,
                        help=f"show Python tracebacks on errors (also ${DEBUG_ENV}=1)")
    parser.add_argument("--quiet", action="store_true", default=False, help="only warnings and errors")
    return parser


def debugging(args=None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (tests and callers swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(args=None) -> logging.Logger:
    """Library code logs to the `cganraw` logger and never prints; a command line shows
    its INFO messages on stderr (WARNING with --quiet, DEBUG with --debug)."""
    logger = logging.getLogger("cganraw")
    level = logging.DEBUG if debugging(args) else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logger.setLevel(level)
    if not any(getattr(h, "_cganraw_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._cganraw_cli = True
        logger.addHandler(handler)
    return logger


def describe_error(e: BaseException) -> str:
    """One line for an exception: an OSError names its path and what to do."""
    if isinstance(e, OSError) and not isinstance(e, CLIError):
        what = e.strerror or str(e) or type(e).__name__
        where = f"{e.filename}: " if e.filename else ""
        hint = {errno.ENOSPC: " (free some disk space and run again)",
                errno.EACCES: " (choose a folder you can write to)",
                errno.EROFS: " (the file system is read-only: choose another folder)",
                errno.EISDIR: " (give a file name, not a folder)",
                errno.ENOTDIR: " (a parent of this path is a file, not a folder)",
                errno.EFBIG: " (the file system or a size limit refuses a file this large: choose another folder)",
                errno.EDQUOT: " (disk quota exceeded: free some space and run again)"}.get(e.errno, "")
        return f"{where}{what}{hint}"
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())   # one line, whatever the message held


def run(body, args, *, expected=()) -> int:
    """Run body(args) -> exit code (None = 0) as a command: errors the user can act on
    (CLIError, OSError, ValueError, KeyError and the classes in `expected`) become one line
    `error: ...` on stderr and exit 1; anything else says it is an internal error.
    --debug (or CGANRAW_DEBUG=1) lets every exception through with its traceback."""
    if debugging(args):
        return body(args) or 0
    try:
        return body(args) or 0
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_SIGINT
    except (CLIError, OSError, ValueError, KeyError, zipfile.BadZipFile, *expected) as e:
        sys.stderr.write(f"error: {describe_error(e)}\n")
        return EXIT_RUNTIME
    except Exception as e:
        sys.stderr.write(f"error: internal error ({type(e).__name__}: {describe_error(e)}); "
                         f"run with --debug for the traceback and report it\n")
        return EXIT_RUNTIME


def check_output_file(path, what="output file", suffixes=None) -> Path:
    """Fail before any long work when `path` cannot be written: a folder, a parent that
    is a file, a read-only or missing-and-uncreatable parent, or a wrong suffix. Creates
    the parent folder; writes nothing else."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise CLIError(f"{what} {path}: expected a name ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise CLIError(f"{what} {path} is a folder: give a file name")
    check_output_dir(path.parent, f"the folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise CLIError(f"{what} {path} exists and is not writable")
    return path


def check_output_dir(folder, what="output folder") -> Path:
    """Create `folder` if needed and prove a file can be written in it."""
    folder = Path(folder) if str(folder) else Path(".")
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{what} {folder}: {parent} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CLIError(f"cannot write to {what} {folder}: {describe_error(e)}") from None
    return folder


# ------------------------------------------------------------------ the parser ---

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults in --help and usage errors in one line on stderr, exit 2
    (argparse's own error prints the whole usage first). Subparsers inherit both."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

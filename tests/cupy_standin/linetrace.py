"""A pytest plugin (-p tests.cupy_standin.linetrace) that records which lines of
cganraw/ops/*.py run, into the JSON file named by $CGANRAW_LINETRACE: how
tests/test_cupy_standin.py proves that the kernel suite on the stand-in runs every line of
the cuda glue."""
import json
import os
import sys
import threading
from pathlib import Path

import cganraw.ops

OPS_DIR = str(Path(cganraw.ops.__file__).resolve().parent)
_seen: set = set()


def _local(frame, event, arg):
    if event == "line":
        _seen.add((frame.f_code.co_filename, frame.f_lineno))
    return _local


def _global(frame, event, arg):
    if frame.f_code.co_filename.startswith(OPS_DIR):
        _seen.add((frame.f_code.co_filename, frame.f_lineno))
        return _local
    return None


def pytest_configure(config):
    sys.settrace(_global)
    threading.settrace(_global)


def pytest_unconfigure(config):
    sys.settrace(None)
    threading.settrace(None)
    path = os.environ.get("CGANRAW_LINETRACE")
    if path:
        Path(path).write_text(json.dumps(sorted(_seen)))
